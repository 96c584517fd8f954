//! The xenstore layout of a domain's virtual network interfaces, as libxl writes it
//! for a PV vif: pure data (paths, values, permissions), written by [`crate::xs`] at
//! create and removed with the domain; plus the names xend chooses for a vif (its
//! device number, MAC address and host-side TAP device).
//!
//! The backend directory `/local/domain/0/backend/vif/<domid>/<devid>` belongs to
//! domain 0 and is readable by the guest; the frontend directory
//! `/local/domain/<domid>/device/vif/<devid>` belongs to the guest (which writes
//! `tx-ring-ref`, `rx-ring-ref`, `event-channel`, `request-rx-copy` and `state` there)
//! and is readable by domain 0. The VMM's netback (`rxen_vmm::netback`) adds the
//! `feature-*` nodes and `state` changes when it runs.
//!
//! How a vif reaches the host's network ([`VifMode`], from xl's `script=`): bridged
//! (`vif-bridge`, the default; the bridge defaults to xl's `xenbr0`) or routed
//! (`vif-route` with `ip=`). `vif-nat` and other scripts are refused.

use std::net::Ipv4Addr;

use rxen_xlcfg::devices::VifSpec;

use crate::vbd::Dir;

/// xl's default bridge (`xl-network-configuration`: `bridge`).
pub const DEFAULT_BRIDGE: &str = "xenbr0";

/// How a vif's TAP reaches the host's network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VifMode {
    /// `script=vif-bridge` (the default): the TAP is a port of this Linux bridge.
    Bridge(String),
    /// `script=vif-route`: no bridge; host routes to these addresses through the TAP,
    /// with proxy ARP and forwarding on it.
    Routed(Vec<Ipv4Addr>),
}

/// The script name of xl's `script=` value (a name under /etc/xen/scripts or a path).
fn script_name(script: &str) -> &str {
    script.rsplit('/').next().unwrap_or(script)
}

/// The vif's mode, or why the vif cannot be served.
pub fn mode(vif: &VifSpec) -> Result<VifMode, String> {
    match vif.script.as_deref().map(script_name) {
        None | Some("vif-bridge") => Ok(VifMode::Bridge(
            vif.bridge
                .clone()
                .unwrap_or_else(|| DEFAULT_BRIDGE.to_string()),
        )),
        Some("vif-route") => {
            let ip = vif.ip.as_deref().ok_or_else(|| {
                "script=vif-route needs ip= (the guest's address(es), e.g. ip=192.0.2.10)"
                    .to_string()
            })?;
            rxen_hostnet::route::parse_ips(ip).map(VifMode::Routed)
        }
        Some("vif-nat") => Err(
            "script=vif-nat (NAT mode) is not supported: use vif-bridge (the default) or vif-route"
                .into(),
        ),
        Some(other) => Err(format!(
            "unknown script={other:?}: rxen supports vif-bridge (the default) and vif-route"
        )),
    }
}

/// Checks a vif as a create or attach would use it: interface names, mode.
pub fn check(vif: &VifSpec) -> Result<VifMode, String> {
    for (key, name) in [("vifname", &vif.vifname), ("bridge", &vif.bridge)] {
        if let Some(n) = name {
            if !valid_ifname(n) {
                return Err(format!(
                    "{key} {n:?} is not a Linux interface name (1 to 15 letters, digits, '.', '-', '_')"
                ));
            }
        }
    }
    if let Some(ip) = &vif.ip {
        rxen_hostnet::route::parse_ips(ip)?;
    }
    mode(vif)
}

/// The device numbers of `vifs`: each one's `devid`, or its index when it has none
/// (xl numbers the vifs of a config from 0).
pub fn devids(vifs: &[VifSpec]) -> Vec<u32> {
    vifs.iter()
        .enumerate()
        .map(|(i, v)| v.devid.unwrap_or(i as u32))
        .collect()
}

/// The device number a hot-plugged vif gets: libxl's next id (one past the highest).
pub fn next_devid(vifs: &[VifSpec]) -> u32 {
    devids(vifs).into_iter().max().map_or(0, |m| m + 1)
}

