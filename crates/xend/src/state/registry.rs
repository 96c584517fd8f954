//! The registry of domains xend knows (running, paused, being created, preserved),
//! each with a `watch` channel of its state so that callers wait for a change instead
//! of polling. Names and UUIDs are unique among registered domains.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rxen_vmm_api::{Status, VcpuRunState};
use rxen_xend_api::{DomainInfo, DomainState, VcpuInfo};
use rxen_xlcfg::DomainSpec;
use tokio::sync::watch;

use crate::db::RunningRecord;

/// Unix time now, seconds.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// One domain as xend tracks it.
#[derive(Clone, Debug)]
pub struct Domain {
    pub domid: u32,
    pub name: String,
    pub uuid: String,
    pub spec: DomainSpec,
    pub pid: u32,
    pub started: f64,
    pub state: DomainState,
    pub managed: bool,
    pub target_mib: u64,
    /// Latest status from the VMM (refreshed in the background).
    pub status: Option<Status>,
    /// How it ended (preserved domains).
    pub exit_reason: Option<String>,
    /// The VMM lives but its control socket did not answer the last request.
    pub unresponsive: bool,
}

impl Domain {
    pub fn new(domid: u32, spec: DomainSpec, uuid: String, managed: bool) -> Self {
        Domain {
            domid,
            name: spec.name.clone(),
            uuid,
            target_mib: spec.memory,
            spec,
            pid: 0,
            started: now(),
            state: DomainState::Creating,
            managed,
            status: None,
            exit_reason: None,
            unresponsive: false,
        }
    }

    pub fn from_record(r: &RunningRecord) -> Self {
        Domain {
            domid: r.domid,
            name: r.name.clone(),
            uuid: r.uuid.clone(),
            target_mib: r.spec.memory,
            spec: r.spec.clone(),
            pid: r.pid,
            started: r.started,
            state: r.state,
            managed: r.managed,
            status: None,
            exit_reason: r.exit_reason.clone(),
            unresponsive: false,
        }
    }

    pub fn record(&self) -> RunningRecord {
        RunningRecord {
            domid: self.domid,
            name: self.name.clone(),
            uuid: self.uuid.clone(),
            spec: self.spec.clone(),
            pid: self.pid,
            started: self.started,
            managed: self.managed,
            state: self.state,
            exit_reason: self.exit_reason.clone(),
        }
    }

    fn any_vcpu_running(&self) -> bool {
        self.status.as_ref().is_some_and(Status::any_running)
    }

    /// xl's state letters.
    pub fn flags(&self) -> String {
        let c = |on: bool, ch: char| if on { ch } else { '-' };
        let s = self.state;
        let running = s == DomainState::Running;
        format!(
            "{}{}{}{}{}{}",
            c(running && self.any_vcpu_running(), 'r'),
            c(running && !self.any_vcpu_running(), 'b'),
            c(s == DomainState::Paused, 'p'),
            c(
                s == DomainState::ShuttingDown || s == DomainState::Shutdown,
                's'
            ),
            c(s == DomainState::Crashed, 'c'),
            c(s == DomainState::Destroying, 'd')
        )
    }

    pub fn info(&self) -> DomainInfo {
        let live = self.state.has_vmm();
        let vcpu_list: Vec<VcpuInfo> = self
            .status
            .iter()
            .flat_map(|s| s.vcpus.iter())
            .map(|v| VcpuInfo {
                id: v.id,
                online: v.state != VcpuRunState::Down,
                state: match (v.state, v.paused) {
                    (VcpuRunState::Down, _) => "-",
                    (_, true) => "p",
                    (VcpuRunState::Running, false) => "r",
                    (VcpuRunState::Blocked, false) => "b",
                }
                .into(),
                cpu_time_s: v.cpu_ns as f64 / 1e9,
                host_cpu: v.host_cpu,
                affinity: "all".into(),
            })
            .collect();
        DomainInfo {
            domid: Some(self.domid),
            name: self.name.clone(),
            uuid: self.uuid.clone(),
            state: self.state,
            state_flags: self.flags(),
            memory_mib: self.target_mib,
            maxmem_mib: self.spec.maxmem.unwrap_or(self.spec.memory),
            vcpus: self.spec.vcpus,
            maxvcpus: self.spec.maxvcpus.unwrap_or(self.spec.vcpus),
            uptime_s: live.then(|| (now() - self.started).max(0.0)),
            cpu_time_s: self.status.as_ref().map_or(0, Status::cpu_ns) as f64 / 1e9,
            vcpu_list,
            hypercalls: self.status.as_ref().map_or(0, Status::hypercalls),
            managed: self.managed,
            pid: live.then_some(self.pid).filter(|p| *p != 0),
            start_time: Some(self.started),
            exit_reason: self.exit_reason.clone(),
            unresponsive: self.unresponsive,
            console_dropped_bytes: self.status.as_ref().map_or(0, |s| s.console_dropped_bytes),
            config: self.spec.clone(),
        }
    }
}

