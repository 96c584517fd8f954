//! Virtual network interfaces (vifs) of domains: what a vif needs of the host before
//! its VMM serves it (its bridge, created and brought up when missing unless xend runs
//! with `--no-bridge-create`), and the checks of a domain's vifs (MACs, device
//! numbers).
//!
//! Vifs of running domains: hot-plug (`network-attach`), removal (`network-detach`,
//! Xen's Closing handshake with a deadline, then forced: [`super::devices`]) and
//! listing (`network-list`).
//!
//! A domain's vifs are its spec's `vifs`, each with its MAC and device number filled
//! in at create or attach; a hot-plugged vif is added there and the domain's record
//! written, so that an adopting xend and a reboot know it. The TAP, its bridge port
//! and its routes belong to the VMM (they go when it exits, however it exits), the
//! xenstore nodes to the domain's entries (removed on every way it ends).

use std::sync::Arc;
use std::time::Duration;

use rxen_vmm_api::Request;
use rxen_xend_api::{NicDetachReply, NicInfo};
use rxen_xlcfg::devices::VifSpec;

use super::devices::vmm_refusal;
use super::error::{internal, xenstore};
use super::{lock, DomainError, DomainResult, Xend};
use crate::vif::{self, VifMode};
use crate::vmm::{self, LaunchVif};
use crate::xs;

/// Whether two MAC addresses are the same (hex digits in either case).
fn same_mac(a: Option<&str>, b: Option<&str>) -> bool {
    matches!((a, b), (Some(a), Some(b)) if a.eq_ignore_ascii_case(b))
}

/// The vif of `vifs` that `dev` names: its device number or its MAC.
fn find_vif<'a>(vifs: &'a [VifSpec], dev: &str) -> Option<(u32, &'a VifSpec)> {
    vifs.iter()
        .zip(vif::devids(vifs))
        .find(|(v, devid)| devid.to_string() == dev || same_mac(v.mac.as_deref(), Some(dev)))
        .map(|(v, devid)| (devid, v))
}

/// Fills in what libxl gives a vif that has none (a MAC in Xen's range, the next
/// device number) and checks every vif (names, mode, no device number or MAC twice).
pub fn complete_vifs(vifs: &mut [VifSpec]) -> DomainResult<()> {
    for (i, v) in vifs.iter().enumerate() {
        vif::check(v).map_err(|e| DomainError::InvalidConfig(format!("vif {i}: {e}")))?;
    }
    let ids = vif::devids(vifs);
    for (i, v) in vifs.iter_mut().enumerate() {
        v.devid = Some(ids[i]);
        if v.mac.is_none() {
            v.mac = Some(vif::random_mac());
        }
    }
    for (i, v) in vifs.iter().enumerate() {
        for (j, o) in vifs.iter().enumerate().skip(i + 1) {
            if v.devid == o.devid {
                return Err(DomainError::InvalidConfig(format!(
                    "vifs {i} and {j} both have device number {}",
                    ids[i]
                )));
            }
            if v.mac.as_deref().map(str::to_ascii_lowercase)
                == o.mac.as_deref().map(str::to_ascii_lowercase)
            {
                return Err(DomainError::InvalidConfig(format!(
                    "vifs {i} and {j} both have MAC {}",
                    v.mac.as_deref().unwrap_or_default()
                )));
            }
        }
    }
    Ok(())
}

impl Xend {
    /// The domain's vifs with what xenstore says of their connections.
    pub async fn nics(&self, id: &str) -> DomainResult<Vec<NicInfo>> {
        let d = self.get(self.resolve(id)?)?;
        let domid = d.domid;
        let devids = vif::devids(&d.spec.vifs);
        let states = if d.state.has_vmm() {
            let sock = self.cfg.xenstored_socket.clone();
            let ids = devids.clone();
            tokio::task::spawn_blocking(move || xs::vif_states(&sock, domid, &ids))
                .await
                .map_err(internal("xenstore task"))?
                .map_err(xenstore)?
        } else {
            vec![xs::VifState::default(); devids.len()]
        };
        Ok(d.spec
            .vifs
            .iter()
            .zip(devids)
            .zip(states)
            .map(|((v, devid), st)| {
                let mode = vif::mode(v);
                NicInfo {
                    devid,
                    mac: v.mac.clone().unwrap_or_default(),
                    mode: match mode {
                        Ok(VifMode::Routed(_)) => "route",
                        _ => "bridge",
                    }
                    .into(),
                    bridge: match mode {
                        Ok(VifMode::Bridge(b)) => Some(b),
                        _ => None,
                    },
                    ip: v.ip.clone(),
                    vifname: vif::tap_name(domid, devid, v),
                    backend_id: 0,
                    frontend_id: domid,
                    frontend_state: st.frontend_state,
                    backend_state: st.backend_state,
                    evtchn: st.evtchn,
                    tx_ring_ref: st.tx_ring_ref,
                    rx_ring_ref: st.rx_ring_ref,
                    backend_path: vif::paths(domid, devid)[0].clone(),
                }
            })
            .collect())
    }

