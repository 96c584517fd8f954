//! netback: the backend of Xen's split network driver, inside the VMM (see
//! docs/architecture.md, "Network devices").
//!
//! Each of the domain's virtual network interfaces (vifs) has a host-side TAP device
//! ([`tap::Tap`], `vif<domid>.<devid>` unless named otherwise, joined to a Linux bridge
//! when one is named and exists, or routed to the guest's addresses), a xenbus backend
//! ([`NetBackend`]: the shared [`crate::xenbus_backend`], one thread with a domain-0
//! connection to xenstored for all of the domain's vifs, which come and go while the
//! domain runs) and,
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
//! and removes them when the domain ends), and it creates no bridge (xend does).

pub mod connection;
pub mod negotiate;
pub mod offload;
pub mod ring;
pub mod rx;
pub mod saved;
pub mod tap;
pub mod tx;
pub mod xenbus;

use std::path::PathBuf;
use std::sync::Arc;

use crate::domain::DomainShared;
use crate::xenbus_backend::hotplug::{BackendError, Hotplug};

/// A vif as given on
/// `xen-vmm run --vif devid=N,mac=MAC,tap=NAME[,bridge=BRIDGE][,ip=A.B.C.D]...`.
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
    /// Routed mode (Xen's `vif-route`): the guest's addresses, each given a host route
    /// through the TAP (with proxy ARP and forwarding on it).
    pub ips: Vec<std::net::Ipv4Addr>,
}

fn valid_mac(m: &str) -> bool {
    let parts: Vec<&str> = m.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|c| c.is_ascii_hexdigit()))
}

impl VifConfig {
    /// A vif from its fields, each checked on its own (MAC, interface names,
    /// addresses), so that no field can carry another.
    pub fn checked(
        devid: u32,
        mac: &str,
        tap: &str,
        bridge: Option<&str>,
        ips: &[String],
    ) -> Result<Self, String> {
        if !valid_mac(mac) {
            return Err(format!("mac {mac:?} is not six hex pairs"));
        }
        for name in std::iter::once(tap).chain(bridge) {
            if !tap::valid_ifname(name) {
                return Err(format!("{name:?} is not an interface name"));
            }
        }
        let ips = ips
            .iter()
            .map(|ip| {
                ip.parse::<std::net::Ipv4Addr>()
                    .map_err(|_| format!("ip {ip:?} is not an IPv4 address"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            devid,
            mac: mac.to_string(),
            tap: tap.to_string(),
            bridge: bridge.map(str::to_string),
            ips,
        })
    }
}

impl std::str::FromStr for VifConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (mut devid, mut mac, mut tap, mut bridge) = (None, None, None, None);
        let mut ips = Vec::new();
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
                "ip" => ips.push(
                    v.parse::<std::net::Ipv4Addr>()
                        .map_err(|_| format!("{s:?}: ip {v:?} is not an IPv4 address"))?,
                ),
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
                ips,
            }),
            _ => Err(format!(
                "{s:?}: expected devid=N,mac=MAC,tap=NAME[,bridge=BRIDGE][,ip=A.B.C.D]..."
            )),
        }
    }
}

/// Creates vif `v`'s TAP device: up, joined to its bridge (if named and existing)
/// or routed to its addresses.
pub fn open_vif(v: &VifConfig) -> Result<xenbus::Vif, tap::TapError> {
    let tap = tap::Tap::create(&v.tap, v.bridge.as_deref())?;
    if !v.ips.is_empty() {
        tap.route_to(&v.ips)?;
    }
    tracing::info!(devid = v.devid, mac = %v.mac, tap = %v.tap, ips = ?v.ips, "netback: TAP created");
    Ok(xenbus::Vif::new(tap, v.mac.clone()))
}

/// Creates every vif's TAP device (before the domain is built, so that a TAP that
/// cannot be made is an error of `xen-vmm run`); two vifs with one devid are refused.
pub fn open_vifs(vifs: &[VifConfig]) -> Result<Vec<(u32, xenbus::Vif)>, String> {
    let mut out: Vec<(u32, xenbus::Vif)> = Vec::new();
    for v in vifs {
        if out.iter().any(|(devid, _)| *devid == v.devid) {
            return Err(format!("two vifs have device number {}", v.devid));
        }
        out.push((v.devid, open_vif(v).map_err(|e| e.to_string())?));
    }
    Ok(out)
}

