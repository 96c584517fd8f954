//! rxen's own pages in a PV domain: the frames after the guest's RAM hold the
//! `shared_info` page, the `syscall` stub, the TSS (whose I/O bitmap lets the stub's
//! `out` through), the read-only machine-to-phys table (M2P) and the page tables that
//! map them in two reserved L4 slots, where the guest can read (M2P) or execute (stub)
//! them but never map or change them (the MMU owns those slots and refuses rxen's
//! frames).
//!
//! Why here: with Xen's PV layout the guest's kernel occupies the low virtual
//! addresses where rxen's own layout keeps the stub (0x9000) and the TSS (0x6000), so
//! `MSR_LSTAR` and the TR base must point elsewhere. `syscall` on this host jumps to
//! `LSTAR` at CPL 3 (see `vcpu/syscall.rs`), so the stub is mapped user-executable,
//! read-only; KVM reads the TSS's I/O bitmap with a supervisor access. The M2P sits at
//! Xen's `RO_MPT_VIRT_START` (slot 256), as PV kernels expect; entry `mfn` holds the
//! pfn (`mfn == pfn` for the guest's RAM, `!0` for rxen's frames).
//!
//! Exception delivery (`crate::traps`) needs rxen's GDT, IDT and trap stubs here too:
//! the GDT is Xen's shape (limit 0xefff: pages 1-13 all map one zero frame, page 14
//! holds `FLAT_RING3_CS32`/`CS64`/`DS32` at 0xe023/0xe033/0xe02b, and page 0 maps the
//! same descriptor frame, which gives Linux's user selectors 0x23/0x33/0x2b), the IDT's gates go
//! through 0xe033 to the stubs. All three are read-only to the guest (the GDT and IDT
//! also NX), and their descriptors are pre-accessed so the CPU never writes them.
//!
//! Frames, from `first` (the first frame after the guest's RAM): 0 `shared_info`,
//! 1 stub, 2..=4 TSS, 5 L3, 6 L2, 7 L1 (slot 257), 8 M2P L3, 9 M2P L2 (slot 256),
//! 10 zero frame (GDT pages 0-13), 11 GDT page 14, 12 IDT, 13 trap stubs, 14 the
//! exception stack (`IST1`), then the M2P's L1s, then the M2P itself. Before the grant
//! frames at the end of the area: the TSS page and exception stack of each vCPU after
//! the first ([`MAX_VCPUS`]` - 1` pairs, whatever the domain's count): every vCPU has
//! its own TSS (the TR base, [`tss_va`]) whose `IST1` is its own exception stack
//! ([`exception_stack_va`]); the TSS's two I/O-bitmap pages are shared.

use rxen_abi::mmu::{HYPERVISOR_VIRT_START, RO_MPT_VIRT_START};

use super::layout::PAGE_SIZE;
use super::mmu::entry::{PAGE_ACCESSED, PAGE_DIRTY, PAGE_NX, PAGE_PRESENT, PAGE_RW, PAGE_USER};
use crate::memory::{GuestRam, MemoryError};
use crate::traps::pages::{self, TrapLayout, XEN_FLAT_CS64, XEN_GDT_LIMIT, XEN_GDT_PAGE};

