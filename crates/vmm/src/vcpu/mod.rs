//! vCPUs: the scheduling state machine ([`state`]), the control block shared between
//! threads ([`VcpuControl`]), the initial register state ([`regs`]) and the thread that
//! runs `KVM_RUN` ([`thread`]).

pub mod regs;
pub mod state;
pub mod thread;

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

pub use state::{VcpuSched, VcpuState};

/// Signal used to knock a vCPU thread out of `KVM_RUN`.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) handler of the kick signal; KVM_RUN returns `EINTR` on it.
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick_signal)
}

/// What other threads use to control one vCPU.
pub struct VcpuControl {
    pub id: u32,
    sched: Mutex<VcpuSched>,
    cond: Condvar,
    /// `pthread_t` of the vCPU thread once it runs (0 before).
    thread: AtomicU64,
    /// The vCPU's `kvm_run.immediate_exit` byte, published by its thread.
    immediate_exit: AtomicPtr<u8>,
    /// Set while the thread is inside (or about to enter) `KVM_RUN`.
    in_guest: AtomicBool,
    /// Set while the vCPU waits in `SCHEDOP_poll` (senders then wake it whatever
    /// vCPU the port notifies).
    pub polling: AtomicBool,
    /// Hypercalls handled, for metrics.
    pub hypercalls: AtomicU64,
    /// Cumulative ns spent in KVM_RUN.
    pub guest_ns: AtomicU64,
}

impl VcpuControl {
    pub fn new(id: u32) -> Self {
        Self {
            id,
            sched: Mutex::new(VcpuSched::new(id == 0)),
            cond: Condvar::new(),
            thread: AtomicU64::new(0),
            immediate_exit: AtomicPtr::new(std::ptr::null_mut()),
            in_guest: AtomicBool::new(false),
            polling: AtomicBool::new(false),
            hypercalls: AtomicU64::new(0),
            guest_ns: AtomicU64::new(0),
        }
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

    /// Forces the vCPU out of guest mode so it re-reads its scheduling record (after a
    /// pause, down or stop), and wakes it if it waits.
    pub fn interrupt(&self) {
        self.wake();
        let p = self.immediate_exit.load(Ordering::SeqCst);
        if !p.is_null() {
            // SAFETY: the pointer is the `immediate_exit` byte of this vCPU's kvm_run
            // mapping, published by the vCPU thread and cleared (under `in_guest`
            // protocol) before that mapping is dropped; a byte store is atomic on x86.
            unsafe { std::ptr::write_volatile(p, 1) };
        }
        let t = self.thread.load(Ordering::SeqCst);
        if t != 0 && self.in_guest.load(Ordering::SeqCst) {
            // SAFETY: `t` is the pthread_t of the live vCPU thread (it clears `thread`
            // before exiting); sending it a signal with an installed handler is safe.
            unsafe { libc::pthread_kill(t as libc::pthread_t, kick_signal()) };
        }
    }

    pub(crate) fn publish_thread(&self, immediate_exit: *mut u8) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.thread.store(me as u64, Ordering::SeqCst);
        self.immediate_exit.store(immediate_exit, Ordering::SeqCst);
    }

    pub(crate) fn unpublish_thread(&self) {
        self.immediate_exit
            .store(std::ptr::null_mut(), Ordering::SeqCst);
        self.thread.store(0, Ordering::SeqCst);
    }

    pub(crate) fn set_in_guest(&self, v: bool) {
        self.in_guest.store(v, Ordering::SeqCst);
    }
}
