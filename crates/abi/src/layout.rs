//! rxen's guest memory layout: where the domain builder puts the special pages.
//!
//! Guest-physical and guest-virtual addresses are identical (the domain builder
//! identity-maps all RAM, `XENFEAT_auto_translated_physmap`), so every address here
//! is both. Everything below [`KERNEL_MIN`] belongs to the hypervisor's layout; the
//! guest image must be linked at or above it. See `docs/guest-abi.md`.

/// Page 0 is never mapped, so null-pointer dereferences fault.
pub const NULL_PAGE: u64 = 0x0;
/// `start_info` page; `rsi` points here at entry.
pub const START_INFO: u64 = 0x1000;
/// `shared_info` page (`start_info.shared_info`).
pub const SHARED_INFO: u64 = 0x2000;
/// Hypercall page: entry `nr` is at `HYPERCALL_PAGE + 32 * nr`. Read-only, executable.
pub const HYPERCALL_PAGE: u64 = 0x3000;
/// The xenstore ring page (`start_info.store_mfn << 12`).
pub const XENSTORE_PAGE: u64 = 0x4000;
/// The console ring page (`start_info.console.domU.mfn << 12`).
pub const CONSOLE_PAGE: u64 = 0x5000;
/// Task-state segment with the I/O permission bitmap that lets the guest reach the
/// hypercall and null ports (3 pages, read-only to the guest). Other ports fault.
pub const TSS: u64 = 0x6000;
/// End of the TSS area.
pub const TSS_END: u64 = 0x9000;
/// The `syscall` entry stub (`MSR_LSTAR` points at it): read-only and executable; to
/// hypercall pointer checks it is part of the hole above the TSS (never a buffer).
/// See docs/architecture.md.
pub const SYSCALL_STUB: u64 = 0x9000;
/// The guest's flat 64-bit code selector in this layout (what exception frames carry).
pub const FLAT_CS: u16 = 0x33;
/// The guest's flat data/stack selector in this layout.
pub const FLAT_SS: u16 = 0x2b;
/// rxen's GDT (one read-only page): Xen's flat 64-bit selectors as the guest runs with
/// them (code at 0x33, data at 0x2b, DPL 3), needed for exception delivery.
pub const GDT: u64 = 0xA000;
/// rxen's IDT (read-only): gates 0..[`TRAP_VECTORS`] point at the trap stubs through the
/// guest's own code selector (delivery without a privilege change).
pub const IDT: u64 = 0xB000;
/// The trap exit stubs (read-only, executable): vector `v`'s stub is at
/// `TRAP_STUBS + 16 * v` and is `out TRAP_STUB_PORT, al; ud2`, so the exit's `rip`
/// tells the vector. See docs/architecture.md.
pub const TRAP_STUBS: u64 = 0xC000;
/// Bytes per trap stub.
pub const TRAP_STUB_SIZE: u64 = 16;
/// Vectors the IDT covers (the exceptions); `int n` above them raises #GP.
pub const TRAP_VECTORS: u64 = 32;
/// Offset of the I/O permission bitmap in the TSS (`iomap_base`).
pub const TSS_IOMAP_OFFSET: u64 = 0x68;
/// Inclusive limit of the TSS segment (header + I/O bitmap + terminating byte).
pub const TSS_LIMIT: u32 = (TSS_IOMAP_OFFSET + 8192) as u32;
/// First page-table page (PML4), `start_info.pt_base`. Page tables are read-only.
pub const PAGE_TABLES: u64 = 0x10000;
/// Room reserved for page tables (32 pages).
pub const PAGE_TABLES_END: u64 = 0x30000;
/// Lowest address of the boot stack of vCPU 0. The page below it is unmapped (guard).
pub const BOOT_STACK_BOTTOM: u64 = 0x200000;
/// Initial `rsp` of vCPU 0 (the stack grows down from here).
pub const BOOT_STACK_TOP: u64 = 0x400000;
/// Lowest address a guest ELF segment may occupy.
pub const KERNEL_MIN: u64 = 0x400000;
/// Bytes of RAM mapped with 4 KiB pages from address 0 (the rest uses 2 MiB pages).
pub const SMALL_PAGE_REGION: u64 = 0x400000;

/// Smallest domain: 8 MiB.
pub const MIN_MEMORY_BYTES: u64 = 8 << 20;
/// Largest domain the page-table area can map: 16 GiB.
pub const MAX_MEMORY_BYTES: u64 = 16 << 30;
/// Most vCPUs a domain may have (shared_info holds 32 `vcpu_info`s).
pub const MAX_VCPUS: u32 = crate::xen::LEGACY_MAX_VCPUS as u32;

/// I/O port the hypercall page traps through: `out` of the hypercall number in `eax`.
pub const HYPERCALL_PORT: u16 = 0xCA;
/// I/O port the `syscall` stub exits through; the VMM accepts it only from the stub
/// (a write from anywhere else crashes the domain).
pub const SYSCALL_STUB_PORT: u16 = 0xE0;
/// I/O port the trap stubs exit through; the VMM accepts it only from a stub.
pub const TRAP_STUB_PORT: u16 = 0xE1;
/// I/O port whose writes the VMM discards at once (the raw exit-cost baseline).
pub const NULL_PORT: u16 = 0x80;
/// Bytes per hypercall page entry.
pub const HYPERCALL_ENTRY_SIZE: u64 = 32;
/// Hypercall entries in the page.
pub const HYPERCALL_ENTRIES: u64 = 4096 / HYPERCALL_ENTRY_SIZE;

/// Magic of `start_info` (NUL-padded to 32 bytes).
pub const START_INFO_MAGIC: &[u8] = b"xen-3.0-x86_64";
