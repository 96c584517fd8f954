//! The domain manager: the registry of domains and every operation on them. Split by
//! concern: [`registry`] (the domains and their state watches), [`create`] (building
//! and starting a domain), [`lifecycle`] (operations on a running domain),
//! [`exit_policy`] (what happens when a VMM ends: on_poweroff/on_reboot/on_crash),
//! [`adopt`] (re-adoption after a restart, background refresh), [`managed`] (configs
//! kept by xend), [`host`] (Domain-0 and the host's figures). Errors are
//! [`DomainError`]s; only `api.rs` turns them into HTTP.

mod adopt;
pub mod create;
mod devices;
pub mod disks;
pub mod error;
mod exit_policy;
mod host;
mod lifecycle;
mod managed;
pub mod migrate;
pub mod nics;
pub mod registry;
mod save;
mod suspend;
mod xenstored;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rxen_xend_api::{DomainEvent, DomainInfo, DomainState, DOM0_ID, DOM0_NAME};
use tokio::sync::broadcast;

use error::internal;
pub use error::{DomainError, DomainResult};
use registry::{Domain, Registry};

use crate::db::Db;
use crate::vmm::{self, DomainFiles};

/// Settings of the daemon.
#[derive(Clone, Debug)]
pub struct XendConfig {
    pub state_dir: PathBuf,
    pub xenstored_socket: PathBuf,
    pub xen_vmm: PathBuf,
    /// How long `create` waits for a new VMM to answer.
    pub start_timeout: Duration,
    /// Host memory domains may use in all (MiB): what the host has, less what domain 0
    /// keeps, times the overcommit ratio. A create beyond it is refused.
    pub memory_capacity_mib: u64,
    /// Create (and bring up) a vif's bridge when it is missing; when `false`
    /// (`--no-bridge-create`), a missing bridge is an error.
    pub create_bridges: bool,
    /// The relocation token (`--relocation-token-file`): sent with outgoing
    /// migrations and required of incoming ones.
    pub relocation_token: Option<String>,
}

/// Memory domains may use on this host: `(MemTotal - dom0_mib) * overcommit`.
pub fn memory_capacity_mib(dom0_mib: u64, overcommit: f64) -> u64 {
    let total = host::meminfo_mib("MemTotal:");
    (total.saturating_sub(dom0_mib) as f64 * overcommit.max(0.0)) as u64
}

/// The daemon's state, shared by all requests.
pub struct Xend {
    pub cfg: XendConfig,
    db: Mutex<Db>,
    reg: Mutex<Registry>,
    pub events: broadcast::Sender<DomainEvent>,
}

/// How much of a console `GET /domains/{id}/console` returns at most.
pub const CONSOLE_TAIL_BYTES: u64 = 256 * 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Is `id` a name or number for Domain-0?
fn is_dom0(id: &str) -> bool {
    id == DOM0_NAME || id.parse::<u32>() == Ok(DOM0_ID)
}

impl Xend {
    pub fn new(cfg: XendConfig) -> Result<Arc<Self>, String> {
        std::fs::create_dir_all(cfg.state_dir.join("domains"))
            .map_err(|e| format!("creating state dir: {e}"))?;
        let db = Db::open(&cfg.state_dir.join("xend.db")).map_err(|e| e.to_string())?;
        let (events, _) = broadcast::channel(1024);
        Ok(Arc::new(Xend {
            cfg,
            db: Mutex::new(db),
            reg: Mutex::new(Registry::default()),
            events,
        }))
    }

    fn emit(&self, domid: Option<u32>, name: &str, event: &str, detail: serde_json::Value) {
        tracing::info!(domid, name, event, %detail, "domain event");
        let _ = self.events.send(DomainEvent {
            time: registry::now(),
            domid,
            name: name.to_string(),
            event: event.to_string(),
            detail,
        });
    }

    fn files(&self, domid: u32) -> DomainFiles {
        DomainFiles::new(&self.cfg.state_dir, domid)
    }

    /// Finds a registered domain (live or preserved) by id or name. Domain-0 is not one.
    fn resolve(&self, id: &str) -> DomainResult<u32> {
        if is_dom0(id) {
            return Err(DomainError::Dom0("managed through this API"));
        }
        let reg = lock(&self.reg);
        if let Ok(n) = id.parse::<u32>() {
            if reg.contains(n) {
                return Ok(n);
            }
        }
        reg.by_name(id)
            .map(|d| d.domid)
            .ok_or_else(|| DomainError::NotFound(id.to_string()))
    }

    fn get(&self, domid: u32) -> DomainResult<Domain> {
        lock(&self.reg)
            .get(domid)
            .cloned()
            .ok_or_else(|| DomainError::NotFound(domid.to_string()))
    }

    /// A domain whose VMM runs (running, paused or shutting down), else `WrongState`.
    fn live(&self, id: &str) -> DomainResult<Domain> {
        let d = self.get(self.resolve(id)?)?;
        if !matches!(
            d.state,
            DomainState::Running | DomainState::Paused | DomainState::ShuttingDown
        ) {
            return Err(DomainError::WrongState(d.state));
        }
        Ok(d)
    }

    fn set_state(&self, domid: u32, s: DomainState) {
        lock(&self.reg).update(domid, |d| d.state = s);
    }

    /// Writes a domain's record; a failure is logged and returned.
    fn persist(&self, d: &Domain) -> DomainResult<()> {
        lock(&self.db).put_running(&d.record()).map_err(|e| {
            tracing::error!(domid = d.domid, "recording domain: {e}");
            DomainError::Internal(format!("recording domain {}: {e}", d.domid))
        })
    }

    // ------------------------------------------------------------------ queries

    /// Domain-0 first, then every registered domain, then halted managed domains.
    pub fn list(&self) -> DomainResult<Vec<DomainInfo>> {
        let mut out = vec![host::dom0_info()];
        out.extend(lock(&self.reg).iter().map(Domain::info));
        out.extend(self.halted_managed()?);
        Ok(out)
    }

    pub fn info(&self, id: &str) -> DomainResult<DomainInfo> {
        if is_dom0(id) {
            return Ok(host::dom0_info());
        }
        match self.resolve(id) {
            Ok(d) => Ok(self.get(d)?.info()),
            Err(e) => self
                .halted_managed()?
                .into_iter()
                .find(|d| d.name == id)
                .ok_or(e),
        }
    }

    /// The newest [`CONSOLE_TAIL_BYTES`] of a domain's console.
    pub fn console(&self, id: &str) -> DomainResult<String> {
        let d = self.resolve(id)?;
        let bytes = vmm::console_tail(&self.files(d), CONSOLE_TAIL_BYTES)
            .map_err(internal("reading the console log"))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Sends text to the guest's console input (`VIRQ_CONSOLE`).
    pub async fn console_input(&self, id: &str, text: &str) -> DomainResult<()> {
        let d = self.live(id)?;
        vmm::command(
            &self.files(d.domid).control(),
            rxen_vmm_api::Request::ConsoleInput {
                data: text.to_string(),
            },
        )
        .await
        .map_err(|e| DomainError::Refused(e.to_string()))
    }

    /// Registered domains (Domain-0 not included), for metrics and host info.
    pub fn snapshot(&self) -> Vec<DomainInfo> {
        lock(&self.reg).iter().map(Domain::info).collect()
    }

    /// The host in xl info's terms.
    pub fn host_info(&self) -> rxen_xend_api::HostInfo {
        host::host_info(&self.snapshot())
    }
}
