//! Persistent grants (`feature-persistent`, blkif.h): when both ends offer it, the
//! frontend keeps reusing a pool of granted pages (read-write, indirect pages too) and
//! the backend keeps each one mapped from first use until the ring disconnects, so a
//! request costs no grant operation at all.
//!
//! The cache is bounded ([`MAX_PERSISTENT_GRANTS`], as Linux's `max_persistent_grants`):
//! a grant beyond it, or one that cannot be mapped read-write (a frontend that granted
//! it read-only), is used by grant copy for that request, which reports its errors as
//! usual. Mappings are shared with in-flight requests (`Arc`): a grant is unmapped when
//! the cache is dropped and the last request using it has finished.

use std::collections::HashMap;
use std::sync::Arc;

use crate::grant::{GrantMapping, GrantTable, DOM0};

/// Grants kept mapped per ring at most.
pub const MAX_PERSISTENT_GRANTS: usize = 2048;

/// The persistently mapped grants of one ring.
#[derive(Default)]
pub struct PersistentGrants {
    maps: HashMap<u32, Arc<GrantMapping>>,
}

impl PersistentGrants {
    /// The mapping of `gref`, mapped read-write now if it is new and the cache has
    /// room; `None` means "use grant copy".
    pub fn get(&mut self, grants: &GrantTable, gref: u32) -> Option<Arc<GrantMapping>> {
        if let Some(m) = self.maps.get(&gref) {
            return Some(m.clone());
        }
        if self.maps.len() >= MAX_PERSISTENT_GRANTS {
            return None;
        }
        match grants.map(DOM0, gref, false) {
            Ok(m) => {
                let m = Arc::new(m);
                self.maps.insert(gref, m.clone());
                Some(m)
            }
            Err(e) => {
                tracing::debug!(gref, "blkback: persistent grant not mapped ({e}); copying");
                None
            }
        }
    }

    /// Grants mapped.
    /// The grant references mapped, in order.
    pub fn refs(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.maps.keys().copied().collect();
        v.sort_unstable();
        v
    }

    pub fn len(&self) -> usize {
        self.maps.len()
    }

    /// Whether nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.maps.is_empty()
    }
}
