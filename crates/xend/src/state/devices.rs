//! What hot-plugged devices of every kind (disks, vifs) share: the refusal of a VMM
//! turned into a typed error, Xen's removal handshake (the VMM's backend goes
//! Closing, the guest has a while to close its frontend, then the device is cut,
//! at once when forced), and the record of a domain whose devices changed.

use std::time::Duration;

use rxen_vmm_api::Request;
use rxen_xlcfg::DomainSpec;

use super::error::{internal, xenstore};
use super::{lock, DomainError, DomainResult, Xend};
use crate::vmm::{self, ControlError};
use crate::xs;

/// How long a detach waits for the guest to close the device by default (libxl's
/// `LIBXL_DESTROY_TIMEOUT`).
pub const DETACH_WAIT: Duration = Duration::from_secs(10);

/// A VMM's refusal of a device request as the API's error.
pub(super) fn vmm_refusal(what: &str, e: ControlError) -> DomainError {
    match e {
        ControlError::Refused { message, .. } => {
            DomainError::DeviceRefused(format!("{what}: {message}"))
        }
        other => DomainError::Internal(format!("{what}: {other}")),
    }
}

impl Xend {
    /// Removes a device the VMM of `domid` serves as Xen does: `detach(force)` asks
    /// the VMM to start (backend Closing), the guest has `wait` to close its frontend
    /// (backend Closed), else the device is cut; at once with `force`. `what` names the
    /// device in log lines. Returns whether the device was cut.
    pub(super) async fn close_backend(
        &self,
        domid: u32,
        backend: String,
        detach: impl Fn(bool) -> Request,
        force: bool,
        wait: Duration,
        what: &str,
    ) -> DomainResult<bool> {
        let control = self.files(domid).control();
        match vmm::command(&control, detach(force)).await {
            Ok(()) => {}
            // The VMM does not serve it (it failed to open it, or predates hot-plug):
            // only the nodes are left to remove.
            Err(ControlError::Refused { message, .. }) => {
                tracing::warn!(domid, "detach of {what}: the VMM answered: {message}");
            }
            Err(e) => return Err(vmm_refusal(&format!("the VMM could not detach {what}"), e)),
        }
        if force {
            return Ok(true);
        }
        let sock = self.cfg.xenstored_socket.clone();
        let closed =
            tokio::task::spawn_blocking(move || xs::wait_backend_closed(&sock, &backend, wait))
                .await
                .map_err(internal("xenstore task"))?
                .map_err(xenstore)?;
        if closed {
            return Ok(false);
        }
        tracing::warn!(
            domid,
            "the guest did not close {what} within {wait:?}: forced"
        );
        if let Err(e) = vmm::command(&control, detach(true)).await {
            tracing::warn!(domid, "forced detach of {what}: {e}");
        }
        Ok(true)
    }

    /// Changes the spec of domain `domid` (a device added or removed) and records it,
    /// so that an adopting xend and a restart see its devices.
    pub(super) fn change_devices(&self, domid: u32, change: impl FnOnce(&mut DomainSpec)) {
        let d = lock(&self.reg).update(domid, |x| {
            change(&mut x.spec);
            x.clone()
        });
        if let Some(d) = d {
            let _ = self.persist(&d);
        }
    }
}
