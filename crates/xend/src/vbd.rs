//! The xenstore layout of a domain's virtual block devices, as libxl writes it for a
//! PV disk: pure data (paths, values, permissions), written by [`crate::xs`] at create
//! and removed with the domain.
//!
//! The backend directory `/local/domain/0/backend/vbd/<domid>/<devid>` belongs to
//! domain 0 and is readable by the guest; the frontend directory
//! `/local/domain/<domid>/device/vbd/<devid>` belongs to the guest (which writes
//! `ring-ref`, `event-channel`, `protocol` and `state` there) and is readable by
//! domain 0. Nodes created later inherit their directory's permissions. The VMM's
//! blkback (`rxen_vmm::blkback`) adds `state` changes, `sectors`, `info`,
//! `sector-size`, `physical-sector-size` and `feature-flush-cache` when it runs.

use rxen_xlcfg::devices::{DiskAccess, DiskSpec};

/// A directory with its permissions and the nodes written in it.
#[derive(Debug, PartialEq, Eq)]
pub struct Dir {
    pub path: String,
    /// Xen's permission strings: owner first (`n<dom>`), then `r<dom>` grants.
    pub perms: Vec<String>,
    pub nodes: Vec<(String, String)>,
}

/// Domain 0's directory of all the domain's vbd backends (removed with the domain).
pub fn backend_root(domid: u32) -> String {
    format!("/local/domain/0/backend/vbd/{domid}")
}

/// The backend and frontend directories of vbd `devid` of domain `domid`.
pub fn paths(domid: u32, devid: u32) -> [String; 2] {
    [
        format!("{}/{devid}", backend_root(domid)),
        format!("/local/domain/{domid}/device/vbd/{devid}"),
    ]
}

/// The backend and frontend directories of `disk` (whose device number is `devid`).
pub fn layout(domid: u32, devid: u32, disk: &DiskSpec) -> [Dir; 2] {
    let [backend, frontend] = paths(domid, devid);
    let mode = match disk.access {
        DiskAccess::ReadOnly => "r",
        DiskAccess::ReadWrite => "w",
    };
    let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
    [
        Dir {
            path: backend.clone(),
            perms: vec!["n0".into(), format!("r{domid}")],
            nodes: vec![
                kv("frontend", &frontend),
                kv("frontend-id", &domid.to_string()),
                kv("online", "1"),
                kv("state", "1"),
                kv("params", &disk.target),
                kv("mode", mode),
                kv("type", &disk.backend_type),
                kv("dev", &disk.vdev),
                kv("device-type", "disk"),
                kv("removable", "0"),
                kv("bootable", "1"),
            ],
        },
        Dir {
            path: frontend,
            perms: vec![format!("n{domid}"), "r0".into()],
            nodes: vec![
                kv("backend", &backend),
                kv("backend-id", "0"),
                kv("state", "1"),
                kv("virtual-device", &devid.to_string()),
                kv("device-type", "disk"),
            ],
        },
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn layout_is_libxls() {
        let d = DiskSpec::parse("file:/img/a.img,hda,w").unwrap();
        let [b, f] = layout(7, 768, &d);
        assert_eq!(b.path, "/local/domain/0/backend/vbd/7/768");
        assert_eq!(b.perms, vec!["n0", "r7"]);
        let get = |dir: &Dir, k: &str| {
            dir.nodes
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(get(&b, "frontend"), "/local/domain/7/device/vbd/768");
        assert_eq!(get(&b, "frontend-id"), "7");
        assert_eq!(get(&b, "params"), "/img/a.img");
        assert_eq!(get(&b, "mode"), "w");
        assert_eq!(get(&b, "type"), "file");
        assert_eq!(get(&b, "state"), "1");
        assert_eq!(get(&b, "online"), "1");
        assert_eq!(get(&b, "device-type"), "disk");
        assert_eq!(f.path, "/local/domain/7/device/vbd/768");
        assert_eq!(f.perms, vec!["n7", "r0"]);
        assert_eq!(get(&f, "backend"), b.path);
        assert_eq!(get(&f, "backend-id"), "0");
        assert_eq!(get(&f, "state"), "1");
        assert_eq!(get(&f, "virtual-device"), "768");
        let ro = DiskSpec::parse("phy:/dev/vg/x,xvdb,r").unwrap();
        let [b, _] = layout(3, 51728, &ro);
        assert_eq!(get(&b, "mode"), "r");
        assert_eq!(get(&b, "type"), "phy");
        assert_eq!(backend_root(3), "/local/domain/0/backend/vbd/3");
    }
}
