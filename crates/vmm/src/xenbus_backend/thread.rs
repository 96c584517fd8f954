//! The xenbus thread's loop: one session per connection to xenstored (announce,
//! watch, react to watch events and the toolstack's commands), reconnecting with a
//! growing delay when xenstored goes away.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;

use rxen_abi::xenbus::XenbusState;
use rxen_xenstore::client::{Client, ClientError};

use super::device::Slot;
use super::{BackendDevice, Command, DeviceError};
use crate::domain::DomainShared;

/// Longest wait for a xenstored reply.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the thread looks at the stop flag and its commands while no watch fires.
const EVENT_POLL: Duration = Duration::from_millis(50);
/// Longest delay between reconnection attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(1);

fn stopping(dom: &DomainShared, stop: &AtomicBool) -> bool {
    stop.load(SeqCst) || dom.exit_reason().is_some()
}

pub(super) fn run<D: BackendDevice>(
    dom: &Arc<DomainShared>,
    socket: &Path,
    slots: &mut Vec<Slot<D>>,
    commands: &Receiver<Command<D>>,
    stop: &AtomicBool,
) {
    let mut delay = Duration::from_millis(10);
    let mut logged = false;
    while !stopping(dom, stop) {
        match session(dom, socket, slots, commands, stop) {
            Ok(()) => return,
            Err(e) => {
                if !logged {
                    tracing::warn!(socket = %socket.display(), "{}: xenstore connection: {e}; retrying", D::DRIVER);
                    logged = true;
                }
                // Commands are still taken while xenstored is away: an attached
                // device is announced at the next connection.
                while let Ok(cmd) = commands.try_recv() {
                    let _ = apply(cmd, dom, slots, None);
                }
                std::thread::sleep(delay);
                delay = (delay * 2).min(RECONNECT_MAX);
            }
        }
    }
}

/// Writes the frontend nodes of the restored devices among `slots` over a
/// connection of its own (see `Slot::write_restored_frontend`).
pub(super) fn write_restored_frontends<D: BackendDevice>(
    dom: &DomainShared,
    socket: &Path,
    slots: &mut [Slot<D>],
) -> Result<(), ClientError> {
    let mut c = Client::connect(socket)?;
    c.set_timeout(Some(REQUEST_TIMEOUT))?;
    for s in slots {
        s.write_restored_frontend(&mut c, dom.config.domid)?;
    }
    Ok(())
}

