//! Knocking a vCPU thread out of `KVM_RUN` from any thread, and reading the thread's
//! CPU time, without ever touching memory the vCPU thread may free.
//!
//! # Design
//!
//! A kicker (the control socket, the timer thread, another vCPU, `Domain::join`'s
//! caller) only touches [`VcpuThreadHandle`], which lives inside the `Arc<VcpuControl>`
//! it already holds, so everything it touches lives as long as the kicker itself (the
//! ownership Firecracker's `VcpuHandle` gives its kicks). It never touches the vCPU's
//! `kvm_run` mapping, which belongs to the vCPU thread and is unmapped when that
//! thread drops its `VcpuFd`.
//!
//! A kick is:
//! 1. the kicker sets `kick_pending` (after changing the scheduling record under the
//!    vCPU's lock: pause, down, stop);
//! 2. if the thread is in (or about to enter) `KVM_RUN` (`in_guest`), the kicker sends
//!    it the kick signal with `pthread_kill` **while holding the `live` lock**. The
//!    vCPU thread clears `live` under that same lock before it exits, so the
//!    `pthread_t` is always that of a running, not yet joined thread;
//! 3. the signal handler runs *on the vCPU thread* and sets `immediate_exit` in that
//!    thread's own `kvm_run`, found through a thread-local pointer the thread set to
//!    its own mapping (and clears before the mapping goes away). A signal that lands
//!    between the last check and the `KVM_RUN` ioctl thus still makes `KVM_RUN`
//!    return `EINTR` at once; one that lands inside `KVM_RUN` interrupts it.
//!
//! The vCPU thread sets `in_guest` and then consumes `kick_pending` before each
//! `KVM_RUN` (both sequentially consistent): either it sees the pending kick and goes
//! back to its scheduling gate, or the kicker sees `in_guest` and signals it. No kick
//! is lost and no kicker dereferences a pointer into another thread's mapping.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Signal used to knock a vCPU thread out of `KVM_RUN`.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

thread_local! {
    /// `kvm_run.immediate_exit` of the vCPU that runs on this thread (null elsewhere).
    /// Const-initialised with no destructor: reading it is a plain TLS load, which is
    /// async-signal-safe.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn on_kick_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let _ = IMMEDIATE_EXIT.try_with(|p| {
        let p = p.get();
        if !p.is_null() {
            // SAFETY: the pointer was set by this very thread to the `immediate_exit`
            // byte of its own kvm_run mapping, and is cleared by this thread (in
            // `AttachedThread::drop`) before the mapping is dropped; a signal handler
            // runs on the thread it interrupts, so the mapping is alive here. A byte
            // store is atomic on x86; KVM reads the byte when KVM_RUN starts.
            unsafe { std::ptr::write_volatile(p, 1) };
        }
    });
}

/// Installs the handler of the kick signal; `KVM_RUN` returns `EINTR` on it.
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick_signal)
}

/// Identity of a running vCPU thread.
#[derive(Clone, Copy)]
struct LiveThread {
    pthread: libc::pthread_t,
    tid: libc::pid_t,
}

/// What other threads may use of a vCPU thread: kick it, read its CPU time and the
/// host CPU it last ran on. See the module documentation for the protocol.
#[derive(Default)]
pub struct VcpuThreadHandle {
    /// The thread while it runs; cleared by the thread itself before it exits.
    live: Mutex<Option<LiveThread>>,
    /// Set while the thread is inside (or about to enter) `KVM_RUN`.
    in_guest: AtomicBool,
    /// A kick not yet seen by the thread.
    kick_pending: AtomicBool,
    /// CPU time of the thread when it exited, ns.
    final_cpu_ns: AtomicU64,
}

/// Registration of the calling thread as the vCPU thread; undone on drop.
pub struct AttachedThread<'a> {
    handle: &'a VcpuThreadHandle,
}

impl Drop for AttachedThread<'_> {
    fn drop(&mut self) {
        self.handle
            .final_cpu_ns
            .store(own_cpu_ns(), Ordering::SeqCst);
        // Once `live` is None no kicker signals this thread any more; a signal sent
        // before still finds the pointer below valid.
        *self.handle.lock_live() = None;
        IMMEDIATE_EXIT.with(|p| p.set(std::ptr::null_mut()));
    }
}

