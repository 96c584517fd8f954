//! Faults on purpose and recovers through Xen's trap table (`rxen_guest::traps`). The
//! first command-line word picks what it does:
//!
//! - `recover` (default): installs #PF, #UD and `int3` handlers, then reads an unmapped
//!   address and writes a read-only page (the kernel's boot L4: page tables are
//!   read-only to a PV kernel; the hypercall page on rxen's old layout) (the #PF handler records `cr2` and
//!   the error code and skips the 3-byte instruction), runs `ud2` (skipped) and `int3`,
//!   and checks that the handlers ran, the values they saw and that `rax`, `rcx` and
//!   `r11` survived each trap. Prints `traps: pf cr2=.. err=..` per fault and
//!   `traps: all checks passed`; then, with `n=` (default 2000), times #PF bounces
//!   against bare port exits: `traps trap_bounce_ns=.. raw_exit_ns=..`.
//! - `upcall`: registers an event callback and, `n=` times (default 20), arms the
//!   timer 200 µs ahead and spins (no hypercall) until the callback has run: the VMM
//!   must interrupt the running vCPU. Prints
//!   `traps upcall_latency_ns=.. upcall_min_ns=.. upcalls=..`, the time from the timer's
//!   deadline to the callback (median and minimum) (includes the host timer thread's lateness), and
//!   `traps: upcalls delivered`.
//! - `nohandler`: clears the trap table and reads an unmapped address: the domain must
//!   crash (`traps: escaped` if it ever comes back).
#![no_std]
#![no_main]

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

use rxen_guest::abi::layout::{HYPERCALL_PAGE, NULL_PORT};
use rxen_guest::traps::{self, TrapFrame, Vector};
use rxen_guest::{println, start, time};

rxen_guest::entry!(main);

/// An address no mapping reaches (far above RAM; a PV kernel maps only its RAM).
const UNMAPPED: u64 = 0x1000_0012_3458;

/// A read-only page of this guest: its L4 (PV), or rxen's hypercall page.
fn read_only_word() -> u64 {
    if start::is_pv() {
        start::start_info().pt_base + 8
    } else {
        HYPERCALL_PAGE + 8
    }
}

static PF_COUNT: AtomicU64 = AtomicU64::new(0);
static PF_CR2: AtomicU64 = AtomicU64::new(0);
static PF_ERR: AtomicU64 = AtomicU64::new(0);
static UD_COUNT: AtomicU64 = AtomicU64::new(0);
static BP_COUNT: AtomicU64 = AtomicU64::new(0);

/// Records the fault and skips the 3-byte `mov` that caused it.
fn on_page_fault(_v: u8, f: &mut TrapFrame) {
    PF_COUNT.fetch_add(1, SeqCst);
    PF_CR2.store(traps::page_fault_address(), SeqCst);
    PF_ERR.store(f.error_code, SeqCst);
    f.rip += 3;
}

fn on_invalid_opcode(_v: u8, f: &mut TrapFrame) {
    UD_COUNT.fetch_add(1, SeqCst);
    f.rip += 2;
}

fn on_breakpoint(_v: u8, _f: &mut TrapFrame) {
    BP_COUNT.fetch_add(1, SeqCst);
}

/// `mov rax, [addr]` (3 bytes) with sentinels in rax, rcx and r11; returns them after.
fn faulting_read(addr: u64) -> [u64; 3] {
    let (rax, rcx, r11): (u64, u64, u64);
    // SAFETY: the read faults; the #PF handler skips it. Registers are declared.
    unsafe {
        asm!(
            "mov rax, qword ptr [rdi]",
            in("rdi") addr,
            inlateout("rax") 0x1111u64 => rax,
            inlateout("rcx") 0x2222u64 => rcx,
            inlateout("r11") 0x3333u64 => r11,
            options(nostack),
        );
    }
    [rax, rcx, r11]
}

/// `mov [addr], rax` (3 bytes) into a read-only page.
fn faulting_write(addr: u64) {
    // SAFETY: the write faults (read-only page); the #PF handler skips it.
    unsafe { asm!("mov qword ptr [rdi], rax", in("rdi") addr, in("rax") 0u64, options(nostack)) }
}

fn raw_exit() {
    // SAFETY: the null port exits to the VMM and back; no state changes.
    unsafe { asm!("out dx, al", in("dx") NULL_PORT, in("al") 0u8, options(nostack, nomem)) }
}

fn expect(what: &str, ok: bool) -> bool {
    if !ok {
        println!("traps: FAILED {what}");
    }
    ok
}

