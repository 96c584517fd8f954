//! The domain manager: the registry of domains and every lifecycle operation
//! (create, destroy, shutdown, reboot, pause, rename, vCPUs, memory, managed domains,
//! re-adoption after a restart, on_poweroff/on_reboot/on_crash actions).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use rxen_xlcfg::{Action, DomainSpec};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::db::{Db, RunningRecord};
use crate::error::{ApiError, ApiResult};
use crate::vmm::{self, DomainFiles, Launch};
use crate::xs;

/// Settings of the daemon.
#[derive(Clone, Debug)]
pub struct XendConfig {
    pub state_dir: PathBuf,
    pub xenstored_socket: PathBuf,
    pub xen_vmm: PathBuf,
    /// How long `create` waits for a new VMM to answer.
    pub start_timeout: Duration,
}

/// Where a domain is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DomState {
    Creating,
    Running,
    Paused,
    ShuttingDown,
    Destroying,
    /// Ended and kept (`preserve`).
    Crashed,
    Shutdown,
}

#[derive(Clone, Debug)]
struct Domain {
    domid: u32,
    name: String,
    uuid: String,
    spec: DomainSpec,
    pid: u32,
    started: f64,
    state: DomState,
    managed: bool,
    target_mib: u64,
    /// Latest figures from the VMM (refreshed in the background).
    cpu_ns: u64,
    /// Guest time of each vCPU, ns.
    vcpu_ns: Vec<u64>,
    hypercalls: u64,
    vcpu_running: bool,
}

/// What the API reports about a domain.
#[derive(Clone, Debug, Serialize)]
pub struct DomainInfo {
    pub domid: Option<u32>,
    pub name: String,
    pub uuid: String,
    pub state: String,
    /// xl's state letters: r b p s c d (and - for halted managed domains).
    pub state_flags: String,
    pub memory_mib: u64,
    pub maxmem_mib: u64,
    pub vcpus: u32,
    pub maxvcpus: u32,
    pub uptime_s: Option<f64>,
    pub cpu_time_s: f64,
    /// Guest CPU time of each vCPU (seconds).
    pub vcpu_time_s: Vec<f64>,
    pub hypercalls: u64,
    pub managed: bool,
    pub pid: Option<u32>,
    pub config: DomainSpec,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn flags(d: &Domain) -> String {
    let c = |on: bool, ch: char| if on { ch } else { '-' };
    let s = d.state;
    format!(
        "{}{}{}{}{}{}",
        c(s == DomState::Running && d.vcpu_running, 'r'),
        c(s == DomState::Running && !d.vcpu_running, 'b'),
        c(s == DomState::Paused, 'p'),
        c(s == DomState::ShuttingDown || s == DomState::Shutdown, 's'),
        c(s == DomState::Crashed, 'c'),
        c(s == DomState::Destroying, 'd')
    )
}

impl Domain {
    fn info(&self) -> DomainInfo {
        let live = !matches!(self.state, DomState::Crashed | DomState::Shutdown);
        DomainInfo {
            domid: Some(self.domid),
            name: self.name.clone(),
            uuid: self.uuid.clone(),
            state: serde_json::to_value(self.state)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            state_flags: flags(self),
            memory_mib: self.target_mib,
            maxmem_mib: self.spec.maxmem.unwrap_or(self.spec.memory),
            vcpus: self.spec.vcpus,
            maxvcpus: self.spec.maxvcpus.unwrap_or(self.spec.vcpus),
            uptime_s: live.then(|| (now() - self.started).max(0.0)),
            cpu_time_s: self.cpu_ns as f64 / 1e9,
            vcpu_time_s: self.vcpu_ns.iter().map(|n| *n as f64 / 1e9).collect(),
            hypercalls: self.hypercalls,
            managed: self.managed,
            pid: live.then_some(self.pid),
            config: self.spec.clone(),
        }
    }

