//! Page-table entry bits and the per-level rules Xen applies to a 64-bit PV guest's
//! entries (`xen/arch/x86/mm.c`: `base_disallow_mask`, `L1_DISALLOW_MASK` ..
//! `L4_DISALLOW_MASK`, `FASTPATH_FLAG_WHITELIST`, `adjust_guest_l1e` ..).

pub const PAGE_PRESENT: u64 = 1 << 0;
pub const PAGE_RW: u64 = 1 << 1;
pub const PAGE_USER: u64 = 1 << 2;
pub const PAGE_PWT: u64 = 1 << 3;
pub const PAGE_PCD: u64 = 1 << 4;
pub const PAGE_ACCESSED: u64 = 1 << 5;
pub const PAGE_DIRTY: u64 = 1 << 6;
/// PAT in an L1 entry, PSE (superpage) in an L2/L3 entry.
pub const PAGE_PSE_OR_PAT: u64 = 1 << 7;
pub const PAGE_GLOBAL: u64 = 1 << 8;
/// Bits 9-11, free for the guest.
pub const PAGE_AVAIL: u64 = 0x7 << 9;
/// Bits 52-62, free for the guest.
pub const PAGE_AVAIL_HIGH: u64 = 0x7ff << 52;
pub const PAGE_NX: u64 = 1 << 63;
/// Xen's marker for a guest-kernel L1 mapping (`_PAGE_GUEST_KERNEL`, bit 52): set
/// together with U when the guest wrote an entry without U (its kernel runs at CPL 3).
pub const PAGE_GUEST_KERNEL: u64 = 1 << 52;
/// The frame-number bits of an entry (bits 12-51).
pub const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;
/// Every non-address bit.
pub const FLAGS_MASK: u64 = !ADDR_MASK;
/// The frame number Xen treats as "invalid" (all address bits set).
pub const INVALID_MFN: u64 = ADDR_MASK >> 12;
/// Entries per table.
pub const ENTRIES: usize = 512;

/// Flags a PV guest may set at every level (Xen's complement of `base_disallow_mask`).
const BASE_ALLOWED: u64 = PAGE_PRESENT
    | PAGE_RW
    | PAGE_USER
    | PAGE_ACCESSED
    | PAGE_DIRTY
    | PAGE_AVAIL
    | PAGE_AVAIL_HIGH
    | PAGE_NX;

/// Flags a guest may change in a present entry without re-validation
/// (`FASTPATH_FLAG_WHITELIST`); anything else (address, P, RW, caching) goes the slow
/// path with reference changes.
pub const FASTPATH_WHITELIST: u64 =
    PAGE_NX | PAGE_AVAIL_HIGH | PAGE_AVAIL | PAGE_GLOBAL | PAGE_DIRTY | PAGE_ACCESSED | PAGE_USER;

/// A page-table level, 1 (4 KiB leaf entries) to 4 (the root).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Level {
    L1,
    L2,
    L3,
    L4,
}

impl Level {
    /// The level a present entry of this level points at (`None` for L1: a data page).
    pub fn child(self) -> Option<Level> {
        match self {
            Level::L1 => None,
            Level::L2 => Some(Level::L1),
            Level::L3 => Some(Level::L2),
            Level::L4 => Some(Level::L3),
        }
    }

    /// Flags a guest may not set in a present entry of this level. For L1: no caching
    /// attributes (PWT/PCD/PAT; rxen domains have no devices), GLOBAL allowed. For
    /// L2-L4: no PSE (Xen gives PV guests no superpages), no GLOBAL, no caching bits.
    pub fn disallowed(self) -> u64 {
        let allowed = match self {
            Level::L1 => BASE_ALLOWED | PAGE_GLOBAL,
            _ => BASE_ALLOWED,
        };
        FLAGS_MASK & !allowed
    }
}

/// Whether an entry is present.
pub fn present(e: u64) -> bool {
    e & PAGE_PRESENT != 0
}

/// The frame an entry points at.
pub fn mfn(e: u64) -> u64 {
    (e & ADDR_MASK) >> 12
}

/// Whether the change `old -> new` of a present entry needs no re-validation
/// (same frame, presence, RW and caching bits).
pub fn fastpath(old: u64, new: u64) -> bool {
    (old ^ new) & !FASTPATH_WHITELIST == 0
}

/// The entry as Xen stores it for a 64-bit PV guest (`adjust_guest_l1e` ..
/// `adjust_guest_l4e`): the guest kernel runs at CPL 3, so every present entry gets U;
/// an L1 entry the guest wrote without U is marked [`PAGE_GUEST_KERNEL`].
pub fn adjust(level: Level, e: u64) -> u64 {
    if !present(e) {
        return e;
    }
    match level {
        Level::L1 if e & PAGE_USER == 0 => e | PAGE_USER | PAGE_GUEST_KERNEL,
        Level::L1 => e,
        _ => e | PAGE_USER,
    }
}

/// Whether replacing present entry `old` by `new` may take away access the CPU (and
/// KVM's shadow of it) still has: the entry disappears or moves, or loses RW or U, or
/// gains NX. Changes that only grant access need no invalidation (the probe's finding).
pub fn takes_access_away(old: u64, new: u64) -> bool {
    if !present(old) {
        return false;
    }
    !present(new)
        || mfn(old) != mfn(new)
        || (old & PAGE_RW != 0 && new & PAGE_RW == 0)
        || (old & PAGE_USER != 0 && new & PAGE_USER == 0)
        || (old & PAGE_NX == 0 && new & PAGE_NX != 0)
        || (old ^ new) & (PAGE_PWT | PAGE_PCD | PAGE_PSE_OR_PAT) != 0
}