fn recover() {
    let mut ok = true;
    for (v, h) in [
        (Vector::PageFault, on_page_fault as traps::Handler),
        (Vector::InvalidOpcode, on_invalid_opcode),
        (Vector::Breakpoint, on_breakpoint),
    ] {
        if let Err(e) = traps::set_handler(v, h) {
            println!("traps: set_trap_table failed: {e}");
            ok = false;
        }
    }
    let regs = faulting_read(UNMAPPED);
    println!(
        "traps: pf cr2={:#x} err={:#x}",
        PF_CR2.load(SeqCst),
        PF_ERR.load(SeqCst)
    );
    ok &= expect("read fault recorded", PF_COUNT.load(SeqCst) == 1);
    ok &= expect("cr2 of the read", PF_CR2.load(SeqCst) == UNMAPPED);
    ok &= expect(
        "error code: user read, not present",
        PF_ERR.load(SeqCst) == 4,
    );
    ok &= expect("rax/rcx/r11 kept", regs == [0x1111, 0x2222, 0x3333]);
    faulting_write(read_only_word());
    println!(
        "traps: pf cr2={:#x} err={:#x}",
        PF_CR2.load(SeqCst),
        PF_ERR.load(SeqCst)
    );
    ok &= expect("write fault recorded", PF_COUNT.load(SeqCst) == 2);
    ok &= expect("cr2 of the write", PF_CR2.load(SeqCst) == read_only_word());
    ok &= expect(
        "error code: user write, protection",
        PF_ERR.load(SeqCst) == 7,
    );
    // SAFETY: the #UD handler skips the 2-byte ud2.
    unsafe { asm!("ud2", options(nostack)) };
    ok &= expect("ud2 handled", UD_COUNT.load(SeqCst) == 1);
    // SAFETY: the #BP handler returns after the int3.
    unsafe { asm!("int3", options(nostack)) };
    ok &= expect("int3 handled", BP_COUNT.load(SeqCst) == 1);
    println!(
        "traps: ud={} int3={}",
        UD_COUNT.load(SeqCst),
        BP_COUNT.load(SeqCst)
    );

    let n: u64 = start::cmdline_value("n")
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
        .max(5);
    let (mut best_t, mut best_r) = (u64::MAX, u64::MAX);
    for _ in 0..5 {
        let t0 = time::now_ns();
        for _ in 0..n / 5 {
            raw_exit();
        }
        let t1 = time::now_ns();
        for _ in 0..n / 5 {
            faulting_read(UNMAPPED);
        }
        let t2 = time::now_ns();
        best_r = best_r.min((t1 - t0) * 5 / n);
        best_t = best_t.min((t2 - t1) * 5 / n);
    }
    ok &= expect(
        "every timed fault handled",
        PF_COUNT.load(SeqCst) == 2 + n / 5 * 5,
    );
    println!("traps trap_bounce_ns={best_t} raw_exit_ns={best_r}");
    println!("traps: {}", if ok { "all checks passed" } else { "FAILED" });
}

static UPCALLS: AtomicU64 = AtomicU64::new(0);
static UPCALL_AT: AtomicU64 = AtomicU64::new(0);

fn on_event() {
    UPCALL_AT.store(time::now_ns(), SeqCst);
    UPCALLS.fetch_add(1, SeqCst);
    // Clears evtchn_upcall_pending and the pending bits (the spin loop holds no lock).
    rxen_guest::events::dispatch();
}

fn upcalls() {
    if let Err(e) = traps::set_event_callback(on_event) {
        println!("traps: callback_op failed: {e}");
        return;
    }
    let n: usize = start::cmdline_value("n")
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
        .clamp(1, 256);
    let mut lat = [0u64; 256];
    for l in lat.iter_mut().take(n) {
        let before = UPCALLS.load(SeqCst);
        let deadline = time::now_ns() + 200_000;
        time::set_timer(deadline);
        let give_up = deadline + 2_000_000_000;
        while UPCALLS.load(SeqCst) == before {
            if time::now_ns() > give_up {
                println!("traps: FAILED no upcall within 2 s");
                return;
            }
            core::hint::spin_loop();
        }
        *l = UPCALL_AT.load(SeqCst).saturating_sub(deadline);
    }
    let lat = &mut lat[..n];
    lat.sort_unstable();
    println!(
        "traps upcall_latency_ns={} upcall_min_ns={} upcalls={}",
        lat[n / 2],
        lat[0],
        UPCALLS.load(SeqCst)
    );
    println!("traps: upcalls delivered");
}

fn main() {
    let mode = start::cmdline()
        .split_whitespace()
        .next()
        .unwrap_or("recover");
    match mode {
        "nohandler" => {
            if let Err(e) = traps::clear() {
                println!("traps: clearing the trap table failed: {e}");
            }
            println!("traps: nohandler");
            faulting_read(UNMAPPED);
            println!("traps: escaped");
        }
        "upcall" => upcalls(),
        _ => recover(),
    }
}
