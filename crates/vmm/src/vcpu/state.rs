//! The vCPU scheduling state machine.
//!
//! ```text
//!            initialise           up                 block / poll
//!   Down ─────────────► Down ───────────► Running ◄──────────────► Blocked
//!  (uninitialised)   (initialised)          │   ▲      event / timeout
//!                                      down │   │ up
//!                                           ▼   │
//!                                          Down
//! ```
//! Pausing (the toolstack's `xm pause`) and stopping (domain shutdown) are flags on top
//! of the state: a paused or stopped vCPU does not run guest code whatever its state.

use rxen_abi::errno::*;
use rxen_abi::vcpu::{
    VcpuGuestContext, RUNSTATE_BLOCKED, RUNSTATE_OFFLINE, RUNSTATE_RUNNABLE, RUNSTATE_RUNNING,
};

/// Where a vCPU is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum VcpuState {
    /// Not running guest code: never started, or taken down with `VCPUOP_down`.
    Down,
    /// Running (or ready to run) guest code.
    Running,
    /// Waiting in `SCHEDOP_block` or `SCHEDOP_poll`.
    Blocked,
}

/// Time accounting for `VCPUOP_get_runstate_info`.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Runstate {
    pub state: u32,
    pub entry_time: u64,
    pub time: [u64; 4],
}

impl Runstate {
    fn enter(&mut self, state: u32, now: u64) {
        let idx = (self.state as usize).min(3);
        self.time[idx] += now.saturating_sub(self.entry_time);
        self.state = state;
        self.entry_time = now;
    }

    /// Totals including the time spent in the current state up to `now`.
    pub fn snapshot(&self, now: u64) -> Runstate {
        let mut r = *self;
        r.enter(self.state, now);
        r.entry_time = self.entry_time;
        r
    }
}

/// The scheduling record of one vCPU (kept under its mutex).
#[derive(Debug)]
pub struct VcpuSched {
    pub state: VcpuState,
    /// A context has been supplied (`VCPUOP_initialise`, or the builder for vCPU 0).
    pub initialised: bool,
    /// A context to load before the vCPU next runs.
    pub pending_context: Option<Box<VcpuGuestContext>>,
    /// Paused by the toolstack.
    pub paused: bool,
    /// The domain is going away; the vCPU thread must exit.
    pub stop: bool,
    /// Deadline of the singleshot timer (guest system time, ns) and its generation.
    pub timer: Option<u64>,
    pub timer_generation: u64,
    pub runstate: Runstate,
    /// The saver asks the vCPU thread for its processor state
    /// ([`crate::snapshot::cpu`]); the thread answers in `captured`.
    pub capture_wanted: bool,
    pub captured: Option<Result<Box<crate::snapshot::cpu::CpuState>, String>>,
    /// Where the guest wants its runstate kept (`VCPUOP_register_runstate_memory_area`).
    pub runstate_area: Option<u64>,
    /// The CR4 the guest last wrote (emulated `mov %cr4`; see `traps::privop`).
    pub guest_cr4: u64,
    /// The virtual IOPL the kernel set with `PHYSDEVOP_set_iopl`.
    pub virtual_iopl: u32,
}

impl VcpuSched {
    /// A vCPU as created: vCPU 0 is initialised and running, the others are down.
    pub fn new(boot_vcpu: bool) -> Self {
        Self {
            state: if boot_vcpu {
                VcpuState::Running
            } else {
                VcpuState::Down
            },
            initialised: boot_vcpu,
            pending_context: None,
            paused: false,
            stop: false,
            timer: None,
            timer_generation: 0,
            runstate: Runstate {
                state: if boot_vcpu {
                    RUNSTATE_RUNNING
                } else {
                    RUNSTATE_OFFLINE
                },
                ..Default::default()
            },
            capture_wanted: false,
            captured: None,
            runstate_area: None,
            guest_cr4: crate::traps::privop::PV_CR4,
            virtual_iopl: 0,
        }
    }

    fn set_state(&mut self, s: VcpuState, now: u64) {
        self.state = s;
        let rs = match s {
            VcpuState::Down => RUNSTATE_OFFLINE,
            VcpuState::Running if self.paused => RUNSTATE_RUNNABLE,
            VcpuState::Running => RUNSTATE_RUNNING,
            VcpuState::Blocked => RUNSTATE_BLOCKED,
        };
        self.runstate.enter(rs, now);
    }

    /// `VCPUOP_initialise`.
    pub fn initialise(&mut self, ctx: Box<VcpuGuestContext>) -> Result<(), i32> {
        self.initialise_with(ctx, |_| Ok(()))
    }

