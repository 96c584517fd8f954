//! Creating a domain: reserve its name, UUID and id, write its xenstore entries,
//! start its VMM, wait for the boot report, introduce it to xenstored.
//!
//! A guest may finish before its VMM has answered once (a guest that powers off at
//! once). That is a successful create followed by a normal exit: the domain is
//! registered and its `on_poweroff` (or other) action applies as for any exit. Only a
//! VMM that ends without recording an exit failed to build the domain.

use std::sync::Arc;
use std::time::Duration;

use rxen_xend_api::{DomainInfo, DomainState, DOM0_NAME};
use rxen_xlcfg::DomainSpec;

use super::error::{internal, xenstore};
use super::registry::Domain;
use super::{lock, DomainError, DomainResult, Xend};
use crate::vmm::{self, Launch};
use crate::xs;

/// How often `create` asks a starting VMM whether it is up.
const BOOT_POLL: Duration = Duration::from_millis(2);

/// Options of one create.
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    /// Leave the domain paused (`xm create -p`).
    pub paused: bool,
    /// Restore from this saved image (checked by the caller) instead of booting the
    /// spec's kernel (`xm restore`).
    pub restore: Option<std::path::PathBuf>,
    /// A live migration's connection, handed to the VMM as its standard input
    /// (with `restore` = `-`); the stream may take minutes, so the start deadline is
    /// [`INCOMING_START_TIMEOUT`].
    pub incoming: Option<Arc<std::os::fd::OwnedFd>>,
}

/// How long a VMM restoring from a live migration's connection may take to answer
/// (the pre-copy rounds run before it can).
pub const INCOMING_START_TIMEOUT: Duration = Duration::from_secs(600);

/// How a VMM start ended.
enum Started {
    /// The VMM answered; the domain runs.
    Running(tokio::process::Child, Box<rxen_vmm_api::Status>),
    /// The guest ran and ended before the VMM answered (its exit is recorded).
    AlreadyEnded(tokio::process::Child),
}

/// A kernel (or ramdisk: `what`) must be a regular, non-empty file within the image
/// limit: checked before anything reads it (a device, `/proc/self/mem` or a huge
/// sparse file never is).
fn check_image_file(what: &str, k: &str) -> DomainResult<()> {
    let bad = |why: String| Err(DomainError::InvalidConfig(format!("{what} {k:?} {why}")));
    let m = match std::fs::metadata(k) {
        Ok(m) => m,
        Err(e) => return bad(format!("cannot be used: {e}")),
    };
    let max = rxen_vmm_api::MAX_IMAGE_BYTES;
    if !m.is_file() {
        bad("is not a regular file".into())
    } else if m.len() == 0 {
        bad("is empty (or a special file that reports no size)".into())
    } else if m.len() > max {
        bad(format!(
            "is {} bytes, more than the {max} a guest image may have",
            m.len()
        ))
    } else {
        Ok(())
    }
}

/// A disk's target must be a regular file or a block device the VMM can open (it is
/// opened again by the VMM, which refuses anything else too), and only raw images are
/// served.
pub(super) fn check_disk(d: &rxen_xlcfg::devices::DiskSpec) -> DomainResult<()> {
    use std::os::unix::fs::FileTypeExt;
    let bad = |why: String| {
        Err(DomainError::InvalidConfig(format!(
            "disk {:?} ({}): {why}",
            d.target, d.vdev
        )))
    };
    if d.format != "raw" {
        return bad(format!(
            "format {:?} is not supported (raw images only)",
            d.format
        ));
    }
    let m = match std::fs::metadata(&d.target) {
        Ok(m) => m,
        Err(e) => return bad(format!("cannot be used: {e}")),
    };
    let ft = m.file_type();
    if !ft.is_file() && !ft.is_block_device() {
        return bad("is not a regular file or a block device".into());
    }
    if ft.is_file() && m.len() < 512 {
        return bad("is smaller than one 512-byte sector".into());
    }
    Ok(())
}

/// Host memory a domain may come to use: its maximum memory and the VMM's overhead.
pub fn domain_footprint_mib(spec: &DomainSpec) -> u64 {
    spec.maxmem.unwrap_or(spec.memory).max(spec.memory) + DOMAIN_OVERHEAD_MIB
}

/// What a VMM process costs besides guest memory (page tables, threads, buffers).
pub const DOMAIN_OVERHEAD_MIB: u64 = 8;

/// Settings the domain has that nothing acts on yet (told to the client and logged).
pub fn unapplied_settings(spec: &DomainSpec) -> Vec<String> {
    let mut w = Vec::new();
    for (i, v) in spec.vifs.iter().enumerate() {
        let routed = matches!(crate::vif::mode(v), Ok(crate::vif::VifMode::Routed(_)));
        for (key, set) in [
            ("ip", v.ip.is_some() && !routed),
            ("rate", v.rate.is_some()),
            ("model", v.model.is_some()),
        ] {
            if set {
                w.push(format!("vif {i}: {key} is accepted but not applied"));
            }
        }
    }
    w
}