/// L4 slot of rxen's stub and TSS mapping (257: slot 256 is the M2P's).
pub const RXEN_L4_SLOT: usize = 257;
/// L4 slot of the M2P (`RO_MPT_VIRT_START`).
pub const M2P_L4_SLOT: usize = 256;
/// Virtual address of rxen's mapping (its L1 index 0 is left unmapped).
pub const RXEN_VA: u64 = HYPERVISOR_VIRT_START + (1 << 39);
/// Virtual address of the `syscall` stub (`MSR_LSTAR`).
pub const STUB_VA: u64 = RXEN_VA + PAGE_SIZE;
/// Virtual address of the TSS (the TR base).
pub const TSS_VA: u64 = RXEN_VA + 2 * PAGE_SIZE;
/// Virtual address of the trap stubs (the IDT's gate targets).
pub const TRAP_STUBS_VA: u64 = RXEN_VA + 5 * PAGE_SIZE;
/// Virtual address of the IDT.
pub const IDT_VA: u64 = RXEN_VA + 6 * PAGE_SIZE;
/// Virtual address of the GDT (15 pages).
pub const GDT_VA: u64 = RXEN_VA + 16 * PAGE_SIZE;
/// A second, natively readable mapping of the M2P (read-only, in slot 257, 1 GiB into
/// rxen's area): `XENMEM_machphys_mapping` points PV kernels here, so Linux reads the
/// M2P at memory speed instead of through the emulated slot-256 window (36 µs a read).
pub const M2P_ALIAS_VA: u64 = RXEN_VA + (1 << 30);
/// The exception stack (`IST1`): the CPU pushes its frame for an exception here, not
/// on the guest's stack (whose next page may not be populated: a guest user stack
/// growing) and not over a user red zone. One page, NX, rxen's frame, and
/// *supervisor-only*: KVM (PVM) delivers the exception in software and writes the frame
/// with a supervisor access, so no guest code (kernel or user, which both run at CPL 3)
/// can read or write any vCPU's exception stack: a user process on one vCPU cannot
/// rewrite the frame another vCPU's exception just pushed before rxen reads it, nor read
/// a stale kernel frame (rip, rsp) left there. The upper levels of slot 257 are writable
/// for it; every
/// other page of the slot stays read-only in its L1 entry.
pub const EXCEPTION_STACK_VA: u64 = RXEN_VA + 8 * PAGE_SIZE;
/// Where exception delivery finds its pages in a PV domain. Every gate uses `IST1`:
/// each vCPU's TSS points it at that vCPU's own exception stack.
pub const TRAPS: TrapLayout = TrapLayout {
    gdt: GDT_VA,
    gdt_limit: XEN_GDT_LIMIT,
    idt: IDT_VA,
    stubs: TRAP_STUBS_VA,
    code_selector: XEN_FLAT_CS64,
    ist: 1,
};
/// The vCPUs a domain may have (`XEN_LEGACY_MAX_VCPUS`).
pub const MAX_VCPUS: u32 = rxen_abi::layout::MAX_VCPUS;
/// Page of rxen's mapping where the TSS of vCPU 1 starts; each vCPU after the first
/// has [`VCPU_PAGES`] there: its TSS (three pages) and its exception stack.
const VCPU_AREA_PAGE: u64 = 64;
/// Pages of rxen's mapping per vCPU after the first.
const VCPU_PAGES: u64 = 4;
/// Frames of rxen's area for the vCPUs after the first: a TSS page and an exception
/// stack each.
const VCPU_FRAMES: u64 = 2 * (MAX_VCPUS as u64 - 1);

/// Virtual address of vCPU `vcpu`'s TSS (its TR base): vCPU 0's is [`TSS_VA`].
pub fn tss_va(vcpu: u32) -> u64 {
    match vcpu {
        0 => TSS_VA,
        v => RXEN_VA + (VCPU_AREA_PAGE + u64::from(v) * VCPU_PAGES) * PAGE_SIZE,
    }
}

/// Virtual address of vCPU `vcpu`'s exception stack (the bottom of its page; `IST1`
/// is its top): vCPU 0's is [`EXCEPTION_STACK_VA`].
pub fn exception_stack_va(vcpu: u32) -> u64 {
    match vcpu {
        0 => EXCEPTION_STACK_VA,
        v => tss_va(v) + TSS_PAGES * PAGE_SIZE,
    }
}
/// `IST1`'s offset in the 64-bit TSS.
const TSS_IST1: u64 = 0x24;
/// rxen's RAM is added in these steps (GuestRam sizes are multiples of 2 MiB).
const STEP_PAGES: u64 = 512;
/// Grant-table frames rxen reserves (`MAX_GRANT_FRAMES`), at the end of the area.
pub const GRANT_FRAMES: u64 = crate::grant::MAX_GRANT_FRAMES as u64;
/// `INVALID_M2P_ENTRY`.
const INVALID_M2P: u64 = !0;

const SHARED_INFO: u64 = 0;
const STUB: u64 = 1;
const TSS: u64 = 2;
const TSS_PAGES: u64 = 3;
const L3: u64 = 5;
const L2: u64 = 6;
const L1: u64 = 7;
const M2P_L3: u64 = 8;
const M2P_L2: u64 = 9;
const ZERO: u64 = 10;
const GDT_DESC: u64 = 11;
const IDT: u64 = 12;
const TRAP_STUBS: u64 = 13;
const EXCEPTION_STACK: u64 = 14;
const M2P_L1: u64 = 15;
const LINK: u64 = PAGE_PRESENT | PAGE_USER | PAGE_ACCESSED;
/// An exception stack's L1 entry flags: supervisor-only (no `PAGE_USER`), writable,
/// pre-dirtied, NX.
const EXCEPTION_STACK_FLAGS: u64 = PAGE_PRESENT | PAGE_ACCESSED | PAGE_DIRTY | PAGE_RW | PAGE_NX;

