//! Xen's suspend protocol on the toolstack's side, before `xm save` of a guest that
//! advertises `control/feature-suspend` = 1 (as libxl does for a PV guest): write
//! `suspend` to its `control/shutdown` and wait, at most [`SUSPEND_TIMEOUT`] (libxl's
//! 60 s), until the guest has called `SCHEDOP_shutdown(SHUTDOWN_suspend)` (its VMM
//! reports `suspended`). A guest that does not suspend in time has the request
//! withdrawn and the save fails (`save_failed`), as with xl. A guest without the
//! feature (Mini-OS, PV-GRUB, most SDK guests) is saved transparently: paused, its
//! backends quiesced, nothing asked of it (`docs/migration.md`).

use std::time::{Duration, Instant};

use super::error::{internal, xenstore};
use super::{DomainError, DomainResult, Xend};
use crate::{vmm, xs};

/// How long a guest has to suspend itself (libxl waits 60 s).
pub const SUSPEND_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the VMM is asked whether the guest has suspended.
const POLL: Duration = Duration::from_millis(5);

impl Xend {
    /// Asks domain `domid` to suspend itself if it advertises the feature; returns
    /// whether it did (false: it does not take part, the save is transparent).
    pub(super) async fn suspend_guest(&self, domid: u32) -> DomainResult<bool> {
        if !self.guest_advertises_suspend(domid).await? {
            return Ok(false);
        }
        self.write_control_shutdown(domid, "suspend").await?;
        let control = self.files(domid).control();
        let deadline = Instant::now() + SUSPEND_TIMEOUT;
        loop {
            match vmm::status(&control).await {
                Ok(s) if s.suspended => {
                    tracing::info!(domid, "the guest suspended itself for the save");
                    return Ok(true);
                }
                Ok(_) => {}
                Err(e) => return Err(DomainError::SaveFailed(format!("asking the VMM: {e}"))),
            }
            if Instant::now() >= deadline {
                // Withdrawn, as libxl does; a guest that suspends after all is
                // resumed (cancelled) by the unpause below.
                let _ = self.write_control_shutdown(domid, "").await;
                if let Ok(s) = vmm::status(&control).await {
                    if s.suspended {
                        let _ = vmm::command(&control, rxen_vmm_api::Request::Unpause).await;
                    }
                }
                return Err(DomainError::SaveFailed(format!(
                    "the guest advertises control/feature-suspend but did not suspend within {SUSPEND_TIMEOUT:?}; the request was withdrawn"
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Does domain `domid`'s guest advertise `control/feature-suspend` = 1?
    pub(super) async fn guest_advertises_suspend(&self, domid: u32) -> DomainResult<bool> {
        let sock = self.cfg.xenstored_socket.clone();
        let feature =
            tokio::task::spawn_blocking(move || xs::read(&sock, domid, "control/feature-suspend"))
                .await
                .map_err(internal("xenstore task"))?
                .map_err(xenstore)?;
        Ok(feature.as_deref() == Some("1"))
    }

    /// Writes `control/feature-suspend` = 1 for domain `domid`, made from the image
    /// of a guest that suspended itself for its save or migration: the guest wrote it
    /// at boot, in the old domain, and does not write it again after its resume
    /// (Linux's `setup_shutdown_watcher` runs once), so the toolstack carries it over.
    pub(super) async fn advertise_suspend_again(&self, domid: u32) -> DomainResult<()> {
        let sock = self.cfg.xenstored_socket.clone();
        tokio::task::spawn_blocking(move || xs::write(&sock, domid, "control/feature-suspend", "1"))
            .await
            .map_err(internal("xenstore task"))?
            .map_err(xenstore)
    }

    pub(super) async fn write_control_shutdown(
        &self,
        domid: u32,
        what: &'static str,
    ) -> DomainResult<()> {
        let sock = self.cfg.xenstored_socket.clone();
        tokio::task::spawn_blocking(move || xs::write(&sock, domid, "control/shutdown", what))
            .await
            .map_err(internal("xenstore task"))?
            .map_err(xenstore)
    }
}