/// Xen's prefix for generated MAC addresses (the Xen OUI).
pub const XEN_OUI: [u8; 3] = [0x00, 0x16, 0x3e];

/// Domain 0's directory of all the domain's vif backends (removed with the domain).
pub fn backend_root(domid: u32) -> String {
    format!("/local/domain/0/backend/vif/{domid}")
}

/// The backend and frontend directories of vif `devid` of domain `domid`.
pub fn paths(domid: u32, devid: u32) -> [String; 2] {
    [
        format!("{}/{devid}", backend_root(domid)),
        format!("/local/domain/{domid}/device/vif/{devid}"),
    ]
}

/// Whether `name` can be a Linux interface name (15 bytes at most, no separators).
pub fn valid_ifname(name: &str) -> bool {
    rxen_hostnet::valid_ifname(name)
}

/// A MAC address in Xen's range from three random bytes, as libxl makes one: the
/// Xen OUI, then the bytes with the top bit of the first cleared.
pub fn generated_mac(random: [u8; 3]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        XEN_OUI[0],
        XEN_OUI[1],
        XEN_OUI[2],
        random[0] & 0x7f,
        random[1],
        random[2]
    )
}

/// A fresh random MAC address in Xen's range.
pub fn random_mac() -> String {
    let r = uuid::Uuid::new_v4();
    let b = r.as_bytes();
    generated_mac([b[0], b[1], b[2]])
}

/// The host-side device of vif `devid`: xl's `vifname` when given, else Xen's
/// `vif<domid>.<devid>`.
pub fn tap_name(domid: u32, devid: u32, vif: &VifSpec) -> String {
    vif.vifname
        .clone()
        .unwrap_or_else(|| format!("vif{domid}.{devid}"))
}