/// Where rxen's pages go for a domain of `guest_pages`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AreaLayout {
    /// First frame after the guest's RAM.
    pub first: u64,
    /// Frames rxen adds (a multiple of 512).
    pub pages: u64,
    m2p_l1s: u64,
    m2p_pages: u64,
}

impl AreaLayout {
    /// The smallest area (in 2 MiB steps) that holds rxen's pages and an M2P covering
    /// every frame of the domain's RAM, its own included.
    pub fn for_guest(guest_pages: u64) -> Self {
        let mut pages = STEP_PAGES;
        loop {
            let total = guest_pages + pages;
            let m2p_pages = (total * 8).div_ceil(PAGE_SIZE);
            let m2p_l1s = m2p_pages.div_ceil(512);
            if M2P_L1 + m2p_l1s + m2p_pages + VCPU_FRAMES + GRANT_FRAMES <= pages {
                return AreaLayout {
                    first: guest_pages,
                    pages,
                    m2p_l1s,
                    m2p_pages,
                };
            }
            pages += STEP_PAGES;
        }
    }

    /// Bytes of RAM rxen adds after the guest's.
    pub fn bytes(&self) -> u64 {
        self.pages * PAGE_SIZE
    }

    fn frame(&self, i: u64) -> u64 {
        (self.first + i) * PAGE_SIZE
    }

    /// First machine frame of the grant-table frames and how many there are (the last
    /// [`GRANT_FRAMES`] frames of the area; the guest maps them like its own RAM).
    pub fn grant_frames(&self) -> (u64, u64) {
        (self.first + self.pages - GRANT_FRAMES, GRANT_FRAMES)
    }

    /// Area frame indices of vCPU `vcpu`'s TSS page and exception stack (`vcpu` ≥ 1),
    /// just before the grant frames.
    fn vcpu_frames(&self, vcpu: u32) -> (u64, u64) {
        let first = self.pages - GRANT_FRAMES - VCPU_FRAMES;
        let i = first + 2 * (u64::from(vcpu) - 1);
        (i, i + 1)
    }

    /// Guest-physical address of the M2P's first entry, and its number of entries.
    pub fn m2p(&self) -> (u64, u64) {
        (self.frame(M2P_L1 + self.m2p_l1s), self.first + self.pages)
    }

    /// The M2P as the guest reads it: mapped at `RO_MPT_VIRT_START`, whole pages.
    pub fn m2p_window(&self) -> M2pWindow {
        M2pWindow {
            va: RO_MPT_VIRT_START,
            gpa: self.m2p().0,
            bytes: self.m2p_pages * PAGE_SIZE,
        }
    }
}

/// The read-only M2P: `bytes` at guest virtual `va`, held at guest-physical `gpa`
/// (rxen frames). Guest reads of it are emulated (`crate::traps::m2p`) because this
/// host keeps its L4 slot for itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct M2pWindow {
    pub va: u64,
    pub gpa: u64,
    pub bytes: u64,
}

impl M2pWindow {
    /// The guest-physical address of `len` bytes at guest virtual `va`, if they lie
    /// inside the M2P.
    pub fn gpa_of(&self, va: u64, len: u64) -> Option<u64> {
        let off = va.checked_sub(self.va)?;
        (off.checked_add(len)? <= self.bytes).then_some(self.gpa + off)
    }
}

/// Where rxen's pages went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxenArea {
    pub layout: AreaLayout,
    /// Machine (= guest-physical) address of `shared_info`.
    pub shared_info_maddr: u64,
    pub stub_va: u64,
    pub tss_va: u64,
    /// What L4 slot [`RXEN_L4_SLOT`] holds in every validated L4.
    pub l4_entry: u64,
    /// What L4 slot [`M2P_L4_SLOT`] holds in every validated L4.
    pub m2p_l4_entry: u64,
    /// rxen's GDT, IDT and trap stubs.
    pub traps: TrapLayout,
    pub m2p: M2pWindow,
}

