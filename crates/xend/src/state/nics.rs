//! Virtual network interfaces (vifs) of domains: what a vif needs of the host before
//! its VMM serves it (its bridge, created and brought up when missing unless xend runs
//! with `--no-bridge-create`), and the checks of a domain's vifs (MACs, device
//! numbers).
//!
//! A domain's vifs are its spec's `vifs`, each with its MAC and device number filled
//! in at create; the TAP, its bridge port and its routes belong to the VMM (they go
//! when it exits, however it exits), the xenstore nodes to the domain's entries.

use rxen_xlcfg::devices::VifSpec;

use super::{DomainError, DomainResult, Xend};
use crate::vif::{self, VifMode};
use crate::vmm::LaunchVif;

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
