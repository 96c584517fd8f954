//! netback: the backend of Xen's split network driver, inside the VMM (see
//! docs/architecture.md, "Network devices").
//!
//! Each of the domain's virtual network interfaces (vifs) has a host-side TAP device
//! ([`tap::Tap`], `vif<domid>.<devid>` unless named otherwise, joined to a Linux bridge
//! when one is named and exists), a xenbus backend run by [`xenbus::NetBackend`] (one
//! thread with a domain-0 connection to xenstored for all of the domain's vifs) and,
//! once the frontend connected, a [`connection::Connection`]: the TX and RX ring pages
//! mapped through the grant table ([`ring::NetRing`]), domain 0's end(s) of the event
//! channel(s), and a thread that sends TX packets to the TAP ([`tx`]) and copies TAP
//! frames into the guest's posted RX buffers ([`rx`]). [`negotiate`] says what is
//! offered and accepted in xenstore.
//!
//! This module must not trust anything the guest wrote (its xenstore nodes, the
//! rings, its grants): every value is read once and checked, and a lie ends in a
//! dropped packet or a stopped vif with a log line, never a panic. It does not create
//! or remove xenstore directories (xend writes the vif's nodes before the VMM starts
//! and removes them when the domain ends), and it creates no bridge.

pub mod connection;
pub mod negotiate;
pub mod offload;
pub mod ring;
pub mod rx;
pub mod tap;
pub mod tx;
pub mod xenbus;

use std::path::PathBuf;
use std::sync::Arc;

use crate::domain::DomainShared;

/// A vif as given on `xen-vmm run --vif devid=N,mac=MAC,tap=NAME[,bridge=BRIDGE]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VifConfig {
    /// The vif's device number (`device/vif/<devid>`).
    pub devid: u32,
    /// The guest's MAC address (xend writes it to xenstore; kept for logs).
    pub mac: String,
    /// The host-side TAP device's name.
    pub tap: String,
    /// The Linux bridge to join, if it exists.
    pub bridge: Option<String>,
}

fn valid_mac(m: &str) -> bool {
    let parts: Vec<&str> = m.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|c| c.is_ascii_hexdigit()))
}

impl std::str::FromStr for VifConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (mut devid, mut mac, mut tap, mut bridge) = (None, None, None, None);
        for item in s.split(',') {
            let Some((k, v)) = item.split_once('=') else {
                return Err(format!("{s:?}: {item:?} is not key=value"));
            };
            match k {
                "devid" => {
                    devid = Some(
                        v.parse::<u32>()
                            .map_err(|_| format!("{s:?}: devid {v:?} is not a number"))?,
                    )
                }
                "mac" if valid_mac(v) => mac = Some(v.to_string()),
                "mac" => return Err(format!("{s:?}: mac {v:?} is not six hex pairs")),
                "tap" if tap::valid_ifname(v) => tap = Some(v.to_string()),
                "bridge" if tap::valid_ifname(v) => bridge = Some(v.to_string()),
                "tap" | "bridge" => {
                    return Err(format!("{s:?}: {k} {v:?} is not an interface name"))
                }
                _ => return Err(format!("{s:?}: unknown key {k:?}")),
            }
        }
        match (devid, mac, tap) {
            (Some(devid), Some(mac), Some(tap)) => Ok(Self {
                devid,
                mac,
                tap,
                bridge,
            }),
            _ => Err(format!(
                "{s:?}: expected devid=N,mac=MAC,tap=NAME[,bridge=BRIDGE]"
            )),
        }
    }
}

/// Creates every vif's TAP device (before the domain is built, so that a TAP that
/// cannot be made is an error of `xen-vmm run`); two vifs with one devid are refused.
pub fn open_vifs(domid: u16, vifs: &[VifConfig]) -> Result<Vec<xenbus::Vif>, String> {
    let mut out: Vec<xenbus::Vif> = Vec::new();
    for v in vifs {
        if out.iter().any(|o| o.devid == v.devid) {
            return Err(format!("two vifs have device number {}", v.devid));
        }
        let tap = tap::Tap::create(&v.tap, v.bridge.as_deref()).map_err(|e| e.to_string())?;
        tracing::info!(devid = v.devid, mac = %v.mac, tap = %v.tap, "netback: TAP created");
        out.push(xenbus::Vif::new(domid, v.devid, tap));
    }
    Ok(out)
}

/// Starts the xenbus backend of `vifs` against xenstored's main socket (nothing to
/// run without vifs).
pub fn start(
    dom: Arc<DomainShared>,
    xenstored_socket: Option<PathBuf>,
    vifs: Vec<xenbus::Vif>,
) -> Result<Option<xenbus::NetBackend>, String> {
    if vifs.is_empty() {
        return Ok(None);
    }
    let socket = xenstored_socket.ok_or_else(|| "vifs need --xenstored-socket".to_string())?;
    xenbus::NetBackend::start(dom, socket, vifs)
        .map(Some)
        .map_err(|e| format!("starting the network backend: {e}"))
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod cli_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn vif_arguments() {
        let v: VifConfig = "devid=0,mac=00:16:3e:01:02:03,tap=vif3.0,bridge=xenbr0"
            .parse()
            .unwrap();
        assert_eq!(
            v,
            VifConfig {
                devid: 0,
                mac: "00:16:3e:01:02:03".into(),
                tap: "vif3.0".into(),
                bridge: Some("xenbr0".into())
            }
        );
        assert!("devid=1,mac=00:16:3e:01:02:03,tap=vif3.1"
            .parse::<VifConfig>()
            .unwrap()
            .bridge
            .is_none());
        for bad in [
            "",
            "devid=0,mac=00:16:3e:01:02:03",
            "devid=x,mac=00:16:3e:01:02:03,tap=v",
            "devid=0,mac=00:16:3e:01:02,tap=v",
            "devid=0,mac=00:16:3e:01:02:03,tap=a/b",
            "devid=0,mac=00:16:3e:01:02:03,tap=waytoolonginterfacename",
            "devid=0,mac=00:16:3e:01:02:03,tap=v,colour=red",
        ] {
            assert!(bad.parse::<VifConfig>().is_err(), "{bad:?}");
        }
    }
}
