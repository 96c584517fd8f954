//! A driver's handle on its xenbus backend: started with the devices given at start,
//! or at the first device hot-plugged into the running domain (through the control
//! socket), and told of devices that come and go. The xenbus thread itself is
//! [`XenbusBackend`]; this only owns when it runs.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{BackendDevice, DeviceError, XenbusBackend};
use crate::domain::DomainShared;

/// Why a device could not be attached or detached (besides the driver's own reasons).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("no backend: the VMM was started without xenstored's socket")]
    NoXenstore,
    #[error("{0}")]
    Device(#[from] DeviceError),
    #[error("starting the backend: {0}")]
    Start(std::io::Error),
}

impl From<std::io::Error> for BackendError {
    fn from(e: std::io::Error) -> Self {
        BackendError::Start(e)
    }
}

/// One driver's backend, running or not yet.
pub struct Hotplug<D: BackendDevice> {
    dom: Arc<DomainShared>,
    socket: Option<PathBuf>,
    running: Mutex<Option<XenbusBackend<D>>>,
}

impl<D: BackendDevice> Hotplug<D> {
    /// Starts the backend for `devices` if there are any; without `socket`
    /// (xenstored's main socket) there can be none.
    pub fn start(
        dom: Arc<DomainShared>,
        socket: Option<PathBuf>,
        devices: Vec<(u32, D)>,
    ) -> Result<Self, BackendError> {
        let running = match (&socket, devices.is_empty()) {
            (_, true) => None,
            (None, false) => return Err(BackendError::NoXenstore),
            (Some(s), false) => Some(
                XenbusBackend::start(dom.clone(), s.clone(), devices)
                    .map_err(BackendError::Start)?,
            ),
        };
        Ok(Self {
            dom,
            socket,
            running: Mutex::new(running),
        })
    }

    /// Starts the backend of a restored domain: `devices` as [`Self::start`], the
    /// devices of `saved` serving their saved rings again at once.
    pub fn start_restored(
        dom: Arc<DomainShared>,
        socket: Option<PathBuf>,
        devices: Vec<(u32, D)>,
        saved: &[(u32, D::Saved)],
    ) -> Result<Self, BackendError> {
        if saved.is_empty() {
            return Self::start(dom, socket, devices);
        }
        let Some(s) = &socket else {
            return Err(BackendError::NoXenstore);
        };
        let b = XenbusBackend::start_restored(dom.clone(), s.clone(), devices, saved)?;
        Ok(Self {
            dom,
            socket,
            running: Mutex::new(Some(b)),
        })
    }

    /// Quiesces every connected device for a save (nothing when no backend runs).
    pub fn quiesce(&self) -> Result<Vec<(u32, D::Saved)>, BackendError> {
        match self.lock().as_ref() {
            Some(b) => Ok(b.quiesce()?),
            None => Ok(Vec::new()),
        }
    }

    /// What every connected device's frontend negotiated (nothing when no backend
    /// runs).
    pub fn frontends(&self) -> Result<Vec<(u32, D::Frontend)>, BackendError> {
        match self.lock().as_ref() {
            Some(b) => Ok(b.frontends()?),
            None => Ok(Vec::new()),
        }
    }

    /// Serves the saved devices again after a save that kept the domain.
    pub fn resume(&self, saved: Vec<(u32, D::Saved)>) -> Result<(), BackendError> {
        match self.lock().as_ref() {
            Some(b) => Ok(b.resume(saved)?),
            None if saved.is_empty() => Ok(()),
            None => Err(BackendError::NoXenstore),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<XenbusBackend<D>>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a backend can run (xenstored's socket was given).
    pub fn has_xenstore(&self) -> bool {
        self.socket.is_some()
    }

    /// Serves `device` as `devid`, whose xenbus nodes the toolstack wrote; starts the
    /// backend if it was not running.
    pub fn attach(&self, devid: u32, device: D) -> Result<(), BackendError> {
        let socket = self.socket.clone().ok_or(BackendError::NoXenstore)?;
        let mut running = self.lock();
        match running.as_ref() {
            Some(b) => Ok(b.attach(devid, device)?),
            None => {
                let what = device.describe();
                let b = XenbusBackend::start(self.dom.clone(), socket, vec![(devid, device)])
                    .map_err(BackendError::Start)?;
                *running = Some(b);
                tracing::info!(devid, device = %what, "{}: device attached", D::DRIVER);
                Ok(())
            }
        }
    }

    /// Starts removing device `devid` (Xen's Closing handshake, or at once with
    /// `force`).
    pub fn detach(&self, devid: u32, force: bool) -> Result<(), BackendError> {
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
