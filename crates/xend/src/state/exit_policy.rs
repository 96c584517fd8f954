//! What happens when a domain's VMM ends: Xen's `on_poweroff`, `on_reboot` and
//! `on_crash` actions (destroy, restart, preserve, rename-restart), and forgetting a
//! domain completely (xenstore, database, files, registry).

use std::sync::Arc;
use std::time::Duration;

use rxen_vmm_api::{ExitKind, ExitRecord};
use rxen_xend_api::DomainState;
use rxen_xlcfg::{Action, DomainSpec};

use super::create::CreateOptions;
use super::{lock, Xend};
use crate::process;
use crate::vmm;
use crate::xs;

/// Logs of this many ended domains are kept (`STATE_DIR/logs/`), the oldest go first.
pub const KEPT_LOGS: usize = 32;

/// Keeps the `keep` newest directories of `dir` (by modification time).
fn prune_logs(dir: &std::path::Path, keep: usize) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<(std::time::SystemTime, std::path::PathBuf)> = rd
        .flatten()
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((m.modified().ok()?, e.path()))
        })
        .collect();
    if entries.len() <= keep {
        return;
    }
    entries.sort();
    for (_, p) in &entries[..entries.len() - keep] {
        let _ = std::fs::remove_dir_all(p);
    }
}

/// How often an adopted VMM (not xend's child) is checked for life.
const ADOPTED_POLL: Duration = Duration::from_millis(200);

/// How often a failed delete of a domain's record is tried before giving up (the
/// record, marked destroying or creating, is then removed at the next start).
const RECORD_DELETE_ATTEMPTS: u32 = 5;

