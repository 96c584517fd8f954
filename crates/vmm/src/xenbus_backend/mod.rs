//! The backend half of xenbus, shared by every split driver of the VMM (blkback's
//! vbds, netback's vifs): a thread with a privileged (domain 0) connection to
//! xenstored that announces each device, watches its frontend's `state` and runs Xen's
//! state machine (as Linux's `xenbus` backends):
//!
//! * start: the driver's features ([`BackendDevice::features`]), `state` = InitWait (2);
//! * frontend Initialised (3) or Connected (4): the driver connects
//!   ([`BackendDevice::connect`]: reads the ring details, maps and binds, publishes
//!   what it must), then `state` = Connected (4);
//! * frontend Closing (5): disconnect, `state` = Closing; Closed (6): disconnect,
//!   `state` = Closed; Initialising (1) after Closed: `state` = InitWait again; the
//!   frontend's node gone: disconnect.
//!
//! Devices come and go while the domain runs ([`XenbusBackend::attach`],
//! [`XenbusBackend::detach`], commands the thread carries out between watch events):
//! an attached device is announced like the ones given at start; a detach sets the
//! backend `Closing` (5) and waits for the frontend to reach Closed (6) (or to go, or
//! never to have connected), then disconnects, writes backend `state` = Closed and
//! drops the device (closing its disk, or its TAP). The toolstack waits for that
//! Closed and removes the nodes; a forced detach disconnects and goes Closed at once.
//! [`hotplug::Hotplug`] starts the thread at the first device.
//!
//! A frontend whose details are unusable gets a log line and `state` = Closing (Xen's
//! `xenbus_dev_fatal`); the VMM carries on. Values under the frontend directory are the
//! guest's and hostile: the drivers read each once and parse it strictly. The backend
//! directory is domain 0's (the guest may only read it), so `frontend` is trusted but
//! still checked to lie under this domain's home. This module creates and removes no
//! xenstore directory (the toolstack does).
//!
//! xenstored may restart (xend supervises it): the thread reconnects with a growing
//! delay, announces again (keeping connected rings, publishing their nodes and
//! `state` = Connected again) and re-registers its watches, whose first firing
//! re-reads every frontend's state. A store that lost its tree has no frontend nodes
//! (or the toolstack's initial ones) until the toolstack writes them back from
//! [`XenbusBackend::frontends`]: a device connected before the restart ignores an
//! absent, Initialising or InitWait frontend until the frontend reads a state again.

mod device;
pub mod hotplug;
mod thread;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rxen_xenstore::client::ClientError;

use crate::domain::DomainShared;

/// Longest wait for the thread to take a command (below xend's 5 s control timeout,
/// so that a busy thread is an error reply, not a silent socket).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest wait for every device to quiesce (in-flight block I/O completes first).
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(20);

/// Reads one frontend node by its key; `None` when it does not exist.
pub type ReadNode<'a> = dyn FnMut(&str) -> Result<Option<String>, ClientError> + 'a;

/// Why a driver could not connect a frontend.
#[derive(Debug, thiserror::Error)]
pub enum ConnectFailure {
    /// xenstore failed: the session is started again.
    #[error("xenstore: {0}")]
    Store(#[from] ClientError),
    /// The frontend's details are unusable: backend `state` = Closing.
    #[error("{0}")]
    Refused(String),
}

/// What a split driver's device does at each step of the xenbus state machine.
pub trait BackendDevice: Send + 'static {
    /// The device class in xenstore's backend path (`vbd`, `vif`).
    const CLASS: &'static str;
    /// The driver's name in log lines (`blkback`, `netback`).
    const DRIVER: &'static str;

    /// Nodes written in the backend directory when the device is announced.
    fn features(&self) -> Vec<(String, String)>;
    /// Whether a frontend is connected (rings mapped).
    fn connected(&self) -> bool;
    /// Reads the frontend's details through `read`, maps and binds its rings and
    /// starts serving them; returns the nodes to publish in the backend directory
    /// before `state` = Connected.
    fn connect(
        &mut self,
        dom: &Arc<DomainShared>,
        devid: u32,
        read: &mut ReadNode<'_>,
    ) -> Result<Vec<(String, String)>, ConnectFailure>;
    /// Stops serving the rings (nothing when not connected).
    fn disconnect(&mut self, devid: u32);
    /// What the device serves, for log lines (a disk's path, a TAP's name).
    fn describe(&self) -> String;

