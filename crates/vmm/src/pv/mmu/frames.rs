//! The per-frame table: owner, type with its count and validated flag, general
//! reference count and pin flag (Xen's `struct page_info` for a PV domain).

use super::entry::Level;

/// Who a frame belongs to, which decides what the guest may do with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Owner {
    /// Ordinary RAM of the domain: mappable, may become a page table.
    Guest,
    /// The domain's `shared_info` frame: mappable read-write, never a page table
    /// (it holds a permanent writable type, like Xen's shared Xen-heap pages).
    SharedInfo,
    /// One of the domain's grant-table frames: like [`Owner::SharedInfo`].
    GrantFrame,
    /// rxen's own frames (IDT, GDT, TSS, stubs, the M2P): never mappable by the guest,
    /// not even read-only, and never a page table.
    Rxen,
    /// No RAM here (a hole in the frame space): treated like MMIO without permission.
    Absent,
    /// RAM the domain gave back (`XENMEM_decrease_reservation`, a balloon driver):
    /// nothing may map or type it, its host memory is released, and only
    /// `XENMEM_populate_physmap`/`XENMEM_increase_reservation` make it the domain's
    /// again (`super::balloon`).
    Ballooned,
}

impl Owner {
    /// Whether the frame counts as the domain's own (`get_page` succeeds).
    pub fn is_domains(self) -> bool {
        matches!(self, Owner::Guest | Owner::SharedInfo | Owner::GrantFrame)
    }

    /// Whether the frame holds a permanent writable type reference.
    pub(super) fn permanently_writable(self) -> bool {
        matches!(self, Owner::SharedInfo | Owner::GrantFrame)
    }
}

/// The use a frame is currently validated for (Xen's `PGT_*` types).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FrameType {
    /// Never typed.
    None,
    /// Mapped (or usable) read-write as data.
    Writable,
    /// A page table of this level.
    Table(Level),
    /// A GDT/LDT frame (`set_gdt`); the caller checks the descriptors.
    SegDesc,
}

/// What the MMU knows about one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FrameInfo {
    pub owner: Owner,
    pub ty: FrameType,
    /// References holding the type: entries pointing at a table, writable L1 entries,
    /// pins, CR3s, the permanent reference of shared frames.
    pub type_count: u32,
    /// Whether the type's contents have been checked. A page-table type is validated
    /// exactly while its count is non-zero; at zero its entries' references are
    /// released and any type may be taken next.
    pub validated: bool,
    /// General references: every present entry mapping the frame, every type holder.
    pub refs: u32,
    /// Pinned by `MMUEXT_PIN_*` (holds one reference and one type reference).
    pub pinned: bool,
}

impl FrameInfo {
    pub(super) fn new(owner: Owner) -> Self {
        let permanent = owner.permanently_writable();
        FrameInfo {
            owner,
            ty: if permanent {
                FrameType::Writable
            } else {
                FrameType::None
            },
            type_count: u32::from(permanent),
            validated: permanent,
            refs: 0,
            pinned: false,
        }
    }

    /// Whether the frame is currently a validated page table of some level.
    pub fn is_table(&self) -> bool {
        matches!(self.ty, FrameType::Table(_)) && self.type_count > 0 && self.validated
    }

    /// The level if the frame is currently a validated page table.
    pub fn table_level(&self) -> Option<Level> {
        match self.ty {
            FrameType::Table(l) if self.type_count > 0 && self.validated => Some(l),
            _ => None,
        }
    }
}
