//! The backend half of xenbus for the domain's vifs: a thread with a privileged
//! (domain 0) connection to xenstored that announces each vif, watches its frontend's
//! `state` and runs Xen's state machine (as Linux's `xen-netback`):
//!
//! * start: the features ([`super::negotiate::backend_features`]), `state` = InitWait (2);
//! * frontend Initialised (3) or Connected (4): read the ring details
//!   ([`super::negotiate::read_frontend`]), map and bind, `state` = Connected (4);
//! * frontend Closing (5): disconnect, `state` = Closing; Closed (6): disconnect,
//!   `state` = Closed; Initialising (1) after Closed: InitWait again; the frontend's
//!   node gone: disconnect.
//!
//! A frontend whose details are unusable gets a log line and `state` = Closing; the
//! VMM carries on. Values under the frontend directory are the guest's and hostile:
//! each is read once and parsed strictly. xenstored may restart: the thread
//! reconnects with a growing delay, announces again and re-watches.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rxen_abi::xenbus::XenbusState;
use rxen_xenstore::client::{Client, ClientError};

use super::connection::Connection;
use super::tap::Tap;
use crate::domain::DomainShared;

/// Longest wait for a xenstored reply.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the thread looks at the stop flag while no watch fires.
const EVENT_POLL: Duration = Duration::from_millis(100);
/// Longest delay between reconnection attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(1);

/// Xen's backend directory of vif `devid` of domain `domid`.
pub fn backend_path(domid: u16, devid: u32) -> String {
    format!("/local/domain/0/backend/vif/{domid}/{devid}")
}

/// One vif of the domain.
pub struct Vif {
    pub devid: u32,
    backend: String,
    frontend: Option<String>,
    tap: Arc<Mutex<Tap>>,
    conn: Option<Connection>,
    state: XenbusState,
}

impl Vif {
    pub fn new(domid: u16, devid: u32, tap: Tap) -> Self {
        Vif {
            devid,
            backend: backend_path(domid, devid),
            frontend: None,
            tap: Arc::new(Mutex::new(tap)),
            conn: None,
            state: XenbusState::Initialising,
        }
    }
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

/// The running xenbus thread of the network backend.
pub struct NetBackend {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NetBackend {
    /// Starts the thread for `vifs`, talking to xenstored's main socket at `socket`.
    pub fn start(
        dom: Arc<DomainShared>,
        socket: PathBuf,
        mut vifs: Vec<Vif>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let t_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("{}-netbus", dom.config.name))
            .spawn(move || {
                run(&dom, &socket, &mut vifs, &t_stop);
                for v in &mut vifs {
                    v.disconnect();
                }
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and every vif it connected (their TAPs close).
    pub fn stop(&mut self) {
        self.stop.store(true, SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for NetBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

fn stopping(dom: &DomainShared, stop: &AtomicBool) -> bool {
    stop.load(SeqCst) || dom.exit_reason().is_some()
}

fn run(dom: &Arc<DomainShared>, socket: &Path, vifs: &mut [Vif], stop: &AtomicBool) {
    let mut delay = Duration::from_millis(10);
    let mut logged = false;
    while !stopping(dom, stop) {
        match session(dom, socket, vifs, stop) {
            Ok(()) => return,
            Err(e) => {
                if !logged {
                    tracing::warn!(socket = %socket.display(), "netback: xenstore connection: {e}; retrying");
                    logged = true;
                }
                std::thread::sleep(delay);
                delay = (delay * 2).min(RECONNECT_MAX);
            }
        }
    }
}

fn session(
    dom: &Arc<DomainShared>,
    socket: &Path,
    vifs: &mut [Vif],
    stop: &AtomicBool,
) -> Result<(), ClientError> {
    let mut c = Client::connect(socket)?;
    c.set_timeout(Some(REQUEST_TIMEOUT))?;
    let domid = dom.config.domid;
    for v in vifs.iter_mut() {
        v.announce(&mut c, domid)?;
        if let Some(f) = &v.frontend {
            c.watch(&format!("{f}/state"), &v.devid.to_string())?;
        }
    }
    loop {
        if stopping(dom, stop) {
            return Ok(());
        }
        c.set_timeout(Some(EVENT_POLL))?;
        let event = c.next_event();
        c.set_timeout(Some(REQUEST_TIMEOUT))?;
        match event {
            Ok((_path, token)) => {
                if let Some(v) = vifs.iter_mut().find(|v| v.devid.to_string() == token) {
                    v.frontend_changed(&mut c, dom)?;
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

impl Vif {
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
        if let Some(mut conn) = self.conn.take() {
            conn.stop();
            tracing::info!(devid = self.devid, "netback: disconnected");
        }
    }

    /// Reads `frontend`, publishes the features and enters InitWait (unless already
    /// further along, after a xenstored restart).
    fn announce(&mut self, c: &mut Client, domid: u16) -> Result<(), ClientError> {
        let home = format!("/local/domain/{domid}/");
        self.frontend = match read_opt(c, &format!("{}/frontend", self.backend))? {
            Some(f) if f.starts_with(&home) && !f.contains("..") => Some(f),
            other => {
                tracing::warn!(backend = %self.backend, "netback: frontend {other:?} is not under {home}; vif not served");
                None
            }
        };
        if self.frontend.is_none() {
            return Ok(());
        }
        for (key, value) in super::negotiate::backend_features() {
            c.write(0, &format!("{}/{key}", self.backend), value.as_bytes())?;
        }
        if self.conn.is_none() && self.state == XenbusState::Initialising {
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
            return Ok(());
        };
        let fs = read_opt(c, &format!("{front}/state"))?
            .as_deref()
            .and_then(|v| v.parse::<u32>().ok())
            .and_then(XenbusState::from_value)
            .unwrap_or(XenbusState::Unknown);
        tracing::debug!(devid = self.devid, frontend = ?fs, backend = ?self.state, "netback: frontend state");
        match fs {
            XenbusState::Initialised | XenbusState::Connected => {
                if self.state == XenbusState::Connected && self.conn.is_some() {
                    return Ok(());
                }
                self.disconnect();
                match self.connect(c, dom, &front) {
                    Ok(()) => self.set_state(c, XenbusState::Connected)?,
                    Err(Refused::Store(e)) => return Err(e),
                    Err(why) => {
                        tracing::warn!(
                            devid = self.devid,
                            "netback: cannot connect the frontend: {why}"
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
        let rings = super::negotiate::read_frontend(|key| read_opt(c, &format!("{front}/{key}")))??;
        let tap_name = self
            .tap
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .name()
            .to_string();
        let conn = Connection::start(dom.clone(), self.tap.clone(), &rings, tap_name.clone())?;
        self.conn = Some(conn);
        tracing::info!(
            devid = self.devid,
            tx_ring_ref = rings.tx_ring_ref,
            rx_ring_ref = rings.rx_ring_ref,
            evtchn = ?rings.evtchn,
            rx = ?rings.rx,
            tap = %tap_name,
            "netback: connected"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_layout_is_xens() {
        assert_eq!(backend_path(7, 0), "/local/domain/0/backend/vif/7/0");
    }
}
