//! Operations on a domain that exists: destroy, shutdown and reboot through
//! `control/shutdown`, pause, rename, vCPUs and memory targets. Waits are on the
//! domain's state watch, never polling loops.

use std::sync::Arc;
use std::time::Duration;

use rxen_vmm_api::Request;
use rxen_xend_api::{DomainInfo, DomainState};
use rxen_xlcfg::DomainSpec;

use super::error::{internal, xenstore};
use super::{lock, DomainError, DomainResult, Xend};
use crate::process;
use crate::vmm;
use crate::xs;

/// How long destroy waits for a VMM to end before killing it, and then again.
const DESTROY_GRACE: Duration = Duration::from_millis(2500);

impl Xend {
    pub async fn destroy(self: &Arc<Self>, id: &str) -> DomainResult<()> {
        let domid = self.resolve(id)?;
        let d = self.get(domid)?;
        match d.state {
            DomainState::Creating => return Err(DomainError::WrongState(d.state)),
            DomainState::Crashed | DomainState::Shutdown => {
                self.cleanup(domid).await;
                return Ok(());
            }
            _ => {}
        }
        let Some(mut watch) = lock(&self.reg).watch(domid) else {
            return Ok(());
        };
        // The intent is recorded first: if it cannot be, nothing is destroyed (a
        // domain whose record still said "running" would come back at the next start).
        let before = d.state;
        self.set_state(domid, DomainState::Destroying);
        if let Err(e) = self.get(domid).and_then(|d| self.persist(&d)) {
            lock(&self.reg).update(domid, |x| {
                if x.state == DomainState::Destroying {
                    x.state = before;
                }
            });
            return Err(e);
        }
        if vmm::command(&self.files(domid).control(), Request::Destroy)
            .await
            .is_err()
        {
            process::kill(d.pid);
        }
        if watch.gone(DESTROY_GRACE).await {
            return Ok(());
        }
        // The VMM did not stop by itself.
        process::kill(d.pid);
        if watch.gone(DESTROY_GRACE).await {
            return Ok(());
        }
        Err(DomainError::Internal("domain did not go away".into()))
    }

    /// Clean shutdown or reboot through `control/shutdown`.
    pub async fn shutdown(
        self: &Arc<Self>,
        id: &str,
        reboot: bool,
        wait: Option<Duration>,
        force: bool,
    ) -> DomainResult<DomainInfo> {
        let d = self.live(id)?;
        let domid = d.domid;
        if d.state == DomainState::Paused {
            let _ = vmm::command(&self.files(domid).control(), Request::Unpause).await;
        }
        let Some(mut watch) = lock(&self.reg).watch(domid) else {
            return Err(DomainError::NotFound(id.to_string()));
        };
        let sock = self.cfg.xenstored_socket.clone();
        let what = if reboot { "reboot" } else { "poweroff" };
        tokio::task::spawn_blocking(move || xs::write(&sock, domid, "control/shutdown", what))
            .await
            .map_err(internal("xenstore task"))?
            .map_err(xenstore)?;
        self.set_state(domid, DomainState::ShuttingDown);
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
        let mut info = d.info();
        info.state = DomainState::ShuttingDown;
        let Some(timeout) = wait else { return Ok(info) };
        match watch
            .wait_for(timeout, |s| s != DomainState::ShuttingDown)
            .await
        {
            None => {
                info.state = DomainState::Shutdown;
                info.pid = None;
                Ok(info)
            }
            Some(s) if s != DomainState::ShuttingDown => self.get(domid).map(|d| d.info()),
            Some(_) if force => {
                self.destroy(&domid.to_string()).await?;
                Ok(info)
            }
            Some(_) => Err(DomainError::ShutdownTimeout),
        }
    }

    pub async fn pause(&self, id: &str, pause: bool) -> DomainResult<DomainInfo> {
        let domid = self.resolve(id)?;
        let d = self.get(domid)?;
        let (from, to, req, event) = if pause {
            (
                DomainState::Running,
                DomainState::Paused,
                Request::Pause,
                "paused",
            )
        } else {
            (
                DomainState::Paused,
                DomainState::Running,
                Request::Unpause,
                "unpaused",
            )
        };
        if d.state != from {
            return Err(DomainError::WrongState(d.state));
        }
        if let Err(e) = vmm::command(&self.files(domid).control(), req).await {
            // The domain may have ended or started going away meanwhile: that is a
            // state conflict, not a failure of xend.
            return match lock(&self.reg).get(domid).map(|x| x.state) {
                None => Err(DomainError::NotFound(id.to_string())),
                Some(s) if s != from => Err(DomainError::WrongState(s)),
                Some(_) => Err(DomainError::Internal(e.to_string())),
            };
        }
        // Only if nothing else (a destroy, an exit) changed the state meanwhile.
        let changed = lock(&self.reg).update(domid, |x| {
            if x.state == from {
                x.state = to;
                true
            } else {
                false
            }
        });
        match changed {
            Some(true) => {
                self.emit(Some(domid), &d.name, event, serde_json::json!({}));
                let d = self.get(domid)?;
                let _ = self.persist(&d);
                Ok(d.info())
            }
            Some(false) => Err(DomainError::WrongState(self.get(domid)?.state)),
            None => Err(DomainError::NotFound(id.to_string())),
        }
    }

