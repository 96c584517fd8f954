//! Managed domains: configs xend keeps (`xm new`), started by name (`xm start`).

use std::sync::Arc;

use rxen_xend_api::{DomainInfo, DomainState};
use rxen_xlcfg::DomainSpec;

use super::create::CreateOptions;
use super::error::internal;
use super::{lock, DomainError, DomainResult, Xend};

impl Xend {
    pub fn new_managed(&self, spec: &DomainSpec) -> DomainResult<()> {
        spec.validate()
            .map_err(|e| DomainError::InvalidConfig(e.to_string()))?;
        if spec.name == rxen_xend_api::DOM0_NAME || lock(&self.reg).by_name(&spec.name).is_some() {
            return Err(DomainError::NameInUse(spec.name.clone()));
        }
        // A vif without a MAC gets one now (and its device number), kept with the
        // managed config, so that the domain has the same MAC at every start (as Xen's
        // managed domains do).
        let mut spec = spec.clone();
        super::nics::complete_vifs(&mut spec.vifs)?;
        lock(&self.db)
            .put_managed(&spec)
            .map_err(internal("storing config"))
    }

    pub async fn start_managed(self: &Arc<Self>, name: &str) -> DomainResult<DomainInfo> {
        let spec = lock(&self.db)
            .managed()
            .map_err(internal("reading managed domains"))?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| DomainError::NoManaged(name.to_string()))?;
        self.create(spec, true, CreateOptions::default()).await
    }

    pub fn delete_managed(&self, name: &str) -> DomainResult<()> {
        if let Some(d) = lock(&self.reg).by_name(name) {
            return Err(DomainError::WrongState(d.state));
        }
        if lock(&self.db)
            .delete_managed(name)
            .map_err(internal("deleting config"))?
        {
            Ok(())
        } else {
            Err(DomainError::NoManaged(name.to_string()))
        }
    }

    /// Managed domains that are not running, as list entries (state `halted`).
    pub(super) fn halted_managed(&self) -> DomainResult<Vec<DomainInfo>> {
        let managed = lock(&self.db)
            .managed()
            .map_err(internal("reading managed domains"))?;
        let reg = lock(&self.reg);
        Ok(managed
            .into_iter()
            .filter(|spec| reg.by_name(&spec.name).is_none())
            .map(|spec| DomainInfo {
                domid: None,
                name: spec.name.clone(),
                uuid: spec.uuid.clone().unwrap_or_default(),
                state: DomainState::Halted,
                state_flags: "------".into(),
                memory_mib: spec.memory,
                maxmem_mib: spec.maxmem.unwrap_or(spec.memory),
                vcpus: spec.vcpus,
                maxvcpus: spec.maxvcpus.unwrap_or(spec.vcpus),
                uptime_s: None,
                cpu_time_s: 0.0,
                vcpu_list: Vec::new(),
                hypercalls: 0,
                managed: true,
                pid: None,
                start_time: None,
                exit_reason: None,
                unresponsive: false,
                console_dropped_bytes: 0,
                config: spec,
            })
            .collect())
    }
}
