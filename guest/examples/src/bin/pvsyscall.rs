//! Makes hypercalls by raw `syscall`, as Xen's 64-bit PV kernels do (`rax` = number,
//! arguments in `rdi, rsi, rdx, r10, r8`; `rcx` and `r11` are clobbered), and checks
//! the results. The first command-line word picks what it does:
//!
//! - `check` (default): `xen_version`, `console_io` write, preserved registers and
//!   flags, garbage hypercall numbers and arguments, `n=` (default 20000) calls in a
//!   tight loop, then the costs: prints
//!   `pvsyscall syscall_ns=.. hypercall_ns=.. raw_exit_ns=..` (syscall entry, the
//!   `out` hypercall page, a bare `out` to the null port; same run, interleaved) and
//!   powers off with `sched_op(shutdown)` made by `syscall`.
//! - `write-stub`: writes rxen's syscall stub page (read-only): the fault must end the
//!   domain (triple fault), never return.
//! - `jump-stub`: jumps into the stub (no `syscall`) with a kernel-half "return
//!   address" in `rcx`: the VMM must refuse it and end the domain.
//! - `out-stub-port`: `out` to the stub's port from guest code: the VMM accepts it only
//!   from the stub, so the domain must end.
//!
//! Each attack prints `pvsyscall: ATTACK` first and `pvsyscall: escaped` if it ever
//! comes back (then it powers off, which a test sees as a failure).
#![no_std]
#![no_main]

use core::arch::asm;

use rxen_guest::abi::console::CONSOLEIO_WRITE;
use rxen_guest::abi::errno::ENOSYS;
use rxen_guest::abi::hypercall as nr;
use rxen_guest::abi::layout::{NULL_PORT, SYSCALL_STUB, SYSCALL_STUB_PORT};
use rxen_guest::abi::sched::{SchedShutdown, SCHEDOP_SHUTDOWN, SHUTDOWN_POWEROFF};
use rxen_guest::abi::version::{XENVER_EXTRAVERSION, XENVER_VERSION};
use rxen_guest::{hypercall, println, start, time};
use rxen_workloads::XorShift;

rxen_guest::entry!(main);

/// rxen's `syscall` stub: in its reserved L4 slot 257 for a PV kernel
/// (docs/architecture.md "Xen PV guests"), at `SYSCALL_STUB` on rxen's old layout.
fn stub_va() -> u64 {
    if start::is_pv() {
        0xffff_8080_0000_1000
    } else {
        SYSCALL_STUB
    }
}

