//! Re-adoption after a restart of xend, and the background refresh of each domain's
//! figures from its VMM.

use std::sync::Arc;

use rxen_vmm_api::{ExitKind, ExitRecord};
use rxen_xend_api::DomainState;

use super::registry::Domain;
use super::{lock, Xend};
use crate::process;
use crate::vmm;

impl Xend {
    /// Re-adopts the domains on record: preserved domains stay listed until destroyed;
    /// a domain whose VMM process lives is adopted (even if its control socket does
    /// not answer now: a stopped process is not a dead one); a domain whose VMM died
    /// while xend was down is treated as crashed and its on_crash action applied.
    pub async fn adopt(self: &Arc<Self>) {
        let records = match lock(&self.db).running() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("reading the domain records: {e}");
                return;
            }
        };
        // Ask every live VMM at once: one that does not answer (stopped, overloaded)
        // costs the control timeout once, not once per domain.
        let statuses = futures_util::future::join_all(records.iter().map(|r| {
            let control = self.files(r.domid).control();
            let live = matches!(
                r.state,
                DomainState::Running | DomainState::Paused | DomainState::ShuttingDown
            ) && process::is_vmm_of(r.pid, &control);
            async move {
                if live {
                    Some(vmm::status(&control).await)
                } else {
                    None
                }
            }
        }))
        .await;
        for (r, status) in records.into_iter().zip(statuses) {
            let mut d = Domain::from_record(&r);
            let files = self.files(r.domid);
            match r.state {
                DomainState::Crashed | DomainState::Shutdown => {
                    tracing::info!(domid = r.domid, name = r.name, state = %r.state, "kept preserved domain");
                    lock(&self.reg).insert(d);
                    continue;
                }
                // A create or destroy that a crash of xend interrupted: finish it the
                // safe way, by removing the domain (a create never answered 201).
                DomainState::Creating | DomainState::Destroying => {
                    tracing::warn!(domid = r.domid, name = r.name, state = %r.state, "rolling back an interrupted operation");
                    if process::is_vmm_of(r.pid, &files.control()) {
                        process::stop_all(&[r.pid]).await;
                    }
                    d.state = DomainState::Destroying;
                    lock(&self.reg).insert(d);
                    self.cleanup(r.domid).await;
                    continue;
                }
                _ => {}
            }
            if let Some(status) = status {
                d.state = match &status {
                    Ok(s) if s.paused => DomainState::Paused,
                    _ => DomainState::Running,
                };
                if let Err(e) = &status {
                    tracing::warn!(
                        domid = r.domid,
                        name = r.name,
                        "adopted VMM does not answer (kept, marked unresponsive): {e}"
                    );
                    d.unresponsive = true;
                }
                d.status = status.ok();
                lock(&self.reg).insert(d);
                tracing::info!(domid = r.domid, name = r.name, "re-adopted running domain");
                self.emit(
                    Some(r.domid),
                    &r.name,
                    "adopted",
                    serde_json::json!({"pid": r.pid}),
                );
                self.clone().watch_pid(r.domid, r.pid);
            } else {
                tracing::warn!(
                    domid = r.domid,
                    name = r.name,
                    "VMM died while xend was down: crashed"
                );
                d.state = DomainState::Running;
                lock(&self.reg).insert(d);
                if vmm::read_exit(&files).is_none() {
                    let _ = vmm::write_exit(
                        &files,
                        &ExitRecord::new(ExitKind::Crash, "the VMM died while xend was down"),
                    );
                }
                self.on_vmm_exit(r.domid).await;
            }
        }
    }

    /// After adoption: stops VMMs and removes files and xenstore entries of domains
    /// that have no record (xend died between starting them and recording them, or
    /// its database was lost), so that no two live domains share a name or UUID.
    pub async fn reconcile(self: &Arc<Self>) {
        let known: Vec<u32> = lock(&self.reg).iter().map(|d| d.domid).collect();
        // VMMs of this state directory that no registered domain owns, however far
        // their start got (even before their control socket existed).
        let domains_dir = self.cfg.state_dir.join("domains");
        let mut unowned = Vec::new();
        for (pid, control) in process::vmms_under(&domains_dir) {
            let owned = lock(&self.reg)
                .iter()
                .any(|d| d.pid == pid && self.files(d.domid).control() == control);
            if !owned {
                tracing::warn!(pid, control = %control.display(), "stopping a VMM xend has no record of");
                unowned.push(pid);
            }
        }
        process::stop_all(&unowned).await;
        if let Ok(rd) = std::fs::read_dir(self.cfg.state_dir.join("domains")) {
            for e in rd.flatten() {
                let Some(domid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                    continue;
                };
                if known.contains(&domid) {
                    continue;
                }
                let files = self.files(domid);
                if let Ok(s) = vmm::status(&files.control()).await {
                    tracing::warn!(
                        domid,
                        name = s.name,
                        pid = s.pid,
                        "stopping a VMM xend has no record of"
                    );
                    let _ = vmm::command(&files.control(), rxen_vmm_api::Request::Destroy).await;
                    if process::is_vmm_of(s.pid, &files.control()) {
                        process::stop_all(&[s.pid]).await;
                    }
                }
                let _ = std::fs::remove_dir_all(&files.dir);
            }
        }
        let uuids: Vec<String> = lock(&self.reg).iter().map(|d| d.uuid.clone()).collect();
        let sock = self.cfg.xenstored_socket.clone();
        match tokio::task::spawn_blocking(move || crate::xs::remove_unknown(&sock, &known, &uuids))
            .await
        {
            Ok(Ok(removed)) if !removed.is_empty() => {
                tracing::warn!(?removed, "removed xenstore entries of unknown domains")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!("reconciling xenstore: {e}"),
            Err(e) => tracing::error!("reconciling xenstore: {e}"),
        }
    }

    /// Refreshes per-domain figures from the VMMs (for list, top and metrics), and
    /// checks that the database file is still there.
    pub async fn refresh(&self) {
        {
            let mut db = lock(&self.db);
            if db.detached() {
                tracing::error!("xend.db was removed or replaced while xend runs; writing it back");
                if let Err(e) = db.restore() {
                    tracing::error!("writing xend.db back: {e}");
                }
            }
        }
        let ids: Vec<u32> = lock(&self.reg)
            .iter()
            .filter(|d| {
                matches!(
                    d.state,
                    DomainState::Running | DomainState::Paused | DomainState::ShuttingDown
                )
            })
            .map(|d| d.domid)
            .collect();
        for domid in ids {
            match vmm::status(&self.files(domid).control()).await {
                Ok(s) => {
                    lock(&self.reg).update(domid, |d| {
                        d.status = Some(s);
                        d.unresponsive = false;
                    });
                }
                Err(e) => {
                    let newly = lock(&self.reg).update(domid, |d| {
                        let was = d.unresponsive;
                        d.unresponsive = process::pid_alive(d.pid);
                        d.unresponsive && !was
                    });
                    if newly == Some(true) {
                        tracing::warn!(domid, "VMM does not answer: {e}");
                    }
                }
            }
        }
    }
}
