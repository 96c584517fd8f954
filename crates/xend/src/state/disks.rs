//! Virtual block devices of running domains: hot-plug (`block-attach`), removal
//! (`block-detach`, Xen's Closing handshake with a deadline, then forced), listing
//! (`block-list`), and the rule that a disk one domain may write is used by no other
//! domain (checked at create and attach; read-only sharing is allowed, as xl).
//!
//! A domain's disks are its spec's `disks`: a hot-plugged disk is added there and the
//! domain's record written, so that an adopting xend, a xenstored restart and a
//! reboot (`on_reboot = restart`) know it; the domain's xenstore entries, removed on
//! every way it ends, hold its nodes.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::sync::Arc;
use std::time::Duration;

use rxen_vmm_api::{DiskMode, Request};
use rxen_xend_api::{DiskDetachReply, DiskInfo};
use rxen_xlcfg::devices::{DiskAccess, DiskSpec};

use super::create::check_disk;
use super::devices::vmm_refusal;
use super::error::{internal, xenstore};
use super::registry::Registry;
use super::{lock, DomainError, DomainResult, Xend};
use crate::vmm;
use crate::xs;

pub use super::devices::DETACH_WAIT;

/// What makes two disk targets the same disk: the block device, or the file's inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DiskIdentity {
    Block(u64),
    File { dev: u64, ino: u64 },
}

fn identity(target: &str) -> Option<DiskIdentity> {
    let m = std::fs::metadata(target).ok()?;
    Some(if m.file_type().is_block_device() {
        DiskIdentity::Block(m.rdev())
    } else {
        DiskIdentity::File {
            dev: m.dev(),
            ino: m.ino(),
        }
    })
}

/// Whether `a` and `b` name the same disk (by identity, or by path when one cannot
/// be looked at).
fn same_disk(a: &DiskSpec, b: &DiskSpec) -> bool {
    match (identity(&a.target), identity(&b.target)) {
        (Some(x), Some(y)) => x == y,
        _ => a.target == b.target,
    }
}

fn writable(d: &DiskSpec) -> bool {
    d.access == DiskAccess::ReadWrite
}

/// The refusal of `disks` for domain `name` when a disk among them is used by a
/// domain with a VMM (or twice among them) and either use may write.
pub(super) fn sharing_conflict(reg: &Registry, name: &str, disks: &[DiskSpec]) -> DomainResult<()> {
    for (i, d) in disks.iter().enumerate() {
        for other in &disks[i + 1..] {
            if (writable(d) || writable(other)) && same_disk(d, other) {
                return Err(DomainError::DiskInUse(format!(
                    "disk {:?} is given twice ({} and {}) and one of them is writable",
                    d.target, d.vdev, other.vdev
                )));
            }
        }
        for dom in reg.iter().filter(|x| x.state.has_vmm()) {
            if let Some(o) = dom
                .spec
                .disks
                .iter()
                .find(|o| (writable(d) || writable(o)) && same_disk(d, o))
            {
                let how = if writable(o) { "writable" } else { "read-only" };
                return Err(DomainError::DiskInUse(format!(
                    "disk {:?} ({} of {name}) is in use by domain {} (id {}, as {}, {how}); a disk one domain may write cannot be shared (read-only sharing is allowed)",
                    d.target, d.vdev, dom.name, dom.domid, o.vdev
                )));
            }
        }
    }
    Ok(())
}

/// The disk of `disks` that `dev` names: its virtual device (`xvdb`) or device
/// number (`51728`).
fn find_disk<'a>(disks: &'a [DiskSpec], dev: &str) -> Option<&'a DiskSpec> {
    disks
        .iter()
        .find(|d| d.vdev == dev || d.devid().is_some_and(|n| n.to_string() == dev))
}

impl Xend {
    /// The domain's disks with what xenstore says of their connections.
    pub async fn disks(&self, id: &str) -> DomainResult<Vec<DiskInfo>> {
        let d = self.get(self.resolve(id)?)?;
        let domid = d.domid;
        let devids: Vec<u32> = d.spec.disks.iter().filter_map(DiskSpec::devid).collect();
        let states = if d.state.has_vmm() {
            let sock = self.cfg.xenstored_socket.clone();
            let ids = devids.clone();
            tokio::task::spawn_blocking(move || xs::vbd_states(&sock, domid, &ids))
                .await
                .map_err(internal("xenstore task"))?
                .map_err(xenstore)?
        } else {
            vec![xs::VbdState::default(); devids.len()]
        };
        Ok(d.spec
            .disks
            .iter()
            .filter(|x| x.devid().is_some())
            .zip(states)
            .map(|(x, st)| {
                let devid = x.devid().unwrap_or(0);
                DiskInfo {
                    vdev: x.vdev.clone(),
                    devid,
                    target: x.target.clone(),
                    backend_type: x.backend_type.clone(),
                    mode: if writable(x) { "w" } else { "r" }.into(),
                    backend_id: 0,
                    frontend_id: domid,
                    frontend_state: st.frontend_state,
                    backend_state: st.backend_state,
                    evtchn: st.evtchn,
                    ring_ref: st.ring_ref,
                    backend_path: crate::vbd::paths(domid, devid)[0].clone(),
                }
            })
            .collect())
    }