impl Xend {
    /// Deletes a domain's record, retrying a failing database a few times.
    async fn forget_record(&self, domid: u32) {
        for attempt in 1..=RECORD_DELETE_ATTEMPTS {
            match lock(&self.db).delete_running(domid) {
                Ok(()) => return,
                Err(e) if attempt == RECORD_DELETE_ATTEMPTS => {
                    tracing::error!(
                        domid,
                        "deleting the domain's record failed {attempt} times, the next start removes it: {e}"
                    );
                }
                Err(e) => tracing::warn!(domid, attempt, "deleting the domain's record: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
        }
    }

    /// Removes a domain's directory, keeping its logs (console and VMM) under
    /// `STATE_DIR/logs/NAME-DOMID/` for the newest [`KEPT_LOGS`] ended domains.
    fn retire_files(&self, domid: u32, name: &str) {
        let files = self.files(domid);
        let logs = self.cfg.state_dir.join("logs");
        let keep = logs.join(format!("{name}-{domid}"));
        if std::fs::create_dir_all(&keep).is_ok() {
            for f in [
                files.console(),
                files.console().with_extension("log.1"),
                files.vmm_log(),
            ] {
                if let Some(n) = f.file_name() {
                    let _ = std::fs::rename(&f, keep.join(n));
                }
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&files.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(domid, "removing {}: {e}", files.dir.display());
            }
        }
        prune_logs(&logs, KEPT_LOGS);
    }

    /// Waits for a VMM xend started, then applies its domain's exit policy.
    pub(super) fn watch_child(self: Arc<Self>, domid: u32, mut child: tokio::process::Child) {
        tokio::spawn(async move {
            let _ = child.wait().await;
            self.on_vmm_exit(domid).await;
        });
    }

    /// Waits for an adopted VMM (started by an earlier xend) to end.
    pub(super) fn watch_pid(self: Arc<Self>, domid: u32, pid: u32) {
        tokio::spawn(async move {
            if let Err(e) = process::wait_exit(pid).await {
                // No pidfd (old kernel): poll.
                tracing::debug!(domid, pid, "pidfd unavailable, polling: {e}");
                while process::pid_alive(pid) {
                    tokio::time::sleep(ADOPTED_POLL).await;
                }
            }
            self.on_vmm_exit(domid).await;
        });
    }

    /// A domain's VMM ended: apply the configured action.
    pub(super) async fn on_vmm_exit(self: &Arc<Self>, domid: u32) {
        let Ok(d) = self.get(domid) else { return };
        let files = self.files(domid);
        let record = vmm::read_exit(&files)
            .unwrap_or_else(|| ExitRecord::new(ExitKind::Crash, "the VMM died"));
        let action = match (d.state, record.kind) {
            (DomainState::Destroying, _) | (_, ExitKind::Destroyed) => None,
            (_, ExitKind::Poweroff | ExitKind::Suspend) => Some(d.spec.on_poweroff),
            (_, ExitKind::Reboot) => Some(d.spec.on_reboot),
            _ => Some(d.spec.on_crash),
        };
        self.emit(
            Some(domid),
            &d.name,
            "exited",
            serde_json::json!({"reason": record.kind.name(), "detail": record.reason}),
        );
        let _ = std::fs::remove_file(files.control());
        match action {
            None | Some(Action::Destroy) => self.cleanup(domid).await,
            Some(Action::Preserve) => {
                let state = match record.kind {
                    ExitKind::Poweroff | ExitKind::Reboot | ExitKind::Suspend => {
                        DomainState::Shutdown
                    }
                    _ => DomainState::Crashed,
                };
                self.preserve(domid, state, &record, None);
            }
            Some(Action::Restart) => {
                self.cleanup(domid).await;
                self.restart(d.spec, d.managed).await;
            }
            Some(Action::RenameRestart) => {
                let old = format!("{}-{}", d.name, domid);
                self.preserve(domid, DomainState::Crashed, &record, Some(old));
                let mut spec = d.spec;
                spec.uuid = None;
                self.restart(spec, d.managed).await;
            }
        }
    }

    /// Keeps an ended domain listed (and recorded, so that restarts keep it) until it
    /// is destroyed.
    fn preserve(
        &self,
        domid: u32,
        state: DomainState,
        record: &ExitRecord,
        rename: Option<String>,
    ) {
        let d = lock(&self.reg).update(domid, |d| {
            d.state = state;
            d.exit_reason = Some(format!("{}: {}", record.kind.name(), record.reason));
            d.status = None;
            if let Some(n) = &rename {
                d.name = n.clone();
                d.spec.name = n.clone();
            }
            d.clone()
        });
        let Some(d) = d else { return };
        let _ = self.persist(&d);
        self.emit(
            Some(domid),
            &d.name,
            "preserved",
            serde_json::json!({"reason": record.kind.name()}),
        );
    }

    async fn restart(self: &Arc<Self>, spec: DomainSpec, managed: bool) {
        let name = spec.name.clone();
        match Box::pin(self.create(spec, managed, CreateOptions::default())).await {
            Ok(i) => self.emit(i.domid, &name, "restarted", serde_json::json!({})),
            Err(e) => {
                tracing::error!(name, "restart failed: {e}");
                self.emit(
                    None,
                    &name,
                    "restart_failed",
                    serde_json::json!({"error": e.to_string()}),
                );
            }
        }
    }

    /// Forgets a domain: xenstore entries and introduction, record, control socket,
    /// and last the registry entry (so that a caller who sees it gone sees nothing
    /// else of it either).
    pub(super) async fn cleanup(&self, domid: u32) {
        let Ok(d) = self.get(domid) else {
            return;
        };
        let sock = self.cfg.xenstored_socket.clone();
        let uuid = d.uuid.clone();
        match tokio::task::spawn_blocking(move || xs::teardown(&sock, domid, &uuid)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(domid, "removing xenstore entries: {e}"),
            Err(e) => tracing::error!(domid, "xenstore task: {e}"),
        }
        self.forget_record(domid).await;
        self.retire_files(domid, &d.name);
        if lock(&self.reg).remove(domid).is_some() {
            self.emit(Some(domid), &d.name, "destroyed", serde_json::json!({}));
        }
    }
}
