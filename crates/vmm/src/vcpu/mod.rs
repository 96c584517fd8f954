//! vCPUs: the scheduling state machine ([`state`]), the control block shared between
//! threads ([`VcpuControl`]), the domain-wide count of online vCPUs ([`online`]), how
//! other threads kick a vCPU thread and read its CPU time ([`kick`]), the initial
//! register state ([`regs`]), hypercall entry by `syscall` ([`syscall`]), the special-
//! register changes hypercalls leave for the vCPU thread ([`sregs_edits`]), the XSAVE
//! state a PV vCPU may use ([`xstate`]) and the thread that runs `KVM_RUN` ([`thread`]).

pub mod kick;
pub mod online;
pub mod regs;
pub mod sregs_edits;
pub mod state;
pub mod syscall;
mod syscall_exit;
pub mod thread;
pub mod xstate;

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

pub use kick::{install_kick_handler, kick_signal, VcpuThreadHandle};
pub use online::OnlineVcpus;
pub use state::{VcpuSched, VcpuState};

/// What other threads use to control one vCPU.
pub struct VcpuControl {
    pub id: u32,
    sched: Mutex<VcpuSched>,
    cond: Condvar,
    /// The thread running the vCPU: kicks, CPU time (see [`kick`] for why kickers
    /// never touch the vCPU's `kvm_run`).
    pub thread: VcpuThreadHandle,
    /// Set while the vCPU waits in `SCHEDOP_poll` (senders then wake it whatever
    /// vCPU the port notifies).
    pub polling: AtomicBool,
    /// Hypercalls handled, for metrics.
    pub hypercalls: AtomicU64,
    /// Special-register changes of the running hypercall ([`sregs_edits`]).
    sregs_edits: Mutex<sregs_edits::SregsEdits>,
}

impl VcpuControl {
    pub fn new(id: u32) -> Self {
        Self {
            id,
            sched: Mutex::new(VcpuSched::new(id == 0)),
            cond: Condvar::new(),
            thread: VcpuThreadHandle::default(),
            polling: AtomicBool::new(false),
            hypercalls: AtomicU64::new(0),
            sregs_edits: Mutex::new(sregs_edits::SregsEdits::default()),
        }
    }

    /// Records a special-register change of this vCPU's running hypercall; the vCPU
    /// thread applies it before the vCPU runs again ([`sregs_edits::apply`]).
    pub fn edit_sregs(&self, f: impl FnOnce(&mut sregs_edits::SregsEdits)) {
        f(&mut self.sregs_edits.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Takes the recorded changes.
    pub fn take_sregs_edits(&self) -> sregs_edits::SregsEdits {
        std::mem::take(&mut *self.sregs_edits.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Locks the scheduling record. A poisoned lock (a panicking vCPU thread) still
    /// yields the record: the data is plain state that stays consistent.
    pub fn lock(&self) -> MutexGuard<'_, VcpuSched> {
        self.sched.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits on the vCPU's condition variable, optionally until `deadline`.
    pub fn wait<'a>(
        &self,
        guard: MutexGuard<'a, VcpuSched>,
        deadline: Option<Instant>,
    ) -> MutexGuard<'a, VcpuSched> {
        match deadline {
            None => self.cond.wait(guard).unwrap_or_else(|e| e.into_inner()),
            Some(d) => {
                let timeout = d.saturating_duration_since(Instant::now());
                self.cond
                    .wait_timeout(guard, timeout)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
        }
    }

    /// Wakes the vCPU if it waits for an event (no effect on a running vCPU, which
    /// sees events in shared memory by itself).
    pub fn wake(&self) {
        let _g = self.lock();
        self.cond.notify_all();
    }

    /// Wakes every waiter of the scheduling record; the caller holds its lock.
    pub fn notify_locked(&self) {
        self.cond.notify_all();
    }

    /// Forces the vCPU out of guest mode so it re-reads its scheduling record (after a
    /// pause, down or stop), and wakes it if it waits. Safe to call from any thread at
    /// any time, also while the domain is being joined.
    pub fn interrupt(&self) {
        self.wake();
        self.thread.kick();
    }
}