struct Entry {
    dom: Domain,
    state: watch::Sender<DomainState>,
}

/// Waits for a domain's state. Ends with `None` when the domain leaves the registry.
pub struct StateWatch(watch::Receiver<DomainState>);

impl StateWatch {
    /// Waits until `done(state)` holds, or the domain is gone (returns `None`), or
    /// `timeout` passes (returns `Some(last state)` with `done` false).
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        done: impl Fn(DomainState) -> bool,
    ) -> Option<DomainState> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let s = *self.0.borrow_and_update();
            if done(s) {
                return Some(s);
            }
            match tokio::time::timeout_at(deadline, self.0.changed()).await {
                Err(_) => return Some(s),
                Ok(Err(_)) => return None,
                Ok(Ok(())) => {}
            }
        }
    }

    /// Waits until the domain leaves the registry; `false` on timeout.
    pub async fn gone(&mut self, timeout: Duration) -> bool {
        self.wait_for(timeout, |_| false).await.is_none()
    }
}

/// The domains, by id.
#[derive(Default)]
pub struct Registry {
    doms: BTreeMap<u32, Entry>,
}

impl Registry {
    pub fn contains(&self, domid: u32) -> bool {
        self.doms.contains_key(&domid)
    }

    pub fn get(&self, domid: u32) -> Option<&Domain> {
        self.doms.get(&domid).map(|e| &e.dom)
    }

    pub fn by_name(&self, name: &str) -> Option<&Domain> {
        self.doms.values().map(|e| &e.dom).find(|d| d.name == name)
    }

    pub fn by_uuid(&self, uuid: &str) -> Option<&Domain> {
        self.doms.values().map(|e| &e.dom).find(|d| d.uuid == uuid)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Domain> {
        self.doms.values().map(|e| &e.dom)
    }

    /// Adds a domain. Callers check names and UUIDs first.
    pub fn insert(&mut self, dom: Domain) {
        let (state, _) = watch::channel(dom.state);
        self.doms.insert(dom.domid, Entry { dom, state });
    }

    /// Changes a domain; a state change wakes its watchers.
    pub fn update<R>(&mut self, domid: u32, f: impl FnOnce(&mut Domain) -> R) -> Option<R> {
        let e = self.doms.get_mut(&domid)?;
        let r = f(&mut e.dom);
        e.state.send_if_modified(|s| {
            let changed = *s != e.dom.state;
            *s = e.dom.state;
            changed
        });
        Some(r)
    }

    /// Removes a domain; its watchers see it gone.
    pub fn remove(&mut self, domid: u32) -> Option<Domain> {
        self.doms.remove(&domid).map(|e| e.dom)
    }

    pub fn watch(&self, domid: u32) -> Option<StateWatch> {
        self.doms
            .get(&domid)
            .map(|e| StateWatch(e.state.subscribe()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dom(domid: u32, name: &str) -> Domain {
        let (spec, _) = DomainSpec::from_xl(&format!("name='{name}'")).unwrap();
        Domain::new(domid, spec, format!("uuid-{domid}"), false)
    }

    #[tokio::test]
    async fn watchers_see_state_changes_and_removal() {
        let mut r = Registry::default();
        r.insert(dom(1, "a"));
        let mut w = r.watch(1).unwrap();
        r.update(1, |d| d.state = DomainState::Running);
        assert_eq!(
            w.wait_for(Duration::from_secs(5), |s| s == DomainState::Running)
                .await,
            Some(DomainState::Running)
        );
        assert_eq!(
            w.wait_for(Duration::from_millis(20), |s| s == DomainState::Paused)
                .await,
            Some(DomainState::Running),
            "times out with the last state"
        );
        let t = tokio::spawn(async move { w.gone(Duration::from_secs(5)).await });
        r.remove(1);
        assert!(t.await.unwrap());
        assert!(r.by_name("a").is_none());
    }
}
