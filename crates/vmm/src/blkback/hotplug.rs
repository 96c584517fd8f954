//! The VMM's handle on its block backend: the shared hot-plug of
//! [`crate::xenbus_backend::hotplug`] for vbds, started with the disks given at start or
//! at the first disk hot-plugged into the running domain (`attach-disk` on the control
//! socket); this opens the disks.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::disk::{Disk, DiskError};
use super::saved::SavedVbd;
use super::xenbus::Vbd;
use crate::domain::DomainShared;
use crate::xenbus_backend::hotplug::{BackendError, Hotplug};

/// Why a disk could not be attached or detached.
#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    #[error("{0}")]
    Disk(#[from] DiskError),
    #[error("{0}")]
    Backend(#[from] BackendError),
}

/// The domain's block backend, running or not yet.
pub struct BlockBackend(Hotplug<Vbd>);

impl BlockBackend {
    /// Starts the backend for `disks` (opened already) if there are any; without
    /// `socket` (xenstored's main socket) there can be none.
    pub fn start(
        dom: Arc<DomainShared>,
        socket: Option<PathBuf>,
        disks: Vec<(u32, Arc<Disk>)>,
    ) -> Result<Self, HotplugError> {
        let devices = disks.into_iter().map(|(d, k)| (d, Vbd::new(k))).collect();
        Ok(Self(Hotplug::start(dom, socket, devices)?))
    }

    /// Starts the backend of a restored domain: `disks` as [`Self::start`], the vbds
    /// of `saved` (from the image) serving their saved rings again at once.
    pub fn start_restored(
        dom: Arc<DomainShared>,
        socket: Option<PathBuf>,
        disks: Vec<(u32, Arc<Disk>)>,
        saved: &[(u32, SavedVbd)],
    ) -> Result<Self, HotplugError> {
        let devices = disks.into_iter().map(|(d, k)| (d, Vbd::new(k))).collect();
        Ok(Self(Hotplug::start_restored(dom, socket, devices, saved)?))
    }

    /// Quiesces every connected vbd for a save (see [`crate::blkback::saved`]).
    pub fn quiesce(&self) -> Result<Vec<(u32, SavedVbd)>, HotplugError> {
        Ok(self.0.quiesce()?)
    }

    /// What the frontend of every connected vbd negotiated.
    pub fn frontends(&self) -> Result<Vec<(u32, rxen_vmm_api::ConnectedVbd)>, HotplugError> {
        Ok(self.0.frontends()?)
    }

    /// Serves the vbds of `saved` again after a save that kept the domain.
    pub fn resume(&self, saved: Vec<(u32, SavedVbd)>) -> Result<(), HotplugError> {
        Ok(self.0.resume(saved)?)
    }

    /// Opens `path` and serves it as device `devid`, whose xenbus nodes the toolstack
    /// wrote; starts the backend if it was not running.
    pub fn attach(
        &self,
        devid: u32,
        writable: bool,
        direct: bool,
        path: &Path,
    ) -> Result<(), HotplugError> {
        if !self.0.has_xenstore() {
            return Err(BackendError::NoXenstore.into());
        }
        let disk = Arc::new(Disk::open(path, writable)?.with_direct_io(direct));
        Ok(self.0.attach(devid, Vbd::new(disk))?)
    }

    /// Starts removing device `devid` (Xen's Closing handshake, or at once with
    /// `force`).
    pub fn detach(&self, devid: u32, force: bool) -> Result<(), HotplugError> {
        Ok(self.0.detach(devid, force)?)
    }

    /// Stops the backend and every ring it serves.
    pub fn stop(&self) {
        self.0.stop();
    }
}