    /// What a connected frontend negotiated (the nodes it wrote before connecting),
    /// for the toolstack to write back after xenstored lost them.
    type Frontend: Clone + std::fmt::Debug + Send + 'static;
    /// `None` when not connected.
    fn frontend(&self) -> Option<Self::Frontend>;

    /// What a save keeps of a connected device so that its rings can be served again
    /// without the frontend noticing (`crate::snapshot`).
    type Saved: SavedDevice + Clone + std::fmt::Debug + Send + 'static;
    /// Quiesces a connected device for a save: stops taking requests, lets what is in
    /// flight finish and its responses be written, flushes, then disconnects (rings
    /// unmapped, domain 0's channel ends closed) and returns what [`Self::resume`]
    /// needs. `None` when not connected.
    fn quiesce(&mut self, devid: u32) -> Option<Self::Saved>;
    /// Serves the rings `saved` describes again (after a save that kept the domain,
    /// or in the domain restored from the image): maps and binds them, continues from
    /// the saved ring indices; returns the nodes to publish, as [`Self::connect`].
    /// `saved` comes from an image and is checked like a frontend's nodes.
    fn resume(
        &mut self,
        dom: &Arc<DomainShared>,
        devid: u32,
        saved: &Self::Saved,
    ) -> Result<Vec<(String, String)>, ConnectFailure>;
}

/// A connected device's saved state, as far as its frontend directory goes.
pub trait SavedDevice {
    /// The frontend nodes the guest wrote when it connected the rings this state
    /// describes (`state` = Connected, ring references, event channels, queues,
    /// features): what a restored or migrated-in domain's frontend directory must say
    /// before its backend follows it, since the guest does not write them again.
    fn frontend_nodes(&self) -> Vec<(String, String)>;
}

/// Xen's backend directory of device `devid` of class `D` of domain `domid`.
pub fn backend_path<D: BackendDevice>(domid: u16, devid: u32) -> String {
    format!("/local/domain/0/backend/{}/{domid}/{devid}", D::CLASS)
}

/// Why a hot-plug command was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceError {
    #[error("device {0} is already attached")]
    InUse(u32),
    #[error("no device {0}")]
    NoSuchDevice(u32),
    #[error("the backend is not running")]
    NotRunning,
    #[error("device {devid}'s saved state is refused: {why}")]
    Resume { devid: u32, why: String },
}

/// What the toolstack asks of the thread while it runs.
enum Command<D: BackendDevice> {
    Attach {
        devid: u32,
        device: D,
        done: Sender<Result<(), DeviceError>>,
    },
    Detach {
        devid: u32,
        force: bool,
        done: Sender<Result<(), DeviceError>>,
    },
    /// Quiesce every connected device for a save (see [`BackendDevice::quiesce`]).
    Quiesce { done: Sender<Vec<(u32, D::Saved)>> },
    /// Say what every connected device's frontend negotiated.
    Frontends {
        done: Sender<Vec<(u32, D::Frontend)>>,
    },
    /// Serve the saved devices again and let every quiesced device follow its
    /// frontend again.
    Resume {
        saved: Vec<(u32, D::Saved)>,
        done: Sender<Result<(), DeviceError>>,
    },
}

/// The running xenbus thread of one driver.
pub struct XenbusBackend<D: BackendDevice> {
    stop: Arc<AtomicBool>,
    commands: Sender<Command<D>>,
    thread: Option<JoinHandle<()>>,
}

impl<D: BackendDevice> XenbusBackend<D> {
    /// Starts the thread for `devices` (`(devid, device)`), talking to xenstored's main
    /// socket at `socket`.
    pub fn start(
        dom: Arc<DomainShared>,
        socket: PathBuf,
        devices: Vec<(u32, D)>,
    ) -> std::io::Result<Self> {
        let domid = dom.config.domid;
        let slots: Vec<device::Slot<D>> = devices
            .into_iter()
            .map(|(devid, d)| device::Slot::new(domid, devid, d))
            .collect();
        Self::spawn(dom, socket, slots)
    }