/// Writes rxen's pages into `ram` where `layout` puts them, for a domain of `vcpus`.
pub fn write(ram: &GuestRam, layout: AreaLayout, vcpus: u32) -> Result<RxenArea, MemoryError> {
    let traps = TRAPS;
    let frame = |i: u64| layout.frame(i);
    let zeros = [0u8; PAGE_SIZE as usize];
    for i in 0..M2P_L1 + layout.m2p_l1s {
        ram.write(frame(i), &zeros)?;
    }
    let (grants, nr_grants) = layout.grant_frames();
    for g in 0..nr_grants {
        ram.write((grants + g) * PAGE_SIZE, &zeros)?;
    }
    ram.write(frame(STUB), &crate::vcpu::syscall::stub_page())?;
    crate::tss::write_tss(ram, frame(TSS))?;
    let slot = |va: u64, shift: u32| ((va >> shift) & 511) * 8;
    ram.write_obj(frame(L3) + slot(RXEN_VA, 30), &(frame(L2) | LINK | PAGE_RW))?;
    ram.write_obj(frame(L2) + slot(RXEN_VA, 21), &(frame(L1) | LINK | PAGE_RW))?;
    ram.write_obj(frame(L1) + slot(STUB_VA, 12), &(frame(STUB) | LINK))?;
    for i in 0..TSS_PAGES {
        let va = TSS_VA + i * PAGE_SIZE;
        ram.write_obj(frame(L1) + slot(va, 12), &(frame(TSS + i) | LINK | PAGE_NX))?;
    }
    // Exception delivery: stubs (executable), IDT, GDT (14 zero pages + descriptors).
    ram.write(frame(GDT_DESC), &pages::gdt_page())?;
    ram.write(frame(IDT), &traps.idt_page())?;
    ram.write_obj(frame(TSS) + TSS_IST1, &(EXCEPTION_STACK_VA + PAGE_SIZE))?;
    ram.write_obj(
        frame(L1) + slot(EXCEPTION_STACK_VA, 12),
        &(frame(EXCEPTION_STACK) | EXCEPTION_STACK_FLAGS),
    )?;
    // The other vCPUs: vCPU 0's TSS page with their own IST1, the same I/O bitmap.
    let mut tss_page = vec![0u8; PAGE_SIZE as usize];
    ram.read(frame(TSS), &mut tss_page)?;
    for v in 1..vcpus.min(MAX_VCPUS) {
        let (tss, stack) = layout.vcpu_frames(v);
        ram.write(frame(tss), &tss_page)?;
        ram.write(frame(stack), &zeros)?;
        let ist1 = exception_stack_va(v) + PAGE_SIZE;
        ram.write_obj(frame(tss) + TSS_IST1, &ist1)?;
        for i in 0..TSS_PAGES {
            let f = if i == 0 { tss } else { TSS + i };
            let va = tss_va(v) + i * PAGE_SIZE;
            ram.write_obj(frame(L1) + slot(va, 12), &(frame(f) | LINK | PAGE_NX))?;
        }
        ram.write_obj(
            frame(L1) + slot(exception_stack_va(v), 12),
            &(frame(stack) | EXCEPTION_STACK_FLAGS),
        )?;
    }
    ram.write(frame(TRAP_STUBS), &pages::stub_page())?;
    let ro_nx = LINK | PAGE_NX;
    ram.write_obj(
        frame(L1) + slot(TRAP_STUBS_VA, 12),
        &(frame(TRAP_STUBS) | LINK),
    )?;
    ram.write_obj(frame(L1) + slot(IDT_VA, 12), &(frame(IDT) | ro_nx))?;
    for p in 0..=XEN_GDT_PAGE {
        // Page 0 holds the same descriptors as page 14: at its offsets they are the
        // flat user selectors 0x23/0x2b/0x33 of Linux's GDT (`set_gdt`).
        let f = if p == XEN_GDT_PAGE || p == 0 {
            GDT_DESC
        } else {
            ZERO
        };
        let va = GDT_VA + p * PAGE_SIZE;
        ram.write_obj(frame(L1) + slot(va, 12), &(frame(f) | ro_nx))?;
    }
    // The M2P: slot 256 -> one L3 -> one L2 -> its L1s -> its pages, read-only.
    ram.write_obj(
        frame(M2P_L3) + slot(RO_MPT_VIRT_START, 30),
        &(frame(M2P_L2) | LINK),
    )?;
    // The same L2 (so the same L1s and pages) also under slot 257's L3.
    ram.write_obj(frame(L3) + slot(M2P_ALIAS_VA, 30), &(frame(M2P_L2) | LINK))?;
    for l1 in 0..layout.m2p_l1s {
        let va = RO_MPT_VIRT_START + l1 * (2 << 20);
        ram.write_obj(frame(M2P_L2) + slot(va, 21), &(frame(M2P_L1 + l1) | LINK))?;
    }
    let first_m2p = M2P_L1 + layout.m2p_l1s;
    for p in 0..layout.m2p_pages {
        let l1 = frame(M2P_L1 + p / 512);
        ram.write_obj(l1 + (p % 512) * 8, &(frame(first_m2p + p) | LINK | PAGE_NX))?;
    }
    let (m2p_base, entries) = layout.m2p();
    let mut page = vec![0u8; PAGE_SIZE as usize];
    for p in 0..layout.m2p_pages {
        for (j, e) in page.chunks_exact_mut(8).enumerate() {
            let mfn = p * 512 + j as u64;
            let pfn = if mfn < layout.first { mfn } else { INVALID_M2P };
            e.copy_from_slice(&pfn.to_le_bytes());
        }
        ram.write(m2p_base + p * PAGE_SIZE, &page)?;
    }
    debug_assert!(entries <= layout.m2p_pages * 512);
    Ok(RxenArea {
        layout,
        shared_info_maddr: frame(SHARED_INFO),
        stub_va: STUB_VA,
        tss_va: TSS_VA,
        l4_entry: frame(L3) | LINK | PAGE_RW,
        m2p_l4_entry: frame(M2P_L3) | LINK,
        traps,
        m2p: layout.m2p_window(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDR: u64 = 0x000f_ffff_ffff_f000;

    fn walk(ram: &GuestRam, l4_entry: u64, va: u64) -> u64 {
        let mut table = l4_entry & ADDR;
        for shift in [30u32, 21, 12] {
            let e: u64 = ram.read_obj(table + ((va >> shift) & 511) * 8).unwrap();
            if shift == 12 || e & PAGE_PRESENT == 0 {
                return e;
            }
            table = e & ADDR;
        }
        0
    }

    #[test]
    fn slots_and_addresses() {
        assert_eq!((RXEN_VA >> 39) & 511, RXEN_L4_SLOT as u64);
        assert_eq!((RO_MPT_VIRT_START >> 39) & 511, M2P_L4_SLOT as u64);
        assert_eq!(STUB_VA, 0xffff_8080_0000_1000);
    }

    #[test]
    fn area_grows_with_the_m2p() {
        // 32 MiB: one 2 MiB step. 16 GiB: the M2P alone needs 8 MiB + L1s.
        assert_eq!(AreaLayout::for_guest(8192).pages, 512);
        let big = AreaLayout::for_guest(4 << 20);
        let (_, entries) = big.m2p();
        assert!(big.m2p_pages * 512 >= entries);
        assert!(M2P_L1 + big.m2p_l1s + big.m2p_pages + GRANT_FRAMES <= big.pages);
        let (g, n) = big.grant_frames();
        assert_eq!(g + n, big.first + big.pages);
        assert_eq!(big.pages % 512, 0);
    }

    #[test]
    fn maps_stub_tss_and_m2p_read_only() {
        let ram = GuestRam::new("rxen-area", 10 << 20).unwrap();
        let layout = AreaLayout::for_guest(2048);
        assert_eq!(layout.bytes(), 2 << 20);
        let area = write(&ram, layout, 1).unwrap();
        let first = layout.first;
        let stub = walk(&ram, area.l4_entry, STUB_VA);
        assert_eq!(stub & ADDR, (first + 1) * PAGE_SIZE);
        assert_eq!(stub & 0xfff, LINK);
        assert_eq!(walk(&ram, area.l4_entry, TSS_VA + 2 * PAGE_SIZE) >> 63, 1);
        assert_eq!(
            walk(&ram, area.l4_entry, RXEN_VA),
            0,
            "shared_info unmapped"
        );
        let mut b = [0u8; 2];
        ram.read((first + 1) * PAGE_SIZE, &mut b).unwrap();
        assert_eq!(b, [0xE6, rxen_abi::layout::SYSCALL_STUB_PORT as u8]);
        // The M2P read through its mapping: mfn 0x78 -> 0x78, rxen's frames invalid.
        let read_m2p = |mfn: u64| {
            let va = RO_MPT_VIRT_START + mfn * 8;
            let e = walk(&ram, area.m2p_l4_entry, va);
            assert_eq!(e & 0xfff, LINK, "read-only user mapping");
            ram.read_obj::<u64>((e & ADDR) + (va & 0xfff)).unwrap()
        };
        assert_eq!(read_m2p(0x78), 0x78);
        assert_eq!(read_m2p(2047), 2047);
        assert_eq!(read_m2p(2048), !0);
        assert_eq!(read_m2p(2048 + 511), !0);
        // The same M2P through its native alias in slot 257 (XENMEM_machphys_mapping).
        let read_alias = |mfn: u64| {
            let va = M2P_ALIAS_VA + mfn * 8;
            let e = walk(&ram, area.l4_entry, va);
            assert_eq!(e & 0xfff, LINK, "read-only user mapping");
            ram.read_obj::<u64>((e & ADDR) + (va & 0xfff)).unwrap()
        };
        assert_eq!(read_alias(0x78), 0x78);
        assert_eq!(read_alias(2048), !0);
        assert_eq!((M2P_ALIAS_VA >> 39) & 511, RXEN_L4_SLOT as u64);
        // The M2P window: whole pages, nothing past them.
        let w = area.m2p;
        assert_eq!(
            w.gpa_of(RO_MPT_VIRT_START + 0x78 * 8, 8),
            Some(w.gpa + 0x3c0)
        );
        assert_eq!(
            w.gpa_of(RO_MPT_VIRT_START + w.bytes - 8, 8),
            Some(w.gpa + w.bytes - 8)
        );
        assert_eq!(w.gpa_of(RO_MPT_VIRT_START + w.bytes - 4, 8), None);
        assert_eq!(w.gpa_of(RO_MPT_VIRT_START - 8, 8), None);
    }

    #[test]
    fn maps_gdt_idt_and_trap_stubs_read_only() {
        let ram = GuestRam::new("rxen-area", 10 << 20).unwrap();
        let layout = AreaLayout::for_guest(2048);
        let area = write(&ram, layout, 1).unwrap();
        let read = |va: u64| {
            let e = walk(&ram, area.l4_entry, va);
            assert_eq!(
                e & 0x7,
                PAGE_PRESENT | PAGE_USER,
                "read-only user page {va:#x}"
            );
            let mut b = [0u8; 8];
            ram.read((e & ADDR) + (va & 0xfff), &mut b).unwrap();
            (e, u64::from_le_bytes(b))
        };
        // GDT: zero below page 14 except Linux's user selectors in page 0, Xen's flat
        // selectors in page 14.
        assert_eq!(read(GDT_VA + 0x30).1, 0x00af_fb00_0000_ffff);
        assert_eq!(read(GDT_VA + 0x28).1, 0x00cf_f300_0000_ffff);
        for sel in [0u64, 0x10, 0x1000, 0xd038] {
            let (e, d) = read(GDT_VA + sel);
            assert_eq!(d, 0, "selector {sel:#x}");
            assert_eq!(e >> 63, 1, "NX");
        }
        assert_eq!(read(GDT_VA + 0xe030).1, 0x00af_fb00_0000_ffff);
        assert_eq!(read(GDT_VA + 0xe028).1, 0x00cf_f300_0000_ffff);
        assert_eq!(read(GDT_VA + 0xe020).1, 0x00cf_fb00_0000_ffff);
        assert_eq!(
            walk(&ram, area.l4_entry, GDT_VA + 0xf000),
            0,
            "past the limit"
        );
        // IDT gate 14 -> stub 14 through 0xe033; the stub exits on the trap port.
        let (_, lo) = read(IDT_VA + 14 * 16);
        assert_eq!((lo >> 16) & 0xffff, 0xe033);
        assert_eq!(lo & 0xffff, TRAPS.stub_address(14) & 0xffff);
        let (e, stub) = read(TRAPS.stub_address(14));
        assert_eq!(e >> 63, 0, "stubs executable");
        assert_eq!(stub & 0xffff_ffff, 0x0b0f_e1e6);
        assert_eq!(area.traps, TrapLayout { ist: 1, ..TRAPS });
        // Gates switch to IST1, the TSS's IST1 is the top of the exception stack,
        // which is writable, supervisor-only (KVM writes the frame with a supervisor
        // access; guest code at CPL 3 cannot touch it) and NX. Debian's /init
        // triple-faulted before when its first user page fault pushed its frame on a
        // user stack page that was not populated yet.
        assert_eq!((lo >> 32) & 7, 1, "IST 1");
        let ist1 = ram.read_obj::<u64>(layout.frame(TSS) + TSS_IST1).unwrap();
        assert_eq!(ist1, EXCEPTION_STACK_VA + PAGE_SIZE);
        let e = walk(&ram, area.l4_entry, EXCEPTION_STACK_VA);
        assert_eq!(e & 0x7, PAGE_PRESENT | PAGE_RW, "not PAGE_USER");
        assert_eq!(e >> 63, 1, "NX");
    }

    /// Reads the 8 bytes at `va` through rxen's mapping.
    fn read_va(ram: &GuestRam, l4_entry: u64, va: u64) -> u64 {
        let e = walk(ram, l4_entry, va);
        assert_eq!(e & PAGE_PRESENT, PAGE_PRESENT, "{va:#x} mapped");
        ram.read_obj((e & ADDR) + (va & 0xfff)).unwrap()
    }

    /// Linux SMP: each vCPU has its own TSS whose IST1 is its own exception stack, so
    /// two vCPUs in user mode never push exception frames on each other's (before, an
    /// SMP domain had one TSS and no IST: frames went on the interrupted user stack).
    #[test]
    fn every_vcpu_has_its_own_tss_and_exception_stack() {
        let ram = GuestRam::new("rxen-area-smp", 10 << 20).unwrap();
        let layout = AreaLayout::for_guest(2048);
        let area = write(&ram, layout, 3).unwrap();
        assert_eq!(area.traps.ist, 1, "IST1 with several vCPUs too");
        let mut stacks = Vec::new();
        for v in 0..3 {
            let tss = tss_va(v);
            let ist1 = read_va(&ram, area.l4_entry, tss + TSS_IST1);
            assert_eq!(ist1, exception_stack_va(v) + PAGE_SIZE, "vCPU {v}");
            let stack = walk(&ram, area.l4_entry, exception_stack_va(v));
            assert_eq!(
                stack & 0x7,
                PAGE_PRESENT | PAGE_RW,
                "vCPU {v}: not PAGE_USER"
            );
            assert_eq!(stack >> 63, 1, "NX");
            stacks.push(stack & ADDR);
            // The TSS: read-only, its I/O bitmap offset and the bitmap itself the
            // same as vCPU 0's (the hypercall port allowed, port 0 refused).
            let page0 = walk(&ram, area.l4_entry, tss);
            assert_eq!(page0 & 0x7, PAGE_PRESENT | PAGE_USER, "read-only");
            let iomap = read_va(&ram, area.l4_entry, tss + 0x60) >> 48;
            assert_eq!(iomap, rxen_abi::layout::TSS_IOMAP_OFFSET);
            let port = u64::from(rxen_abi::layout::HYPERCALL_PORT);
            let byte = |p: u64| {
                let va = tss + rxen_abi::layout::TSS_IOMAP_OFFSET + p / 8;
                (read_va(&ram, area.l4_entry, va) & 0xff) >> (p % 8) & 1
            };
            assert_eq!(byte(port), 0, "hypercall port allowed");
            assert_eq!(byte(0), 1, "port 0 refused");
            assert_eq!(byte(0xffff), 1, "last port refused");
        }
        // The addresses crates/xm/tests/linux_guest.rs probes from a guest process.
        assert_eq!(exception_stack_va(0), 0xffff_8080_0000_8000);
        assert_eq!(exception_stack_va(1), 0xffff_8080_0004_7000);
        stacks.sort_unstable();
        stacks.dedup();
        assert_eq!(stacks.len(), 3, "one exception stack each");
        // The vCPU frames lie before the grant frames, after the M2P.
        let (grants, _) = layout.grant_frames();
        let (_, last_stack) = layout.vcpu_frames(MAX_VCPUS - 1);
        assert_eq!(layout.first + last_stack + 1, grants);
        let (m2p, entries) = layout.m2p();
        assert!(m2p + entries * 8 <= layout.frame(layout.vcpu_frames(1).0));
        assert!(tss_va(MAX_VCPUS - 1) + VCPU_PAGES * PAGE_SIZE <= RXEN_VA + (512 << 12));
    }
}
