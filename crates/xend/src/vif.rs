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

use rxen_xlcfg::devices::VifSpec;

use crate::vbd::Dir;

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
    (1..16).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
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
    if let Some(b) = &vif.bridge {
        back.push(kv("bridge", b));
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
        let [b, _] = layout(7, 1, &VifSpec::default());
        assert_eq!(get(&b, "bridge"), None);
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