    /// Hot-plugs `disk` (xl's syntax) into a running domain: checks it, records it in
    /// the domain's spec, writes its xenbus nodes, and has the VMM serve it. Undone
    /// step by step on failure.
    pub async fn attach_disk(self: &Arc<Self>, id: &str, text: &str) -> DomainResult<DiskInfo> {
        let disk = DiskSpec::parse(text).map_err(DomainError::InvalidConfig)?;
        check_disk(&disk)?;
        let devid = disk.devid().ok_or_else(|| {
            DomainError::InvalidConfig(format!("no device number for {}", disk.vdev))
        })?;
        let d = self.live(id)?;
        let domid = d.domid;
        // Reserved under the registry's lock: two attaches (or a create) racing for
        // one writable disk cannot both pass.
        let record = {
            let mut reg = lock(&self.reg);
            let cur = reg
                .get(domid)
                .ok_or_else(|| DomainError::NotFound(id.to_string()))?;
            if let Some(o) = cur.spec.disks.iter().find(|o| o.devid() == Some(devid)) {
                return Err(DomainError::DeviceInUse(format!(
                    "domain {} already has a disk on {} (device {devid}: {})",
                    cur.name, o.vdev, o.target
                )));
            }
            sharing_conflict(&reg, &cur.name, std::slice::from_ref(&disk))?;
            reg.update(domid, |x| {
                x.spec.disks.push(disk.clone());
                x.clone()
            })
        };
        if let Some(r) = &record {
            if let Err(e) = self.persist(r) {
                self.forget_disk(domid, devid);
                return Err(e);
            }
        }
        let sock = self.cfg.xenstored_socket.clone();
        let dk = disk.clone();
        let written = tokio::task::spawn_blocking(move || xs::add_vbd(&sock, domid, devid, &dk))
            .await
            .map_err(internal("xenstore task"))
            .and_then(|r| r.map_err(xenstore));
        if let Err(e) = written {
            self.undo_attach(domid, devid).await;
            return Err(e);
        }
        let mode = if writable(&disk) {
            DiskMode::ReadWrite
        } else {
            DiskMode::ReadOnly
        };
        let req = Request::AttachDisk {
            devid,
            mode,
            path: disk.target.clone(),
            direct: disk.direct_io,
        };
        if let Err(e) = vmm::command(&self.files(domid).control(), req).await {
            self.undo_attach(domid, devid).await;
            return Err(vmm_refusal("the VMM could not attach the disk", e));
        }
        self.emit(
            Some(domid),
            &d.name,
            "disk_attached",
            serde_json::json!({"vdev": disk.vdev, "devid": devid, "target": disk.target}),
        );
        self.disks(&domid.to_string())
            .await?
            .into_iter()
            .find(|x| x.devid == devid)
            .ok_or_else(|| DomainError::Internal("attached disk vanished".into()))
    }

    /// Removes the nodes and the spec entry of a failed attach.
    async fn undo_attach(&self, domid: u32, devid: u32) {
        let sock = self.cfg.xenstored_socket.clone();
        let _ = tokio::task::spawn_blocking(move || xs::remove_vbd(&sock, domid, devid)).await;
        self.forget_disk(domid, devid);
    }

    /// Drops disk `devid` from the domain's spec and record.
    fn forget_disk(&self, domid: u32, devid: u32) {
        self.change_devices(domid, |s| s.disks.retain(|o| o.devid() != Some(devid)));
    }

