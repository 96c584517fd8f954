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
        for r in records {
            let mut d = Domain::from_record(&r);
            if matches!(r.state, DomainState::Crashed | DomainState::Shutdown) {
                tracing::info!(domid = r.domid, name = r.name, state = %r.state, "kept preserved domain");
                lock(&self.reg).insert(d);
                continue;
            }
            let files = self.files(r.domid);
            if process::pid_alive(r.pid) {
                let status = vmm::status(&files.control()).await;
                d.state = match &status {
                    Ok(s) if s.paused => DomainState::Paused,
                    _ => DomainState::Running,
                };
                if let Err(e) = &status {
                    tracing::warn!(
                        domid = r.domid,
                        name = r.name,
                        "adopted VMM does not answer: {e}"
                    );
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

    /// Refreshes per-domain figures from the VMMs (for list, top and metrics).
    pub async fn refresh(&self) {
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
            if let Ok(s) = vmm::status(&self.files(domid).control()).await {
                lock(&self.reg).update(domid, |d| d.status = Some(s));
            }
        }
    }
}