    pub async fn rename(&self, id: &str, new: &str) -> DomainResult<DomainInfo> {
        if !rxen_xlcfg::spec::valid_name(new) || new == rxen_xend_api::DOM0_NAME {
            return Err(DomainError::BadRequest(format!(
                "{new:?} is not a valid domain name"
            )));
        }
        let domid = self.resolve(id)?;
        let managed_names: Vec<String> = lock(&self.db)
            .managed()
            .map_err(internal("reading managed domains"))?
            .into_iter()
            .map(|s| s.name)
            .collect();
        let (old, d) = {
            let mut reg = lock(&self.reg);
            let this_managed_name = reg.get(domid).filter(|d| d.managed).map(|d| d.name.clone());
            if managed_names.iter().any(|n| n == new) && this_managed_name.as_deref() != Some(new) {
                return Err(DomainError::NameInUse(new.to_string()));
            }
            if reg.by_name(new).is_some_and(|x| x.domid != domid) {
                return Err(DomainError::NameInUse(new.to_string()));
            }
            reg.update(domid, |d| {
                let old = std::mem::replace(&mut d.name, new.to_string());
                d.spec.name = new.to_string();
                (old, d.clone())
            })
            .ok_or_else(|| DomainError::NotFound(id.to_string()))?
        };
        self.persist(&d)?;
        if d.managed {
            lock(&self.db)
                .rename_managed(&old, &d.spec)
                .map_err(internal("renaming the managed config"))?;
        }
        let sock = self.cfg.xenstored_socket.clone();
        let (n, u) = (new.to_string(), d.uuid.clone());
        if d.state.has_vmm() {
            tokio::task::spawn_blocking(move || {
                xs::write(&sock, domid, "name", &n)?;
                xs::write_abs(&sock, &format!("/vm/{u}/name"), &n)
            })
            .await
            .map_err(internal("xenstore task"))?
            .map_err(xenstore)?;
        }
        self.emit(
            Some(domid),
            new,
            "renamed",
            serde_json::json!({"from": old}),
        );
        Ok(d.info())
    }

    pub async fn vcpu_set(&self, id: &str, count: u32) -> DomainResult<DomainInfo> {
        let d = self.live(id)?;
        let domid = d.domid;
        let max = d.spec.maxvcpus.unwrap_or(d.spec.vcpus);
        if count == 0 || count > max {
            return Err(DomainError::BadRequest(format!(
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
        .map_err(xenstore)?;
        self.update_spec(domid, |s| s.vcpus = count)
    }

    pub async fn mem_set(&self, id: &str, mib: u64, max: bool) -> DomainResult<DomainInfo> {
        let d = self.live(id)?;
        let domid = d.domid;
        let cap = d.spec.maxmem.unwrap_or(d.spec.memory);
        if max {
            if mib < d.target_mib {
                return Err(DomainError::BadRequest(format!(
                    "maxmem {mib} MiB is below the current target {} MiB",
                    d.target_mib
                )));
            }
            if mib > cap {
                return Err(DomainError::BadRequest(format!(
                    "maxmem cannot grow beyond the {cap} MiB the domain was built with"
                )));
            }
        } else if !(8..=cap).contains(&mib) {
            return Err(DomainError::BadRequest(format!(
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
        .map_err(xenstore)?;
        if max {
            self.update_spec(domid, |s| s.maxmem = Some(mib))
        } else {
            lock(&self.reg).update(domid, |x| x.target_mib = mib);
            self.get(domid).map(|d| d.info())
        }
    }

    fn update_spec(&self, domid: u32, f: impl FnOnce(&mut DomainSpec)) -> DomainResult<DomainInfo> {
        let d = lock(&self.reg)
            .update(domid, |d| {
                f(&mut d.spec);
                d.clone()
            })
            .ok_or_else(|| DomainError::NotFound(domid.to_string()))?;
        self.persist(&d)?;
        Ok(d.info())
    }
}
