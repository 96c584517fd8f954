//! Grant tables, version 1 (xen/include/public/grant_table.h), and the
//! `XENMEM_add_to_physmap` argument that places grant frames (memory.h).
//!
//! A domain grants another domain access to one of its frames by filling a
//! [`GrantEntryV1`] in its grant table; the other domain names the grant by its
//! [`GrantRef`] (the entry's index) in `GNTTABOP_map_grant_ref` or `GNTTABOP_copy`.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::DomId;

/// A grant reference: the index of an entry in the granting domain's table.
pub type GrantRef = u32;
/// A handle of a mapping, returned by `GNTTABOP_map_grant_ref`.
pub type GrantHandle = u32;

/// `GNTTABOP_*` sub-operations of `grant_table_op`.
pub const GNTTABOP_MAP_GRANT_REF: u64 = 0;
pub const GNTTABOP_UNMAP_GRANT_REF: u64 = 1;
pub const GNTTABOP_SETUP_TABLE: u64 = 2;
pub const GNTTABOP_DUMP_TABLE: u64 = 3;
pub const GNTTABOP_TRANSFER: u64 = 4;
pub const GNTTABOP_COPY: u64 = 5;
pub const GNTTABOP_QUERY_SIZE: u64 = 6;
pub const GNTTABOP_UNMAP_AND_REPLACE: u64 = 7;
pub const GNTTABOP_SET_VERSION: u64 = 8;
pub const GNTTABOP_GET_STATUS_FRAMES: u64 = 9;
pub const GNTTABOP_GET_VERSION: u64 = 10;
pub const GNTTABOP_SWAP_GRANT_REF: u64 = 11;
pub const GNTTABOP_CACHE_FLUSH: u64 = 12;

/// `struct grant_entry_v1`: 8 bytes; `flags` and `domid` form one 32-bit word that
/// the hypervisor updates with compare-and-swap.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct GrantEntryV1 {
    /// `GTF_*` type and flags.
    pub flags: u16,
    /// The domain being granted access.
    pub domid: DomId,
    /// The frame (gfn) being granted.
    pub frame: u32,
}

/// Bytes of one v1 grant entry.
pub const GRANT_ENTRY_V1_SIZE: u64 = 8;
/// v1 entries in one grant frame.
pub const GRANT_ENTRIES_PER_FRAME_V1: u32 = (crate::PAGE_SIZE / GRANT_ENTRY_V1_SIZE) as u32;

/// Entry type: not in use.
pub const GTF_INVALID: u16 = 0;
/// Entry type: `domid` may map or copy `frame`.
pub const GTF_PERMIT_ACCESS: u16 = 1;
/// Entry type: `domid` may transfer a frame to us (not supported by rxen).
pub const GTF_ACCEPT_TRANSFER: u16 = 2;
/// Entry type: transitive grant (v2 only).
pub const GTF_TRANSITIVE: u16 = 3;
/// Mask of the entry type.
pub const GTF_TYPE_MASK: u16 = 3;
/// The grantee may only read the frame.
pub const GTF_READONLY: u16 = 1 << 2;
/// Set by the hypervisor while the grantee has the frame mapped or is copying from it.
pub const GTF_READING: u16 = 1 << 3;
/// Set by the hypervisor while the grantee has the frame mapped writable or is copying to it.
pub const GTF_WRITING: u16 = 1 << 4;
pub const GTF_PWT: u16 = 1 << 5;
pub const GTF_PCD: u16 = 1 << 6;
pub const GTF_PAT: u16 = 1 << 7;
/// Sub-page grant (v2 only).
pub const GTF_SUB_PAGE: u16 = 1 << 8;

/// `GNTMAP_*` flags of `gnttab_map_grant_ref.flags`.
pub const GNTMAP_DEVICE_MAP: u32 = 1 << 0;
pub const GNTMAP_HOST_MAP: u32 = 1 << 1;
pub const GNTMAP_READONLY: u32 = 1 << 2;
pub const GNTMAP_APPLICATION_MAP: u32 = 1 << 3;
pub const GNTMAP_CONTAINS_PTE: u32 = 1 << 4;

