//! Hypercall wrappers. Every call goes through the hypercall page (entry `nr` at
//! `page + 32 * nr`) with Xen's x86-64 register convention: arguments in
//! `rdi, rsi, rdx, r10, r8`, result in `rax` (negative errno on failure). The page is
//! rxen's fixed `HYPERCALL_PAGE`, or for a Xen PV kernel ([`crate::pv`]) the page
//! inside its image that its `HYPERCALL_PAGE` note names.

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

use rxen_abi::hypercall as nr;
use rxen_abi::layout::{HYPERCALL_ENTRY_SIZE, HYPERCALL_PAGE};
use rxen_abi::sched::*;

/// Where the hypercall page is (set once at boot, before any hypercall).
static PAGE: AtomicU64 = AtomicU64::new(HYPERCALL_PAGE);

/// Makes hypercalls go through the page at `page` (a Xen PV kernel's own page).
pub(crate) fn use_page(page: u64) {
    PAGE.store(page, Ordering::Relaxed);
}

/// Makes hypercall `number` with five arguments.
///
/// # Safety
/// Pointer arguments must be valid for what the hypercall does with them; hypercalls
/// can change guest state (shutdown, vCPU state, memory written through pointers).
#[inline(always)]
pub unsafe fn hypercall5(number: u32, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64 {
    let entry = PAGE.load(Ordering::Relaxed) + number as u64 * HYPERCALL_ENTRY_SIZE;
    let ret: i64;
    // SAFETY: the hypercall page is mapped executable by the domain builder; rxen's
    // stub clobbers only rax. Xen's own stubs may clobber rcx and r11 and the argument
    // registers, so they are declared clobbered for compatibility.
    unsafe {
        asm!(
            "call {entry}",
            entry = in(reg) entry,
            lateout("rax") ret,
            inlateout("rdi") a1 => _,
            inlateout("rsi") a2 => _,
            inlateout("rdx") a3 => _,
            inlateout("r10") a4 => _,
            inlateout("r8") a5 => _,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    ret
}

/// Hypercall with up to three arguments.
///
/// # Safety
/// As for [`hypercall5`].
#[inline(always)]
pub unsafe fn hypercall3(number: u32, a1: u64, a2: u64, a3: u64) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { hypercall5(number, a1, a2, a3, 0, 0) }
}

/// A negative Xen errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl core::fmt::Display for Errno {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} ({})", rxen_abi::errno::name(self.0), self.0)
    }
}

/// Converts a hypercall return value.
pub fn check(rc: i64) -> Result<u64, Errno> {
    if rc < 0 {
        Err(Errno((-rc) as i32))
    } else {
        Ok(rc as u64)
    }
}

/// `sched_op(cmd, arg)`.
pub fn sched_op<T>(cmd: u64, arg: &mut T) -> i64 {
    // SAFETY: `arg` is a valid object for the sub-operation's structure.
    unsafe { hypercall3(nr::SCHED_OP, cmd, arg as *mut T as u64, 0) }
}

/// Shuts the domain down with a `SHUTDOWN_*` reason.
pub fn shutdown(reason: u32) -> ! {
    let mut s = SchedShutdown { reason };
    sched_op(SCHEDOP_SHUTDOWN, &mut s);
    // The VMM stops this vCPU; should it ever return, spin without burning hypercalls.
    loop {
        core::hint::spin_loop();
    }
}

/// `SCHEDOP_block`: sleep until an event is pending for this vCPU.
pub fn block() {
    // SAFETY: SCHEDOP_block takes no pointer.
    unsafe { hypercall3(nr::SCHED_OP, SCHEDOP_BLOCK, 0, 0) };
}

/// `SCHEDOP_yield`.
pub fn yield_now() {
    // SAFETY: SCHEDOP_yield takes no pointer.
    unsafe { hypercall3(nr::SCHED_OP, SCHEDOP_YIELD, 0, 0) };
}

/// `xen_version(cmd, arg)`.
pub fn xen_version<T>(cmd: u64, arg: Option<&mut T>) -> i64 {
    let p = arg.map(|a| a as *mut T as u64).unwrap_or(0);
    // SAFETY: `p` is null or a valid object of the sub-operation's type.
    unsafe { hypercall3(nr::XEN_VERSION, cmd, p, 0) }
}

