//! The frontend directories of a running domain's connected devices, written back by
//! [`crate::xs`] over the layout of [`crate::vbd`] / [`crate::vif`] after xenstored
//! lost the domain's tree (`crate::state::xenstored`): `state` = Connected (4), the
//! ring references, event channels and features the guest negotiated, which it never
//! writes again. They come from the VMM's answer to `device-states`
//! ([`rxen_vmm_api::ConnectedDevices`]); a device the domain's configuration does not
//! have is left out. (After a restore or an incoming migration the restoring VMM
//! writes the same nodes itself, from the image's device state.)

use rxen_vmm_api::ConnectedDevices;

/// The nodes of one restored device's frontend directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredFrontend {
    /// `vbd` or `vif`.
    pub class: &'static str,
    pub devid: u32,
    pub nodes: Vec<(String, String)>,
}

/// The frontend nodes of `devices` (what a VMM's backends say of their connected
/// devices, or what an image saved), for those among `vbds` / `vifs`.
pub fn from_connected(
    devices: &ConnectedDevices,
    vbds: &[u32],
    vifs: &[u32],
) -> Vec<RestoredFrontend> {
    let mut out = Vec::new();
    for (devid, v) in devices.vbds.iter().filter(|(d, _)| vbds.contains(d)) {
        out.push(RestoredFrontend {
            class: "vbd",
            devid: *devid,
            nodes: v.frontend_nodes(),
        });
    }
    for (devid, v) in devices.vifs.iter().filter(|(d, _)| vifs.contains(d)) {
        out.push(RestoredFrontend {
            class: "vif",
            devid: *devid,
            nodes: v.frontend_nodes(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The `devices` part of a VMM state document (the JSON shape `device-states`
    /// answers with), then [`from_connected`].
    fn from_document(
        document: &[u8],
        vbds: &[u32],
        vifs: &[u32],
    ) -> Result<Vec<RestoredFrontend>, serde_json::Error> {
        #[derive(serde::Deserialize)]
        struct Doc {
            #[serde(default)]
            devices: ConnectedDevices,
        }
        let doc: Doc = serde_json::from_slice(document)?;
        Ok(from_connected(&doc.devices, vbds, vifs))
    }

    fn get<'a>(f: &'a RestoredFrontend, k: &str) -> Option<&'a str> {
        f.nodes.iter().find(|n| n.0 == k).map(|n| n.1.as_str())
    }

    #[test]
    fn frontends_say_what_the_guest_negotiated() {
        let doc = br#"{"memory_mib": 16, "devices": {
            "vbds": [[51712, {"rings": [{"ring_refs": [8], "evtchn": 5, "persistent": true,
                "req_cons": 3, "rsp_prod_pvt": 3, "persistent_grants": []}],
                "sectors": 2048, "writable": true}],
                     [51728, {"rings": [
                {"ring_refs": [10, 11], "evtchn": 6, "persistent": false, "req_cons": 0, "rsp_prod_pvt": 0, "persistent_grants": []},
                {"ring_refs": [12, 13], "evtchn": 7, "persistent": false, "req_cons": 0, "rsp_prod_pvt": 0, "persistent_grants": []}],
                "sectors": 8, "writable": false}]],
            "vifs": [[0, {"tx_ring_ref": 20, "rx_ring_ref": 21, "evtchn": {"Split": {"tx": 8, "rx": 9}},
                "rx_offload": {"sg": true, "csum_v4": true, "csum_v6": false, "gso_v4": true, "gso_v6": false},
                "tx": [1, 1], "rx": [2, 2], "mac": "00:16:3e:00:00:01"}],
                     [7, {"tx_ring_ref": 1, "rx_ring_ref": 2, "evtchn": {"Shared": 3},
                "rx_offload": {"sg": false, "csum_v4": false, "csum_v6": false, "gso_v4": false, "gso_v6": false},
                "tx": [0, 0], "rx": [0, 0], "mac": "00:16:3e:00:00:02"}]]}}"#;
        let f = from_document(doc, &[51712, 51728], &[0]).unwrap();
        assert_eq!(f.len(), 3, "vif 7 is not configured: left out");
        assert_eq!(get(&f[0], "state"), Some("4"));
        assert_eq!(get(&f[0], "ring-ref"), Some("8"));
        assert_eq!(get(&f[0], "event-channel"), Some("5"));
        assert_eq!(get(&f[0], "feature-persistent"), Some("1"));
        assert_eq!(get(&f[1], "multi-queue-num-queues"), Some("2"));
        assert_eq!(get(&f[1], "ring-page-order"), Some("1"));
        assert_eq!(get(&f[1], "queue-1/ring-ref1"), Some("13"));
        assert_eq!(get(&f[1], "queue-1/event-channel"), Some("7"));
        assert_eq!((f[2].class, f[2].devid), ("vif", 0));
        assert_eq!(get(&f[2], "event-channel-rx"), Some("9"));
        assert_eq!(get(&f[2], "feature-rx-notify"), Some("1"));
        assert_eq!(get(&f[2], "feature-no-csum-offload"), Some("0"));
        assert_eq!(get(&f[2], "feature-ipv6-csum-offload"), Some("0"));
        // A version 1 document has no devices.
        assert!(from_document(br#"{"memory_mib": 16}"#, &[1], &[0])
            .unwrap()
            .is_empty());
        // Lies about types are an error, not a panic.
        assert!(from_document(
            br#"{"devices": {"vbds": [[1, {"rings": [{"ring_refs": [-1]}]}]]}}"#,
            &[1],
            &[]
        )
        .is_err());
        assert!(from_document(b"not json", &[], &[]).is_err());
    }
}
