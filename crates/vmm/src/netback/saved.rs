//! What a save keeps of a connected vif (`crate::snapshot`, `docs/migration.md`): the
//! TX and RX ring grant references, the guest's event-channel port(s), what the
//! frontend takes on its RX ring, the backend's private indices of both rings after
//! its last pass, and the vif's MAC (checked against the vif given at restore). The
//! TAP (name, bridge, routes) is the restorer's configuration, not the image's.
//! Frames the TAP had queued for the guest but not yet placed are dropped (a network
//! loses packets anyway; TCP sends them again). Hostile at restore: checked by
//! [`SavedVif::check`], and the grant table and event channels refuse refs not
//! granted to domain 0 and ports not unbound for it.

use serde::{Deserialize, Serialize};

use super::negotiate::EventChannels;
use super::rx::RxOffload;

/// A ring's private indices `(req_cons, rsp_prod_pvt)`.
pub type RingIndices = (u32, u32);

/// A vif's rings as the backend left them at a save.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedVif {
    pub tx_ring_ref: u32,
    pub rx_ring_ref: u32,
    pub evtchn: EventChannels,
    pub rx_offload: RxOffload,
    pub tx: RingIndices,
    pub rx: RingIndices,
    /// The vif's MAC as configured (`aa:bb:cc:dd:ee:ff`).
    pub mac: String,
}

impl SavedVif {
    /// The guest's port(s) of the vif's event channel(s).
    pub fn guest_ports(&self) -> Vec<u32> {
        match self.evtchn {
            EventChannels::Shared(p) => vec![p],
            EventChannels::Split { tx, rx } => vec![tx, rx],
        }
    }

    /// Refuses a state no frontend could have negotiated (one page named as both
    /// rings, one port for both directions of a split channel, indices more than a
    /// ring apart, or gso without sg) or a vif whose MAC is not `mac`.
    pub fn check(&self, mac: &str, tx_size: u32, rx_size: u32) -> Result<(), String> {
        if !self.mac.eq_ignore_ascii_case(mac) {
            return Err(format!("the vif had MAC {}, it has {mac} now", self.mac));
        }
        if self.tx_ring_ref == self.rx_ring_ref {
            return Err(format!("grant {} is both rings", self.tx_ring_ref));
        }
        if let EventChannels::Split { tx, rx } = self.evtchn {
            if tx == rx {
                return Err(format!("port {tx} is both halves of a split channel"));
            }
        }
        for (which, (cons, prod), size) in [("tx", self.tx, tx_size), ("rx", self.rx, rx_size)] {
            if cons.wrapping_sub(prod) > size {
                return Err(format!(
                    "{which} req_cons {cons} and rsp_prod_pvt {prod} are more than a ring apart"
                ));
            }
        }
        let o = self.rx_offload;
        if (o.gso_v4 || o.gso_v6) && !o.sg {
            return Err("gso without sg".into());
        }
        Ok(())
    }
}

impl From<&SavedVif> for rxen_vmm_api::ConnectedVif {
    fn from(v: &SavedVif) -> Self {
        Self {
            tx_ring_ref: v.tx_ring_ref,
            rx_ring_ref: v.rx_ring_ref,
            evtchn: v.evtchn.into(),
            rx_offload: v.rx_offload.into(),
        }
    }
}

impl crate::xenbus_backend::SavedDevice for SavedVif {
    /// What netfront wrote ([`rxen_vmm_api::ConnectedVif::frontend_nodes`]).
    fn frontend_nodes(&self) -> Vec<(String, String)> {
        rxen_vmm_api::ConnectedVif::from(self).frontend_nodes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vif() -> SavedVif {
        SavedVif {
            tx_ring_ref: 8,
            rx_ring_ref: 9,
            evtchn: EventChannels::Split { tx: 5, rx: 6 },
            rx_offload: RxOffload {
                sg: true,
                csum_v4: true,
                csum_v6: true,
                gso_v4: true,
                gso_v6: false,
            },
            tx: (300, 300),
            rx: (12, 10),
            mac: "00:16:3e:01:02:03".into(),
        }
    }

    fn node<'a>(nodes: &'a [(String, String)], k: &str) -> Option<&'a str> {
        nodes.iter().find(|n| n.0 == k).map(|n| n.1.as_str())
    }

    #[test]
    fn frontend_nodes_say_what_netfront_negotiated() {
        use crate::xenbus_backend::SavedDevice;
        let n = vif().frontend_nodes();
        assert_eq!(node(&n, "state"), Some("4"));
        assert_eq!(node(&n, "tx-ring-ref"), Some("8"));
        assert_eq!(node(&n, "rx-ring-ref"), Some("9"));
        assert_eq!(node(&n, "event-channel-tx"), Some("5"));
        assert_eq!(node(&n, "event-channel-rx"), Some("6"));
        assert_eq!(node(&n, "event-channel"), None);
        assert_eq!(node(&n, "feature-no-csum-offload"), Some("0"));
        assert_eq!(node(&n, "feature-ipv6-csum-offload"), Some("1"));
        assert_eq!(node(&n, "feature-gso-tcpv6"), Some("0"));
        let mut shared = vif();
        shared.evtchn = EventChannels::Shared(3);
        shared.rx_offload.csum_v4 = false;
        let n = shared.frontend_nodes();
        assert_eq!(node(&n, "event-channel"), Some("3"));
        assert_eq!(node(&n, "feature-no-csum-offload"), Some("1"));
    }

    #[test]
    fn lying_saved_vifs_are_refused() {
        let mac = "00:16:3E:01:02:03";
        assert_eq!(vif().check(mac, 256, 256), Ok(()));
        assert_eq!(vif().guest_ports(), vec![5, 6]);
        assert!(vif().check("00:16:3e:01:02:04", 256, 256).is_err());
        type Lie = fn(&mut SavedVif);
        let lies: [(&str, Lie); 5] = [
            ("one page for both rings", |v| v.rx_ring_ref = v.tx_ring_ref),
            ("one port for both halves", |v| {
                v.evtchn = EventChannels::Split { tx: 5, rx: 5 }
            }),
            ("tx more than a ring in flight", |v| v.tx = (300, 0)),
            ("rx answers ahead of requests", |v| v.rx = (0, 1)),
            ("gso without sg", |v| v.rx_offload.sg = false),
        ];
        for (what, lie) in lies {
            let mut v = vif();
            lie(&mut v);
            assert!(v.check(mac, 256, 256).is_err(), "{what}");
        }
    }
}
