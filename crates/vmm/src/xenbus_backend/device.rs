//! One device's place in the xenbus state machine: its backend and frontend
//! directories, the backend state last written, whether it is being removed, and the
//! driver's device.

use std::sync::Arc;

use rxen_abi::xenbus::XenbusState;
use rxen_xenstore::client::{Client, ClientError};

use super::{backend_path, BackendDevice, ConnectFailure, SavedDevice};
use crate::domain::DomainShared;

/// One device of the domain.
pub(super) struct Slot<D> {
    pub(super) devid: u32,
    backend: String,
    /// The frontend directory (read from the backend's `frontend` node).
    pub(super) frontend: Option<String>,
    pub(super) device: D,
    /// The backend state last written.
    pub(super) state: XenbusState,
    /// Being detached: the device goes once the frontend has closed.
    pub(super) removing: bool,
    /// Quiesced for a save: frontend changes are not acted on until it resumes.
    pub(super) suspended: bool,
    /// Nodes of a device whose rings were resumed from a saved state, to publish
    /// with `state` = Connected at the next chance (xenstore may not be there yet).
    resumed_nodes: Option<Vec<(String, String)>>,
    /// The nodes the driver published when it connected (written again after
    /// xenstored restarted).
    published: Vec<(String, String)>,
    /// Connected before xenstored restarted: until the frontend's nodes read a
    /// state again (the toolstack writes them back when the store lost them), an
    /// absent or initial frontend state is not acted on.
    reconnected: bool,
    /// Frontend nodes of a device restored connected (a restore or an incoming
    /// migration), written before the backend follows the frontend: the guest does
    /// not write them again, and the toolstack may have written a new device's.
    restored_frontend: Option<Vec<(String, String)>>,
}