/// `GNTCOPY_*` flags of `gnttab_copy.flags`.
pub const GNTCOPY_SOURCE_GREF: u16 = 1 << 0;
pub const GNTCOPY_DEST_GREF: u16 = 1 << 1;

/// `GNTST_*` per-operation status codes (the `status` fields).
pub const GNTST_OKAY: i16 = 0;
pub const GNTST_GENERAL_ERROR: i16 = -1;
pub const GNTST_BAD_DOMAIN: i16 = -2;
pub const GNTST_BAD_GNTREF: i16 = -3;
pub const GNTST_BAD_HANDLE: i16 = -4;
pub const GNTST_BAD_VIRT_ADDR: i16 = -5;
pub const GNTST_BAD_DEV_ADDR: i16 = -6;
pub const GNTST_NO_DEVICE_SPACE: i16 = -7;
pub const GNTST_PERMISSION_DENIED: i16 = -8;
pub const GNTST_BAD_PAGE: i16 = -9;
pub const GNTST_BAD_COPY_ARG: i16 = -10;
pub const GNTST_ADDRESS_TOO_BIG: i16 = -11;
pub const GNTST_EAGAIN: i16 = -12;
pub const GNTST_NO_SPACE: i16 = -13;

/// `struct gnttab_map_grant_ref`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GnttabMapGrantRef {
    pub host_addr: u64,
    pub flags: u32,
    pub r#ref: GrantRef,
    pub dom: DomId,
    pub status: i16,
    pub handle: GrantHandle,
    pub dev_bus_addr: u64,
}

/// `struct gnttab_unmap_grant_ref`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GnttabUnmapGrantRef {
    pub host_addr: u64,
    pub dev_bus_addr: u64,
    pub handle: GrantHandle,
    pub status: i16,
    pub pad: u16,
}

/// `struct gnttab_setup_table`: `frame_list` is a guest pointer to `nr_frames` `xen_pfn_t`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GnttabSetupTable {
    pub dom: DomId,
    pub pad0: u16,
    pub nr_frames: u32,
    pub status: i16,
    pub pad1: [u8; 6],
    pub frame_list: u64,
}

/// `struct gnttab_query_size`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GnttabQuerySize {
    pub dom: DomId,
    pub pad0: u16,
    pub nr_frames: u32,
    pub max_nr_frames: u32,
    pub status: i16,
    pub pad1: u16,
}

/// One side of a `gnttab_copy`: a grant ref (`GNTCOPY_*_gref`) or a gmfn of the caller
/// in `u` (a union of `grant_ref_t` and `xen_pfn_t`: the ref is its low 32 bits).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct GnttabCopyPtr {
    pub u: u64,
    pub domid: DomId,
    pub offset: u16,
    pub pad: u32,
}

/// `struct gnttab_copy`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct GnttabCopy {
    pub source: GnttabCopyPtr,
    pub dest: GnttabCopyPtr,
    pub len: u16,
    pub flags: u16,
    pub status: i16,
    pub pad: u16,
}

/// `struct gnttab_set_version`: in the version wanted, out the version in use.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GnttabSetVersion {
    pub version: u32,
}

/// `struct gnttab_get_version`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GnttabGetVersion {
    pub dom: DomId,
    pub pad: u16,
    pub version: u32,
}

/// `XENMAPSPACE_*` of `xen_add_to_physmap.space`.
pub const XENMAPSPACE_SHARED_INFO: u32 = 0;
pub const XENMAPSPACE_GRANT_TABLE: u32 = 1;
pub const XENMAPSPACE_GMFN: u32 = 2;
pub const XENMAPSPACE_GMFN_RANGE: u32 = 3;
pub const XENMAPSPACE_GMFN_FOREIGN: u32 = 4;
pub const XENMAPSPACE_DEV_MMIO: u32 = 5;
/// In `idx` with `XENMAPSPACE_grant_table`: a status frame (v2 only) rather than a
/// shared frame.
pub const XENMAPIDX_GRANT_TABLE_STATUS: u64 = 0x8000_0000;