impl Xend {
    /// Creates and starts a domain.
    pub async fn create(
        self: &Arc<Self>,
        mut spec: DomainSpec,
        managed: bool,
        opts: CreateOptions,
    ) -> DomainResult<DomainInfo> {
        spec.validate()
            .map_err(|e| DomainError::InvalidConfig(e.to_string()))?;
        if spec.name == DOM0_NAME {
            return Err(DomainError::NameInUse(spec.name));
        }
        if opts.restore.is_none() {
            if let Some(k) = &spec.kernel {
                check_image_file("kernel", k)?;
            }
            if let Some(r) = &spec.ramdisk {
                check_image_file("ramdisk", r)?;
            }
        }
        for d in &spec.disks {
            check_disk(d)?;
        }
        // libxl gives a vif without a MAC a random one in Xen's range, and numbers
        // vifs from 0; both are kept in the spec, so that the record and restarts keep
        // them.
        crate::state::nics::complete_vifs(&mut spec.vifs)?;
        let uuid = spec
            .uuid
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        spec.uuid = Some(uuid.clone());
        let domid = self.reserve(&spec, &uuid, managed)?;
        match self.start_domain(domid, &uuid, &spec, &opts).await {
            Ok(started) => {
                let (child, status, ended) = match started {
                    Started::Running(c, s) => (c, Some(*s), false),
                    Started::AlreadyEnded(c) => (c, None, true),
                };
                let to = if opts.paused && !ended {
                    DomainState::Paused
                } else {
                    DomainState::Running
                };
                let pid = child.id().unwrap_or(0);
                let d = lock(&self.reg)
                    .update(domid, |d| {
                        d.pid = pid;
                        d.state = to;
                        d.status = status;
                        d.clone()
                    })
                    .ok_or_else(|| {
                        DomainError::Internal("domain vanished while starting".into())
                    })?;
                // A domain whose record cannot be written would be lost at the next
                // restart: the create fails and the domain goes away.
                if let Err(e) = self.persist(&d) {
                    crate::process::kill(pid);
                    self.clone().watch_child(domid, child);
                    return Err(e);
                }
                self.emit(
                    Some(domid),
                    &d.name,
                    "created",
                    serde_json::json!({"uuid": uuid, "ended_during_start": ended}),
                );
                self.clone().watch_child(domid, child);
                Ok(d.info())
            }
            Err(e) => {
                lock(&self.reg).remove(domid);
                if let Err(db) = lock(&self.db).delete_running(domid) {
                    // The intent record stays: the next start rolls it back.
                    tracing::error!(domid, "removing the create intent: {db}");
                }
                Err(e)
            }
        }
    }

    /// Reserves the name, the UUID, the memory and a domain id, and writes the intent
    /// record (state `creating`) before anything starts, so that a crash of xend at
    /// any later point is rolled back at its next start.
    fn reserve(&self, spec: &DomainSpec, uuid: &str, managed: bool) -> DomainResult<u32> {
        let mut reg = lock(&self.reg);
        if reg.by_name(&spec.name).is_some() {
            return Err(DomainError::NameInUse(spec.name.clone()));
        }
        if reg.by_uuid(uuid).is_some() {
            return Err(DomainError::UuidInUse(uuid.to_string()));
        }
        super::disks::sharing_conflict(&reg, &spec.name, &spec.disks)?;
        let wanted = domain_footprint_mib(spec);
        let used: u64 = reg
            .iter()
            .filter(|d| d.state.has_vmm())
            .map(|d| domain_footprint_mib(&d.spec))
            .sum();
        let capacity = self.cfg.memory_capacity_mib;
        if used + wanted > capacity {
            return Err(DomainError::InsufficientMemory(format!(
                "the domain needs {wanted} MiB (maxmem and overhead); {} of the host's {capacity} MiB for domains are free (see --dom0-memory and --memory-overcommit)",
                capacity.saturating_sub(used)
            )));
        }
        let files_root = self.cfg.state_dir.join("domains");
        let domid = lock(&self.db)
            .allocate_domid(&|id| {
                // Never an id a live VMM may still use, even one xend lost track of.
                reg.contains(id)
                    || files_root
                        .join(id.to_string())
                        .join("control.sock")
                        .exists()
            })
            .map_err(internal("allocating a domain id"))?
            .ok_or(DomainError::NoFreeDomid)?;
        let d = Domain::new(domid, spec.clone(), uuid.to_string(), managed);
        lock(&self.db)
            .put_running(&d.record())
            .map_err(internal("recording the create intent"))?;
        reg.insert(d);
        Ok(domid)
    }

