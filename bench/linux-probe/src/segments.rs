//! Segment probes for rxen's tests (`crates/xm/tests/linux_guest.rs`): what a Linux
//! guest's user processes see of the GDT and LDT the kernel gives them, and what a
//! bad `iret` does. Each prints one `RXEN-PROBE <what> ...` line per step *before* the
//! step that may fault, so a test tells how far it got.
//!
//! * `getcpu`: `lsl` of the CPUNODE selector (`GDT_ENTRY_CPUNODE` 15: 0x7b, limit =
//!   `node << 12 | cpu`), as the vDSO's `getcpu` does without RDPID, beside the
//!   `getcpu` system call's answer.
//! * `tls`: `set_thread_area` (a GDT TLS entry based at a low page), `%gs` loaded with
//!   its selector, a read through it.
//! * `ldt`: `modify_ldt` writes LDT entry 0 based at a low page, `%gs` loaded with
//!   selector 7 (LDT, RPL 3), a read through it.
//! * `peek ADDR` (hex): reads the quadword at `ADDR` and prints it; an address the
//!   process may not read ends it with SIGSEGV (status 139).
//! * `badiret`: a signal handler puts CS 0x1234 in its frame; `rt_sigreturn` returns
//!   through the kernel's `iret` to it, which faults: under Xen the failsafe callback,
//!   and Linux kills the process with SIGSEGV (the shell sees status 139).

use std::arch::asm;

extern "C" {
    fn mmap(addr: *mut u8, len: usize, prot: i32, flags: i32, fd: i32, off: i64) -> *mut u8;
    fn sigaction(sig: i32, act: *const SigAction, old: *mut SigAction) -> i32;
    fn raise(sig: i32) -> i32;
}

const SYS_MODIFY_LDT: u64 = 154;
/// The i386 `__NR_set_thread_area`.
const SYS32_SET_THREAD_AREA: i32 = 243;
const SYS_GETCPU: u64 = 309;
const PROT_RW: i32 = 3;
/// `MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT`: segment bases are 32 bits.
const MAP_LOW: i32 = 0x02 | 0x20 | 0x40;
const SIGUSR1: i32 = 10;
const SA_SIGINFO: i32 = 4;
/// `ucontext_t.uc_mcontext.gregs[REG_CSGSFS]`: 40 bytes of `uc_flags`, `uc_link`,
/// `uc_stack`, then `gregs[18]`.
const CSGSFS_OFFSET: usize = 40 + 18 * 8;
/// The value each test page starts with.
const MAGIC: u64 = 0x5258_454e_5345_4721;

/// Linux's `struct user_desc`.
#[repr(C)]
struct UserDesc {
    entry_number: u32,
    base_addr: u32,
    limit: u32,
    /// `seg_32bit:1, contents:2, read_exec_only:1, limit_in_pages:1,
    /// seg_not_present:1, useable:1`.
    flags: u32,
}

/// glibc's `struct sigaction` on x86-64.
#[repr(C)]
struct SigAction {
    handler: usize,
    mask: [u64; 16],
    flags: i32,
    restorer: usize,
}

