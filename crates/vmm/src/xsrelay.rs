//! Connects the guest's xenstore ring (the page and event channel named in
//! `start_info`) to xenstored as that domain: bytes the guest produces in the request
//! ring go to the domain's xenstored socket, and what xenstored sends comes back
//! through the response ring. xenstored parses the messages; this relay only moves
//! bytes, so it needs no knowledge of the protocol.
//!
//! The toolstack introduces the domain to xenstored only after the VMM reported where
//! the builder put the ring (the boot report of the control protocol), so xenstored's
//! domain socket may not exist yet when the relay starts: the relay connects when it
//! appears, and the guest's requests wait in the ring until then.
//!
//! Ring indices come from guest memory and are hostile: each is read once, checked
//! (`prod - cons` never exceeds the ring size), then used. A guest that breaks the
//! protocol gets `XENSTORE_ERROR_RINGIDX` in the page and its relay stops; the VMM
//! and xenstored carry on.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;

use rxen_abi::layout::XENSTORE_PAGE;
use rxen_abi::ring::*;

use crate::domain::DomainShared;

const RING: u32 = XENSTORE_RING_SIZE as u32;

/// How often the relay retries connecting to a domain socket that is not there yet.
const CONNECT_RETRY: std::time::Duration = std::time::Duration::from_millis(2);

/// Connects to `socket` once it exists; `None` if the domain ends first.
fn connect_when_introduced(dom: &DomainShared, socket: &Path) -> Option<UnixStream> {
    let mut logged = false;
    loop {
        if dom.exit_reason().is_some() {
            return None;
        }
        match UnixStream::connect(socket) {
            Ok(s) => return Some(s),
            Err(e) => {
                if !logged {
                    tracing::debug!(socket = %socket.display(), "waiting for xenstored's domain socket: {e}");
                    logged = true;
                }
                std::thread::sleep(CONNECT_RETRY);
            }
        }
    }
}

/// Starts the relay thread for `dom`, connected to xenstored's domain socket `socket`
/// as soon as it exists.
pub fn start(dom: Arc<DomainShared>, socket: &Path) -> Result<std::thread::JoinHandle<()>, String> {
    let socket = socket.to_path_buf();
    let store_port = dom.boot_channels.store_evtchn;
    let endpoint = dom
        .evtchn
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .dom0_bind_interdomain(store_port)
        .map_err(|e| format!("binding the xenstore event channel: {e}"))?;
    std::thread::Builder::new()
        .name(format!("{}-xenstore", dom.config.name))
        .spawn(move || {
            let Some(stream) = connect_when_introduced(&dom, &socket) else {
                return;
            };
            if let Err(e) = relay(&dom, stream, &endpoint) {
                tracing::warn!(domain = %dom.config.name, "xenstore relay stopped: {e}");
            }
        })
        .map_err(|e| format!("starting the xenstore relay: {e}"))
}

/// The (ring offset, byte range) pieces of `len` bytes starting at free-running index
/// `start`: one piece, or two when they wrap around the end of the ring.
fn ring_spans(start: u32, len: u32) -> Vec<(u64, std::ops::Range<usize>)> {
    let first = start % RING;
    let head = len.min(RING - first);
    let mut out = vec![(first as u64, 0..head as usize)];
    if head < len {
        out.push((0, head as usize..len as usize));
    }
    out
}

fn idx(dom: &DomainShared, off: u64) -> Result<&std::sync::atomic::AtomicU32, String> {
    dom.ram
        .atomic_u32(XENSTORE_PAGE + off)
        .map_err(|e| e.to_string())
}

