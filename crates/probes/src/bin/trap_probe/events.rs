//! Question 2: a vCPU spinning in guest code (no exits) gets an event callback. The
//! sender kicks the vCPU thread out of `KVM_RUN` (a signal whose handler sets
//! `immediate_exit`, as rxen's `vcpu/kick.rs` does); the vCPU thread pushes Xen's
//! callback frame and points `rip` at the callback; the callback's first instructions
//! bump a counter in shared memory, which the sender watches. Latency = the sender's
//! `CLOCK_MONOTONIC` when it sees the counter move - its clock at the send (one clock,
//! one thread; it includes the cache-line transfer back, well under 1 µs). The guest's
//! TSC is not used: the guest and host TSCs, read on different host CPUs of this
//! nested VM, disagreed by 0.3-200 µs between runs.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kvm_ioctls::VcpuFd;

use crate::bounce::{
    enable_sync, get_regs, iret_hypercall, push_bounce_frame, set_regs, RegAccess,
};
use crate::vm::*;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

thread_local! {
    /// `kvm_run.immediate_exit` of the vCPU on this thread (null elsewhere).
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let _ = IMMEDIATE_EXIT.try_with(|p| {
        let p = p.get();
        if !p.is_null() {
            // SAFETY: set by this thread to its own vCPU's kvm_run mapping, which lives
            // until the thread clears the pointer (before the scope ends).
            unsafe { std::ptr::write_volatile(p, 1) };
        }
    });
}

fn install_kick_handler() -> Res<()> {
    // SAFETY: a zeroed sigaction with our handler and SA_SIGINFO; result checked.
    let r = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_kick as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGRTMIN(), &sa, std::ptr::null_mut())
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

/// Nanoseconds since `base` (one `CLOCK_MONOTONIC` shared by both threads).
fn ns_since(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        // Yield, not spin: with 2 host cores shared with other work, a spinning
        // sender can starve the vCPU thread for a whole scheduler tick (4 ms).
        std::thread::yield_now();
    }
    Ok(())
}

/// Times the vCPU thread records per kick (ns since `base`): KVM_RUN returned,
/// re-entered.
struct Stamps {
    base: Instant,
    exit: AtomicU64,
    reenter: AtomicU64,
    kicks: AtomicU64,
}

/// The vCPU thread: spin command, callbacks on every kick, iret hypercalls.
fn vcpu_thread(
    vcpu: &mut VcpuFd,
    ram: &Ram,
    acc: RegAccess,
    tid: &AtomicU64,
    st: &Stamps,
) -> Res<()> {
    if acc == RegAccess::Sync {
        enable_sync(vcpu, false);
    }
    IMMEDIATE_EXIT.with(|p| p.set(&mut vcpu.get_kvm_run().immediate_exit));
    // SAFETY: pthread_self has no preconditions.
    tid.store(unsafe { libc::pthread_self() }, Ordering::SeqCst);
    ram.write(MAILBOX + mb::CMD, cmd::SPIN);
    let result = loop {
        match run_vcpu(vcpu) {
            Ok(Exit::Interrupted) => {
                st.exit.store(ns_since(st.base), Ordering::SeqCst);
                // Deliver the callback: Xen's frame { rcx, r11, rip, cs, rflags, rsp, ss }.
                let mut regs = get_regs(vcpu, acc)?;
                let frame = [
                    regs.rip,
                    u64::from(USER_CS),
                    regs.rflags,
                    regs.rsp,
                    u64::from(USER_SS),
                ];
                regs.rsp = push_bounce_frame(ram, frame, None, regs.rcx, regs.r11);
                regs.rip = CB_EVENT;
                set_regs(vcpu, acc, &regs)?;
                st.kicks.fetch_add(1, Ordering::SeqCst);
                st.reenter.store(ns_since(st.base), Ordering::SeqCst);
            }
            Ok(Exit::Iret) => {
                iret_hypercall(vcpu, ram, acc, 0)?;
            }
            Ok(Exit::Done) => break Ok(()),
            Ok(other) => break Err(format!("vCPU: unexpected {other:?}").into()),
            Err(e) => break Err(e.into()),
        }
    };
    IMMEDIATE_EXIT.with(|p| p.set(std::ptr::null_mut()));
    result
}

pub fn upcall_latency(reps: usize, acc: RegAccess) -> Res<()> {
    install_kick_handler()?;
    let vm = Vm::new()?;
    vm.gates_to_stubs(USER_CS, 3, 0);
    let Machine { mut vcpu, ram, .. } = vm.0;
    let tid = AtomicU64::new(0);
    let st = Stamps {
        base: Instant::now(),
        exit: AtomicU64::new(0),
        reenter: AtomicU64::new(0),
        kicks: AtomicU64::new(0),
    };
    let to_us = |ns: i64| ns as f64 / 1000.0;
    let (mut total, mut to_exit, mut redirect, mut to_callback) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut resumed_ok = true;
    std::thread::scope(|s| -> Res<()> {
        let h = s.spawn(|| vcpu_thread(&mut vcpu, &ram, acc, &tid, &st).map_err(|e| e.to_string()));
        wait_until("the guest to spin", || {
            ram.read(MAILBOX + mb::SPIN_COUNT) > 1000
        })?;
        for _ in 0..reps {
            let before = ram.read(MAILBOX + mb::CALLBACK_COUNT);
            let c0 = ram.read(MAILBOX + mb::SPIN_COUNT);
            wait_until("the guest to spin again", || {
                ram.read(MAILBOX + mb::SPIN_COUNT) > c0 + 1000
            })?;
            let kicks = st.kicks.load(Ordering::SeqCst);
            let t_send = ns_since(st.base) as i64;
            // SAFETY: the vCPU thread is alive (it only leaves after SPIN_STOP) and the
            // signal has a handler.
            unsafe { libc::pthread_kill(tid.load(Ordering::SeqCst), libc::SIGRTMIN()) };
            wait_until("the callback", || {
                ram.read(MAILBOX + mb::CALLBACK_COUNT) > before
            })?;
            let seen = ns_since(st.base) as i64;
            wait_until("the kick record", || {
                st.kicks.load(Ordering::SeqCst) > kicks
            })?;
            let exit = st.exit.load(Ordering::SeqCst) as i64;
            let reenter = st.reenter.load(Ordering::SeqCst) as i64;
            total.push(to_us(seen - t_send));
            to_exit.push(to_us(exit - t_send));
            redirect.push(to_us(reenter - exit));
            to_callback.push(to_us(seen - reenter));
        }
        // The interrupted loop must run on after the callbacks' iret.
        let c0 = ram.read(MAILBOX + mb::SPIN_COUNT);
        resumed_ok = wait_until("resumed spin", || {
            ram.read(MAILBOX + mb::SPIN_COUNT) > c0 + 1000
        })
        .is_ok();
        ram.write(MAILBOX + mb::SPIN_STOP, 1);
        h.join().map_err(|_| "vCPU thread panicked")??;
        Ok(())
    })?;
    println!(
        "case upcall_latency regs={acc:?}: {} kicks, spin resumed after iret: {resumed_ok}; send->callback_seen_us={:.1} (send->KVM_RUN_returned {:.1}, redirect {:.1}, reenter->callback_seen {:.1}); min_total_us={:.1}",
        reps,
        median(&mut total.clone()),
        median(&mut to_exit),
        median(&mut redirect),
        median(&mut to_callback),
        total.iter().copied().fold(f64::INFINITY, f64::min),
    );
    Ok(())
}