    /// Starts the thread for `devices` of a restored domain: the devices of `saved`
    /// have their rings served again before the thread starts (the guest carries on
    /// where it was saved); each saved device must be one of `devices`.
    pub fn start_restored(
        dom: Arc<DomainShared>,
        socket: PathBuf,
        devices: Vec<(u32, D)>,
        saved: &[(u32, D::Saved)],
    ) -> Result<Self, hotplug::BackendError> {
        let domid = dom.config.domid;
        let mut slots: Vec<device::Slot<D>> = devices
            .into_iter()
            .map(|(devid, d)| device::Slot::new(domid, devid, d))
            .collect();
        for (devid, state) in saved {
            let slot = slots
                .iter_mut()
                .find(|s| s.devid == *devid)
                .ok_or(DeviceError::Resume {
                    devid: *devid,
                    why: "no such device in the domain's configuration".into(),
                })?;
            slot.resume_restored(&dom, state)
                .map_err(|why| DeviceError::Resume { devid: *devid, why })?;
        }
        // The frontends say Connected before the toolstack hears the domain runs;
        // without xenstored now, the thread writes them at its first connection.
        if !saved.is_empty() {
            if let Err(e) = thread::write_restored_frontends(&dom, &socket, &mut slots) {
                tracing::warn!(
                    "{}: writing the restored frontends now: {e}; left to the xenbus thread",
                    D::DRIVER
                );
            }
        }
        Self::spawn(dom, socket, slots).map_err(hotplug::BackendError::Start)
    }

    fn spawn(
        dom: Arc<DomainShared>,
        socket: PathBuf,
        mut slots: Vec<device::Slot<D>>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let t_stop = stop.clone();
        let (commands, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("{}-{}bus", dom.config.name, D::CLASS))
            .spawn(move || {
                thread::run(&dom, &socket, &mut slots, &rx, &t_stop);
                for s in &mut slots {
                    s.disconnect();
                }
            })?;
        Ok(Self {
            stop,
            commands,
            thread: Some(thread),
        })
    }

    /// Serves `device` as `devid` (its nodes already written by the toolstack).
    pub fn attach(&self, devid: u32, device: D) -> Result<(), DeviceError> {
        self.ask(|done| Command::Attach {
            devid,
            device,
            done,
        })
    }

    /// Starts removing device `devid` (see the module's description).
    pub fn detach(&self, devid: u32, force: bool) -> Result<(), DeviceError> {
        self.ask(|done| Command::Detach { devid, force, done })
    }

    /// Quiesces every connected device for a save; returns what each needs to carry
    /// on. The devices stay quiesced (not following their frontends) until
    /// [`Self::resume`].
    pub fn quiesce(&self) -> Result<Vec<(u32, D::Saved)>, DeviceError> {
        let (done, answer) = mpsc::channel();
        self.commands
            .send(Command::Quiesce { done })
            .map_err(|_| DeviceError::NotRunning)?;
        answer
            .recv_timeout(QUIESCE_TIMEOUT)
            .map_err(|_| DeviceError::NotRunning)
    }

    /// What every connected device's frontend negotiated.
    pub fn frontends(&self) -> Result<Vec<(u32, D::Frontend)>, DeviceError> {
        let (done, answer) = mpsc::channel();
        self.commands
            .send(Command::Frontends { done })
            .map_err(|_| DeviceError::NotRunning)?;
        answer
            .recv_timeout(COMMAND_TIMEOUT)
            .map_err(|_| DeviceError::NotRunning)
    }

    /// Serves the devices of `saved` again (from their saved rings) and lets every
    /// quiesced device follow its frontend again.
    pub fn resume(&self, saved: Vec<(u32, D::Saved)>) -> Result<(), DeviceError> {
        self.ask(|done| Command::Resume { saved, done })
    }

    fn ask(
        &self,
        cmd: impl FnOnce(Sender<Result<(), DeviceError>>) -> Command<D>,
    ) -> Result<(), DeviceError> {
        let (done, answer) = mpsc::channel();
        self.commands
            .send(cmd(done))
            .map_err(|_| DeviceError::NotRunning)?;
        answer
            .recv_timeout(COMMAND_TIMEOUT)
            .map_err(|_| DeviceError::NotRunning)?
    }

    /// Stops the thread and every ring it connected.
    pub fn stop(&mut self) {
        self.stop.store(true, SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl<D: BackendDevice> Drop for XenbusBackend<D> {
    fn drop(&mut self) {
        self.stop();
    }
}