/// Carries out one command; `c` is the xenstore connection when there is one. A
/// failure of xenstore is returned after the command was answered.
fn apply<D: BackendDevice>(
    cmd: Command<D>,
    dom: &Arc<DomainShared>,
    slots: &mut Vec<Slot<D>>,
    c: Option<&mut Client>,
) -> Result<(), ClientError> {
    let domid = dom.config.domid;
    match cmd {
        Command::Attach {
            devid,
            device,
            done,
        } => {
            if slots.iter().any(|v| v.devid == devid) {
                let _ = done.send(Err(DeviceError::InUse(devid)));
                return Ok(());
            }
            tracing::info!(devid, device = %device.describe(), "{}: device attached", D::DRIVER);
            slots.push(Slot::new(domid, devid, device));
            let result = match (c, slots.last_mut()) {
                (Some(c), Some(v)) => announce_and_watch(c, v, domid),
                _ => Ok(()),
            };
            let _ = done.send(Ok(()));
            result
        }
        Command::Quiesce { done } => {
            let mut saved = Vec::new();
            for s in slots.iter_mut().filter(|s| !s.removing) {
                s.suspended = true;
                if let Some(state) = s.device.quiesce(s.devid) {
                    saved.push((s.devid, state));
                }
            }
            tracing::info!(devices = saved.len(), "{}: quiesced for a save", D::DRIVER);
            let _ = done.send(saved);
            Ok(())
        }
        Command::Frontends { done } => {
            let connected = slots
                .iter()
                .filter(|s| !s.removing)
                .filter_map(|s| Some((s.devid, s.device.frontend()?)))
                .collect();
            let _ = done.send(connected);
            Ok(())
        }
        Command::Resume { saved, done } => {
            let mut result = Ok(());
            for (devid, state) in &saved {
                let r = match slots.iter_mut().find(|s| s.devid == *devid) {
                    None => Err(DeviceError::NoSuchDevice(*devid)),
                    Some(s) => s
                        .resume(dom, state)
                        .map_err(|why| DeviceError::Resume { devid: *devid, why }),
                };
                if let Err(e) = r {
                    tracing::warn!("{}: {e}", D::DRIVER);
                    result = Err(e);
                }
            }
            for s in slots.iter_mut() {
                s.suspended = false;
            }
            let _ = done.send(result);
            if let Some(c) = c {
                for s in slots.iter_mut() {
                    s.publish_resumed(c)?;
                    s.frontend_changed(c, dom)?;
                }
            }
            Ok(())
        }
        Command::Detach { devid, force, done } => {
            let Some(i) = slots.iter().position(|v| v.devid == devid) else {
                let _ = done.send(Err(DeviceError::NoSuchDevice(devid)));
                return Ok(());
            };
            tracing::info!(devid, force, "{}: detaching", D::DRIVER);
            slots[i].removing = true;
            // The answer goes once the backend's nodes say what happened (Closing, or
            // Closed when forced): the toolstack removes the nodes after it, and a
            // later write here would bring them back.
            let result = match c {
                Some(c) => detach(c, dom, slots, i, force),
                None => {
                    // Without xenstore nothing can be said to the frontend.
                    let mut v = slots.remove(i);
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
fn detach<D: BackendDevice>(
    c: &mut Client,
    dom: &Arc<DomainShared>,
    slots: &mut Vec<Slot<D>>,
    i: usize,
    force: bool,
) -> Result<(), ClientError> {
    if force {
        slots[i].close(c)?;
    } else {
        slots[i].set_state(c, XenbusState::Closing)?;
        // The frontend's answer (or its current state, if it never connected or
        // already closed) decides what follows.
        slots[i].frontend_changed(c, dom)?;
    }
    if slots[i].state == XenbusState::Closed {
        forget(c, slots, i);
    }
    Ok(())
}

/// Announces a new device and watches its frontend.
fn announce_and_watch<D: BackendDevice>(
    c: &mut Client,
    v: &mut Slot<D>,
    domid: u16,
) -> Result<(), ClientError> {
    v.announce(c, domid)?;
    if let Some(f) = &v.frontend {
        c.watch(&format!("{f}/state"), &v.token())?;
    }
    Ok(())
}

/// Drops device `i` (closed): its watch goes, the device is dropped (its disk or TAP
/// closed).
fn forget<D: BackendDevice>(c: &mut Client, slots: &mut Vec<Slot<D>>, i: usize) {
    let mut v = slots.remove(i);
    v.disconnect();
    if let Some(f) = &v.frontend {
        let _ = c.unwatch(&format!("{f}/state"), &v.token());
    }
    tracing::info!(devid = v.devid, "{}: device detached", D::DRIVER);
}

/// One connection to xenstored: announce, watch, react until stopped or the
/// connection fails.
fn session<D: BackendDevice>(
    dom: &Arc<DomainShared>,
    socket: &Path,
    slots: &mut Vec<Slot<D>>,
    commands: &Receiver<Command<D>>,
    stop: &AtomicBool,
) -> Result<(), ClientError> {
    let mut c = Client::connect(socket)?;
    c.set_timeout(Some(REQUEST_TIMEOUT))?;
    let domid = dom.config.domid;
    for v in slots.iter_mut() {
        announce_and_watch(&mut c, v, domid)?;
    }
    loop {
        if stopping(dom, stop) {
            return Ok(());
        }
        while let Ok(cmd) = commands.try_recv() {
            apply(cmd, dom, slots, Some(&mut c))?;
        }
        c.set_timeout(Some(EVENT_POLL))?;
        let event = c.next_event();
        c.set_timeout(Some(REQUEST_TIMEOUT))?;
        match event {
            Ok((_path, token)) => {
                if let Some(i) = slots.iter().position(|v| v.token() == token) {
                    slots[i].frontend_changed(&mut c, dom)?;
                    if slots[i].removing && slots[i].state == XenbusState::Closed {
                        forget(&mut c, slots, i);
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
