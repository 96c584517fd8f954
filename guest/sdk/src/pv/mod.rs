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
//! The PV start state differs from rxen's layout: `rsi` = `start_info`, `rsp` = the
//! end of Xen's one-page boot stack, events masked, only the image, the boot
//! structures and at least 512 KiB of padding mapped (`VIRT_BASE` 0: virtual =
//! pseudo-physical address), the page tables read-only. [`start`] makes it look like
//! rxen's boot to the rest of the SDK:
//!
//! * every page of RAM mapped at its pseudo-physical address ([`memory`]: new tables
//!   at the top of RAM, read-only), the null page unmapped;
//! * `shared_info` (a machine address) mapped read-write at [`SHARED_INFO_VA`];
//! * the console ring and the xenstore ring at their pages' pseudo-physical addresses
//!   (found through the P2M), so `println!` reaches the domain console;
//! * the per-vCPU record, the timer VIRQ and events unmasked on vCPU 0, as on rxen's
//!   layout; secondary vCPUs start on the kernel's L4 ([`crate::smp`]);
//! * [`SCRATCH_PAGES`] pages after the boot stack for the kernel's own use
//!   ([`free_frames`]), then the heap up to the new page tables.
use core::sync::atomic::{AtomicU64, Ordering};

use rxen_abi::xen::StartInfo;
use rxen_abi::PAGE_SIZE;

pub mod memory;

use rxen_abi::mmu::UVMF_INVLPG;

/// Where [`start`] maps `shared_info` (a page of the unused low padding).
pub const SHARED_INFO_VA: u64 = 0x1000;
/// Pages after Xen's boot stack that [`free_frames`] hands out (mapped read-write,
/// used by nothing).
pub const SCRATCH_PAGES: u64 = 96;

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
/// hypercalls, memory, `shared_info`, the console and xenstore rings, vCPU 0 and the
/// heap, runs the guest's main, powers off. A failure here crashes the domain (with
/// the reason on `console_io`).
pub extern "C" fn start(si: *const StartInfo, boot_rsp: u64, hypercall_page: u64) -> ! {
    crate::hypercall::use_page(hypercall_page);
    HYPERCALL_PAGE.store(hypercall_page, Ordering::Relaxed);
    crate::start::set_start_info(si);
    let si = crate::start::start_info();
    let tables = memory::map_all_ram(si).unwrap_or_else(|e| boot_failed("mapping RAM", e));
    crate::hypercall::update_va_mapping(
        SHARED_INFO_VA,
        si.shared_info | memory::PAGE_RW,
        UVMF_INVLPG,
    )
    .unwrap_or_else(|e| boot_failed("mapping shared_info", e));
    crate::start::set_pv_layout(SHARED_INFO_VA);
    // The null page stays unmapped, so null pointers fault.
    let _ = crate::hypercall::update_va_mapping(0, 0, UVMF_INVLPG);
    // Xen puts the xenstore and console pages right after start_info.
    let si_pfn = si as *const StartInfo as u64 / PAGE_SIZE;
    let missing = crate::hypercall::Errno(rxen_abi::errno::ENOENT);
    let store = memory::pfn_of_mfn(si.store_mfn, si_pfn + 1)
        .unwrap_or_else(|| boot_failed("finding the xenstore page", missing));
    let console = memory::pfn_of_mfn(si.console_mfn, si_pfn + 2)
        .unwrap_or_else(|| boot_failed("finding the console page", missing));
    crate::start::set_store_page(store * PAGE_SIZE);
    crate::start::init_vcpu(0);
    crate::console_ring::init(console * PAGE_SIZE, si.console_evtchn);
    let scratch = (boot_rsp + PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
    FREE_START.store(scratch, Ordering::Relaxed);
    crate::heap::init(
        scratch + SCRATCH_PAGES * PAGE_SIZE,
        tables.first * PAGE_SIZE,
    );
    // SAFETY: provided by the guest through `entry!`.
    unsafe { __rxen_guest_main() };
    crate::hypercall::shutdown(rxen_abi::sched::SHUTDOWN_POWEROFF)
}

fn boot_failed(what: &str, e: crate::hypercall::Errno) -> ! {
    crate::console::emergency_print(format_args!("rxen-guest: PV boot: {what}: {e}\n"));
    crate::hypercall::shutdown(rxen_abi::sched::SHUTDOWN_CRASH)
}

/// Pages after Xen's boot stack that are mapped read-write and that nothing uses:
/// `(first virtual address, count)`. With `VIRT_BASE` 0 a page's pseudo-physical
/// frame is its address >> 12 (its machine frame: [`memory::mfn_of_pfn`]).
pub fn free_frames() -> (u64, u64) {
    (FREE_START.load(Ordering::Relaxed), SCRATCH_PAGES)
}

/// Machine frame of the kernel's L4 (the boot L4 at `start_info.pt_base`).
pub fn current_l4_mfn() -> u64 {
    memory::mfn_of_pfn(crate::start::start_info().pt_base / PAGE_SIZE)
}

/// Virtual address of the kernel's hypercall page (0 when not booted as a PV kernel).
pub fn hypercall_page() -> u64 {
    HYPERCALL_PAGE.load(Ordering::Relaxed)
}