    /// Hot-plugs a vif (xl's syntax) into a running domain: checks it, gives it a MAC
    /// and device number if it has none, records it in the domain's spec, prepares its
    /// bridge, writes its xenbus nodes, and has the VMM create its TAP and serve it.
    /// Undone step by step on failure.
    pub async fn attach_nic(self: &Arc<Self>, id: &str, text: &str) -> DomainResult<NicInfo> {
        let mut nic = VifSpec::parse(text).map_err(DomainError::BadRequest)?;
        vif::check(&nic).map_err(DomainError::BadRequest)?;
        let d = self.live(id)?;
        let domid = d.domid;
        // Reserved under the registry's lock: two attaches racing for one device
        // number or MAC cannot both pass.
        let (devid, record) = {
            let mut reg = lock(&self.reg);
            let cur = reg
                .get(domid)
                .ok_or_else(|| DomainError::NotFound(id.to_string()))?;
            let devid = nic.devid.unwrap_or_else(|| vif::next_devid(&cur.spec.vifs));
            if vif::devids(&cur.spec.vifs).contains(&devid) {
                return Err(DomainError::DeviceInUse(format!(
                    "domain {} already has a vif with device number {devid}",
                    cur.name
                )));
            }
            if nic.mac.is_some() {
                for dom in reg.iter().filter(|x| x.state.has_vmm()) {
                    if dom
                        .spec
                        .vifs
                        .iter()
                        .any(|o| same_mac(o.mac.as_deref(), nic.mac.as_deref()))
                    {
                        return Err(DomainError::DeviceInUse(format!(
                            "MAC {} is in use by domain {} (id {})",
                            nic.mac.as_deref().unwrap_or_default(),
                            dom.name,
                            dom.domid
                        )));
                    }
                }
            } else {
                nic.mac = Some(vif::random_mac());
            }
            nic.devid = Some(devid);
            let record = reg.update(domid, |x| {
                x.spec.vifs.push(nic.clone());
                x.clone()
            });
            (devid, record)
        };
        if let Some(r) = &record {
            if let Err(e) = self.persist(r) {
                self.forget_nic(domid, devid);
                return Err(e);
            }
        }
        let launch = match self.prepare_vif(domid, devid, &nic) {
            Ok(l) => l,
            Err(e) => {
                self.forget_nic(domid, devid);
                return Err(e);
            }
        };
        let sock = self.cfg.xenstored_socket.clone();
        let spec = nic.clone();
        let written = tokio::task::spawn_blocking(move || xs::add_vif(&sock, domid, devid, &spec))
            .await
            .map_err(internal("xenstore task"))
            .and_then(|r| r.map_err(xenstore));
        if let Err(e) = written {
            self.undo_attach_nic(domid, devid).await;
            return Err(e);
        }
        let req = Request::AttachVif {
            devid,
            mac: launch.mac.clone(),
            tap: launch.tap.clone(),
            bridge: launch.bridge.clone(),
            ips: launch.ips.iter().map(ToString::to_string).collect(),
        };
        if let Err(e) = vmm::command(&self.files(domid).control(), req).await {
            self.undo_attach_nic(domid, devid).await;
            return Err(vmm_refusal("the VMM could not attach the vif", e));
        }
        self.emit(
            Some(domid),
            &d.name,
            "nic_attached",
            serde_json::json!({"devid": devid, "mac": launch.mac, "vifname": launch.tap}),
        );
        self.nics(&domid.to_string())
            .await?
            .into_iter()
            .find(|x| x.devid == devid)
            .ok_or_else(|| DomainError::Internal("attached vif vanished".into()))
    }

    /// Removes the nodes and the spec entry of a failed attach.
    async fn undo_attach_nic(&self, domid: u32, devid: u32) {
        let sock = self.cfg.xenstored_socket.clone();
        let _ = tokio::task::spawn_blocking(move || xs::remove_vif(&sock, domid, devid)).await;
        self.forget_nic(domid, devid);
    }

    /// Drops vif `devid` from the domain's spec and record.
    fn forget_nic(&self, domid: u32, devid: u32) {
        self.change_devices(domid, |s| {
            let ids = vif::devids(&s.vifs);
            let mut i = 0;
            s.vifs.retain(|_| {
                let keep = ids[i] != devid;
                i += 1;
                keep
            });
        });
    }