    /// Removes disk `dev` (vdev or device number) from a running domain as Xen does:
    /// the backend goes Closing, the guest has `wait` to close its frontend, then the
    /// ring is cut (at once with `force`), and the nodes go.
    pub async fn detach_disk(
        self: &Arc<Self>,
        id: &str,
        dev: &str,
        force: bool,
        wait: Duration,
    ) -> DomainResult<DiskDetachReply> {
        let d = self.live(id)?;
        let domid = d.domid;
        let disk = find_disk(&d.spec.disks, dev)
            .cloned()
            .ok_or_else(|| DomainError::NoDevice(format!("domain {} has no disk {dev}", d.name)))?;
        let devid = disk.devid().unwrap_or(0);
        let forced = self
            .close_backend(
                domid,
                crate::vbd::paths(domid, devid)[0].clone(),
                |force| Request::DetachDisk { devid, force },
                force,
                wait,
                &format!("disk {}", disk.vdev),
            )
            .await?;
        let sock = self.cfg.xenstored_socket.clone();
        tokio::task::spawn_blocking(move || xs::remove_vbd(&sock, domid, devid))
            .await
            .map_err(internal("xenstore task"))?
            .map_err(xenstore)?;
        self.forget_disk(domid, devid);
        self.emit(
            Some(domid),
            &d.name,
            "disk_detached",
            serde_json::json!({"vdev": disk.vdev, "devid": devid, "forced": forced}),
        );
        Ok(DiskDetachReply {
            vdev: disk.vdev,
            devid,
            forced,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::state::registry::Domain;
    use rxen_xend_api::DomainState;
    use rxen_xlcfg::DomainSpec;

    fn dom(reg: &mut Registry, domid: u32, name: &str, disks: &[&str]) {
        let (mut spec, _) = DomainSpec::from_xl(&format!("name='{name}'")).unwrap();
        spec.disks = disks.iter().map(|d| DiskSpec::parse(d).unwrap()).collect();
        let mut d = Domain::new(domid, spec, format!("uuid-{domid}"), false);
        d.state = DomainState::Running;
        reg.insert(d);
    }

    #[test]
    fn a_writable_disk_is_one_domains() {
        let dir = std::env::temp_dir().join(format!("rxen-share-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a.img");
        let b = dir.join("b.img");
        std::fs::write(&a, [0u8; 512]).unwrap();
        std::fs::write(&b, [0u8; 512]).unwrap();
        // Another name for a.img: identity is the inode, not the path.
        let alias = dir.join("alias.img");
        let _ = std::fs::remove_file(&alias);
        std::os::unix::fs::symlink(&a, &alias).unwrap();
        let (a, b, alias) = (a.display(), b.display(), alias.display());
        let mut reg = Registry::default();
        dom(&mut reg, 1, "web", &[&format!("file:{a},xvda,w")]);
        dom(&mut reg, 2, "ro", &[&format!("file:{b},xvda,r")]);
        let parse = |s: String| vec![DiskSpec::parse(&s).unwrap()];
        for (disk, ok) in [
            (format!("file:{a},xvdb,w"), false),
            (format!("file:{a},xvdb,r"), false),
            (format!("file:{alias},xvdb,r"), false),
            (format!("file:{b},xvdb,r"), true),
            (format!("file:{b},xvdb,w"), false),
        ] {
            let r = sharing_conflict(&reg, "new", &parse(disk.clone()));
            assert_eq!(r.is_ok(), ok, "{disk}: {r:?}");
            if let Err(e) = r {
                assert!(matches!(e, DomainError::DiskInUse(_)), "{e:?}");
                assert!(e.to_string().contains("in use by domain"), "{e}");
            }
        }
        // Twice in one request, one of them writable.
        let two = vec![
            DiskSpec::parse(&format!("file:{a},xvdb,r")).unwrap(),
            DiskSpec::parse(&format!("file:{alias},xvdc,w")).unwrap(),
        ];
        assert!(sharing_conflict(&Registry::default(), "new", &two).is_err());
        // A domain without a VMM (preserved after a crash) holds nothing.
        reg.update(1, |d| d.state = DomainState::Crashed);
        assert!(sharing_conflict(&reg, "new", &parse(format!("file:{a},xvdb,w"))).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn disks_are_named_by_vdev_or_number() {
        let disks = vec![
            DiskSpec::parse("file:/a,xvda,w").unwrap(),
            DiskSpec::parse("file:/b,hda,w").unwrap(),
        ];
        assert_eq!(find_disk(&disks, "xvda").unwrap().target, "/a");
        assert_eq!(find_disk(&disks, "51712").unwrap().target, "/a");
        assert_eq!(find_disk(&disks, "768").unwrap().target, "/b");
        assert!(find_disk(&disks, "xvdb").is_none());
        assert!(find_disk(&disks, "1").is_none());
    }
}
