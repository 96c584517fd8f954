//! rxen's own pages in a PV domain: the frames after the guest's RAM hold the
//! `shared_info` page, the `syscall` stub and the TSS (whose I/O bitmap lets the
//! stub's `out` through), and three page tables that map the stub and the TSS in a
//! reserved L4 slot, where the guest can neither see nor map them (the MMU owns those
//! slots and refuses rxen's frames).
//!
//! Why here: with Xen's PV layout the guest's kernel occupies the low virtual
//! addresses where rxen's own layout keeps the stub (0x9000) and the TSS (0x6000), so
//! `MSR_LSTAR` and the TR base must point elsewhere. `syscall` on this host jumps to
//! `LSTAR` at CPL 3 (see `vcpu/syscall.rs`), so the stub is mapped user-executable,
//! read-only; KVM reads the TSS's I/O bitmap with a supervisor access.
//!
//! Frames, from `first` (the first frame after the guest's RAM): 0 `shared_info`,
//! 1 stub, 2..=4 TSS, 5 L3, 6 L2, 7 L1.

use rxen_abi::mmu::HYPERVISOR_VIRT_START;

use super::layout::PAGE_SIZE;
use super::mmu::entry::{PAGE_ACCESSED, PAGE_NX, PAGE_PRESENT, PAGE_USER};
use crate::memory::{GuestRam, MemoryError};

/// Frames rxen needs after the guest's RAM.
pub const RXEN_FRAMES: u64 = 8;
/// L4 slot of rxen's mapping (257: slot 256 is the M2P's, `RO_MPT_VIRT_START`).
pub const RXEN_L4_SLOT: usize = 257;
/// Virtual address of rxen's mapping (its L1 index 0 is left unmapped).
pub const RXEN_VA: u64 = HYPERVISOR_VIRT_START + (1 << 39);
/// Virtual address of the `syscall` stub (`MSR_LSTAR`).
pub const STUB_VA: u64 = RXEN_VA + PAGE_SIZE;
/// Virtual address of the TSS (the TR base).
pub const TSS_VA: u64 = RXEN_VA + 2 * PAGE_SIZE;

const SHARED_INFO: u64 = 0;
const STUB: u64 = 1;
const TSS: u64 = 2;
const TSS_PAGES: u64 = 3;
const L3: u64 = 5;
const L2: u64 = 6;
const L1: u64 = 7;
const LINK: u64 = PAGE_PRESENT | PAGE_USER | PAGE_ACCESSED;

/// Where rxen's pages went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxenArea {
    /// Machine (= guest-physical) address of `shared_info`.
    pub shared_info_maddr: u64,
    pub stub_va: u64,
    pub tss_va: u64,
    /// What L4 slot [`RXEN_L4_SLOT`] holds in every validated L4.
    pub l4_entry: u64,
}

/// Writes rxen's pages at frames `first..first + RXEN_FRAMES` of `ram`.
pub fn write(ram: &GuestRam, first: u64) -> Result<RxenArea, MemoryError> {
    let frame = |i: u64| (first + i) * PAGE_SIZE;
    for i in 0..RXEN_FRAMES {
        ram.write(frame(i), &[0u8; PAGE_SIZE as usize])?;
    }
    ram.write(frame(STUB), &crate::vcpu::syscall::stub_page())?;
    crate::builder::write_tss(ram, frame(TSS))?;
    let slot = |va: u64, shift: u32| ((va >> shift) & 511) * 8;
    ram.write_obj(frame(L3) + slot(RXEN_VA, 30), &(frame(L2) | LINK))?;
    ram.write_obj(frame(L2) + slot(RXEN_VA, 21), &(frame(L1) | LINK))?;
    ram.write_obj(frame(L1) + slot(STUB_VA, 12), &(frame(STUB) | LINK))?;
    for i in 0..TSS_PAGES {
        let va = TSS_VA + i * PAGE_SIZE;
        ram.write_obj(frame(L1) + slot(va, 12), &(frame(TSS + i) | LINK | PAGE_NX))?;
    }
    Ok(RxenArea {
        shared_info_maddr: frame(SHARED_INFO),
        stub_va: STUB_VA,
        tss_va: TSS_VA,
        l4_entry: frame(L3) | LINK,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_and_addresses() {
        assert_eq!((RXEN_VA >> 39) & 511, RXEN_L4_SLOT as u64);
        assert_eq!(STUB_VA, 0xffff_8080_0000_1000);
    }

    #[test]
    fn maps_stub_and_tss_read_only() {
        let ram = GuestRam::new("rxen-area", 8 << 20).unwrap();
        let first = ram.nr_pages() - RXEN_FRAMES;
        let area = write(&ram, first).unwrap();
        let walk = |va: u64| {
            let mut table = area.l4_entry & !0xfff & ((1 << 52) - 1);
            for shift in [30u32, 21, 12] {
                let e: u64 = ram.read_obj(table + ((va >> shift) & 511) * 8).unwrap();
                if shift == 12 {
                    return e;
                }
                table = e & 0x000f_ffff_ffff_f000;
            }
            0
        };
        let stub = walk(STUB_VA);
        assert_eq!(stub & 0x000f_ffff_ffff_f000, (first + 1) * PAGE_SIZE);
        assert_eq!(stub & 0xfff, LINK);
        assert_eq!(walk(TSS_VA + 2 * PAGE_SIZE) >> 63, 1);
        assert_eq!(walk(RXEN_VA), 0, "shared_info is not mapped here");
        let mut b = [0u8; 2];
        ram.read((first + 1) * PAGE_SIZE, &mut b).unwrap();
        assert_eq!(b, [0xE6, rxen_abi::layout::SYSCALL_STUB_PORT as u8]);
    }
}