/// A hypercall by raw `syscall`.
///
/// # Safety
/// As for any hypercall: pointer arguments must be valid for what it does with them.
unsafe fn syscall5(number: u64, a: [u64; 5]) -> i64 {
    let ret: i64;
    // SAFETY: `syscall` enters rxen's stub, which exits to the VMM; the VMM returns
    // after the instruction with the result in rax, rcx and r11 clobbered (as Xen's
    // syscall entry does), every other register preserved.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") number as i64 => ret,
            in("rdi") a[0],
            in("rsi") a[1],
            in("rdx") a[2],
            in("r10") a[3],
            in("r8") a[4],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

fn xen_version(cmd: u64, buf: u64) -> i64 {
    // SAFETY: `buf` is 0 or a buffer large enough for the sub-command.
    unsafe { syscall5(nr::XEN_VERSION as u64, [cmd, buf, 0, 0, 0]) }
}

fn raw_exit() {
    // SAFETY: the VMM allows and discards writes to the null port.
    unsafe {
        asm!("out {port}, eax", port = const NULL_PORT, in("eax") 0u32, options(nostack, nomem))
    };
}

fn expect(what: &str, ok: bool) -> bool {
    if !ok {
        println!("pvsyscall: FAIL {what}");
    }
    ok
}

/// Argument registers, `r9`, and the flags the guest controls survive a hypercall.
fn preserved() -> bool {
    let (mut di, mut si, mut dx) = (1u64, 2u64, 3u64);
    let (mut r10, mut r8, mut r9) = (4u64, 5u64, 6u64);
    let carry: u8;
    let flags: u64;
    // SAFETY: xen_version(XENVER_VERSION) reads no memory; DF is cleared again before
    // the block ends, as the Rust ABI requires.
    unsafe {
        asm!(
            "stc",
            "std",
            "syscall",
            "setc {c}",
            "pushfq",
            "pop {f}",
            "cld",
            c = out(reg_byte) carry,
            f = out(reg) flags,
            inlateout("rax") nr::XEN_VERSION as u64 => _,
            inout("rdi") di,
            inout("rsi") si,
            inout("rdx") dx,
            inout("r10") r10,
            inout("r8") r8,
            inout("r9") r9,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    // rdi = 1 is XENVER_EXTRAVERSION with buffer 2 (-EFAULT): the result does not
    // matter here, the registers do.
    expect(
        "argument registers preserved",
        [di, si, dx, r10, r8, r9] == [1, 2, 3, 4, 5, 6],
    ) & expect("carry flag preserved", carry == 1)
        & expect("direction flag preserved", flags & 0x400 != 0)
        & expect("no trap flag", flags & 0x100 == 0)
}

fn check() {
    let mut ok = true;
    let v = xen_version(XENVER_VERSION, 0);
    ok &= expect("xen_version", v == (4 << 16 | 19));
    let mut extra = [0u8; 16];
    let rc = xen_version(XENVER_EXTRAVERSION, extra.as_mut_ptr() as u64);
    ok &= expect("extraversion", rc == 0 && extra.starts_with(b".0-rxen\0"));
    let msg = b"pvsyscall: console_io by syscall\n";
    // SAFETY: `msg` is readable for its length.
    let rc = unsafe {
        syscall5(
            nr::CONSOLE_IO as u64,
            [CONSOLEIO_WRITE, msg.len() as u64, msg.as_ptr() as u64, 0, 0],
        )
    };
    ok &= expect("console_io write", rc == msg.len() as i64);
    // A pointer into the stub page is a hole to hypercalls.
    let rc = xen_version(XENVER_EXTRAVERSION, stub_va());
    ok &= expect("stub page is not a hypercall buffer", rc == -14);
    ok &= preserved();

    // Garbage: numbers no hypercall has, random arguments.
    let mut rng = XorShift(0x5eed);
    for _ in 0..2000 {
        let number = rng.next_u64() | (1 << 40);
        let args = [
            rng.next_u64(),
            rng.next_u64(),
            rng.next_u64(),
            rng.next_u64(),
            rng.next_u64(),
        ];
        // SAFETY: no hypercall has this number: nothing is done with the arguments.
        let rc = unsafe { syscall5(number, args) };
        if !expect("garbage number gives -ENOSYS", rc == -(ENOSYS as i64)) {
            ok = false;
            break;
        }
        // xen_version with a random sub-command and pointer: any answer, but one.
        let _ = xen_version(rng.next_u64() % 16, args[1]);
    }

    // A tight loop, then the costs, interleaved like `exitbench`.
    let n: u64 = start::cmdline_value("n")
        .and_then(|v| v.parse().ok())
        .unwrap_or(20000)
        .max(5);
    let (mut best_s, mut best_h, mut best_r) = (u64::MAX, u64::MAX, u64::MAX);
    let mut loop_ok = true;
    for _ in 0..5 {
        let t0 = time::now_ns();
        for _ in 0..n / 5 {
            raw_exit();
        }
        let t1 = time::now_ns();
        for _ in 0..n / 5 {
            if xen_version(XENVER_VERSION, 0) != (4 << 16 | 19) {
                loop_ok = false;
            }
        }
        let t2 = time::now_ns();
        for _ in 0..n / 5 {
            hypercall::xen_version::<()>(0, None);
        }
        let t3 = time::now_ns();
        best_r = best_r.min((t1 - t0) * 5 / n);
        best_s = best_s.min((t2 - t1) * 5 / n);
        best_h = best_h.min((t3 - t2) * 5 / n);
    }
    ok &= expect("xen_version in the loop", loop_ok);
    println!("pvsyscall syscall_ns={best_s} hypercall_ns={best_h} raw_exit_ns={best_r}");
    println!(
        "pvsyscall: {}",
        if ok { "all checks passed" } else { "FAILED" }
    );
    let mut s = SchedShutdown {
        reason: SHUTDOWN_POWEROFF,
    };
    // SAFETY: `s` is a valid `sched_shutdown`.
    unsafe {
        syscall5(
            nr::SCHED_OP as u64,
            [
                SCHEDOP_SHUTDOWN,
                &mut s as *mut SchedShutdown as u64,
                0,
                0,
                0,
            ],
        )
    };
    println!("pvsyscall: shutdown returned");
    hypercall::shutdown(SHUTDOWN_POWEROFF);
}

fn main() {
    let mode = start::cmdline()
        .split_whitespace()
        .next()
        .unwrap_or("check");
    let stub = stub_va() as *mut u8;
    match mode {
        "write-stub" => {
            println!("pvsyscall: write-stub");
            // SAFETY: deliberately not: the page is read-only; the write faults.
            unsafe { core::ptr::write_volatile(stub, 0x90) };
            println!("pvsyscall: escaped");
        }
        "jump-stub" => {
            println!("pvsyscall: jump-stub");
            // SAFETY: deliberately not: the VMM refuses the kernel-half return address
            // and ends the domain.
            unsafe {
                asm!(
                    "call {s}",
                    s = in(reg) stub_va(),
                    in("rcx") 0xffff_8000_0000_0000u64,
                    in("rax") nr::XEN_VERSION as u64,
                    clobber_abi("C"),
                )
            };
            println!("pvsyscall: escaped");
        }
        "out-stub-port" => {
            println!("pvsyscall: out-stub-port");
            // SAFETY: deliberately not: the VMM ends the domain for this write.
            unsafe {
                asm!("out {port}, al", port = const SYSCALL_STUB_PORT, in("al") 0u8, options(nostack, nomem))
            };
            println!("pvsyscall: escaped");
        }
        _ => check(),
    }
    hypercall::shutdown(SHUTDOWN_POWEROFF);
}