    /// xenstore entries, VMM process, boot report, introduction. Undoes everything on
    /// failure.
    async fn start_domain(
        &self,
        domid: u32,
        uuid: &str,
        spec: &DomainSpec,
        opts: &CreateOptions,
    ) -> DomainResult<Started> {
        let started_at = lock(&self.reg).get(domid).map_or(0.0, |d| d.started);
        let sock = self.cfg.xenstored_socket.clone();
        let (u, s) = (uuid.to_string(), spec.clone());
        let populated = tokio::task::spawn_blocking(move || {
            xs::populate(&sock, domid, &u, &s, started_at, &[])
        })
        .await
        .map_err(internal("xenstore task"))?;
        let files = self.files(domid);
        if let Err(e) = populated {
            self.undo_start(domid, uuid).await;
            return Err(xenstore(e));
        }
        let xs_dom_socket = self
            .cfg
            .xenstored_socket
            .parent()
            .map(|p| p.join("domains").join(domid.to_string()))
            .unwrap_or_default();
        let vifs = match self.prepare_vifs(domid, &spec.vifs) {
            Ok(v) => v,
            Err(e) => {
                self.undo_start(domid, uuid).await;
                return Err(e);
            }
        };
        let launch = Launch {
            vmm: &self.cfg.xen_vmm,
            domid,
            name: &spec.name,
            uuid,
            memory_mib: spec.memory.max(spec.maxmem.unwrap_or(0)),
            vcpus: spec.maxvcpus.unwrap_or(spec.vcpus),
            kernel: spec.kernel.as_deref(),
            ramdisk: spec.ramdisk.as_deref(),
            cmdline: &spec.cmdline,
            xenstore_socket: &xs_dom_socket,
            xenstored_socket: &self.cfg.xenstored_socket,
            disks: spec
                .disks
                .iter()
                .filter_map(|d| {
                    Some(crate::vmm::LaunchDisk {
                        devid: d.devid()?,
                        writable: d.access == rxen_xlcfg::devices::DiskAccess::ReadWrite,
                        direct: d.direct_io,
                        path: d.target.as_str(),
                    })
                })
                .collect(),
            vifs,
            files: &files,
            paused: opts.paused,
            restore: opts.restore.as_deref(),
            stdin: opts.incoming.as_deref(),
        };
        let mut child = match vmm::spawn(&launch) {
            Ok(c) => {
                // The intent record learns the pid at once, so that a crash of xend
                // from here on finds the VMM to stop.
                let d = lock(&self.reg).update(domid, |d| {
                    d.pid = c.id().unwrap_or(0);
                    d.clone()
                });
                if let Some(d) = d {
                    if let Err(e) = self.persist(&d) {
                        crate::process::kill(d.pid);
                        self.undo_start(domid, uuid).await;
                        return Err(e);
                    }
                }
                c
            }
            Err(e) => {
                self.undo_start(domid, uuid).await;
                return Err(DomainError::Internal(format!(
                    "starting xen-vmm ({}): {e}",
                    self.cfg.xen_vmm.display()
                )));
            }
        };
        let timeout = if opts.incoming.is_some() {
            self.cfg.start_timeout.max(INCOMING_START_TIMEOUT)
        } else {
            self.cfg.start_timeout
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(status) = vmm::status(&files.control()).await {
                tracing::debug!(domid, "the new VMM answers");
                let sock = self.cfg.xenstored_socket.clone();
                let boot = status.boot;
                let introduced =
                    tokio::task::spawn_blocking(move || xs::introduce(&sock, domid, &boot))
                        .await
                        .map_err(internal("xenstore task"))?;
                if let Err(e) = introduced {
                    let _ = child.kill().await;
                    self.undo_start(domid, uuid).await;
                    return Err(xenstore(e));
                }
                return Ok(Started::Running(child, Box::new(status)));
            }
            if let Ok(Some(status)) = child.try_wait() {
                if vmm::read_exit(&files).is_some() {
                    return Ok(Started::AlreadyEnded(child));
                }
                self.undo_start(domid, uuid).await;
                let log = std::fs::read_to_string(files.vmm_log()).unwrap_or_default();
                let _ = std::fs::remove_dir_all(&files.dir);
                let detail = log.trim();
                let detail = if detail.is_empty() {
                    format!("xen-vmm exited ({status}) and logged nothing")
                } else {
                    detail.to_string()
                };
                // Killed by a signal: the host's fault. Exited with a status: the VMM
                // refused what it was given (image, sizes), the config's fault.
                return Err(if status.code().is_some() {
                    DomainError::BuildFailed(detail)
                } else {
                    DomainError::Internal(format!("xen-vmm died while starting: {detail}"))
                });
            }
            if tokio::time::Instant::now() > deadline {
                let _ = child.kill().await;
                self.undo_start(domid, uuid).await;
                let _ = std::fs::remove_dir_all(&files.dir);
                return Err(DomainError::Internal(
                    "xen-vmm did not come up in time".into(),
                ));
            }
            tokio::time::sleep(BOOT_POLL).await;
        }
    }

    async fn undo_start(&self, domid: u32, uuid: &str) {
        let sock = self.cfg.xenstored_socket.clone();
        let u = uuid.to_string();
        let _ = tokio::task::spawn_blocking(move || xs::teardown(&sock, domid, &u)).await;
    }
}
