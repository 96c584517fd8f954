//! blkback: the backend of Xen's split block driver, inside the VMM (xend attaches
//! disks at create, or hot-plugs them through the control socket: [`hotplug`]; see
//! docs/architecture.md, "Block devices").
//!
//! Each of the domain's virtual block devices (vbds) has a backing [`disk::Disk`]
//! (a raw file or block device, opened by the VMM at start), a xenbus backend in
//! xenstore run by [`xenbus::XenbusBackend`] (the shared [`crate::xenbus_backend`]: one thread with a domain-0 connection to
//! xenstored for all of the domain's vbds), and once the frontend connected, one
//! [`connection::Connection`] per queue (blkif.h multi-queue: up to
//! [`negotiate::max_queues`]): the ring page mapped through the grant table, domain 0's
//! end of the event channel, a thread serving the [`ring::BackRing`] (one page or
//! `1 << ring-page-order`) with [`request`] validation ([`dispatch`]: indirect
//! segments, persistent grants), and I/O workers ([`pool`], [`io`]) that keep several
//! requests in flight; responses are published in batches with one notify each.
//! [`negotiate`] says what is offered and accepted in xenstore.
//!
//! This module must not trust anything the guest wrote (its xenstore nodes, the ring,
//! its grants): every value is read once and checked, and a lie ends in an error
//! response or a stopped ring, never a panic. It does not create or remove xenstore
//! directories: xend (the toolstack) writes the device's nodes before the VMM starts
//! and removes them when the domain ends.

pub mod connection;
pub mod disk;
pub mod dispatch;
pub mod hotplug;
pub mod io;
pub mod negotiate;
pub mod persistent;
pub mod pool;
pub mod request;
pub mod ring;
pub mod saved;
pub mod xenbus;

use std::path::PathBuf;
use std::sync::Arc;

use crate::domain::DomainShared;

/// A vbd as given on `xen-vmm run --disk DEVID:MODE:PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VbdConfig {
    /// Xen's device number (`virtual-device`, e.g. 768 for hda, 51712 for xvda).
    pub devid: u32,
    pub writable: bool,
    /// MODE ended in `,direct`: serve with `O_DIRECT` (bypass the host page cache).
    pub direct: bool,
    pub path: PathBuf,
}

impl std::str::FromStr for VbdConfig {
    type Err = String;

    /// `DEVID:MODE:PATH`: MODE `r` or `w`, optionally followed by `,direct`; the path
    /// may contain colons.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut it = s.splitn(3, ':');
        let (Some(devid), Some(mode), Some(path)) = (it.next(), it.next(), it.next()) else {
            return Err(format!(
                "{s:?}: expected DEVID:MODE:PATH (e.g. 768:w:/var/lib/disk.img)"
            ));
        };
        let devid = devid
            .parse::<u32>()
            .ok()
            .filter(|d| *d > 0)
            .ok_or_else(|| format!("{s:?}: device number {devid:?} is not a positive integer"))?;
        let (mode, direct) = match mode.strip_suffix(",direct") {
            Some(m) => (m, true),
            None => (mode, false),
        };
        let writable = match mode {
            "w" => true,
            "r" => false,
            _ => {
                return Err(format!(
                    "{s:?}: mode {mode:?} must be r or w (optionally with ,direct)"
                ))
            }
        };
        if path.is_empty() {
            return Err(format!("{s:?}: no path"));
        }
        Ok(Self {
            devid,
            writable,
            direct,
            path: PathBuf::from(path),
        })
    }
}

/// Opens every disk (before the domain is built, so that a bad path is an error of
/// `xen-vmm run`, not of a running domain); two vbds with one device number are refused.
pub fn open_disks(vbds: &[VbdConfig]) -> Result<Vec<(u32, Arc<disk::Disk>)>, String> {
    let mut out: Vec<(u32, Arc<disk::Disk>)> = Vec::new();
    for v in vbds {
        if out.iter().any(|(d, _)| *d == v.devid) {
            return Err(format!("two disks have device number {}", v.devid));
        }
        let d = disk::Disk::open(&v.path, v.writable)
            .map_err(|e| e.to_string())?
            .with_direct_io(v.direct);
        out.push((v.devid, Arc::new(d)));
    }
    Ok(out)
}

/// Starts the xenbus backend of `disks` against xenstored's main socket.
pub fn start(
    dom: Arc<DomainShared>,
    xenstored_socket: PathBuf,
    disks: Vec<(u32, Arc<disk::Disk>)>,
) -> Result<xenbus::XenbusBackend, String> {
    let vbds = disks
        .into_iter()
        .map(|(devid, d)| (devid, xenbus::Vbd::new(d)))
        .collect();
    xenbus::XenbusBackend::start(dom, xenstored_socket, vbds)
        .map_err(|e| format!("starting the block backend: {e}"))
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod cli_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn vbd_arguments() {
        let v: VbdConfig = "768:w:/tmp/a:b.img".parse().unwrap();
        assert_eq!(
            v,
            VbdConfig {
                devid: 768,
                writable: true,
                direct: false,
                path: "/tmp/a:b.img".into()
            }
        );
        let d: VbdConfig = "768:w,direct:/x".parse().unwrap();
        assert!(d.direct && d.writable);
        assert!(!"51712:r:/x".parse::<VbdConfig>().unwrap().writable);
        for bad in [
            "768:w",
            "x:w:/a",
            "0:w:/a",
            "768:rw:/a",
            "768:w:",
            "",
            "768:w,dirct:/a",
            "768:,direct:/a",
        ] {
            assert!(bad.parse::<VbdConfig>().is_err(), "{bad:?}");
        }
    }
}
