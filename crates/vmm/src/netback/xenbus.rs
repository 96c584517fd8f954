//! netback's device in the shared xenbus backend ([`crate::xenbus_backend`], which
//! runs Xen's state machine and hot-plug for every driver): a vif announces the
//! features of [`super::negotiate::backend_features`]; on connect it reads the ring
//! details ([`super::negotiate::read_frontend`]), maps and binds them and starts a
//! [`Connection`] moving packets to and from its TAP. Dropping a detached vif closes
//! its TAP, which deletes the host interface (and the kernel drops its routes and
//! its bridge port with it).

use std::sync::{Arc, Mutex};

use rxen_abi::netif::{NET_RX_RING_SIZE, NET_TX_RING_SIZE};

use super::connection::Connection;
use super::negotiate::FrontendRings;
use super::saved::SavedVif;
use super::tap::Tap;
use crate::domain::DomainShared;
use crate::xenbus_backend::{self, BackendDevice, ConnectFailure, ReadNode};

/// The running xenbus thread of the domain's vifs.
pub type NetXenbus = xenbus_backend::XenbusBackend<Vif>;

/// Xen's backend directory of vif `devid` of domain `domid`.
pub fn backend_path(domid: u16, devid: u32) -> String {
    xenbus_backend::backend_path::<Vif>(domid, devid)
}

/// One vif of the domain: its TAP and, while connected, its rings.
pub struct Vif {
    tap: Arc<Mutex<Tap>>,
    /// The MAC configured for the vif (a restored vif must have the saved one).
    mac: String,
    conn: Option<Connection>,
}

impl Vif {
    pub fn new(tap: Tap, mac: String) -> Self {
        Vif {
            tap: Arc::new(Mutex::new(tap)),
            mac,
            conn: None,
        }
    }

    fn tap_name(&self) -> String {
        self.tap
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .name()
            .to_string()
    }
}

impl BackendDevice for Vif {
    const CLASS: &'static str = "vif";
    const DRIVER: &'static str = "netback";

    fn features(&self) -> Vec<(String, String)> {
        super::negotiate::backend_features()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn connected(&self) -> bool {
        self.conn.is_some()
    }

    fn connect(
        &mut self,
        dom: &Arc<DomainShared>,
        devid: u32,
        read: &mut ReadNode<'_>,
    ) -> Result<Vec<(String, String)>, ConnectFailure> {
        let rings = super::negotiate::read_frontend(read)?
            .map_err(|e| ConnectFailure::Refused(e.to_string()))?;
        let tap_name = self.tap_name();
        let conn = Connection::start(dom.clone(), self.tap.clone(), &rings, tap_name.clone())
            .map_err(|e| ConnectFailure::Refused(e.to_string()))?;
        self.conn = Some(conn);
        tracing::info!(
            devid,
            tx_ring_ref = rings.tx_ring_ref,
            rx_ring_ref = rings.rx_ring_ref,
            evtchn = ?rings.evtchn,
            rx = ?rings.rx,
            tap = %tap_name,
            "netback: connected"
        );
        Ok(Vec::new())
    }

    fn disconnect(&mut self, _devid: u32) {
        if let Some(mut conn) = self.conn.take() {
            conn.stop();
        }
    }

    fn describe(&self) -> String {
        format!("TAP {}", self.tap_name())
    }

    type Frontend = rxen_vmm_api::ConnectedVif;

    fn frontend(&self) -> Option<Self::Frontend> {
        let r = self.conn.as_ref()?.frontend_rings();
        Some(rxen_vmm_api::ConnectedVif {
            tx_ring_ref: r.tx_ring_ref,
            rx_ring_ref: r.rx_ring_ref,
            evtchn: r.evtchn.into(),
            rx_offload: r.rx.into(),
        })
    }

    type Saved = SavedVif;

    fn quiesce(&mut self, devid: u32) -> Option<Self::Saved> {
        let (rings, (tx, rx)) = self.conn.take()?.quiesce()?;
        tracing::info!(devid, ?tx, ?rx, "netback: quiesced");
        Some(SavedVif {
            tx_ring_ref: rings.tx_ring_ref,
            rx_ring_ref: rings.rx_ring_ref,
            evtchn: rings.evtchn,
            rx_offload: rings.rx,
            tx,
            rx,
            mac: self.mac.clone(),
        })
    }

    fn resume(
        &mut self,
        dom: &Arc<DomainShared>,
        devid: u32,
        saved: &Self::Saved,
    ) -> Result<Vec<(String, String)>, ConnectFailure> {
        saved
            .check(&self.mac, NET_TX_RING_SIZE as u32, NET_RX_RING_SIZE as u32)
            .map_err(ConnectFailure::Refused)?;
        let rings = FrontendRings {
            tx_ring_ref: saved.tx_ring_ref,
            rx_ring_ref: saved.rx_ring_ref,
            evtchn: saved.evtchn,
            rx: saved.rx_offload,
        };
        let conn = Connection::resume(
            dom.clone(),
            self.tap.clone(),
            &rings,
            self.tap_name(),
            (saved.tx, saved.rx),
        )
        .map_err(|e| ConnectFailure::Refused(e.to_string()))?;
        self.conn = Some(conn);
        tracing::info!(devid, tap = %self.tap_name(), "netback: resumed");
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_layout_is_xens() {
        assert_eq!(backend_path(7, 0), "/local/domain/0/backend/vif/7/0");
    }
}
