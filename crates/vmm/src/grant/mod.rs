//! Grant tables, version 1 (Xen's `xen/common/grant_table.c` semantics).
//!
//! The guest grants domain 0 access to its frames by filling `grant_entry_v1`s in its
//! grant table, whose frames live in guest RAM at pfns the guest chose with
//! `XENMEM_add_to_physmap(XENMAPSPACE_grant_table)` ([`GrantTable::place_frame`]).
//! Domain 0's backends, which live in the VMM, use the grants through
//! [`GrantTable::map`] (a checked window on the granted frame, [`GrantMapping`]),
//! [`GrantTable::copy_from_grant`] and [`GrantTable::copy_to_grant`]; the guest's own
//! `grant_table_op` hypercalls are decoded by [`hypercall::decode`] (pure, fuzzable)
//! and executed by [`hypercall::execute`].
//!
//! Every value read from a shared grant entry is read once, with an atomic load or
//! compare-and-swap, validated, and only then used: a guest changing its entries at
//! any moment gets a `GNTST_*` error, never access outside the frame it granted.

mod entry;
mod error;
pub mod hypercall;
mod mapping;
mod table;

pub use error::GrantError;
pub use mapping::GrantMapping;
pub use table::{
    GrantSnapshot, GrantTable, PlaceError, PvFrames, INITIAL_GRANT_FRAMES, MAX_GRANT_FRAMES,
    MAX_MAPTRACK,
};

/// The domain id of domain 0, whose backends run inside the VMM.
pub const DOM0: rxen_abi::DomId = 0;

#[cfg(test)]
mod tests;