impl VcpuThreadHandle {
    fn lock_live(&self) -> MutexGuard<'_, Option<LiveThread>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers the calling thread as this vCPU's thread, with `immediate_exit` the
    /// byte of its `kvm_run` mapping.
    ///
    /// # Safety
    /// `immediate_exit` must stay valid for writes until the returned guard is
    /// dropped, and the guard must be dropped on the calling thread.
    pub unsafe fn attach(&self, immediate_exit: *mut u8) -> AttachedThread<'_> {
        IMMEDIATE_EXIT.with(|p| p.set(immediate_exit));
        // SAFETY: pthread_self and gettid have no preconditions.
        let me = unsafe {
            LiveThread {
                pthread: libc::pthread_self(),
                tid: libc::gettid(),
            }
        };
        *self.lock_live() = Some(me);
        AttachedThread { handle: self }
    }

    /// Called by the vCPU thread just before `KVM_RUN`; false if a kick is pending
    /// (the thread then re-reads its scheduling record instead of entering).
    pub fn enter_guest(&self) -> bool {
        self.in_guest.store(true, Ordering::SeqCst);
        if self.kick_pending.swap(false, Ordering::SeqCst) {
            self.in_guest.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Called by the vCPU thread when `KVM_RUN` returned.
    pub fn leave_guest(&self) {
        self.in_guest.store(false, Ordering::SeqCst);
    }

    /// Forces the vCPU thread out of `KVM_RUN` (or keeps it from entering).
    pub fn kick(&self) {
        self.kick_pending.store(true, Ordering::SeqCst);
        if !self.in_guest.load(Ordering::SeqCst) {
            return;
        }
        let live = self.lock_live();
        if let Some(t) = *live {
            // SAFETY: `t.pthread` is a thread that has not exited: it clears `live`
            // under this lock (which we hold) before exiting, so it cannot have been
            // joined and its pthread_t is valid. The kick signal has a handler.
            unsafe { libc::pthread_kill(t.pthread, kick_signal()) };
        }
    }

    /// CPU time the thread has consumed (guest code included, also while it is inside
    /// `KVM_RUN`), ns.
    pub fn cpu_ns(&self) -> u64 {
        let live = self.lock_live();
        match *live {
            Some(t) => thread_cpu_ns(t.pthread).unwrap_or(0),
            None => self.final_cpu_ns.load(Ordering::SeqCst),
        }
    }

    /// Host CPU the thread last ran on (field 39 of `/proc/self/task/<tid>/stat`).
    pub fn host_cpu(&self) -> Option<u32> {
        let live = self.lock_live();
        let t = (*live)?;
        let stat = std::fs::read_to_string(format!("/proc/self/task/{}/stat", t.tid)).ok()?;
        drop(live);
        last_cpu_from_stat(&stat)
    }
}

fn timespec_ns(ts: &libc::timespec) -> u64 {
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// CPU time of the calling thread, ns.
fn own_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_THREAD_CPUTIME_ID always exists.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0;
    }
    timespec_ns(&ts)
}

/// CPU time of a running thread of this process, ns.
fn thread_cpu_ns(thread: libc::pthread_t) -> Option<u64> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: the caller guarantees `thread` has not exited; `clock` is a valid
    // out-pointer.
    if unsafe { libc::pthread_getcpuclockid(thread, &mut clock) } != 0 {
        return None;
    }
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; `clock` came from pthread_getcpuclockid.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    Some(timespec_ns(&ts))
}

/// Field 39 (`processor`) of a `/proc/<pid>/task/<tid>/stat` line. The command name
/// (field 2) is in parentheses and may itself contain spaces and parentheses, so
/// fields are counted after the last `)`.
pub fn last_cpu_from_stat(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts with field 3 (state).
    rest.split_whitespace().nth(39 - 3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn parses_the_processor_field() {
        let mut fields: Vec<String> = (3..=52).map(|i| i.to_string()).collect();
        fields[0] = "R".into();
        let line = format!("1234 (a (weird) name) {}", fields.join(" "));
        assert_eq!(last_cpu_from_stat(&line), Some(39));
        assert_eq!(last_cpu_from_stat("1 (x) R 1 2"), None);
        assert_eq!(last_cpu_from_stat("garbage"), None);
        let own = std::fs::read_to_string("/proc/self/stat").expect("own stat");
        assert!(last_cpu_from_stat(&own).is_some(), "{own}");
    }

    #[test]
    fn cpu_time_of_a_busy_thread_is_read_from_outside() {
        let h = Arc::new(VcpuThreadHandle::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (h2, stop2) = (h.clone(), stop.clone());
        let t = std::thread::spawn(move || {
            let mut byte = 0u8;
            // SAFETY: `byte` outlives the guard, which is dropped on this thread.
            let _attached = unsafe { h2.attach(&mut byte) };
            while !stop2.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while h.cpu_ns() < 50_000_000 {
            assert!(
                std::time::Instant::now() < deadline,
                "thread CPU time never grew"
            );
            std::thread::yield_now();
        }
        assert!(h.host_cpu().is_some());
        stop.store(true, Ordering::Relaxed);
        t.join().expect("join");
        assert!(h.cpu_ns() >= 50_000_000, "final CPU time kept after exit");
        assert_eq!(h.host_cpu(), None);
        // Kicking a thread that is gone is a no-op.
        h.in_guest.store(true, Ordering::SeqCst);
        h.kick();
    }

    #[test]
    fn a_kick_before_entry_keeps_the_thread_out_of_the_guest() {
        let h = VcpuThreadHandle::default();
        h.kick();
        assert!(!h.enter_guest(), "pending kick seen");
        assert!(h.enter_guest(), "kick consumed");
        h.leave_guest();
    }
}