    /// Removes vif `dev` (device number or MAC) from a running domain as Xen does
    /// (see [`super::devices`]); the VMM deletes its TAP (with its routes and bridge
    /// port) and the nodes go.
    pub async fn detach_nic(
        self: &Arc<Self>,
        id: &str,
        dev: &str,
        force: bool,
        wait: Duration,
    ) -> DomainResult<NicDetachReply> {
        let d = self.live(id)?;
        let domid = d.domid;
        let (devid, nic) = find_vif(&d.spec.vifs, dev)
            .map(|(n, v)| (n, v.clone()))
            .ok_or_else(|| DomainError::NoDevice(format!("domain {} has no vif {dev}", d.name)))?;
        let forced = self
            .close_backend(
                domid,
                vif::paths(domid, devid)[0].clone(),
                |force| Request::DetachVif { devid, force },
                force,
                wait,
                &format!("vif {devid}"),
            )
            .await?;
        let sock = self.cfg.xenstored_socket.clone();
        tokio::task::spawn_blocking(move || xs::remove_vif(&sock, domid, devid))
            .await
            .map_err(internal("xenstore task"))?
            .map_err(xenstore)?;
        self.forget_nic(domid, devid);
        let mac = nic.mac.unwrap_or_default();
        self.emit(
            Some(domid),
            &d.name,
            "nic_detached",
            serde_json::json!({"devid": devid, "mac": mac, "forced": forced}),
        );
        Ok(NicDetachReply { devid, mac, forced })
    }

    /// Makes sure the host has what vif `v` of domain `domid` needs (its bridge) and
    /// says how the VMM serves it.
    pub(super) fn prepare_vif(
        &self,
        domid: u32,
        devid: u32,
        v: &VifSpec,
    ) -> DomainResult<LaunchVif> {
        let mode = vif::check(v).map_err(DomainError::InvalidConfig)?;
        let (bridge, ips) = match mode {
            VifMode::Bridge(b) => {
                self.ensure_bridge(&b)?;
                (Some(b), Vec::new())
            }
            VifMode::Routed(ips) => (None, ips),
        };
        Ok(LaunchVif {
            devid,
            mac: v.mac.clone().unwrap_or_default(),
            tap: vif::tap_name(domid, devid, v),
            bridge,
            ips,
        })
    }

    /// [`Self::prepare_vif`] for each of a domain's vifs.
    pub(super) fn prepare_vifs(
        &self,
        domid: u32,
        vifs: &[VifSpec],
    ) -> DomainResult<Vec<LaunchVif>> {
        vifs.iter()
            .zip(vif::devids(vifs))
            .map(|(v, devid)| self.prepare_vif(domid, devid, v))
            .collect()
    }

    /// Bridge `name` exists and is up afterwards: created if missing (left in place
    /// when domains end, as Xen's), unless xend runs with `--no-bridge-create`, when a
    /// missing bridge is an error.
    fn ensure_bridge(&self, name: &str) -> DomainResult<()> {
        if !self.cfg.create_bridges {
            if rxen_hostnet::bridge::is_bridge(name) {
                return Ok(());
            }
            return Err(DomainError::InvalidConfig(format!(
                "bridge {name} does not exist (xend runs with --no-bridge-create: create it, e.g. `ip link add {name} type bridge && ip link set {name} up`, or name another bridge=)"
            )));
        }
        match rxen_hostnet::bridge::ensure(name) {
            Ok(rxen_hostnet::bridge::Ensured::Created) => {
                tracing::info!(
                    bridge = name,
                    "created bridge {name} (it stays when domains end)"
                );
                Ok(())
            }
            Ok(rxen_hostnet::bridge::Ensured::Existed) => Ok(()),
            Err(e) => Err(DomainError::DeviceRefused(format!("bridge {name}: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn vifs_are_named_by_number_or_mac() {
        let vifs = vec![
            VifSpec::parse("mac=00:16:3e:00:00:01").unwrap(),
            VifSpec::parse("mac=00:16:3e:00:00:02,devid=7").unwrap(),
        ];
        assert_eq!(find_vif(&vifs, "0").unwrap().0, 0);
        assert_eq!(find_vif(&vifs, "7").unwrap().0, 7);
        assert_eq!(find_vif(&vifs, "00:16:3E:00:00:02").unwrap().0, 7);
        assert!(find_vif(&vifs, "1").is_none());
        assert!(find_vif(&vifs, "00:16:3e:00:00:03").is_none());
    }

    #[test]
    fn vifs_get_macs_and_numbers() {
        let mut v = vec![
            VifSpec::parse("bridge=b").unwrap(),
            VifSpec::parse("mac=00:16:3e:00:00:01,devid=4").unwrap(),
        ];
        complete_vifs(&mut v).unwrap();
        assert_eq!(v[0].devid, Some(0));
        assert!(v[0].mac.as_deref().unwrap().starts_with("00:16:3e:"));
        assert_eq!(v[1].devid, Some(4));
        let mut twice = vec![
            VifSpec::parse("devid=1").unwrap(),
            VifSpec::parse("").unwrap(),
        ];
        assert!(complete_vifs(&mut twice)
            .unwrap_err()
            .to_string()
            .contains("device number 1"));
        let mut same_mac = vec![
            VifSpec::parse("mac=00:16:3e:00:00:01").unwrap(),
            VifSpec::parse("mac=00:16:3E:00:00:01").unwrap(),
        ];
        assert!(complete_vifs(&mut same_mac).is_err());
        let mut nat = vec![VifSpec::parse("script=vif-nat,ip=192.0.2.1").unwrap()];
        assert!(complete_vifs(&mut nat)
            .unwrap_err()
            .to_string()
            .contains("vif 0: script=vif-nat"));
    }
}
