//! Xen's x86-64 PV memory-management ABI: `mmu_update` and `mmuext_op` (xen.h), the
//! `update_va_mapping` flags, `vm_assist` types, and the fixed virtual layout that
//! `arch-x86/xen-x86_64.h` reserves for the hypervisor (including the read-only M2P).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `MMU_NORMAL_PT_UPDATE`: `ptr` is the machine address of a page-table entry, `val`
/// its new value (validated against the table's type).
pub const MMU_NORMAL_PT_UPDATE: u64 = 0;
/// `MMU_MACHPHYS_UPDATE`: `ptr` is a machine address in the frame whose M2P entry
/// becomes `val` (a pfn).
pub const MMU_MACHPHYS_UPDATE: u64 = 1;
/// `MMU_PT_UPDATE_PRESERVE_AD`: as `MMU_NORMAL_PT_UPDATE`, keeping the entry's current
/// accessed/dirty bits.
pub const MMU_PT_UPDATE_PRESERVE_AD: u64 = 2;
/// `MMU_PT_UPDATE_NO_TRANSLATE`: as `MMU_NORMAL_PT_UPDATE` with `ptr` never translated
/// (the same thing for a PV guest).
pub const MMU_PT_UPDATE_NO_TRANSLATE: u64 = 3;
/// The command lives in the low bits of `mmu_update.ptr` (entries are 8-byte aligned).
pub const MMU_UPDATE_CMD_MASK: u64 = 7;

/// `struct mmu_update`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct MmuUpdate {
    pub ptr: u64,
    pub val: u64,
}

/// `MMUEXT_*` commands of `mmuext_op`.
pub const MMUEXT_PIN_L1_TABLE: u32 = 0;
pub const MMUEXT_PIN_L2_TABLE: u32 = 1;
pub const MMUEXT_PIN_L3_TABLE: u32 = 2;
pub const MMUEXT_PIN_L4_TABLE: u32 = 3;
pub const MMUEXT_UNPIN_TABLE: u32 = 4;
pub const MMUEXT_NEW_BASEPTR: u32 = 5;
pub const MMUEXT_TLB_FLUSH_LOCAL: u32 = 6;
pub const MMUEXT_INVLPG_LOCAL: u32 = 7;
pub const MMUEXT_TLB_FLUSH_MULTI: u32 = 8;
pub const MMUEXT_INVLPG_MULTI: u32 = 9;
pub const MMUEXT_TLB_FLUSH_ALL: u32 = 10;
pub const MMUEXT_INVLPG_ALL: u32 = 11;
pub const MMUEXT_FLUSH_CACHE: u32 = 12;
pub const MMUEXT_SET_LDT: u32 = 13;
pub const MMUEXT_NEW_USER_BASEPTR: u32 = 15;
pub const MMUEXT_CLEAR_PAGE: u32 = 16;
pub const MMUEXT_COPY_PAGE: u32 = 17;
pub const MMUEXT_FLUSH_CACHE_GLOBAL: u32 = 18;
pub const MMUEXT_MARK_SUPER: u32 = 19;
pub const MMUEXT_UNMARK_SUPER: u32 = 20;

/// `struct mmuext_op` (x86-64): `arg1` is `mfn` or `linear_addr`, `arg2` is `nr_ents`,
/// a `vcpumask` guest handle or `src_mfn`, depending on `cmd`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct MmuextOp {
    pub cmd: u32,
    pub pad: u32,
    pub arg1: u64,
    pub arg2: u64,
}

/// `UVMF_*` flags of `update_va_mapping`: the flush type in the low two bits, the
/// flush scope above (`UVMF_MULTI` carries a vCPU-mask pointer in the upper bits).
pub const UVMF_NONE: u64 = 0;
pub const UVMF_TLB_FLUSH: u64 = 1;
pub const UVMF_INVLPG: u64 = 2;
pub const UVMF_FLUSHTYPE_MASK: u64 = 3;
pub const UVMF_MULTI: u64 = 0;
pub const UVMF_LOCAL: u64 = 0;
pub const UVMF_ALL: u64 = 1 << 2;