/// The backend and frontend directories of `vif` (whose MAC is set).
pub fn layout(domid: u32, devid: u32, vif: &VifSpec) -> [Dir; 2] {
    let [backend, frontend] = paths(domid, devid);
    let mac = vif.mac.clone().unwrap_or_default();
    let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
    let mut back = vec![
        kv("frontend", &frontend),
        kv("frontend-id", &domid.to_string()),
        kv("online", "1"),
        kv("state", "1"),
        kv("script", vif.script.as_deref().unwrap_or("vif-bridge")),
        kv("mac", &mac),
        kv("handle", &devid.to_string()),
        kv("type", "vif"),
    ];
    if let Ok(VifMode::Bridge(b)) = mode(vif) {
        back.push(kv("bridge", &b));
    }
    if let Some(ip) = &vif.ip {
        back.push(kv("ip", ip));
    }
    [
        Dir {
            path: backend.clone(),
            perms: vec!["n0".into(), format!("r{domid}")],
            nodes: back,
        },
        Dir {
            path: frontend,
            perms: vec![format!("n{domid}"), "r0".into()],
            nodes: vec![
                kv("backend", &backend),
                kv("backend-id", "0"),
                kv("state", "1"),
                kv("handle", &devid.to_string()),
                kv("mac", &mac),
            ],
        },
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn get(dir: &Dir, k: &str) -> Option<String> {
        dir.nodes
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    }

    #[test]
    fn layout_is_libxls() {
        let v = VifSpec::parse("mac=00:16:3e:01:02:03,bridge=xenbr0").unwrap();
        let [b, f] = layout(7, 0, &v);
        assert_eq!(b.path, "/local/domain/0/backend/vif/7/0");
        assert_eq!(b.perms, vec!["n0", "r7"]);
        assert_eq!(get(&b, "frontend").unwrap(), "/local/domain/7/device/vif/0");
        assert_eq!(get(&b, "frontend-id").unwrap(), "7");
        assert_eq!(get(&b, "online").unwrap(), "1");
        assert_eq!(get(&b, "state").unwrap(), "1");
        assert_eq!(get(&b, "mac").unwrap(), "00:16:3e:01:02:03");
        assert_eq!(get(&b, "bridge").unwrap(), "xenbr0");
        assert_eq!(get(&b, "handle").unwrap(), "0");
        assert_eq!(get(&b, "script").unwrap(), "vif-bridge");
        assert_eq!(f.path, "/local/domain/7/device/vif/0");
        assert_eq!(f.perms, vec!["n7", "r0"]);
        assert_eq!(get(&f, "backend").unwrap(), b.path);
        assert_eq!(get(&f, "backend-id").unwrap(), "0");
        assert_eq!(get(&f, "state").unwrap(), "1");
        assert_eq!(get(&f, "handle").unwrap(), "0");
        assert_eq!(get(&f, "mac").unwrap(), "00:16:3e:01:02:03");
        assert_eq!(backend_root(7), "/local/domain/0/backend/vif/7");
        // libxl's default bridge; none in routed mode.
        let [b, _] = layout(7, 1, &VifSpec::default());
        assert_eq!(get(&b, "bridge").unwrap(), "xenbr0");
        let r = VifSpec::parse("script=vif-route,ip=192.0.2.7").unwrap();
        let [b, _] = layout(7, 2, &r);
        assert_eq!(get(&b, "bridge"), None);
        assert_eq!(get(&b, "script").unwrap(), "vif-route");
        assert_eq!(get(&b, "ip").unwrap(), "192.0.2.7");
    }

    #[test]
    fn modes_follow_xls_scripts() {
        let m = |s: &str| mode(&VifSpec::parse(s).unwrap());
        assert_eq!(m("").unwrap(), VifMode::Bridge("xenbr0".into()));
        assert_eq!(m("bridge=br9").unwrap(), VifMode::Bridge("br9".into()));
        assert_eq!(
            m("script=/etc/xen/scripts/vif-bridge,bridge=b").unwrap(),
            VifMode::Bridge("b".into())
        );
        assert_eq!(
            m("script=vif-route,ip=192.0.2.1 192.0.2.2").unwrap(),
            VifMode::Routed(vec![
                Ipv4Addr::new(192, 0, 2, 1),
                Ipv4Addr::new(192, 0, 2, 2)
            ])
        );
        assert!(m("script=vif-route").unwrap_err().contains("needs ip="));
        assert!(m("script=vif-route,ip=300.1.1.1").is_err());
        assert!(m("script=vif-nat,ip=192.0.2.1")
            .unwrap_err()
            .contains("not supported"));
        assert!(m("script=vif-magic")
            .unwrap_err()
            .contains("unknown script"));
        let bad = VifSpec::parse("bridge=a/b").unwrap();
        assert!(check(&bad)
            .unwrap_err()
            .contains("not a Linux interface name"));
        let bad = VifSpec::parse("ip=nope").unwrap();
        assert!(check(&bad).is_err());
    }

    #[test]
    fn device_numbers() {
        let v = |s: &str| VifSpec::parse(s).unwrap();
        assert_eq!(devids(&[v(""), v("")]), vec![0, 1]);
        assert_eq!(devids(&[v(""), v("devid=5")]), vec![0, 5]);
        assert_eq!(next_devid(&[]), 0);
        assert_eq!(next_devid(&[v(""), v("devid=5")]), 6);
    }

    #[test]
    fn generated_macs_are_xens() {
        assert_eq!(generated_mac([0xff, 0x01, 0xab]), "00:16:3e:7f:01:ab");
        let m = random_mac();
        assert!(m.starts_with("00:16:3e:"), "{m}");
        assert!(VifSpec::parse(&format!("mac={m}")).is_ok());
    }

    #[test]
    fn tap_names() {
        assert_eq!(tap_name(5, 0, &VifSpec::default()), "vif5.0");
        let v = VifSpec::parse("vifname=web0").unwrap();
        assert_eq!(tap_name(5, 0, &v), "web0");
        assert!(valid_ifname("vif32751.0"));
        assert!(!valid_ifname("a/b") && !valid_ifname("") && !valid_ifname("sixteen-chars-xx"));
    }
}
