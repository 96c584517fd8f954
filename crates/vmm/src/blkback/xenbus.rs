//! The backend half of xenbus for the domain's vbds: a thread with a privileged
//! (domain 0) connection to xenstored that announces each device, watches its
//! frontend's `state` and runs Xen's state machine (as Linux's `xen-blkback`):
//!
//! * start: `feature-flush-cache`, `state` = InitWait (2);
//! * start: also the data path's features ([`super::negotiate::backend_features`],
//!   with `multi-queue-max-queues`);
//! * frontend Initialised (3) or Connected (4): read the ring details
//!   ([`super::negotiate::read_frontend`]: `ring-ref`/`ring-ref%u`, `ring-page-order`,
//!   `event-channel`, `protocol`, `feature-persistent`, `multi-queue-num-queues` and
//!   `queue-N/...`), map and bind every queue's ring (one [`Connection`] each), publish
//!   `sectors`, `info`, `sector-size`, `physical-sector-size`, then `state` = Connected (4);
//! * frontend Closing (5): disconnect, `state` = Closing; Closed (6): disconnect,
//!   `state` = Closed; Initialising (1) after Closed: `state` = InitWait again; the
//!   frontend's node gone: disconnect.
//!
//! Disks come and go while the domain runs ([`XenbusBackend::attach`],
//! [`XenbusBackend::detach`], commands the thread carries out between watch events):
//! an attached disk is announced like the ones given at start; a detach sets the
//! backend `Closing` (5) and waits for the frontend to reach Closed (6) (or to go, or
//! never to have connected), then disconnects, writes backend `state` = Closed and
//! forgets the device, closing its file. The toolstack waits for that Closed and
//! removes the nodes; a forced detach disconnects and goes Closed at once.
//!
//! A frontend whose details are unusable gets a log line and `state` = Closing (Xen's
//! `xenbus_dev_fatal`); the VMM carries on. Values under the frontend directory are the
//! guest's and hostile: each is read once, parsed strictly, then used. The backend
//! directory is domain 0's (the guest may only read it), so `frontend` is trusted but
//! still checked to lie under this domain's home.
//!
//! xenstored may restart (xend supervises it): the thread reconnects with a growing
//! delay, announces again (keeping connected rings) and re-registers its watches,
//! whose first firing re-reads every frontend's state.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rxen_abi::blkif::{BLKIF_SECTOR_SIZE, VDISK_READONLY};
use rxen_abi::xenbus::XenbusState;
use rxen_xenstore::client::{Client, ClientError};

use super::connection::Connection;
use super::disk::Disk;
use crate::domain::DomainShared;

/// Longest wait for a xenstored reply.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the thread looks at the stop flag and its commands while no watch fires.
const EVENT_POLL: Duration = Duration::from_millis(50);
/// Longest wait for the thread to take a command (below xend's 5 s control timeout,
/// so that a busy thread is an error reply, not a silent socket).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest delay between reconnection attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(1);

/// Xen's backend directory of vbd `devid` of domain `domid`.
pub fn backend_path(domid: u16, devid: u32) -> String {
    format!("/local/domain/0/backend/vbd/{domid}/{devid}")
}

/// One virtual block device of the domain.
struct Vbd {
    devid: u32,
    backend: String,
    /// The frontend directory (read from the backend's `frontend` node).
    frontend: Option<String>,
    disk: Arc<Disk>,
    /// One connected ring per queue (empty while not connected).
    conns: Vec<Connection>,
    /// The backend state last written.
    state: XenbusState,
    /// Being detached: the device goes once the frontend has closed.
    removing: bool,
}

impl Vbd {
    fn new(domid: u16, devid: u32, disk: Arc<Disk>) -> Self {
        Vbd {
            devid,
            backend: backend_path(domid, devid),
            frontend: None,
            disk,
            conns: Vec::new(),
            state: XenbusState::Initialising,
            removing: false,
        }
    }
}

