//! The block device interface of xen/include/public/io/blkif.h (x86-64 native ABI,
//! `x86_64-abi`): request and response slots of the shared ring, operations, statuses
//! and the `info` bits of the backend's xenbus directory.
//!
//! Sector numbers and `first_sect`/`last_sect` are always in 512-byte units, whatever
//! the backend's `sector-size` node says.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `BLKIF_OP_READ`.
pub const BLKIF_OP_READ: u8 = 0;
/// `BLKIF_OP_WRITE`.
pub const BLKIF_OP_WRITE: u8 = 1;
/// `BLKIF_OP_WRITE_BARRIER` (`feature-barrier`).
pub const BLKIF_OP_WRITE_BARRIER: u8 = 2;
/// `BLKIF_OP_FLUSH_DISKCACHE` (`feature-flush-cache`).
pub const BLKIF_OP_FLUSH_DISKCACHE: u8 = 3;
/// `BLKIF_OP_RESERVED_1` (was BLKIF_OP_PACKET).
pub const BLKIF_OP_RESERVED_1: u8 = 4;
/// `BLKIF_OP_DISCARD` (`feature-discard`).
pub const BLKIF_OP_DISCARD: u8 = 5;
/// `BLKIF_OP_INDIRECT` (`feature-max-indirect-segments`).
pub const BLKIF_OP_INDIRECT: u8 = 6;

/// Segments a direct request carries at most.
pub const BLKIF_MAX_SEGMENTS_PER_REQUEST: usize = 11;

/// `BLKIF_RSP_EOPNOTSUPP`: the operation is not supported.
pub const BLKIF_RSP_EOPNOTSUPP: i16 = -2;
/// `BLKIF_RSP_ERROR`: the operation failed.
pub const BLKIF_RSP_ERROR: i16 = -1;
/// `BLKIF_RSP_OKAY`.
pub const BLKIF_RSP_OKAY: i16 = 0;

/// The unit of `sector_number`, `first_sect` and `last_sect`.
pub const BLKIF_SECTOR_SIZE: u64 = 512;

/// `info` bits (`VDISK_*` of blkif.h).
pub const VDISK_CDROM: u32 = 0x1;
pub const VDISK_REMOVABLE: u32 = 0x2;
pub const VDISK_READONLY: u32 = 0x4;

/// `XEN_IO_PROTO_ABI_X86_64` of io/protocols.h: the `protocol` a 64-bit frontend writes.
pub const XEN_IO_PROTO_ABI_X86_64: &str = "x86_64-abi";

/// `struct blkif_request_segment`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct BlkifSegment {
    /// Grant reference of the I/O buffer frame.
    pub gref: u32,
    /// First 512-byte sector of the frame to transfer (inclusive).
    pub first_sect: u8,
    /// Last 512-byte sector of the frame to transfer (inclusive).
    pub last_sect: u8,
    pub pad: [u8; 2],
}

/// `struct blkif_request` (a ring slot holds one; 112 bytes).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct BlkifRequest {
    pub operation: u8,
    pub nr_segments: u8,
    /// `blkif_vdev_t`: the device (only for read/write).
    pub handle: u16,
    pub pad: u32,
    /// Private guest value, echoed in the response.
    pub id: u64,
    /// Start sector on the disk (512-byte units).
    pub sector_number: u64,
    pub seg: [BlkifSegment; BLKIF_MAX_SEGMENTS_PER_REQUEST],
}

/// `struct blkif_response` (16 bytes).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct BlkifResponse {
    /// Copied from the request.
    pub id: u64,
    /// Copied from the request.
    pub operation: u8,
    pub pad: u8,
    /// `BLKIF_RSP_*`.
    pub status: i16,
    pub pad2: [u8; 4],
}

/// Size of a ring slot (`union blkif_sring_entry`): the larger of request and response.
pub const BLKIF_SLOT_SIZE: usize = core::mem::size_of::<BlkifRequest>();

/// Slots of a one-page blkif ring (`__CONST_RING_SIZE(blkif, 4096)`).
pub const BLKIF_RING_SIZE_1PAGE: usize = crate::ring::ring_size(4096, BLKIF_SLOT_SIZE);

/// Indirect pages a `BLKIF_OP_INDIRECT` request names at most
/// (`BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST`).
pub const BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST: usize = 8;
/// Segments (`struct blkif_request_segment`, 8 bytes) in one indirect page.
pub const BLKIF_SEGS_PER_INDIRECT_FRAME: usize = 4096 / 8;
/// `BLKIF_DISCARD_SECURE`: the `flag` of a discard (ignored unless `discard-secure`).
pub const BLKIF_DISCARD_SECURE: u8 = 1;

/// `struct blkif_request_indirect` (x86-64 layout, 64 bytes; overlays a ring slot when
/// `operation` is `BLKIF_OP_INDIRECT`).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct BlkifRequestIndirect {
    pub operation: u8,
    /// `BLKIF_OP_READ` or `BLKIF_OP_WRITE`.
    pub indirect_op: u8,
    pub nr_segments: u16,
    pub pad1: u32,
    pub id: u64,
    pub sector_number: u64,
    pub handle: u16,
    pub pad2: u16,
    /// Grants of the pages holding the segments (512 per page).
    pub indirect_grefs: [u32; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST],
    pub pad3: u32,
}

/// `struct blkif_request_discard` (x86-64 layout; overlays a ring slot when
/// `operation` is `BLKIF_OP_DISCARD`).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct BlkifRequestDiscard {
    pub operation: u8,
    /// `BLKIF_DISCARD_SECURE` or 0.
    pub flag: u8,
    pub handle: u16,
    pub pad: u32,
    pub id: u64,
    pub sector_number: u64,
    pub nr_sectors: u64,
}

/// Slots of a blkif ring of `1 << order` pages (`__CONST_RING_SIZE(blkif, 4096 << order)`).
pub const fn blkif_ring_size(order: u32) -> usize {
    crate::ring::ring_size(4096 << order, BLKIF_SLOT_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout_check::assert_layout;

    #[test]
    fn layouts_match_blkif_h() {
        assert_layout!(
            BlkifSegment,
            size = 8,
            gref = 0,
            first_sect = 4,
            last_sect = 5
        );
        assert_layout!(
            BlkifRequest,
            size = 112,
            operation = 0,
            nr_segments = 1,
            handle = 2,
            id = 8,
            sector_number = 16,
            seg = 24
        );
        assert_layout!(BlkifResponse, size = 16, id = 0, operation = 8, status = 10);
        assert_eq!(BLKIF_SLOT_SIZE, 112);
        assert_eq!(BLKIF_RING_SIZE_1PAGE, 32);
        assert_layout!(
            BlkifRequestIndirect,
            size = 64,
            operation = 0,
            indirect_op = 1,
            nr_segments = 2,
            id = 8,
            sector_number = 16,
            handle = 24,
            indirect_grefs = 28
        );
        assert_layout!(
            BlkifRequestDiscard,
            size = 32,
            operation = 0,
            flag = 1,
            handle = 2,
            id = 8,
            sector_number = 16,
            nr_sectors = 24
        );
        assert_eq!(blkif_ring_size(0), 32);
        assert_eq!(blkif_ring_size(1), 64);
        assert_eq!(blkif_ring_size(4), 512);
    }
}
