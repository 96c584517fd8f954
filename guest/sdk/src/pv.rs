//! Xen PV kernels: an example that invokes [`xen_pv_kernel!`](crate::xen_pv_kernel)
//! carries Xen's ELF notes, so rxen (and Xen) boot it on Xen's x86-64 PV layout
//! (docs/guest-abi.md "Xen PV start of day") instead of rxen's own.
//!
//! What the macro puts in the binary: a `.note.Xen` section (`SHT_NOTE`, so it lands
//! in a `PT_NOTE` segment) with `GUEST_OS` "rxen-sdk", `XEN_VERSION` "xen-3.0",
//! `LOADER` "generic", `VIRT_BASE` 0, `ENTRY` = its own entry point and
//! `HYPERCALL_PAGE` = a 4 KiB-aligned page of the image that the domain builder fills
//! with Xen's 64-bit hypercall stubs (entry `nr` at `page + 32 * nr`, `syscall`
//! inside); a 64 KiB boot stack in `.bss`. The entry switches to that stack and calls
//! [`start`], which makes every SDK hypercall go through that page.
//!
//! The PV start state differs from rxen's layout: `rsi` = `start_info` (virtual =
//! machine address: `VIRT_BASE` 0, rxen builds with mfn == pfn), `rsp` = the end of
//! Xen's one-page boot stack, events masked, the image and boot tables identity-mapped,
//! the page tables read-only. So [`start`] does less than rxen's boot: no console
//! ring (output goes through `console_io`), no per-vCPU record, no timer VIRQ, no
//! secondary vCPUs; the heap is the first [`HEAP_BYTES`] of the padding Xen
//! guarantees after the boot stack (at least 512 KiB, mapped read-write), and
//! [`free_frames`] hands out the rest of that padding. Events, timers and SMP are not
//! available to PV kernels yet (exceptions are not deliverable to PV guests either:
//! any fault ends the domain).

use core::sync::atomic::{AtomicU64, Ordering};

use rxen_abi::xen::StartInfo;
use rxen_abi::PAGE_SIZE;

/// Bytes of heap a PV kernel gets (from the end of Xen's boot stack).
pub const HEAP_BYTES: u64 = 128 * 1024;
/// Bytes of padding Xen guarantees to be mapped after the boot stack.
const GUARANTEED_PADDING: u64 = 512 * 1024;

static FREE_START: AtomicU64 = AtomicU64::new(0);
static HYPERCALL_PAGE: AtomicU64 = AtomicU64::new(0);

extern "Rust" {
    fn __rxen_guest_main();
}

/// Makes the binary a Xen PV kernel: `rxen_guest::xen_pv_kernel!();` next to
/// [`entry!`](crate::entry). See the [module documentation](crate::pv).
#[macro_export]
macro_rules! xen_pv_kernel {
    () => {
        ::core::arch::global_asm!(
            ".pushsection .note.Xen, \"a\", @note",
            ".balign 4",
            // Each note: namesz 4 ("Xen\0"), descsz, type, name, desc (4-byte aligned).
            ".long 4, 2f - 1f, 6", ".asciz \"Xen\"", "1: .asciz \"rxen-sdk\"", "2: .balign 4",
            ".long 4, 2f - 1f, 5", ".asciz \"Xen\"", "1: .asciz \"xen-3.0\"", "2: .balign 4",
            ".long 4, 2f - 1f, 8", ".asciz \"Xen\"", "1: .asciz \"generic\"", "2: .balign 4",
            ".long 4, 8, 3", ".asciz \"Xen\"", ".quad 0",
            ".long 4, 8, 1", ".asciz \"Xen\"", ".quad __rxen_pv_entry",
            ".long 4, 8, 2", ".asciz \"Xen\"", ".quad __rxen_pv_hypercall_page",
            ".popsection",
            ".pushsection .text.rxen_pv_hypercall_page, \"ax\", @progbits",
            ".balign 4096",
            ".globl __rxen_pv_hypercall_page",
            "__rxen_pv_hypercall_page:",
            ".fill 4096, 1, 0xcc",
            ".popsection",
            ".pushsection .bss.rxen_pv_stack, \"aw\", @nobits",
            ".balign 16",
            "__rxen_pv_stack_bottom:",
            ".skip 65536",
            "__rxen_pv_stack_top:",
            ".popsection",
            ".pushsection .text.rxen_pv_entry, \"ax\", @progbits",
            ".globl __rxen_pv_entry",
            "__rxen_pv_entry:",
            "mov rdi, rsi",
            "mov rsi, rsp",
            "lea rdx, [rip + __rxen_pv_hypercall_page]",
            "lea rsp, [rip + __rxen_pv_stack_top]",
            "call {start}",
            "ud2",
            ".popsection",
            start = sym $crate::pv::start,
        );
    };
}

/// The PV boot path (called by the entry of [`xen_pv_kernel!`](crate::xen_pv_kernel)
/// with `start_info`, Xen's initial `rsp` and the hypercall page): sets up
/// hypercalls, `start_info` and the heap, runs the guest's main, powers off.
pub extern "C" fn start(si: *const StartInfo, boot_rsp: u64, hypercall_page: u64) -> ! {
    crate::hypercall::use_page(hypercall_page);
    HYPERCALL_PAGE.store(hypercall_page, Ordering::Relaxed);
    crate::start::set_start_info(si);
    let heap_start = (boot_rsp + PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
    crate::heap::init(heap_start, heap_start + HEAP_BYTES);
    FREE_START.store(heap_start + HEAP_BYTES, Ordering::Relaxed);
    // SAFETY: provided by the guest through `entry!`.
    unsafe { __rxen_guest_main() };
    crate::hypercall::shutdown(rxen_abi::sched::SHUTDOWN_POWEROFF)
}

/// Pages after the heap that the boot mappings cover read-write and nothing uses:
/// `(first virtual address, count)`. With `VIRT_BASE` 0 and mfn == pfn, a page's
/// frame number is its address >> 12.
pub fn free_frames() -> (u64, u64) {
    let start = FREE_START.load(Ordering::Relaxed);
    (start, (GUARANTEED_PADDING - HEAP_BYTES) / PAGE_SIZE)
}

/// Virtual address of the kernel's hypercall page (0 when not booted as a PV kernel).
pub fn hypercall_page() -> u64 {
    HYPERCALL_PAGE.load(Ordering::Relaxed)
}
