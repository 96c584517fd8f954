//! blkback's device in the shared xenbus backend ([`crate::xenbus_backend`], which runs
//! Xen's state machine and hot-plug for every driver): a vbd announces
//! `feature-flush-cache` and the data path's features
//! ([`super::negotiate::backend_features`], with `multi-queue-max-queues`); on connect
//! it reads the ring details ([`super::negotiate::read_frontend`]: `ring-ref`/`ring-ref%u`,
//! `ring-page-order`, `event-channel`, `protocol`, `feature-persistent`,
//! `multi-queue-num-queues` and `queue-N/...`), maps and binds every queue's ring (one
//! [`Connection`] each) and publishes `sectors`, `info`, `sector-size` and
//! `physical-sector-size`. Dropping a detached vbd closes its disk.

use std::sync::Arc;

use rxen_abi::blkif::{BLKIF_SECTOR_SIZE, VDISK_READONLY};

use super::connection::Connection;
use super::disk::Disk;
use super::saved::SavedVbd;
use crate::domain::DomainShared;
use crate::xenbus_backend::{self, BackendDevice, ConnectFailure, ReadNode};

pub use crate::xenbus_backend::DeviceError;

/// The running xenbus thread of the domain's vbds.
pub type XenbusBackend = xenbus_backend::XenbusBackend<Vbd>;

/// Xen's backend directory of vbd `devid` of domain `domid`.
pub fn backend_path(domid: u16, devid: u32) -> String {
    xenbus_backend::backend_path::<Vbd>(domid, devid)
}

/// One virtual block device of the domain: its disk and, while connected, one ring
/// per queue.
pub struct Vbd {
    disk: Arc<Disk>,
    conns: Vec<Connection>,
}

impl Vbd {
    pub fn new(disk: Arc<Disk>) -> Self {
        Vbd {
            disk,
            conns: Vec::new(),
        }
    }
}

/// The nodes the backend publishes when it connects (besides `state`).
fn connect_nodes(disk_sectors: u64, writable: bool) -> Vec<(&'static str, String)> {
    let info = if writable { 0 } else { VDISK_READONLY };
    vec![
        ("sectors", disk_sectors.to_string()),
        ("info", info.to_string()),
        ("sector-size", BLKIF_SECTOR_SIZE.to_string()),
        ("physical-sector-size", BLKIF_SECTOR_SIZE.to_string()),
    ]
}

impl BackendDevice for Vbd {
    const CLASS: &'static str = "vbd";
    const DRIVER: &'static str = "blkback";

