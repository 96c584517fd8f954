//! Feature flags reported by `XENVER_get_features` (xen/include/public/features.h).

pub const XENFEAT_WRITABLE_PAGE_TABLES: u32 = 0;
pub const XENFEAT_WRITABLE_DESCRIPTOR_TABLES: u32 = 1;
pub const XENFEAT_AUTO_TRANSLATED_PHYSMAP: u32 = 2;
pub const XENFEAT_SUPERVISOR_MODE_KERNEL: u32 = 3;
pub const XENFEAT_PAE_PGDIR_ABOVE_4GB: u32 = 4;
pub const XENFEAT_MMU_PT_UPDATE_PRESERVE_AD: u32 = 5;
/// 32-bit PV guests' highmem assist (`VMASST_TYPE_m2p_strict` era): reported to all
/// PV domains by Xen.
pub const XENFEAT_HIGHMEM_ASSIST: u32 = 6;
/// Grant mappings keep the PTE's available bits; Linux refuses to boot as a PV guest
/// without it.
pub const XENFEAT_GNTTAB_MAP_AVAIL_BITS: u32 = 7;
pub const XENFEAT_HVM_CALLBACK_VECTOR: u32 = 8;
pub const XENFEAT_HVM_SAFE_PVCLOCK: u32 = 9;
pub const XENFEAT_DOM0: u32 = 11;
/// Number of 32-bit feature submaps Xen defines.
pub const XENFEAT_NR_SUBMAPS: u32 = 1;