/// `vm_assist` commands and types (`VMASST_*`).
pub const VMASST_CMD_ENABLE: u32 = 0;
pub const VMASST_CMD_DISABLE: u32 = 1;
pub const VMASST_TYPE_4GB_SEGMENTS: u32 = 0;
pub const VMASST_TYPE_4GB_SEGMENTS_NOTIFY: u32 = 1;
pub const VMASST_TYPE_WRITABLE_PAGETABLES: u32 = 2;
pub const VMASST_TYPE_PAE_EXTENDED_CR3: u32 = 3;
pub const VMASST_TYPE_ARCHITECTURAL_IOPL: u32 = 4;
pub const VMASST_TYPE_RUNSTATE_UPDATE_FLAG: u32 = 5;
pub const VMASST_TYPE_M2P_STRICT: u32 = 32;

/// `HYPERVISOR_VIRT_START` (x86-64): the start of the area reserved for the
/// hypervisor in every guest address space.
pub const HYPERVISOR_VIRT_START: u64 = 0xFFFF_8000_0000_0000;
/// `HYPERVISOR_VIRT_END` (x86-64).
pub const HYPERVISOR_VIRT_END: u64 = 0xFFFF_8800_0000_0000;
/// `MACH2PHYS_VIRT_START`: the read-only machine-to-phys table (`RO_MPT_VIRT_START`).
pub const MACH2PHYS_VIRT_START: u64 = 0xFFFF_8000_0000_0000;
/// `MACH2PHYS_VIRT_END` (256 GiB after the start).
pub const MACH2PHYS_VIRT_END: u64 = 0xFFFF_8040_0000_0000;
/// Xen's name for the M2P's fixed address inside the hypervisor area.
pub const RO_MPT_VIRT_START: u64 = MACH2PHYS_VIRT_START;
/// End of the read-only M2P.
pub const RO_MPT_VIRT_END: u64 = MACH2PHYS_VIRT_END;
/// Bytes per M2P entry (`xen_pfn_t`).
pub const MACH2PHYS_ENTRY_SIZE: u64 = 8;

/// `XENMEM_machphys_mapping` (memory.h): where the M2P is, as [`MachphysMapping`].
pub const XENMEM_MACHPHYS_MAPPING: u64 = 12;

/// `struct xen_machphys_mapping`: the M2P's virtual span and the highest mfn it covers.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct MachphysMapping {
    pub v_start: u64,
    pub v_end: u64,
    pub max_mfn: u64,
}

/// First L4 slot of the hypervisor area (`ROOT_PAGETABLE_FIRST_XEN_SLOT`).
pub const L4_FIRST_XEN_SLOT: usize = l4_slot(HYPERVISOR_VIRT_START);
/// Last L4 slot of the hypervisor area (`ROOT_PAGETABLE_LAST_XEN_SLOT`), inclusive.
pub const L4_LAST_XEN_SLOT: usize = l4_slot(HYPERVISOR_VIRT_END - 1);

/// The L4 slot that maps a canonical virtual address.
pub const fn l4_slot(va: u64) -> usize {
    ((va >> 39) & 0x1ff) as usize
}

/// Whether a 64-bit PV guest may write L4 slot `slot` (`is_guest_l4_slot`).
pub const fn is_guest_l4_slot(slot: usize) -> bool {
    slot < L4_FIRST_XEN_SLOT || slot > L4_LAST_XEN_SLOT
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout_check::assert_layout;

    #[test]
    fn layouts() {
        assert_layout!(MmuUpdate, size = 16, ptr = 0, val = 8);
        assert_layout!(MmuextOp, size = 24, cmd = 0, arg1 = 8, arg2 = 16);
        assert_layout!(
            MachphysMapping,
            size = 24,
            v_start = 0,
            v_end = 8,
            max_mfn = 16
        );
    }

    #[test]
    fn reserved_slots() {
        assert_eq!(L4_FIRST_XEN_SLOT, 256);
        assert_eq!(L4_LAST_XEN_SLOT, 271);
        assert!(is_guest_l4_slot(255));
        assert!(!is_guest_l4_slot(256));
        assert!(!is_guest_l4_slot(271));
        assert!(is_guest_l4_slot(272));
        assert_eq!(l4_slot(RO_MPT_VIRT_START), 256);
        assert_eq!(RO_MPT_VIRT_END - RO_MPT_VIRT_START, 256 << 30);
    }
}