    /// `VCPUOP_initialise` with a check of the context that runs only if the vCPU is
    /// not initialised yet (under this record's lock), e.g. taking a PV vCPU's L4
    /// as its base in the MMU; its error is the hypercall's.
    pub fn initialise_with(
        &mut self,
        ctx: Box<VcpuGuestContext>,
        accept: impl FnOnce(&VcpuGuestContext) -> Result<(), i32>,
    ) -> Result<(), i32> {
        if self.initialised {
            return Err(-EEXIST);
        }
        accept(&ctx)?;
        self.initialised = true;
        self.pending_context = Some(ctx);
        Ok(())
    }

    /// `VCPUOP_up`.
    pub fn up(&mut self, now: u64) -> Result<(), i32> {
        if !self.initialised {
            return Err(-EINVAL);
        }
        if self.state == VcpuState::Down {
            self.set_state(VcpuState::Running, now);
        }
        Ok(())
    }

    /// `VCPUOP_down`.
    pub fn down(&mut self, now: u64) {
        if self.state != VcpuState::Down {
            self.set_state(VcpuState::Down, now);
        }
    }

    /// Enter `SCHEDOP_block`/`SCHEDOP_poll`.
    pub fn block(&mut self, now: u64) {
        if self.state == VcpuState::Running {
            self.set_state(VcpuState::Blocked, now);
        }
    }

    /// Leave a block (event, timeout, or stop).
    pub fn wake(&mut self, now: u64) {
        if self.state == VcpuState::Blocked {
            self.set_state(VcpuState::Running, now);
        }
    }

    /// Pause or unpause (toolstack).
    pub fn set_paused(&mut self, paused: bool, now: u64) {
        self.paused = paused;
        let s = self.state;
        self.set_state(s, now);
    }

    /// May the vCPU thread run guest code now?
    pub fn may_run(&self) -> bool {
        self.state == VcpuState::Running && !self.paused && !self.stop
    }

    /// Arms the singleshot timer; returns its generation.
    pub fn arm_timer(&mut self, deadline: u64) -> u64 {
        self.timer_generation += 1;
        self.timer = Some(deadline);
        self.timer_generation
    }

    /// Disarms the singleshot timer.
    pub fn disarm_timer(&mut self) {
        self.timer_generation += 1;
        self.timer = None;
    }

    /// Fires the timer if it is armed with generation `generation` (or any, if `None`)
    /// and due at `now`; true if it fired (the caller raises `VIRQ_TIMER`).
    pub fn take_due_timer(&mut self, generation: Option<u64>, now: u64) -> bool {
        match self.timer {
            Some(d) if d <= now && generation.is_none_or(|g| g == self.timer_generation) => {
                self.timer = None;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::FromZeros;

    #[test]
    fn lifecycle_of_a_secondary_vcpu() {
        let mut v = VcpuSched::new(false);
        assert_eq!(v.state, VcpuState::Down);
        assert_eq!(v.up(0), Err(-EINVAL), "up before initialise");
        v.initialise(VcpuGuestContext::new_box_zeroed().unwrap())
            .unwrap();
        assert_eq!(
            v.initialise(VcpuGuestContext::new_box_zeroed().unwrap()),
            Err(-EEXIST)
        );
        v.up(10).unwrap();
        assert!(v.may_run());
        v.block(20);
        assert_eq!(v.state, VcpuState::Blocked);
        assert!(!v.may_run());
        v.wake(50);
        v.set_paused(true, 60);
        assert!(!v.may_run());
        v.set_paused(false, 70);
        v.down(100);
        assert_eq!(v.state, VcpuState::Down);
        v.up(110).unwrap();
        let r = v.runstate.snapshot(200);
        assert_eq!(r.state, RUNSTATE_RUNNING);
        assert_eq!(r.time[RUNSTATE_BLOCKED as usize], 30);
        assert_eq!(r.time[RUNSTATE_OFFLINE as usize], 10 + 10);
        assert_eq!(r.time[RUNSTATE_RUNNABLE as usize], 10);
        assert_eq!(r.time[RUNSTATE_RUNNING as usize], 10 + 10 + 30 + 90);
    }

    #[test]
    fn timer_fires_once_per_arming() {
        let mut v = VcpuSched::new(true);
        let g = v.arm_timer(100);
        assert!(!v.take_due_timer(Some(g), 99));
        assert!(v.take_due_timer(Some(g), 100));
        assert!(!v.take_due_timer(None, 200), "already fired");
        let g1 = v.arm_timer(100);
        let _g2 = v.arm_timer(300);
        assert!(!v.take_due_timer(Some(g1), 200), "stale generation");
        assert!(v.take_due_timer(None, 300));
        v.arm_timer(5);
        v.disarm_timer();
        assert!(!v.take_due_timer(None, 10));
    }
}