fn syscall3(nr: u64, a: u64, b: u64, c: u64) -> i64 {
    let ret: i64;
    // SAFETY: the callers pass system calls whose pointer arguments point at live
    // memory of the right size; `syscall` clobbers rcx and r11 only.
    unsafe {
        asm!("syscall", inlateout("rax") nr as i64 => ret, in("rdi") a, in("rsi") b,
             in("rdx") c, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

/// A low page holding [`MAGIC`].
fn low_page() -> Option<u64> {
    // SAFETY: an anonymous private mapping; nothing else refers to it.
    let p = unsafe { mmap(std::ptr::null_mut(), 4096, PROT_RW, MAP_LOW, -1, 0) };
    if p.is_null() || p as isize == -1 {
        return None;
    }
    // SAFETY: `p` is a fresh, writable, page-aligned mapping of 4096 bytes.
    unsafe { (p as *mut u64).write(MAGIC) };
    Some(p as u64)
}

/// Loads `%gs` with `sel` and reads the quadword at `%gs:0`; `%gs` is 0 afterwards.
/// A selector the CPU refuses faults (SIGSEGV).
fn read_through_gs(sel: u16) -> u64 {
    let v: u64;
    // SAFETY: only `%gs` changes, and glibc does not use it on x86-64; a bad selector
    // raises SIGSEGV, which ends the process.
    unsafe {
        asm!("mov gs, {sel:x}", "mov {v}, qword ptr gs:[0]", "mov gs, {zero:x}",
             sel = in(reg) sel, zero = in(reg) 0u16, v = out(reg) v, options(nostack));
    }
    v
}

fn getcpu() {
    let (mut limit, mut ok): (u32, u8);
    // SAFETY: `lsl` only reads a descriptor; a selector it cannot use clears ZF.
    unsafe {
        asm!("lsl {l:e}, {s:e}", "setz {ok}", s = in(reg) 0x7bu32, l = out(reg) limit,
             ok = out(reg_byte) ok, options(nostack, nomem));
    }
    if ok == 0 {
        limit = u32::MAX;
    }
    let (mut cpu, mut node) = (0u32, 0u32);
    let r = syscall3(
        SYS_GETCPU,
        &mut cpu as *mut u32 as u64,
        &mut node as *mut u32 as u64,
        0,
    );
    println!(
        "RXEN-PROBE getcpu lsl_ok={ok} lsl_cpu={} lsl_node={} syscall={r} cpu={cpu} node={node}",
        limit & 0xfff,
        limit >> 12
    );
}

fn tls() {
    let Some(base) = low_page() else {
        println!("RXEN-PROBE tls no-low-page");
        return;
    };
    // The 32-bit `set_thread_area` (`int $0x80`: 64-bit processes have no system call
    // for it), its `user_desc` in the low page (32-bit pointer).
    let desc = (base + 64) as *mut UserDesc;
    // SAFETY: `desc` lies inside the fresh low page, suitably aligned.
    unsafe {
        desc.write(UserDesc {
            entry_number: u32::MAX,
            base_addr: base as u32,
            limit: 0xfff,
            flags: 1 | (1 << 6),
        })
    };
    let r: i32;
    // SAFETY: `int $0x80` with eax 243 (`set_thread_area`) reads and writes `*desc` only.
    unsafe {
        asm!("xchg {d:r}, rbx", "int 0x80", "xchg {d:r}, rbx", d = inout(reg) desc as u64 => _,
             inlateout("eax") SYS32_SET_THREAD_AREA => r, options(nostack));
    }
    // SAFETY: as above; the kernel filled in the entry number.
    let entry = unsafe { (*desc).entry_number };
    println!("RXEN-PROBE tls set_thread_area={r} entry={entry}");
    if r != 0 {
        return;
    }
    let d = UserDesc {
        entry_number: entry,
        base_addr: 0,
        limit: 0,
        flags: 0,
    };
    let v = read_through_gs((d.entry_number as u16) << 3 | 3);
    println!(
        "RXEN-PROBE tls read={}",
        if v == MAGIC { "ok" } else { "wrong" }
    );
}

fn ldt() {
    let Some(base) = low_page() else {
        println!("RXEN-PROBE ldt no-low-page");
        return;
    };
    let d = UserDesc {
        entry_number: 0,
        base_addr: base as u32,
        limit: 0xfff,
        flags: 1 | (1 << 6),
    };
    let r = syscall3(
        SYS_MODIFY_LDT,
        1,
        &d as *const UserDesc as u64,
        std::mem::size_of::<UserDesc>() as u64,
    );
    println!("RXEN-PROBE ldt modify_ldt={r}");
    if r != 0 {
        return;
    }
    let v = read_through_gs(4 | 3);
    println!(
        "RXEN-PROBE ldt read={}",
        if v == MAGIC { "ok" } else { "wrong" }
    );
}

extern "C" fn bad_cs_handler(_sig: i32, _info: *mut u8, uc: *mut u8) {
    // SAFETY: `uc` is the kernel's `ucontext_t` for this signal; CSGSFS's low 16 bits
    // are the CS `rt_sigreturn` restores.
    unsafe { (uc.add(CSGSFS_OFFSET) as *mut u16).write(0x1234) };
}

fn badiret() {
    let act = SigAction {
        handler: bad_cs_handler as *const () as usize,
        mask: [0; 16],
        flags: SA_SIGINFO,
        restorer: 0,
    };
    // SAFETY: `act` is a valid glibc `struct sigaction`; glibc adds its restorer.
    let r = unsafe { sigaction(SIGUSR1, &act, std::ptr::null_mut()) };
    println!("RXEN-PROBE badiret sigaction={r}");
    // SAFETY: raising a signal whose handler is installed above.
    unsafe { raise(SIGUSR1) };
    println!("RXEN-PROBE badiret survived");
}

fn peek(addr: &str) {
    let Ok(a) = u64::from_str_radix(addr.trim_start_matches("0x"), 16) else {
        println!("RXEN-PROBE peek bad-address");
        return;
    };
    println!("RXEN-PROBE peek {a:#x}");
    // SAFETY: a read of whatever the test names; an address the process may not read
    // raises SIGSEGV, which ends it (what the test looks for).
    let v = unsafe { std::ptr::read_volatile(a as *const u64) };
    println!("RXEN-PROBE peek read {v:#x}");
}

/// Runs segment probe `what` (with `arg`); `false` if there is none of that name.
pub fn run(what: &str, arg: Option<&str>) -> bool {
    match (what, arg) {
        ("peek", Some(a)) => peek(a),
        (_, Some(_)) => return false,
        _ => {}
    }
    match what {
        "peek" => {}
        "getcpu" => getcpu(),
        "tls" => tls(),
        "ldt" => ldt(),
        "badiret" => badiret(),
        _ => return false,
    }
    true
}
