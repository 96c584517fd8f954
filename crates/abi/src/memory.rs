//! `memory_op` (xen/include/public/memory.h) and the E820 map it returns.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub const XENMEM_INCREASE_RESERVATION: u64 = 0;
pub const XENMEM_DECREASE_RESERVATION: u64 = 1;
pub const XENMEM_MAXIMUM_RAM_PAGE: u64 = 2;
pub const XENMEM_CURRENT_RESERVATION: u64 = 3;
pub const XENMEM_MAXIMUM_RESERVATION: u64 = 4;
pub const XENMEM_MACHPHYS_MFN_LIST: u64 = 5;
pub const XENMEM_POPULATE_PHYSMAP: u64 = 6;
pub const XENMEM_ADD_TO_PHYSMAP: u64 = 7;
pub const XENMEM_MEMORY_MAP: u64 = 9;
pub const XENMEM_MACHINE_MEMORY_MAP: u64 = 10;
/// Low bits of the `memory_op` command; the rest carry a continuation start.
pub const MEMOP_CMD_MASK: u64 = 0x3f;

/// The high bits of a reservation command: the extent to start at (Xen's
/// continuation of a preempted call).
pub const MEMOP_EXTENT_SHIFT: u32 = 6;

/// `struct xen_memory_reservation` (`XENMEM_increase_reservation`,
/// `XENMEM_decrease_reservation`, `XENMEM_populate_physmap`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenMemoryReservation {
    /// Guest handle of an array of `xen_pfn_t` (eight bytes each): the frames to give
    /// up, the pseudo-physical frames to populate; written with the frames given.
    pub extent_start: u64,
    pub nr_extents: u64,
    /// Each extent is `2^extent_order` contiguous frames.
    pub extent_order: u32,
    /// `XENMEMF_*` (address bits, NUMA node).
    pub mem_flags: u32,
    pub domid: u16,
    pub pad: [u8; 6],
}

/// `struct xen_memory_map`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenMemoryMap {
    pub nr_entries: u32,
    pub pad: u32,
    /// Guest pointer to an array of [`E820Entry`].
    pub buffer: u64,
}

/// An E820 entry as Xen writes it (packed, 20 bytes).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout_check::assert_layout;

    #[test]
    fn layouts() {
        assert_layout!(
            XenMemoryReservation,
            size = 32,
            extent_start = 0,
            nr_extents = 8,
            extent_order = 16,
            mem_flags = 20,
            domid = 24
        );
        assert_layout!(XenMemoryMap, size = 16, nr_entries = 0, buffer = 8);
        assert_layout!(E820Entry, size = 20, addr = 0, size = 8, kind = 16);
    }
}