/// `console_io(CONSOLEIO_write)`.
pub fn console_write(bytes: &[u8]) -> i64 {
    // SAFETY: the slice is valid for its length.
    unsafe {
        hypercall3(
            nr::CONSOLE_IO,
            rxen_abi::console::CONSOLEIO_WRITE,
            bytes.len() as u64,
            bytes.as_ptr() as u64,
        )
    }
}

/// `console_io(CONSOLEIO_read)`: reads available console input into `buf`.
pub fn console_read(buf: &mut [u8]) -> Result<usize, Errno> {
    // SAFETY: the slice is valid for writes of its length.
    let rc = unsafe {
        hypercall3(
            nr::CONSOLE_IO,
            rxen_abi::console::CONSOLEIO_READ,
            buf.len() as u64,
            buf.as_mut_ptr() as u64,
        )
    };
    check(rc).map(|n| n as usize)
}

/// `event_channel_op(cmd, arg)`.
pub fn event_channel_op<T>(cmd: u64, arg: &mut T) -> Result<(), Errno> {
    // SAFETY: `arg` is a valid object of the sub-operation's structure.
    check(unsafe { hypercall3(nr::EVENT_CHANNEL_OP, cmd, arg as *mut T as u64, 0) }).map(|_| ())
}

/// `vcpu_op(cmd, vcpu, arg)`.
pub fn vcpu_op<T>(cmd: u64, vcpu: u32, arg: Option<&mut T>) -> Result<u64, Errno> {
    let p = arg.map(|a| a as *mut T as u64).unwrap_or(0);
    // SAFETY: `p` is null or a valid object of the sub-operation's structure.
    check(unsafe { hypercall3(nr::VCPU_OP, cmd, vcpu as u64, p) })
}

/// `memory_op(cmd, arg)`.
pub fn memory_op<T>(cmd: u64, arg: &mut T) -> Result<u64, Errno> {
    // SAFETY: `arg` is a valid object of the sub-operation's structure.
    check(unsafe { hypercall3(nr::MEMORY_OP, cmd, arg as *mut T as u64, 0) })
}

/// `set_segment_base(which, base)`.
pub fn set_segment_base(which: u64, base: u64) -> Result<(), Errno> {
    // SAFETY: takes no pointer the hypervisor dereferences.
    check(unsafe { hypercall3(nr::SET_SEGMENT_BASE, which, base, 0) }).map(|_| ())
}

/// `mmu_update(reqs, count, NULL, DOMID_SELF)`: Ok(()) when every request was done.
pub fn mmu_update(reqs: &[rxen_abi::mmu::MmuUpdate]) -> Result<(), Errno> {
    // SAFETY: the slice is valid for its length; the hypervisor only reads it.
    check(unsafe {
        hypercall5(
            nr::MMU_UPDATE,
            reqs.as_ptr() as u64,
            reqs.len() as u64,
            0,
            u64::from(rxen_abi::DOMID_SELF),
            0,
        )
    })
    .map(|_| ())
}

/// `mmuext_op(ops, count, NULL, DOMID_SELF)`: Ok(()) when every operation was done.
pub fn mmuext_op(ops: &[rxen_abi::mmu::MmuextOp]) -> Result<(), Errno> {
    // SAFETY: the slice is valid for its length; the hypervisor only reads it.
    check(unsafe {
        hypercall5(
            nr::MMUEXT_OP,
            ops.as_ptr() as u64,
            ops.len() as u64,
            0,
            u64::from(rxen_abi::DOMID_SELF),
            0,
        )
    })
    .map(|_| ())
}

/// `update_va_mapping(va, pte, flags)`: sets the L1 entry that maps `va`.
pub fn update_va_mapping(va: u64, pte: u64, flags: u64) -> Result<(), Errno> {
    // SAFETY: takes no pointer; the hypervisor validates the new entry.
    check(unsafe { hypercall3(nr::UPDATE_VA_MAPPING, va, pte, flags) }).map(|_| ())
}