fn relay(
    dom: &DomainShared,
    mut stream: UnixStream,
    endpoint: &crate::evtchn::Dom0Port,
) -> Result<(), String> {
    stream.set_nonblocking(true).map_err(|e| e.to_string())?;
    let (req_cons, req_prod) = (idx(dom, XS_REQ_CONS)?, idx(dom, XS_REQ_PROD)?);
    let (rsp_cons, rsp_prod) = (idx(dom, XS_RSP_CONS)?, idx(dom, XS_RSP_PROD)?);
    let notify = || {
        let _ = dom
            .evtchn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .dom0_notify(endpoint.port);
    };
    let fail = |why: &str| -> Result<(), String> {
        if let Ok(e) = idx(dom, XS_ERROR) {
            e.store(XENSTORE_ERROR_RINGIDX, SeqCst);
        }
        notify();
        Err(why.to_string())
    };
    let mut to_guest: Vec<u8> = Vec::new();
    let mut to_store: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        if dom.exit_reason().is_some() {
            return Ok(());
        }
        // Guest -> xenstored.
        let (cons, prod) = (req_cons.load(SeqCst), req_prod.load(SeqCst));
        let avail = prod.wrapping_sub(cons);
        if avail > RING {
            return fail("guest request ring indices are inconsistent");
        }
        let mut progressed = false;
        if avail > 0 && to_store.len() < 65536 {
            let mut bytes = vec![0u8; avail as usize];
            for (off, range) in ring_spans(cons, avail) {
                dom.ram
                    .read(XENSTORE_PAGE + off, &mut bytes[range])
                    .map_err(|e| e.to_string())?;
            }
            to_store.extend_from_slice(&bytes);
            req_cons.store(prod, SeqCst);
            progressed = true;
        }
        if !to_store.is_empty() {
            match stream.write(&to_store) {
                Ok(n) => {
                    to_store.drain(..n);
                    progressed = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("xenstored connection: {e}")),
            }
        }
        // xenstored -> guest.
        if to_guest.len() < 65536 {
            match stream.read(&mut buf) {
                Ok(0) => return Err("xenstored closed the connection".into()),
                Ok(n) => {
                    to_guest.extend_from_slice(&buf[..n]);
                    progressed = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("xenstored connection: {e}")),
            }
        }
        if !to_guest.is_empty() {
            let (cons, prod) = (rsp_cons.load(SeqCst), rsp_prod.load(SeqCst));
            let used = prod.wrapping_sub(cons);
            if used > RING {
                return fail("guest response ring indices are inconsistent");
            }
            let room = (RING - used) as usize;
            let n = room.min(to_guest.len());
            let rsp_base = XENSTORE_PAGE + XENSTORE_RING_SIZE as u64;
            for (off, range) in ring_spans(prod, n as u32) {
                dom.ram
                    .write(rsp_base + off, &to_guest[range])
                    .map_err(|e| e.to_string())?;
            }
            to_guest.drain(..n);
            if n > 0 {
                std::sync::atomic::fence(SeqCst);
                rsp_prod.store(prod.wrapping_add(n as u32), SeqCst);
                progressed = true;
            }
        }
        if progressed {
            notify();
            continue;
        }
        // Sleep until the guest notifies or xenstored sends something.
        let mut fds = [
            libc::pollfd {
                fd: endpoint.notify.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stream.as_raw_fd(),
                events: if to_guest.len() < 65536 {
                    libc::POLLIN
                } else {
                    0
                },
                revents: 0,
            },
        ];
        // SAFETY: poll on two valid descriptors owned by this thread for 200 ms at most.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, 200) };
        let _ = endpoint.notify.read();
    }
}

#[cfg(test)]
mod tests {
    use super::ring_spans;

    #[test]
    fn spans_wrap_once() {
        assert_eq!(ring_spans(10, 5), vec![(10, 0..5)]);
        assert_eq!(ring_spans(1020, 10), vec![(1020, 0..4), (0, 4..10)]);
        assert_eq!(ring_spans(u32::MAX, 2), vec![(1023, 0..1), (0, 1..2)]);
        assert_eq!(ring_spans(2048, 1024), vec![(0, 0..1024)]);
    }
}