/// Reads a node; `None` when it does not exist.
pub(super) fn read_opt(c: &mut Client, path: &str) -> Result<Option<String>, ClientError> {
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

impl<D: BackendDevice> Slot<D> {
    pub(super) fn new(domid: u16, devid: u32, device: D) -> Self {
        Slot {
            devid,
            backend: backend_path::<D>(domid, devid),
            frontend: None,
            device,
            state: XenbusState::Initialising,
            removing: false,
            suspended: false,
            resumed_nodes: None,
            published: Vec::new(),
            reconnected: false,
            restored_frontend: None,
        }
    }

    /// Serves the rings of `saved` again (the device is connected afterwards); the
    /// nodes to publish wait for [`Self::publish_resumed`].
    pub(super) fn resume(
        &mut self,
        dom: &Arc<DomainShared>,
        saved: &D::Saved,
    ) -> Result<(), String> {
        self.suspended = false;
        self.disconnect();
        match self.device.resume(dom, self.devid, saved) {
            Ok(nodes) => {
                tracing::info!(
                    devid = self.devid,
                    "{}: rings resumed from a saved state",
                    D::DRIVER
                );
                self.resumed_nodes = Some(nodes);
                Ok(())
            }
            Err(ConnectFailure::Refused(why)) => Err(why),
            Err(ConnectFailure::Store(e)) => Err(e.to_string()),
        }
    }

    /// [`Self::resume`] in a domain restored from `saved` (not the one that was
    /// saved): its frontend directory is written from `saved` too, at
    /// [`Self::publish_resumed`].
    pub(super) fn resume_restored(
        &mut self,
        dom: &Arc<DomainShared>,
        saved: &D::Saved,
    ) -> Result<(), String> {
        self.resume(dom, saved)?;
        self.restored_frontend = Some(saved.frontend_nodes());
        Ok(())
    }

    /// Publishes a resumed device's nodes and `state` = Connected (a restored
    /// device's frontend nodes first).
    pub(super) fn publish_resumed(&mut self, c: &mut Client) -> Result<(), ClientError> {
        if let (Some(front), Some(nodes)) = (&self.frontend, &self.restored_frontend) {
            for (key, value) in nodes {
                c.write(0, &format!("{front}/{key}"), value.as_bytes())?;
            }
            self.restored_frontend = None;
        }
        let Some(nodes) = self.resumed_nodes.take() else {
            return Ok(());
        };
        for (key, value) in &nodes {
            c.write(0, &format!("{}/{key}", self.backend), value.as_bytes())?;
        }
        self.published = nodes;
        if self.device.connected() {
            self.set_state(c, XenbusState::Connected)?;
        }
        Ok(())
    }

    /// Writes again what a connected device published and `state` = Connected.
    fn republish(&mut self, c: &mut Client) -> Result<(), ClientError> {
        for (key, value) in &self.published {
            c.write(0, &format!("{}/{key}", self.backend), value.as_bytes())?;
        }
        self.set_state(c, XenbusState::Connected)
    }

    /// The watch token of this device.
    pub(super) fn token(&self) -> String {
        self.devid.to_string()
    }

    pub(super) fn set_state(&mut self, c: &mut Client, s: XenbusState) -> Result<(), ClientError> {
        c.write(
            0,
            &format!("{}/state", self.backend),
            (s as u8).to_string().as_bytes(),
        )?;
        self.state = s;
        Ok(())
    }

    pub(super) fn disconnect(&mut self) {
        if self.device.connected() {
            self.device.disconnect(self.devid);
            tracing::info!(devid = self.devid, "{}: disconnected", D::DRIVER);
        }
    }

    /// Disconnects and writes backend `state` = Closed.
    pub(super) fn close(&mut self, c: &mut Client) -> Result<(), ClientError> {
        self.disconnect();
        self.set_state(c, XenbusState::Closed)
    }

    /// Reads `frontend` (which must be under the domain's home).
    fn read_frontend(&mut self, c: &mut Client, domid: u16) -> Result<(), ClientError> {
        let home = format!("/local/domain/{domid}/");
        self.frontend = match read_opt(c, &format!("{}/frontend", self.backend))? {
            Some(f) if f.starts_with(&home) && !f.contains("..") => Some(f),
            // A xenstored that lost its tree: the toolstack writes the nodes back,
            // the frontend's directory is still the one checked before.
            None if self.frontend.is_some() => {
                tracing::info!(backend = %self.backend, "{}: the backend's nodes are gone; watching the frontend checked before", D::DRIVER);
                self.frontend.take()
            }
            other => {
                tracing::warn!(backend = %self.backend, "{}: frontend {other:?} is not under {home}; device not served", D::DRIVER);
                None
            }
        };
        Ok(())
    }

    /// Writes a restored device's frontend nodes now (before the domain is reported
    /// running), rather than at the first announce.
    pub(super) fn write_restored_frontend(
        &mut self,
        c: &mut Client,
        domid: u16,
    ) -> Result<(), ClientError> {
        if self.restored_frontend.is_none() {
            return Ok(());
        }
        self.read_frontend(c, domid)?;
        if let (Some(front), Some(nodes)) = (&self.frontend, &self.restored_frontend) {
            for (key, value) in nodes {
                c.write(0, &format!("{front}/{key}"), value.as_bytes())?;
            }
            self.restored_frontend = None;
        }
        Ok(())
    }

    /// Reads `frontend`, publishes the features and enters InitWait (unless already
    /// further along, after a xenstored restart).
    pub(super) fn announce(&mut self, c: &mut Client, domid: u16) -> Result<(), ClientError> {
        self.read_frontend(c, domid)?;
        if self.frontend.is_none() {
            return Ok(());
        }
        for (key, value) in self.device.features() {
            c.write(0, &format!("{}/{key}", self.backend), value.as_bytes())?;
        }
        if self.device.connected()
            && self.state == XenbusState::Connected
            && self.resumed_nodes.is_none()
        {
            // A new session of a connected device: xenstored restarted, and may have
            // lost the frontend's nodes (the toolstack writes them back).
            self.reconnected = true;
            self.republish(c)?;
        }
        self.publish_resumed(c)?;
        if !self.device.connected() && self.state == XenbusState::Initialising {
            self.set_state(c, XenbusState::InitWait)?;
        }
        Ok(())
    }

    pub(super) fn frontend_changed(
        &mut self,
        c: &mut Client,
        dom: &Arc<DomainShared>,
    ) -> Result<(), ClientError> {
        if self.suspended {
            return Ok(());
        }
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
        tracing::debug!(devid = self.devid, frontend = ?fs, backend = ?self.state, "{}: frontend state", D::DRIVER);
        if self.reconnected && !self.removing && self.device.connected() {
            match fs {
                XenbusState::Unknown | XenbusState::Initialising | XenbusState::InitWait => {
                    tracing::info!(devid = self.devid, frontend = ?fs, "{}: connected before xenstored restarted; waiting for the frontend's nodes to be written back", D::DRIVER);
                    return Ok(());
                }
                XenbusState::Initialised | XenbusState::Connected => {
                    // Written back (or kept): the rings served are the frontend's.
                    self.reconnected = false;
                    tracing::info!(
                        devid = self.devid,
                        "{}: frontend still connected after xenstored restarted",
                        D::DRIVER
                    );
                    return self.republish(c);
                }
                _ => self.reconnected = false,
            }
        }
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
                if self.state == XenbusState::Connected && self.device.connected() {
                    return Ok(());
                }
                self.disconnect();
                match self.connect(c, dom, &front) {
                    Ok(()) => self.set_state(c, XenbusState::Connected)?,
                    Err(ConnectFailure::Store(e)) => return Err(e),
                    Err(ConnectFailure::Refused(why)) => {
                        tracing::warn!(
                            devid = self.devid,
                            "{}: cannot connect the frontend: {why}",
                            D::DRIVER
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
    ) -> Result<(), ConnectFailure> {
        let mut read = |key: &str| read_opt(c, &format!("{front}/{key}"));
        let nodes = self.device.connect(dom, self.devid, &mut read)?;
        for (key, value) in &nodes {
            c.write(0, &format!("{}/{key}", self.backend), value.as_bytes())?;
        }
        self.published = nodes;
        Ok(())
    }
}
