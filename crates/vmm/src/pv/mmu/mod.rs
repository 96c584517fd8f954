//! The frame-type and validation core of Xen's direct-paging MMU for x86-64 PV guests
//! (`xen/arch/x86/mm.c`): the guest's page tables live in its own memory, the guest
//! never writes them directly, and every change comes through `mmu_update`,
//! `update_va_mapping` or `mmuext_op`, which this module validates.
//!
//! Pure logic over [`GuestFrames`]: no KVM, no guest-virtual pointers, no hypercall
//! decoding (the caller copies the request arrays in and the results out). Nothing
//! here panics on guest input; every refusal is an [`MmuError`] with Xen's errno.
//! The rules as implemented are listed in docs/guest-abi.md ("Direct-paging MMU").
//!
//! Invariants kept (checked by [`Mmu::audit`] in tests and fuzzing): every present
//! entry of a validated table holds one reference on its target, plus a type
//! reference (the child table's, or a writable one for an RW L1 entry); a frame is
//! never a page table and writable at once; page-table frames belong to the domain.

mod audit;
mod balloon;
pub mod entry;
mod error;
mod ext;
mod frames;
mod guest;
mod invalidate;
mod refs;
pub mod segdesc;
mod update;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use entry::Level;
pub use error::MmuError;
pub use frames::{FrameInfo, FrameType, Owner};
pub use guest::{GuestFrames, VecFrames};
pub use invalidate::{Invalidations, MAX_FRAMES, MAX_TABLES_WALKED};

use rxen_abi::mmu::{L4_FIRST_XEN_SLOT, L4_LAST_XEN_SLOT};

/// Number of L4 slots Xen reserves (256..=271).
pub const XEN_L4_SLOTS: usize = L4_LAST_XEN_SLOT - L4_FIRST_XEN_SLOT + 1;

/// The page-table bases of one vCPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VcpuBases {
    /// The kernel L4 (`NEW_BASEPTR`), if any. Holds a reference and a type reference.
    pub kernel: Option<u64>,
    /// The user L4 (`NEW_USER_BASEPTR`), if any. Holds a reference and a type reference.
    pub user: Option<u64>,
    /// The LDT (`MMUEXT_SET_LDT`): linear base and entries.
    pub ldt: (u64, u32),
    /// The guest GDT (`set_gdt`): each frame holds a reference and the descriptor type.
    pub gdt: segdesc::GdtFrames,
    /// The frame holding the relocated `vcpu_info` (`VCPUOP_register_vcpu_info`): a
    /// reference and a writable type, for good, so it can never become a page table
    /// while rxen writes event bits into it.
    pub vcpu_info: Option<u64>,
}

/// What one batch (`mmu_update` array, `mmuext_op` array, one `update_va_mapping`)
/// did: how many requests completed, the first error, and the frames whose old
/// mappings the caller must zap before the guest runs again (even on error: the
/// completed requests stay done).
#[derive(Debug)]
pub struct BatchOutcome {
    pub done: usize,
    pub result: Result<(), MmuError>,
    pub invalidate: Invalidations,
}

/// One domain's direct-paging MMU state.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Mmu {
    frames: Vec<FrameInfo>,
    vcpus: Vec<VcpuBases>,
    /// What rxen puts in the reserved L4 slots of every validated L4 (not counted).
    xen_l4: [u64; XEN_L4_SLOTS],
}

impl Mmu {
    /// An MMU for `nr_frames` frames, all ordinary RAM of the domain (mark the special
    /// ones with [`Mmu::set_owner`]), and `nr_vcpus` vCPUs without page tables.
    pub fn new(nr_frames: u64, nr_vcpus: usize) -> Self {
        let n = usize::try_from(nr_frames).unwrap_or(0);
        Mmu {
            frames: vec![FrameInfo::new(Owner::Guest); n],
            vcpus: vec![VcpuBases::default(); nr_vcpus],
            xen_l4: [0; XEN_L4_SLOTS],
        }
    }

    /// Number of vCPUs with bases.
    pub fn nr_vcpus(&self) -> usize {
        self.vcpus.len()
    }

    /// Number of frames managed.
    pub fn nr_frames(&self) -> u64 {
        self.frames.len() as u64
    }

    /// The state of `frame` (`None` out of range).
    pub fn frame(&self, frame: u64) -> Option<&FrameInfo> {
        self.frames.get(usize::try_from(frame).ok()?)
    }

    /// The page-table bases of `vcpu`.
    pub fn vcpu(&self, vcpu: usize) -> Option<&VcpuBases> {
        self.vcpus.get(vcpu)
    }

    /// Changes who owns `frame`. Only a frame nothing references may change owner.
    pub fn set_owner(&mut self, frame: u64, owner: Owner) -> Result<(), MmuError> {
        let info = self
            .info(frame)
            .ok_or(MmuError::Invalid("frame out of range"))?;
        let baseline = u32::from(info.owner.permanently_writable());
        if info.refs != 0 || info.type_count != baseline || info.pinned {
            return Err(MmuError::Invalid("frame is in use"));
        }
        if let Some(slot) = self.info_mut(frame) {
            *slot = FrameInfo::new(owner);
        }
        Ok(())
    }

    /// Sets what reserved L4 slot `slot` (256..=271) holds in every validated L4,
    /// e.g. rxen's read-only M2P mapping at `RO_MPT_VIRT_START`. Written into L4s
    /// validated from now on and into those validated already.
    pub fn set_xen_l4_entry<G: GuestFrames + ?Sized>(
        &mut self,
        mem: &mut G,
        slot: usize,
        value: u64,
    ) -> Result<(), MmuError> {
        let i = slot
            .checked_sub(L4_FIRST_XEN_SLOT)
            .filter(|i| *i < XEN_L4_SLOTS)
            .ok_or(MmuError::Invalid("not a reserved L4 slot"))?;
        self.xen_l4[i] = value;
        for (f, info) in self.frames.iter().enumerate() {
            if info.table_level() == Some(Level::L4) {
                mem.write_entry(f as u64, slot, value);
            }
        }
        Ok(())
    }

    fn info(&self, frame: u64) -> Option<&FrameInfo> {
        self.frames.get(usize::try_from(frame).ok()?)
    }

    fn info_mut(&mut self, frame: u64) -> Option<&mut FrameInfo> {
        self.frames.get_mut(usize::try_from(frame).ok()?)
    }
}
