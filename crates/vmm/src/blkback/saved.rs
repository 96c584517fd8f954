//! What a save keeps of a connected vbd (`crate::snapshot`, `docs/migration.md`):
//! per queue, the ring's grant references, the guest's event-channel port, the
//! backend's private indices after every request taken was answered, whether
//! persistent grants were negotiated and which were mapped. At restore these come
//! from an image and are hostile: [`SavedVbd::check`] refuses what a frontend's
//! xenstore nodes could not have said, and the grant table and event channels
//! refuse refs that are not granted to domain 0 and ports that are not unbound for it.

use serde::{Deserialize, Serialize};

use super::ring::MAX_RING_PAGE_ORDER;
use rxen_abi::blkif::blkif_ring_size;

/// One queue's ring as the backend left it at a save.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedRing {
    /// `ring-ref0`.. (one for a one-page ring).
    pub ring_refs: Vec<u32>,
    /// The guest's port of the ring's event channel.
    pub evtchn: u32,
    /// Both ends offered `feature-persistent`.
    pub persistent: bool,
    /// The backend's `req_cons`: requests before it were taken.
    pub req_cons: u32,
    /// The backend's `rsp_prod_pvt`: equal to `req_cons` after a quiesce (every
    /// request taken was answered and its response published).
    pub rsp_prod_pvt: u32,
    /// Persistent grants that were mapped (for the record: they are mapped again
    /// on first use, as after any reconnection).
    pub persistent_grants: Vec<u32>,
}

/// A vbd's rings at a save (one per queue), and what its disk was.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedVbd {
    pub rings: Vec<SavedRing>,
    /// The disk's size and mode the frontend was told (`sectors`, `info`): the disk
    /// given at restore must match.
    pub sectors: u64,
    pub writable: bool,
}

impl SavedVbd {
    /// Refuses a state no frontend could have negotiated with this backend
    /// offering `max_queues` queues, or a disk that is not the one saved.
    pub fn check(&self, max_queues: u32, sectors: u64, writable: bool) -> Result<(), String> {
        if self.sectors != sectors || self.writable != writable {
            return Err(format!(
                "the disk was {} sectors ({}), it is {} sectors ({}) now",
                self.sectors,
                mode(self.writable),
                sectors,
                mode(writable)
            ));
        }
        let n = self.rings.len();
        if n == 0 || n > max_queues as usize {
            return Err(format!("{n} queues (1 to {max_queues} offered)"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for r in &self.rings {
            let pages = r.ring_refs.len();
            if !pages.is_power_of_two() || pages > 1 << MAX_RING_PAGE_ORDER {
                return Err(format!("a ring of {pages} pages"));
            }
            if let Some(g) = r.ring_refs.iter().find(|g| !seen.insert(**g)) {
                return Err(format!("grant {g} is named as a ring page twice"));
            }
            let size = blkif_ring_size(pages.trailing_zeros()) as u32;
            if r.req_cons.wrapping_sub(r.rsp_prod_pvt) > size {
                return Err(format!(
                    "req_cons {} and rsp_prod_pvt {} are more than a ring apart",
                    r.req_cons, r.rsp_prod_pvt
                ));
            }
        }
        Ok(())
    }
}

impl From<&SavedVbd> for rxen_vmm_api::ConnectedVbd {
    fn from(v: &SavedVbd) -> Self {
        let rings = v
            .rings
            .iter()
            .map(|r| rxen_vmm_api::ConnectedRing {
                ring_refs: r.ring_refs.clone(),
                evtchn: r.evtchn,
                persistent: r.persistent,
            })
            .collect();
        Self { rings }
    }
}

impl crate::xenbus_backend::SavedDevice for SavedVbd {
    /// What blkfront wrote ([`rxen_vmm_api::ConnectedVbd::frontend_nodes`]).
    fn frontend_nodes(&self) -> Vec<(String, String)> {
        rxen_vmm_api::ConnectedVbd::from(self).frontend_nodes()
    }
}

fn mode(writable: bool) -> &'static str {
    if writable {
        "writable"
    } else {
        "read-only"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xenbus_backend::SavedDevice;

    fn ring(refs: &[u32], evtchn: u32, persistent: bool) -> SavedRing {
        SavedRing {
            ring_refs: refs.to_vec(),
            evtchn,
            persistent,
            req_cons: 3,
            rsp_prod_pvt: 3,
            persistent_grants: Vec::new(),
        }
    }

    fn node<'a>(nodes: &'a [(String, String)], k: &str) -> Option<&'a str> {
        nodes.iter().find(|n| n.0 == k).map(|n| n.1.as_str())
    }

    #[test]
    fn frontend_nodes_say_what_blkfront_negotiated() {
        let one = SavedVbd {
            rings: vec![ring(&[8], 5, true)],
            sectors: 2048,
            writable: true,
        };
        let n = one.frontend_nodes();
        assert_eq!(node(&n, "state"), Some("4"));
        assert_eq!(node(&n, "ring-ref"), Some("8"));
        assert_eq!(node(&n, "event-channel"), Some("5"));
        assert_eq!(node(&n, "feature-persistent"), Some("1"));
        assert_eq!(node(&n, "multi-queue-num-queues"), None);
        assert_eq!(node(&n, "ring-page-order"), None);
        let two = SavedVbd {
            rings: vec![ring(&[10, 11], 6, false), ring(&[12, 13], 7, false)],
            sectors: 8,
            writable: false,
        };
        let n = two.frontend_nodes();
        assert_eq!(node(&n, "multi-queue-num-queues"), Some("2"));
        assert_eq!(node(&n, "ring-page-order"), Some("1"));
        assert_eq!(node(&n, "feature-persistent"), Some("0"));
        assert_eq!(node(&n, "queue-0/ring-ref0"), Some("10"));
        assert_eq!(node(&n, "queue-1/ring-ref1"), Some("13"));
        assert_eq!(node(&n, "queue-1/event-channel"), Some("7"));
    }
}