    fn record(&self) -> RunningRecord {
        RunningRecord {
            domid: self.domid,
            name: self.name.clone(),
            uuid: self.uuid.clone(),
            spec: self.spec.clone(),
            pid: self.pid,
            started: self.started,
            managed: self.managed,
        }
    }
}

/// The daemon's state, shared by all requests.
pub struct Xend {
    pub cfg: XendConfig,
    db: Mutex<Db>,
    doms: Mutex<BTreeMap<u32, Domain>>,
    pub events: broadcast::Sender<serde_json::Value>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn internal<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> ApiError {
    move |e| ApiError::internal(format!("{what}: {e}"))
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
            doms: Mutex::new(BTreeMap::new()),
            events,
        }))
    }

    fn emit(&self, domid: Option<u32>, name: &str, event: &str, detail: serde_json::Value) {
        tracing::info!(domid, name, event, %detail, "domain event");
        let _ = self.events.send(serde_json::json!({"time": now(), "domid": domid, "name": name, "event": event, "detail": detail}));
    }

    /// Finds a live or preserved domain by id or name.
    fn resolve(&self, id: &str) -> ApiResult<u32> {
        let doms = lock(&self.doms);
        if let Ok(n) = id.parse::<u32>() {
            if doms.contains_key(&n) {
                return Ok(n);
            }
        }
        doms.values()
            .find(|d| d.name == id)
            .map(|d| d.domid)
            .ok_or_else(|| ApiError::not_found(id))
    }

    fn get(&self, domid: u32) -> ApiResult<Domain> {
        lock(&self.doms)
            .get(&domid)
            .cloned()
            .ok_or_else(|| ApiError::not_found(domid))
    }

    /// A domain whose VMM runs (running, paused or shutting down), else `409`.
    fn live(&self, id: &str) -> ApiResult<(u32, Domain)> {
        let domid = self.resolve(id)?;
        let d = self.get(domid)?;
        if !matches!(
            d.state,
            DomState::Running | DomState::Paused | DomState::ShuttingDown
        ) {
            return Err(ApiError::conflict(
                "wrong_state",
                format!("domain is {}", d.info().state),
            ));
        }
        Ok((domid, d))
    }

    fn set_state(&self, domid: u32, s: DomState) {
        if let Some(d) = lock(&self.doms).get_mut(&domid) {
            d.state = s;
        }
    }

    // ------------------------------------------------------------------ queries

    pub fn list(&self) -> ApiResult<Vec<DomainInfo>> {
        let mut out: Vec<DomainInfo> = lock(&self.doms).values().map(Domain::info).collect();
        let managed = lock(&self.db)
            .managed()
            .map_err(internal("reading managed domains"))?;
        for spec in managed {
            if !out.iter().any(|d| d.name == spec.name && d.pid.is_some()) {
                out.push(DomainInfo {
                    domid: None,
                    name: spec.name.clone(),
                    uuid: spec.uuid.clone().unwrap_or_default(),
                    state: "halted".into(),
                    state_flags: "------".into(),
                    memory_mib: spec.memory,
                    maxmem_mib: spec.maxmem.unwrap_or(spec.memory),
                    vcpus: spec.vcpus,
                    maxvcpus: spec.maxvcpus.unwrap_or(spec.vcpus),
                    uptime_s: None,
                    cpu_time_s: 0.0,
                    vcpu_time_s: Vec::new(),
                    hypercalls: 0,
                    managed: true,
                    pid: None,
                    config: spec,
                });
            }
        }
        Ok(out)
    }

    pub fn info(&self, id: &str) -> ApiResult<DomainInfo> {
        match self.resolve(id) {
            Ok(d) => Ok(self.get(d)?.info()),
            Err(e) => self.list()?.into_iter().find(|d| d.name == id).ok_or(e),
        }
    }

    pub fn console(&self, id: &str) -> ApiResult<String> {
        let d = self.resolve(id)?;
        let files = DomainFiles::new(&self.cfg.state_dir, d);
        let bytes = std::fs::read(files.console()).unwrap_or_default();
        let tail = bytes.len().saturating_sub(256 * 1024);
        Ok(String::from_utf8_lossy(&bytes[tail..]).into_owned())
    }

    /// Sends text to the guest's console input (`VIRQ_CONSOLE`).
    pub async fn console_input(&self, id: &str, text: &str) -> ApiResult<()> {
        let (domid, _) = self.live(id)?;
        let socket = DomainFiles::new(&self.cfg.state_dir, domid).control();
        vmm::control_request(
            &socket,
            serde_json::json!({"op": "console-input", "data": text}),
        )
        .await
        .map(|_| ())
        .map_err(ApiError::bad_request)
    }

    // ------------------------------------------------------------------ create

    /// Creates and starts a domain.
    pub async fn create(
        self: &Arc<Self>,
        mut spec: DomainSpec,
        managed: bool,
    ) -> ApiResult<DomainInfo> {
        spec.validate()
            .map_err(|e| ApiError::invalid_config(e.to_string()))?;
        if let Some(k) = &spec.kernel {
            if !std::path::Path::new(k).is_file() {
                return Err(ApiError::invalid_config(format!(
                    "kernel {k:?} does not exist or is not a file"
                )));
            }
        }
        let uuid = spec
            .uuid
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        spec.uuid = Some(uuid.clone());
        // Reserve the name and a domain id.
        let domid = {
            let mut doms = lock(&self.doms);
            if doms.values().any(|d| d.name == spec.name) {
                return Err(ApiError::conflict(
                    "name_in_use",
                    format!("a domain named {:?} exists", spec.name),
                ));
            }
            if doms.values().any(|d| d.uuid == uuid) {
                return Err(ApiError::conflict(
                    "uuid_in_use",
                    format!("a domain with UUID {uuid} exists"),
                ));
            }
            let domid = lock(&self.db)
                .allocate_domid(&|id| doms.contains_key(&id))
                .map_err(internal("allocating a domain id"))?
                .ok_or_else(|| ApiError::unavailable("no free domain id"))?;
            doms.insert(
                domid,
                Domain {
                    domid,
                    name: spec.name.clone(),
                    uuid: uuid.clone(),
                    spec: spec.clone(),
                    pid: 0,
                    started: now(),
                    state: DomState::Creating,
                    managed,
                    target_mib: spec.memory,
                    cpu_ns: 0,
                    vcpu_ns: Vec::new(),
                    hypercalls: 0,
                    vcpu_running: false,
                },
            );
            domid
        };
        match self.start_domain(domid, &uuid, &spec).await {
            Ok(child) => {
                let d = {
                    let mut doms = lock(&self.doms);
                    let Some(d) = doms.get_mut(&domid) else {
                        return Err(ApiError::internal("domain vanished while starting"));
                    };
                    d.pid = child.id().unwrap_or(0);
                    d.state = DomState::Running;
                    d.clone()
                };
                if let Err(e) = lock(&self.db).put_running(&d.record()) {
                    tracing::error!(domid, "recording running domain: {e}");
                }
                self.clone().watch_child(domid, child);
                self.emit(
                    Some(domid),
                    &d.name,
                    "created",
                    serde_json::json!({"uuid": uuid}),
                );
                Ok(d.info())
            }
            Err(e) => {
                lock(&self.doms).remove(&domid);
                Err(e)
            }
        }
    }

    /// xenstore entries, VMM process, wait for its control socket. Undoes everything
    /// on failure.
    async fn start_domain(
        &self,
        domid: u32,
        uuid: &str,
        spec: &DomainSpec,
    ) -> ApiResult<tokio::process::Child> {
        let sock = self.cfg.xenstored_socket.clone();
        let (u, s) = (uuid.to_string(), spec.clone());
        let populated =
            tokio::task::spawn_blocking(move || xs::populate(&sock, domid, &u, &s)).await;
        let undo_xs = || {
            let sock = self.cfg.xenstored_socket.clone();
            let u = uuid.to_string();
            async move {
                let _ = tokio::task::spawn_blocking(move || xs::teardown(&sock, domid, &u)).await;
            }
        };
        match populated {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                undo_xs().await;
                return Err(ApiError::unavailable(format!("xenstore: {e}")));
            }
            Err(e) => return Err(ApiError::internal(format!("xenstore task: {e}"))),
        }
        let files = DomainFiles::new(&self.cfg.state_dir, domid);
        let xs_dom_socket = self
            .cfg
            .xenstored_socket
            .parent()
            .map(|p| p.join("domains").join(domid.to_string()))
            .unwrap_or_default();
        let launch = Launch {
            vmm: &self.cfg.xen_vmm,
            domid,
            name: &spec.name,
            uuid,
            memory_mib: spec.memory.max(spec.maxmem.unwrap_or(0)),
            vcpus: spec.maxvcpus.unwrap_or(spec.vcpus),
            kernel: spec.kernel.as_deref(),
            cmdline: &spec.cmdline,
            xenstore_socket: &xs_dom_socket,
            files: &files,
        };
        let mut child = match vmm::spawn(&launch) {
            Ok(c) => c,
            Err(e) => {
                undo_xs().await;
                let _ = std::fs::remove_dir_all(&files.dir);
                return Err(ApiError::internal(format!(
                    "starting xen-vmm ({}): {e}",
                    self.cfg.xen_vmm.display()
                )));
            }
        };
        let deadline = tokio::time::Instant::now() + self.cfg.start_timeout;
        loop {
            if vmm::control(&files.control(), "status").await.is_ok() {
                return Ok(child);
            }
            if let Ok(Some(status)) = child.try_wait() {
                undo_xs().await;
                let log = std::fs::read_to_string(files.vmm_log()).unwrap_or_default();
                let _ = std::fs::remove_dir_all(&files.dir);
                let msg = format!("xen-vmm exited ({status}) while starting: {}", log.trim());
                // A config the VMM rejects (bad image, sizes) is the client's mistake.
                let status = if msg.contains("cannot create domain") {
                    StatusCode::UNPROCESSABLE_ENTITY
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                };
                return Err(ApiError::new(status, "create_failed", msg));
            }
            if tokio::time::Instant::now() > deadline {
                let _ = child.kill().await;
                undo_xs().await;
                let _ = std::fs::remove_dir_all(&files.dir);
                return Err(ApiError::internal("xen-vmm did not come up in time"));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn watch_child(self: Arc<Self>, domid: u32, mut child: tokio::process::Child) {
        tokio::spawn(async move {
            let _ = child.wait().await;
            self.on_vmm_exit(domid).await;
        });
    }

    fn watch_pid(self: Arc<Self>, domid: u32, pid: u32) {
        tokio::spawn(async move {
            while vmm::pid_alive(pid) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            self.on_vmm_exit(domid).await;
        });
    }

    /// A domain's VMM ended: apply the configured action.
    async fn on_vmm_exit(self: &Arc<Self>, domid: u32) {
        let Ok(d) = self.get(domid) else { return };
        let files = DomainFiles::new(&self.cfg.state_dir, domid);
        let kind = vmm::read_exit(&files).unwrap_or_else(|| "crash".into());
        let action = match (d.state, kind.as_str()) {
            (DomState::Destroying, _) | (_, "destroyed") => None,
            (_, "poweroff") | (_, "suspend") => Some(d.spec.on_poweroff),
            (_, "reboot") => Some(d.spec.on_reboot),
            _ => Some(d.spec.on_crash),
        };
        self.emit(
            Some(domid),
            &d.name,
            "exited",
            serde_json::json!({"reason": kind}),
        );
        match action {
            None | Some(Action::Destroy) => self.cleanup(domid).await,
            Some(Action::Preserve) => {
                self.set_state(
                    domid,
                    if kind == "poweroff" || kind == "reboot" {
                        DomState::Shutdown
                    } else {
                        DomState::Crashed
                    },
                );
                let _ = lock(&self.db).delete_running(domid);
                self.emit(
                    Some(domid),
                    &d.name,
                    "preserved",
                    serde_json::json!({"reason": kind}),
                );
            }
            Some(Action::Restart) => {
                self.cleanup(domid).await;
                self.restart(d.spec, d.managed).await;
            }
            Some(Action::RenameRestart) => {
                let old = format!("{}-{}", d.name, domid);
                if let Some(x) = lock(&self.doms).get_mut(&domid) {
                    x.name = old.clone();
                    x.state = DomState::Crashed;
                }
                let _ = lock(&self.db).delete_running(domid);
                let mut spec = d.spec;
                spec.uuid = None;
                self.restart(spec, d.managed).await;
            }
        }
    }

    async fn restart(self: &Arc<Self>, spec: DomainSpec, managed: bool) {
        let name = spec.name.clone();
        match Box::pin(self.create(spec, managed)).await {
            Ok(i) => self.emit(i.domid, &name, "restarted", serde_json::json!({})),
            Err(e) => {
                tracing::error!(name, "restart failed: {e}");
                self.emit(
                    None,
                    &name,
                    "restart_failed",
                    serde_json::json!({"error": e.message}),
                );
            }
        }
    }

    /// Forgets a domain: xenstore entries, release, records, files.
    async fn cleanup(&self, domid: u32) {
        let Ok(d) = self.get(domid) else {
            return;
        };
        // Everything outside the registry goes first, so that a domain is gone from
        // xenstore, the database and the disk by the time callers no longer see it.
        let sock = self.cfg.xenstored_socket.clone();
        let uuid = d.uuid.clone();
        let _ = tokio::task::spawn_blocking(move || xs::teardown(&sock, domid, &uuid)).await;
        let _ = lock(&self.db).delete_running(domid);
        let _ = std::fs::remove_file(DomainFiles::new(&self.cfg.state_dir, domid).control());
        if lock(&self.doms).remove(&domid).is_some() {
            self.emit(Some(domid), &d.name, "destroyed", serde_json::json!({}));
        }
    }

    // ------------------------------------------------------------------ lifecycle

    pub async fn destroy(self: &Arc<Self>, id: &str) -> ApiResult<()> {
        let domid = self.resolve(id)?;
        let d = self.get(domid)?;
        match d.state {
            DomState::Creating => {
                return Err(ApiError::conflict(
                    "wrong_state",
                    "domain is still being created",
                ))
            }
            DomState::Crashed | DomState::Shutdown => {
                self.cleanup(domid).await;
                return Ok(());
            }
            _ => {}
        }
        self.set_state(domid, DomState::Destroying);
        let files = DomainFiles::new(&self.cfg.state_dir, domid);
        if vmm::control(&files.control(), "destroy").await.is_err() && vmm::pid_alive(d.pid) {
            // SAFETY: killing the VMM process this domain runs in.
            unsafe { libc::kill(d.pid as i32, libc::SIGKILL) };
        }
        // Wait until the exit handler has cleaned up.
        for i in 0..500 {
            if !lock(&self.doms).contains_key(&domid) {
                return Ok(());
            }
            if i == 250 && vmm::pid_alive(d.pid) {
                // SAFETY: as above; the VMM did not stop by itself.
                unsafe { libc::kill(d.pid as i32, libc::SIGKILL) };
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(ApiError::internal("domain did not go away"))
    }

    /// Clean shutdown or reboot through `control/shutdown`.
    pub async fn shutdown(
        self: &Arc<Self>,
        id: &str,
        reboot: bool,
        wait: Option<Duration>,
        force: bool,
    ) -> ApiResult<DomainInfo> {
        let (domid, d) = self.live(id)?;
        if d.state == DomState::Paused {
            let _ = vmm::control(
                &DomainFiles::new(&self.cfg.state_dir, domid).control(),
                "unpause",
            )
            .await;
        }
        let sock = self.cfg.xenstored_socket.clone();
        let what = if reboot { "reboot" } else { "poweroff" };
        tokio::task::spawn_blocking(move || xs::write(&sock, domid, "control/shutdown", what))
            .await
            .map_err(internal("xenstore task"))?
            .map_err(|e| ApiError::unavailable(format!("xenstore: {e}")))?;
        self.set_state(domid, DomState::ShuttingDown);
        self.emit(
            Some(domid),
            &d.name,
            if reboot {
                "reboot_requested"
            } else {
                "shutdown_requested"
            },
            serde_json::json!({}),
        );
        let info = d.info();
        let Some(timeout) = wait else { return Ok(info) };
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            match lock(&self.doms).get(&domid) {
                None => {
                    let mut gone = info;
                    gone.state = "shutdown".into();
                    gone.pid = None;
                    return Ok(gone);
                }
                Some(x) if x.state != DomState::ShuttingDown => return Ok(x.info()),
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if force {
            self.destroy(&domid.to_string()).await?;
            return Ok(info);
        }
        Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "shutdown_timeout",
            "the guest did not shut down in time (use force to destroy it)",
        ))
    }

    pub async fn pause(&self, id: &str, pause: bool) -> ApiResult<DomainInfo> {
        let domid = self.resolve(id)?;
        let d = self.get(domid)?;
        let (from, to, op) = if pause {
            (DomState::Running, DomState::Paused, "pause")
        } else {
            (DomState::Paused, DomState::Running, "unpause")
        };
        if d.state != from {
            return Err(ApiError::conflict(
                "wrong_state",
                format!("cannot {op} a domain that is {}", d.info().state),
            ));
        }
        vmm::control(&DomainFiles::new(&self.cfg.state_dir, domid).control(), op)
            .await
            .map_err(ApiError::internal)?;
        self.set_state(domid, to);
        self.emit(
            Some(domid),
            &d.name,
            if pause { "paused" } else { "unpaused" },
            serde_json::json!({}),
        );
        self.get(domid).map(|d| d.info())
    }

    pub async fn rename(&self, id: &str, new: &str) -> ApiResult<DomainInfo> {
        if !rxen_xlcfg::spec::valid_name(new) {
            return Err(ApiError::bad_request(format!(
                "{new:?} is not a valid domain name"
            )));
        }
        let domid = self.resolve(id)?;
        let d = {
            let mut doms = lock(&self.doms);
            if doms.values().any(|x| x.name == new && x.domid != domid) {
                return Err(ApiError::conflict(
                    "name_in_use",
                    format!("a domain named {new:?} exists"),
                ));
            }
            let d = doms
                .get_mut(&domid)
                .ok_or_else(|| ApiError::not_found(domid))?;
            let old = d.name.clone();
            d.name = new.to_string();
            d.spec.name = new.to_string();
            (old, d.clone())
        };
        let (old, d) = d;
        {
            let db = lock(&self.db);
            let _ = db.put_running(&d.record());
            if d.managed {
                let _ = db.rename_managed(&old, &d.spec);
            }
        }
        let sock = self.cfg.xenstored_socket.clone();
        let (n, u) = (new.to_string(), d.uuid.clone());
        let _ = tokio::task::spawn_blocking(move || {
            xs::write(&sock, domid, "name", &n)?;
            xs::write_abs(&sock, &format!("/vm/{u}/name"), &n)
        })
        .await;
        self.emit(
            Some(domid),
            new,
            "renamed",
            serde_json::json!({"from": old}),
        );
        Ok(d.info())
    }

    pub async fn vcpu_set(&self, id: &str, count: u32) -> ApiResult<DomainInfo> {
        let domid = self.resolve(id)?;
        let d = self.get(domid)?;
        let max = d.spec.maxvcpus.unwrap_or(d.spec.vcpus);
        if count == 0 || count > max {
            return Err(ApiError::bad_request(format!(
                "vcpus must be within 1..={max} (maxvcpus)"
            )));
        }
        let sock = self.cfg.xenstored_socket.clone();
        tokio::task::spawn_blocking(move || {
            for i in 0..max {
                xs::write(
                    &sock,
                    domid,
                    &format!("cpu/{i}/availability"),
                    if i < count { "online" } else { "offline" },
                )?;
            }
            Ok::<(), rxen_xenstore::client::ClientError>(())
        })
        .await
        .map_err(internal("xenstore task"))?
        .map_err(|e| ApiError::unavailable(format!("xenstore: {e}")))?;
        self.update_spec(domid, |s| s.vcpus = count)
    }

    pub async fn mem_set(&self, id: &str, mib: u64, max: bool) -> ApiResult<DomainInfo> {
        let domid = self.resolve(id)?;
        let d = self.get(domid)?;
        let cap = d.spec.maxmem.unwrap_or(d.spec.memory);
        if max {
            if mib < d.target_mib {
                return Err(ApiError::bad_request(format!(
                    "maxmem {mib} MiB is below the current target {} MiB",
                    d.target_mib
                )));
            }
            if mib > cap {
                return Err(ApiError::bad_request(format!(
                    "maxmem cannot grow beyond the {cap} MiB the domain was built with"
                )));
            }
        } else if mib < 8 || mib > cap {
            return Err(ApiError::bad_request(format!(
                "memory target must be within 8..={cap} MiB (maxmem)"
            )));
        }
        let sock = self.cfg.xenstored_socket.clone();
        let key = if max {
            "memory/static-max"
        } else {
            "memory/target"
        };
        tokio::task::spawn_blocking(move || {
            xs::write(&sock, domid, key, &(mib * 1024).to_string())
        })
        .await
        .map_err(internal("xenstore task"))?
        .map_err(|e| ApiError::unavailable(format!("xenstore: {e}")))?;
        if max {
            self.update_spec(domid, |s| s.maxmem = Some(mib))
        } else {
            if let Some(x) = lock(&self.doms).get_mut(&domid) {
                x.target_mib = mib;
            }
            self.get(domid).map(|d| d.info())
        }
    }

    fn update_spec(&self, domid: u32, f: impl FnOnce(&mut DomainSpec)) -> ApiResult<DomainInfo> {
        let d = {
            let mut doms = lock(&self.doms);
            let d = doms
                .get_mut(&domid)
                .ok_or_else(|| ApiError::not_found(domid))?;
            f(&mut d.spec);
            d.clone()
        };
        let _ = lock(&self.db).put_running(&d.record());
        Ok(d.info())
    }

    // ------------------------------------------------------------------ managed

    pub fn new_managed(&self, spec: &DomainSpec) -> ApiResult<()> {
        spec.validate()
            .map_err(|e| ApiError::invalid_config(e.to_string()))?;
        if lock(&self.doms).values().any(|d| d.name == spec.name) {
            return Err(ApiError::conflict(
                "name_in_use",
                format!("domain {:?} is running", spec.name),
            ));
        }
        lock(&self.db)
            .put_managed(spec)
            .map_err(internal("storing config"))
    }

    pub async fn start_managed(self: &Arc<Self>, name: &str) -> ApiResult<DomainInfo> {
        let spec = lock(&self.db)
            .managed()
            .map_err(internal("reading managed domains"))?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("no managed domain {name}"),
                )
            })?;
        self.create(spec, true).await
    }

    pub fn delete_managed(&self, name: &str) -> ApiResult<()> {
        if lock(&self.doms).values().any(|d| d.name == name) {
            return Err(ApiError::conflict(
                "wrong_state",
                format!("domain {name} is running; shut it down first"),
            ));
        }
        if lock(&self.db)
            .delete_managed(name)
            .map_err(internal("deleting config"))?
        {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no managed domain {name}"),
            ))
        }
    }

    // ------------------------------------------------------------------ background

    /// Re-adopts the domains recorded as running; a domain whose VMM died while xend was
    /// down is reported crashed and its on_crash action applied.
    pub async fn adopt(self: &Arc<Self>) {
        let records = lock(&self.db).running().unwrap_or_default();
        for r in records {
            let files = DomainFiles::new(&self.cfg.state_dir, r.domid);
            let status = vmm::control(&files.control(), "status").await;
            let paused = status
                .as_ref()
                .ok()
                .and_then(|v| v["status"]["paused"].as_bool())
                .unwrap_or(false);
            let alive = vmm::pid_alive(r.pid) && status.is_ok();
            let d = Domain {
                domid: r.domid,
                name: r.name.clone(),
                uuid: r.uuid.clone(),
                target_mib: r.spec.memory,
                spec: r.spec.clone(),
                pid: r.pid,
                started: r.started,
                state: if paused {
                    DomState::Paused
                } else {
                    DomState::Running
                },
                managed: r.managed,
                cpu_ns: 0,
                vcpu_ns: Vec::new(),
                hypercalls: 0,
                vcpu_running: false,
            };
            lock(&self.doms).insert(r.domid, d);
            if alive {
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
                if vmm::read_exit(&files).is_none() {
                    let _ = std::fs::write(
                        files.exit_file(),
                        r#"{"kind":"crash","reason":"VMM died while xend was down"}"#,
                    );
                }
                self.on_vmm_exit(r.domid).await;
            }
        }
    }

    /// Refreshes per-domain figures from the VMMs (for list, top and metrics).
    pub async fn refresh(&self) {
        let ids: Vec<u32> = lock(&self.doms)
            .values()
            .filter(|d| {
                matches!(
                    d.state,
                    DomState::Running | DomState::Paused | DomState::ShuttingDown
                )
            })
            .map(|d| d.domid)
            .collect();
        for domid in ids {
            let files = DomainFiles::new(&self.cfg.state_dir, domid);
            if let Ok(v) = vmm::control(&files.control(), "status").await {
                let vcpus = v["status"]["vcpus"].as_array().cloned().unwrap_or_default();
                let cpu: u64 = vcpus
                    .iter()
                    .map(|x| x["guest_ns"].as_u64().unwrap_or(0))
                    .sum();
                let hc: u64 = vcpus
                    .iter()
                    .map(|x| x["hypercalls"].as_u64().unwrap_or(0))
                    .sum();
                let running = vcpus.iter().any(|x| x["state"] == "running");
                let per: Vec<u64> = vcpus
                    .iter()
                    .map(|x| x["guest_ns"].as_u64().unwrap_or(0))
                    .collect();
                if let Some(d) = lock(&self.doms).get_mut(&domid) {
                    d.vcpu_ns = per;
                    d.cpu_ns = cpu;
                    d.hypercalls = hc;
                    d.vcpu_running = running;
                }
            }
        }
    }

    /// Counts of domains by state (for metrics).
    pub fn snapshot(&self) -> Vec<DomainInfo> {
        lock(&self.doms).values().map(Domain::info).collect()
    }
}