/// Why a hot-plug command was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceError {
    #[error("device {0} is already attached")]
    InUse(u32),
    #[error("no device {0}")]
    NoSuchDevice(u32),
    #[error("the block backend is not running")]
    NotRunning,
}

/// What the toolstack asks of the thread while it runs.
enum Command {
    Attach {
        devid: u32,
        disk: Arc<Disk>,
        done: Sender<Result<(), DeviceError>>,
    },
    Detach {
        devid: u32,
        force: bool,
        done: Sender<Result<(), DeviceError>>,
    },
}

/// Why a frontend's details were refused.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("{0}")]
    Negotiation(#[from] super::negotiate::NegotiationError),
    #[error("{0}")]
    Connect(#[from] super::connection::ConnectError),
    #[error("xenstore: {0}")]
    Store(#[from] ClientError),
}

/// The running xenbus thread.
pub struct XenbusBackend {
    stop: Arc<AtomicBool>,
    commands: Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl XenbusBackend {
    /// Starts the thread for `disks` (`(devid, disk)`), talking to xenstored's main
    /// socket at `socket`.
    pub fn start(
        dom: Arc<DomainShared>,
        socket: PathBuf,
        disks: Vec<(u32, Arc<Disk>)>,
    ) -> std::io::Result<Self> {
        let domid = dom.config.domid;
        let mut vbds: Vec<Vbd> = disks
            .into_iter()
            .map(|(devid, disk)| Vbd::new(domid, devid, disk))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let t_stop = stop.clone();
        let (commands, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("{}-xenbus", dom.config.name))
            .spawn(move || {
                run(&dom, &socket, &mut vbds, &rx, &t_stop);
                for v in &mut vbds {
                    v.disconnect();
                }
            })?;
        Ok(Self {
            stop,
            commands,
            thread: Some(thread),
        })
    }

    /// Serves `disk` as device `devid` (its nodes already written by the toolstack).
    pub fn attach(&self, devid: u32, disk: Arc<Disk>) -> Result<(), DeviceError> {
        self.ask(|done| Command::Attach { devid, disk, done })
    }

    /// Starts removing device `devid` (see the module's description).
    pub fn detach(&self, devid: u32, force: bool) -> Result<(), DeviceError> {
        self.ask(|done| Command::Detach { devid, force, done })
    }

    fn ask(
        &self,
        cmd: impl FnOnce(Sender<Result<(), DeviceError>>) -> Command,
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

impl Drop for XenbusBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

fn stopping(dom: &DomainShared, stop: &AtomicBool) -> bool {
    stop.load(SeqCst) || dom.exit_reason().is_some()
}

fn run(
    dom: &Arc<DomainShared>,
    socket: &Path,
    vbds: &mut Vec<Vbd>,
    commands: &Receiver<Command>,
    stop: &AtomicBool,
) {
    let mut delay = Duration::from_millis(10);
    let mut logged = false;
    while !stopping(dom, stop) {
        match session(dom, socket, vbds, commands, stop) {
            Ok(()) => return,
            Err(e) => {
                if !logged {
                    tracing::warn!(socket = %socket.display(), "blkback: xenstore connection: {e}; retrying");
                    logged = true;
                }
                // Commands are still taken while xenstored is away: an attached
                // device is announced at the next connection.
                while let Ok(cmd) = commands.try_recv() {
                    let _ = apply(cmd, dom, vbds, None);
                }
                std::thread::sleep(delay);
                delay = (delay * 2).min(RECONNECT_MAX);
            }
        }
    }
}

/// Carries out one command; `c` is the xenstore connection when there is one. A
/// failure of xenstore is returned after the command was answered.
fn apply(
    cmd: Command,
    dom: &Arc<DomainShared>,
    vbds: &mut Vec<Vbd>,
    c: Option<&mut Client>,
) -> Result<(), ClientError> {
    let domid = dom.config.domid;
    match cmd {
        Command::Attach { devid, disk, done } => {
            if vbds.iter().any(|v| v.devid == devid) {
                let _ = done.send(Err(DeviceError::InUse(devid)));
                return Ok(());
            }
            tracing::info!(devid, disk = %disk.path().display(), "blkback: disk attached");
            vbds.push(Vbd::new(domid, devid, disk));
            let result = match (c, vbds.last_mut()) {
                (Some(c), Some(v)) => announce_and_watch(c, v, domid),
                _ => Ok(()),
            };
            let _ = done.send(Ok(()));
            result
        }
        Command::Detach { devid, force, done } => {
            let Some(i) = vbds.iter().position(|v| v.devid == devid) else {
                let _ = done.send(Err(DeviceError::NoSuchDevice(devid)));
                return Ok(());
            };
            tracing::info!(devid, force, "blkback: detaching");
            vbds[i].removing = true;
            // The answer goes once the backend's nodes say what happened (Closing, or
            // Closed when forced): the toolstack removes the nodes after it, and a
            // later write here would bring them back.
            let result = match c {
                Some(c) => detach(c, dom, vbds, i, force),
                None => {
                    // Without xenstore nothing can be said to the frontend.
                    let mut v = vbds.remove(i);
                    v.disconnect();
                    Ok(())
                }
            };
            let _ = done.send(Ok(()));
            result
        }
    }
}

/// Starts (or, with `force`, completes) the removal of device `i`.
fn detach(
    c: &mut Client,
    dom: &Arc<DomainShared>,
    vbds: &mut Vec<Vbd>,
    i: usize,
    force: bool,
) -> Result<(), ClientError> {
    if force {
        vbds[i].close(c)?;
    } else {
        vbds[i].set_state(c, XenbusState::Closing)?;
        // The frontend's answer (or its current state, if it never connected or
        // already closed) decides what follows.
        vbds[i].frontend_changed(c, dom)?;
    }
    if vbds[i].state == XenbusState::Closed {
        forget(c, vbds, i);
    }
    Ok(())
}

/// Announces a new device and watches its frontend.
fn announce_and_watch(c: &mut Client, v: &mut Vbd, domid: u16) -> Result<(), ClientError> {
    v.announce(c, domid)?;
    if let Some(f) = &v.frontend {
        c.watch(&format!("{f}/state"), &v.devid.to_string())?;
    }
    Ok(())
}

/// Drops device `i` (closed): its watch goes, its disk is closed.
fn forget(c: &mut Client, vbds: &mut Vec<Vbd>, i: usize) {
    let mut v = vbds.remove(i);
    v.disconnect();
    if let Some(f) = &v.frontend {
        let _ = c.unwatch(&format!("{f}/state"), &v.devid.to_string());
    }
    tracing::info!(devid = v.devid, "blkback: disk detached");
}

/// One connection to xenstored: announce, watch, react until stopped or the
/// connection fails.
fn session(
    dom: &Arc<DomainShared>,
    socket: &Path,
    vbds: &mut Vec<Vbd>,
    commands: &Receiver<Command>,
    stop: &AtomicBool,
) -> Result<(), ClientError> {
    let mut c = Client::connect(socket)?;
    c.set_timeout(Some(REQUEST_TIMEOUT))?;
    let domid = dom.config.domid;
    for v in vbds.iter_mut() {
        v.announce(&mut c, domid)?;
        if let Some(f) = &v.frontend {
            c.watch(&format!("{f}/state"), &v.devid.to_string())?;
        }
    }
    loop {
        if stopping(dom, stop) {
            return Ok(());
        }
        while let Ok(cmd) = commands.try_recv() {
            apply(cmd, dom, vbds, Some(&mut c))?;
        }
        c.set_timeout(Some(EVENT_POLL))?;
        let event = c.next_event();
        c.set_timeout(Some(REQUEST_TIMEOUT))?;
        match event {
            Ok((_path, token)) => {
                if let Some(i) = vbds.iter().position(|v| v.devid.to_string() == token) {
                    vbds[i].frontend_changed(&mut c, dom)?;
                    if vbds[i].removing && vbds[i].state == XenbusState::Closed {
                        forget(&mut c, vbds, i);
                    }
                }
            }
            Err(ClientError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Reads a node; `None` when it does not exist.
fn read_opt(c: &mut Client, path: &str) -> Result<Option<String>, ClientError> {
    match c.read(0, path) {
        Ok(v) => Ok(Some(
            String::from_utf8_lossy(&v)
                .trim_end_matches('\0')
                .trim()
                .to_string(),
        )),
        Err(ClientError::Xs(e)) if e == "ENOENT" => Ok(None),
        Err(e) => Err(e),
    }
}

/// The nodes the backend publishes when it connects (besides `state`).
fn connect_nodes(disk_sectors: u64, writable: bool) -> Vec<(&'static str, String)> {
    let info = if writable { 0 } else { VDISK_READONLY };
    vec![
        ("sectors", disk_sectors.to_string()),
        ("info", info.to_string()),
        ("sector-size", BLKIF_SECTOR_SIZE.to_string()),
        ("physical-sector-size", BLKIF_SECTOR_SIZE.to_string()),
    ]
}

impl Vbd {
    fn set_state(&mut self, c: &mut Client, s: XenbusState) -> Result<(), ClientError> {
        c.write(
            0,
            &format!("{}/state", self.backend),
            (s as u8).to_string().as_bytes(),
        )?;
        self.state = s;
        Ok(())
    }

    fn disconnect(&mut self) {
        if self.conns.is_empty() {
            return;
        }
        let queues = self.conns.len();
        for mut conn in self.conns.drain(..) {
            conn.stop();
        }
        tracing::info!(devid = self.devid, queues, "blkback: disconnected");
    }

    /// Disconnects and writes backend `state` = Closed.
    fn close(&mut self, c: &mut Client) -> Result<(), ClientError> {
        self.disconnect();
        self.set_state(c, XenbusState::Closed)
    }

    /// Reads `frontend`, publishes the features and enters InitWait (unless already
    /// further along, after a xenstored restart).
    fn announce(&mut self, c: &mut Client, domid: u16) -> Result<(), ClientError> {
        let home = format!("/local/domain/{domid}/");
        self.frontend = match read_opt(c, &format!("{}/frontend", self.backend))? {
            Some(f) if f.starts_with(&home) && !f.contains("..") => Some(f),
            other => {
                tracing::warn!(backend = %self.backend, "blkback: frontend {other:?} is not under {home}; device not served");
                None
            }
        };
        if self.frontend.is_none() {
            return Ok(());
        }
        c.write(0, &format!("{}/feature-flush-cache", self.backend), b"1")?;
        let max_queues = super::negotiate::max_queues();
        for (key, value) in super::negotiate::backend_features(self.disk.writable(), max_queues) {
            c.write(0, &format!("{}/{key}", self.backend), value.as_bytes())?;
        }
        if self.conns.is_empty() && self.state == XenbusState::Initialising {
            self.set_state(c, XenbusState::InitWait)?;
        }
        Ok(())
    }

    fn frontend_changed(
        &mut self,
        c: &mut Client,
        dom: &Arc<DomainShared>,
    ) -> Result<(), ClientError> {
        let Some(front) = self.frontend.clone() else {
            if self.removing && self.state != XenbusState::Closed {
                self.close(c)?;
            }
            return Ok(());
        };
        let raw = read_opt(c, &format!("{front}/state"))?;
        let fs = raw
            .as_deref()
            .and_then(|v| v.parse::<u32>().ok())
            .and_then(XenbusState::from_value)
            .unwrap_or(XenbusState::Unknown);
        tracing::debug!(devid = self.devid, frontend = ?fs, backend = ?self.state, "blkback: frontend state");
        if self.removing {
            // Being detached: never (re)connect; close once the frontend has closed,
            // or at once if it never connected (nothing of the guest's is in use).
            let closed = match fs {
                XenbusState::Closing => {
                    self.disconnect();
                    false
                }
                XenbusState::Connected | XenbusState::Initialised => false,
                XenbusState::Reconfiguring | XenbusState::Reconfigured => false,
                XenbusState::Closed
                | XenbusState::Unknown
                | XenbusState::Initialising
                | XenbusState::InitWait => true,
            };
            if closed && self.state != XenbusState::Closed {
                self.close(c)?;
            }
            return Ok(());
        }
        match fs {
            XenbusState::Initialised | XenbusState::Connected => {
                if self.state == XenbusState::Connected && !self.conns.is_empty() {
                    return Ok(());
                }
                self.disconnect();
                match self.connect(c, dom, &front) {
                    Ok(()) => self.set_state(c, XenbusState::Connected)?,
                    Err(Refused::Store(e)) => return Err(e),
                    Err(why) => {
                        tracing::warn!(
                            devid = self.devid,
                            "blkback: cannot connect the frontend: {why}"
                        );
                        self.set_state(c, XenbusState::Closing)?;
                    }
                }
            }
            XenbusState::Initialising => {
                self.disconnect();
                if self.state == XenbusState::Closed {
                    self.set_state(c, XenbusState::InitWait)?;
                }
            }
            XenbusState::Closing => {
                self.disconnect();
                self.set_state(c, XenbusState::Closing)?;
            }
            XenbusState::Closed => {
                self.disconnect();
                self.set_state(c, XenbusState::Closed)?;
            }
            XenbusState::Unknown => self.disconnect(),
            XenbusState::InitWait | XenbusState::Reconfiguring | XenbusState::Reconfigured => {}
        }
        Ok(())
    }

    fn connect(
        &mut self,
        c: &mut Client,
        dom: &Arc<DomainShared>,
        front: &str,
    ) -> Result<(), Refused> {
        let rings = super::negotiate::read_frontend(super::negotiate::max_queues(), |key| {
            read_opt(c, &format!("{front}/{key}"))
        })??;
        let mut conns = Vec::with_capacity(rings.len());
        for (q, ring) in rings.iter().enumerate() {
            let name = if rings.len() == 1 {
                format!("{}-vbd{}", dom.config.name, self.devid)
            } else {
                format!("{}-vbd{}-q{q}", dom.config.name, self.devid)
            };
            // On an error the queues already connected are dropped (stopped) here.
            conns.push(Connection::start(
                dom.clone(),
                self.disk.clone(),
                ring,
                name,
            )?);
        }
        self.conns = conns;
        for (key, value) in connect_nodes(self.disk.sectors(), self.disk.writable()) {
            c.write(0, &format!("{}/{key}", self.backend), value.as_bytes())?;
        }
        tracing::info!(
            devid = self.devid,
            queues = rings.len(),
            ring_refs = ?rings.iter().map(|r| &r.ring_refs).collect::<Vec<_>>(),
            evtchns = ?rings.iter().map(|r| r.evtchn).collect::<Vec<_>>(),
            persistent = rings.iter().any(|r| r.persistent),
            disk = %self.disk.path().display(),
            "blkback: connected"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn backend_layout_is_xens() {
        assert_eq!(backend_path(7, 768), "/local/domain/0/backend/vbd/7/768");
        let nodes = connect_nodes(32768, false);
        assert_eq!(
            nodes,
            vec![
                ("sectors", "32768".to_string()),
                ("info", "4".to_string()),
                ("sector-size", "512".to_string()),
                ("physical-sector-size", "512".to_string()),
            ]
        );
        assert_eq!(connect_nodes(1, true)[1], ("info", "0".to_string()));
    }
}