    fn features(&self) -> Vec<(String, String)> {
        let max_queues = super::negotiate::max_queues();
        std::iter::once(("feature-flush-cache".to_string(), "1".to_string()))
            .chain(
                super::negotiate::backend_features(self.disk.writable(), max_queues)
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string())),
            )
            .collect()
    }

    fn connected(&self) -> bool {
        !self.conns.is_empty()
    }

    fn connect(
        &mut self,
        dom: &Arc<DomainShared>,
        devid: u32,
        read: &mut ReadNode<'_>,
    ) -> Result<Vec<(String, String)>, ConnectFailure> {
        let rings = super::negotiate::read_frontend(super::negotiate::max_queues(), read)?
            .map_err(|e| ConnectFailure::Refused(e.to_string()))?;
        let mut conns = Vec::with_capacity(rings.len());
        for (q, ring) in rings.iter().enumerate() {
            let name = if rings.len() == 1 {
                format!("{}-vbd{devid}", dom.config.name)
            } else {
                format!("{}-vbd{devid}-q{q}", dom.config.name)
            };
            // On an error the queues already connected are dropped (stopped) here.
            conns.push(
                Connection::start(dom.clone(), self.disk.clone(), ring, name)
                    .map_err(|e| ConnectFailure::Refused(e.to_string()))?,
            );
        }
        self.conns = conns;
        tracing::info!(
            devid,
            queues = rings.len(),
            ring_refs = ?rings.iter().map(|r| &r.ring_refs).collect::<Vec<_>>(),
            evtchns = ?rings.iter().map(|r| r.evtchn).collect::<Vec<_>>(),
            persistent = rings.iter().any(|r| r.persistent),
            disk = %self.disk.path().display(),
            "blkback: connected"
        );
        Ok(connect_nodes(self.disk.sectors(), self.disk.writable())
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect())
    }

    fn disconnect(&mut self, devid: u32) {
        let queues = self.conns.len();
        for mut conn in self.conns.drain(..) {
            conn.stop();
        }
        tracing::debug!(devid, queues, "blkback: rings stopped");
    }

    fn describe(&self) -> String {
        self.disk.path().display().to_string()
    }

    type Frontend = rxen_vmm_api::ConnectedVbd;

    fn frontend(&self) -> Option<Self::Frontend> {
        if self.conns.is_empty() {
            return None;
        }
        let rings = self
            .conns
            .iter()
            .map(|c| {
                let r = c.frontend_ring();
                rxen_vmm_api::ConnectedRing {
                    ring_refs: r.ring_refs.clone(),
                    evtchn: r.evtchn,
                    persistent: r.persistent,
                }
            })
            .collect();
        Some(rxen_vmm_api::ConnectedVbd { rings })
    }

    type Saved = SavedVbd;

    fn quiesce(&mut self, devid: u32) -> Option<SavedVbd> {
        if self.conns.is_empty() {
            return None;
        }
        let mut rings = Vec::with_capacity(self.conns.len());
        for conn in self.conns.drain(..) {
            // A ring that broke (or did not drain) is not saved: the restored
            // frontend finds it as the broken ring left it, unserved.
            rings.extend(conn.quiesce());
        }
        if let Err(e) = self.disk.flush() {
            tracing::warn!(
                devid,
                "blkback: flushing {} for a save: {e}",
                self.describe()
            );
        }
        tracing::info!(devid, queues = rings.len(), rings = ?rings.iter().map(|r| (r.req_cons, r.rsp_prod_pvt)).collect::<Vec<_>>(), "blkback: quiesced");
        if rings.is_empty() {
            return None;
        }
        Some(SavedVbd {
            rings,
            sectors: self.disk.sectors(),
            writable: self.disk.writable(),
        })
    }

    fn resume(
        &mut self,
        dom: &Arc<DomainShared>,
        devid: u32,
        saved: &SavedVbd,
    ) -> Result<Vec<(String, String)>, ConnectFailure> {
        saved
            .check(
                super::negotiate::max_queues(),
                self.disk.sectors(),
                self.disk.writable(),
            )
            .map_err(ConnectFailure::Refused)?;
        let mut conns = Vec::with_capacity(saved.rings.len());
        for (q, ring) in saved.rings.iter().enumerate() {
            let name = if saved.rings.len() == 1 {
                format!("{}-vbd{devid}", dom.config.name)
            } else {
                format!("{}-vbd{devid}-q{q}", dom.config.name)
            };
            conns.push(
                Connection::resume(dom.clone(), self.disk.clone(), ring, name)
                    .map_err(|e| ConnectFailure::Refused(e.to_string()))?,
            );
        }
        self.conns = conns;
        tracing::info!(devid, queues = saved.rings.len(), "blkback: resumed");
        Ok(connect_nodes(self.disk.sectors(), self.disk.writable())
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn backend_layout_is_xens() {
        assert_eq!(backend_path(7, 768), "/local/domain/0/backend/vbd/7/768");
        let nodes = connect_nodes(32768, false);
        assert_eq!(
            nodes,
            vec![
                ("sectors", "32768".to_string()),
                ("info", "4".to_string()),
                ("sector-size", "512".to_string()),
                ("physical-sector-size", "512".to_string()),
            ]
        );
        assert_eq!(connect_nodes(1, true)[1], ("info", "0".to_string()));
    }
}
