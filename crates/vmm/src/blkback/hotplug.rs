//! The VMM's handle on its block backend: started with the disks given at start, or
//! at the first disk hot-plugged into the running domain (`attach-disk` on the control
//! socket), and told of disks that come and go. The xenbus thread itself is
//! [`XenbusBackend`]; this only owns when it runs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::disk::{Disk, DiskError};
use super::xenbus::{DeviceError, XenbusBackend};
use crate::domain::DomainShared;

/// Why a disk could not be attached or detached.
#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    #[error("no block backend: the VMM was started without xenstored's socket")]
    NoXenstore,
    #[error("{0}")]
    Disk(#[from] DiskError),
    #[error("{0}")]
    Device(#[from] DeviceError),
    #[error("starting the block backend: {0}")]
    Start(std::io::Error),
}

/// The domain's block backend, running or not yet.
pub struct BlockBackend {
    dom: Arc<DomainShared>,
    socket: Option<PathBuf>,
    running: Mutex<Option<XenbusBackend>>,
}

impl BlockBackend {
    /// Starts the backend for `disks` (opened already) if there are any; without
    /// `socket` (xenstored's main socket) there can be none.
    pub fn start(
        dom: Arc<DomainShared>,
        socket: Option<PathBuf>,
        disks: Vec<(u32, Arc<Disk>)>,
    ) -> Result<Self, HotplugError> {
        let running = match (&socket, disks.is_empty()) {
            (_, true) => None,
            (None, false) => return Err(HotplugError::NoXenstore),
            (Some(s), false) => Some(
                XenbusBackend::start(dom.clone(), s.clone(), disks).map_err(HotplugError::Start)?,
            ),
        };
        Ok(Self {
            dom,
            socket,
            running: Mutex::new(running),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Option<XenbusBackend>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
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
        let socket = self.socket.clone().ok_or(HotplugError::NoXenstore)?;
        let disk = Arc::new(Disk::open(path, writable)?.with_direct_io(direct));
        let mut running = self.lock();
        match running.as_ref() {
            Some(b) => Ok(b.attach(devid, disk)?),
            None => {
                let b = XenbusBackend::start(self.dom.clone(), socket, vec![(devid, disk)])
                    .map_err(HotplugError::Start)?;
                *running = Some(b);
                tracing::info!(devid, path = %path.display(), "blkback: disk attached");
                Ok(())
            }
        }
    }

    /// Starts removing device `devid` (Xen's Closing handshake, or at once with
    /// `force`).
    pub fn detach(&self, devid: u32, force: bool) -> Result<(), HotplugError> {
        match self.lock().as_ref() {
            Some(b) => Ok(b.detach(devid, force)?),
            None => Err(DeviceError::NoSuchDevice(devid).into()),
        }
    }

    /// Stops the backend and every ring it serves.
    pub fn stop(&self) {
        if let Some(mut b) = self.lock().take() {
            b.stop();
        }
    }
}