/// Why a vif could not be attached or detached.
#[derive(Debug, thiserror::Error)]
pub enum VifHotplugError {
    #[error("{0}")]
    Tap(#[from] tap::TapError),
    #[error("{0}")]
    Backend(#[from] BackendError),
}

/// The domain's network backend, running or not yet: the shared hot-plug of
/// [`crate::xenbus_backend::hotplug`] for vifs; this creates the TAPs.
pub struct NetBackend(Hotplug<xenbus::Vif>);

impl NetBackend {
    /// Starts the backend for `vifs` (TAPs opened already) if there are any.
    pub fn start(
        dom: Arc<DomainShared>,
        xenstored_socket: Option<PathBuf>,
        vifs: Vec<(u32, xenbus::Vif)>,
    ) -> Result<Self, VifHotplugError> {
        Ok(Self(Hotplug::start(dom, xenstored_socket, vifs)?))
    }

    /// Starts the backend of a restored domain: `vifs` as [`Self::start`], the vifs
    /// of `saved` (from the image) serving their saved rings again at once.
    pub fn start_restored(
        dom: Arc<DomainShared>,
        xenstored_socket: Option<PathBuf>,
        vifs: Vec<(u32, xenbus::Vif)>,
        saved: &[(u32, saved::SavedVif)],
    ) -> Result<Self, VifHotplugError> {
        Ok(Self(Hotplug::start_restored(
            dom,
            xenstored_socket,
            vifs,
            saved,
        )?))
    }

    /// Quiesces every connected vif for a save (see [`saved`]).
    pub fn quiesce(&self) -> Result<Vec<(u32, saved::SavedVif)>, VifHotplugError> {
        Ok(self.0.quiesce()?)
    }

    /// What the frontend of every connected vif negotiated.
    pub fn frontends(&self) -> Result<Vec<(u32, rxen_vmm_api::ConnectedVif)>, VifHotplugError> {
        Ok(self.0.frontends()?)
    }

    /// Serves the vifs of `saved` again after a save that kept the domain.
    pub fn resume(&self, saved: Vec<(u32, saved::SavedVif)>) -> Result<(), VifHotplugError> {
        Ok(self.0.resume(saved)?)
    }

    /// Creates `v`'s TAP (bridge port or routes) and serves it as vif `v.devid`, whose
    /// xenbus nodes the toolstack wrote. A TAP of that name that exists already is
    /// refused (the kernel's TUNSETIFF would share it).
    pub fn attach(&self, v: &VifConfig) -> Result<(), VifHotplugError> {
        if !self.0.has_xenstore() {
            return Err(BackendError::NoXenstore.into());
        }
        if rxen_hostnet::link::exists(&v.tap) {
            return Err(tap::TapError::Create {
                name: v.tap.clone(),
                source: std::io::Error::from_raw_os_error(libc::EEXIST),
            }
            .into());
        }
        let vif = open_vif(v)?;
        Ok(self.0.attach(v.devid, vif)?)
    }

    /// Starts removing vif `devid` (Xen's Closing handshake, or at once with `force`);
    /// its TAP goes when the device does.
    pub fn detach(&self, devid: u32, force: bool) -> Result<(), VifHotplugError> {
        Ok(self.0.detach(devid, force)?)
    }

    /// Stops the backend and every vif it serves (their TAPs close).
    pub fn stop(&self) {
        self.0.stop();
    }
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
                bridge: Some("xenbr0".into()),
                ips: Vec::new(),
            }
        );
        let r: VifConfig = "devid=2,mac=00:16:3e:01:02:03,tap=vif3.2,ip=192.0.2.1,ip=192.0.2.2"
            .parse()
            .unwrap();
        assert_eq!(r.ips.len(), 2);
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
            "devid=0,mac=00:16:3e:01:02:03,tap=v,ip=192.0.2",
        ] {
            assert!(bad.parse::<VifConfig>().is_err(), "{bad:?}");
        }
    }
}