/// `struct xen_add_to_physmap`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenAddToPhysmap {
    pub domid: DomId,
    /// Pages in a `XENMAPSPACE_gmfn_range`.
    pub size: u16,
    pub space: u32,
    pub idx: u64,
    pub gpfn: u64,
}

/// Returns the name of a `GNTST_*` status (`"GNTST_unknown"` for others).
pub fn status_name(status: i16) -> &'static str {
    match status {
        GNTST_OKAY => "GNTST_okay",
        GNTST_GENERAL_ERROR => "GNTST_general_error",
        GNTST_BAD_DOMAIN => "GNTST_bad_domain",
        GNTST_BAD_GNTREF => "GNTST_bad_gntref",
        GNTST_BAD_HANDLE => "GNTST_bad_handle",
        GNTST_BAD_VIRT_ADDR => "GNTST_bad_virt_addr",
        GNTST_BAD_DEV_ADDR => "GNTST_bad_dev_addr",
        GNTST_NO_DEVICE_SPACE => "GNTST_no_device_space",
        GNTST_PERMISSION_DENIED => "GNTST_permission_denied",
        GNTST_BAD_PAGE => "GNTST_bad_page",
        GNTST_BAD_COPY_ARG => "GNTST_bad_copy_arg",
        GNTST_ADDRESS_TOO_BIG => "GNTST_address_too_big",
        GNTST_EAGAIN => "GNTST_eagain",
        GNTST_NO_SPACE => "GNTST_no_space",
        _ => "GNTST_unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout_check::assert_layout;

    #[test]
    fn layouts() {
        assert_layout!(GrantEntryV1, size = 8, flags = 0, domid = 2, frame = 4);
        assert_layout!(
            GnttabMapGrantRef,
            size = 32,
            host_addr = 0,
            flags = 8,
            r#ref = 12,
            dom = 16,
            status = 18,
            handle = 20,
            dev_bus_addr = 24
        );
        assert_layout!(
            GnttabUnmapGrantRef,
            size = 24,
            host_addr = 0,
            dev_bus_addr = 8,
            handle = 16,
            status = 20
        );
        assert_layout!(
            GnttabSetupTable,
            size = 24,
            dom = 0,
            nr_frames = 4,
            status = 8,
            frame_list = 16
        );
        assert_layout!(
            GnttabQuerySize,
            size = 16,
            dom = 0,
            nr_frames = 4,
            max_nr_frames = 8,
            status = 12
        );
        assert_layout!(GnttabCopyPtr, size = 16, u = 0, domid = 8, offset = 10);
        assert_layout!(
            GnttabCopy,
            size = 40,
            source = 0,
            dest = 16,
            len = 32,
            flags = 34,
            status = 36
        );
        assert_layout!(GnttabSetVersion, size = 4, version = 0);
        assert_layout!(GnttabGetVersion, size = 8, dom = 0, version = 4);
        assert_layout!(
            XenAddToPhysmap,
            size = 24,
            domid = 0,
            size = 2,
            space = 4,
            idx = 8,
            gpfn = 16
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(GRANT_ENTRIES_PER_FRAME_V1, 512);
        assert_eq!(GTF_READONLY | GTF_READING | GTF_WRITING, 0x1c);
        assert_eq!(GTF_SUB_PAGE, 0x100);
        assert_eq!(GNTMAP_READONLY, 4);
        assert_eq!(GNTST_NO_SPACE, -13);
        assert_eq!(status_name(GNTST_BAD_GNTREF), "GNTST_bad_gntref");
        assert_eq!(status_name(-99), "GNTST_unknown");
    }
}
