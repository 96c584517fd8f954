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
//! protocol (inconsistent indices, a message over `XENSTORE_PAYLOAD_MAX`) gets
//! `XENSTORE_ERROR_RINGIDX` / `XENSTORE_ERROR_PROTO` in the page and its relay stops;
//! the VMM and xenstored carry on.
//!
//! xenstored may die and come back (the toolstack restarts it and introduces the
//! domain again; xenstored restores the store and watches itself). The relay then
//! reconnects, and keeps the guest's byte streams whole: it forwards only complete
//! requests ([`framing`]), so a request the guest had half-written stays queued and is
//! sent whole on the new connection, as are requests not yet fully written to the old
//! one (xenstored never saw them complete). A response half-received from the old
//! connection is dropped, and each request xenstored received but never answered is
//! answered by the relay with `XS_ERROR "EIO"` (it may or may not have been carried
//! out), so the guest's client never waits forever. Nothing is re-registered: watches
//! and the domain's introduction are xenstored's and the toolstack's business.

pub mod framing;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::Duration;

use rxen_abi::ring::*;

use crate::domain::DomainShared;
use framing::{error_reply, Framer, Header, XS_WATCH_EVENT};

const RING: u32 = XENSTORE_RING_SIZE as u32;
/// Bytes queued in either direction before the relay stops taking more.
const QUEUE_LIMIT: usize = 65536;
/// Requests sent to xenstored and not answered yet, at most.
const MAX_IN_FLIGHT: usize = 1024;

/// First delay between connection attempts; it doubles up to [`CONNECT_RETRY_MAX`].
const CONNECT_RETRY: Duration = Duration::from_millis(2);
const CONNECT_RETRY_MAX: Duration = Duration::from_millis(100);

/// Why one connection's relaying ended.
enum Stop {
    /// The domain ended.
    DomainEnded,
    /// The guest broke the ring protocol: the relay stops for good.
    Guest(String),
    /// The connection to xenstored was lost: reconnect.
    Store(String),
}

/// What the relay keeps across connections to xenstored.
#[derive(Default)]
struct Streams {
    /// Guest bytes of a request not yet complete.
    requests: Framer,
    /// Complete requests not yet fully written to xenstored; `written` bytes of the
    /// first one are written to the current connection.
    unsent: VecDeque<(Header, Vec<u8>)>,
    written: usize,
    /// Requests xenstored received whole and has not answered yet.
    in_flight: VecDeque<Header>,
    /// xenstored bytes of a response not yet complete (of the current connection).
    responses: Framer,
    /// Complete messages for the guest's response ring.
    to_guest: Vec<u8>,
}

impl Streams {
    fn unsent_bytes(&self) -> usize {
        self.unsent.iter().map(|(_, m)| m.len()).sum::<usize>() + self.requests.pending()
    }

    /// The connection to xenstored is gone: forget its half-received response, answer
    /// what it received and never answered, and resend from the start what it never
    /// received whole.
    fn connection_lost(&mut self) {
        self.responses.clear();
        for h in self.in_flight.drain(..) {
            self.to_guest.extend(error_reply(&h, "EIO"));
        }
        self.written = 0;
    }
}

/// Tries to connect to `socket` until it works, delivering queued responses to the
/// guest meanwhile; `None` if the domain ends first.
fn connect(
    dom: &DomainShared,
    socket: &Path,
    rings: &Rings,
    streams: &mut Streams,
) -> Result<Option<UnixStream>, Stop> {
    let mut delay = CONNECT_RETRY;
    let mut logged = false;
    loop {
        if dom.exit_reason().is_some() {
            return Ok(None);
        }
        if rings.give_guest_responses(dom, streams)? {
            rings.notify(dom);
        }
        match UnixStream::connect(socket) {
            Ok(s) => return Ok(Some(s)),
            Err(e) => {
                if !logged {
                    tracing::debug!(socket = %socket.display(), "waiting for xenstored's domain socket: {e}");
                    logged = true;
                }
                std::thread::sleep(delay);
                delay = (delay * 2).min(CONNECT_RETRY_MAX);
            }
        }
    }
}

/// Starts the relay thread for `dom`, connected to xenstored's domain socket `socket`
/// as soon as it exists, and again whenever it reappears after a loss.
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
            let rings = Rings { endpoint };
            let mut streams = Streams::default();
            let stop = loop {
                let stream = match connect(&dom, &socket, &rings, &mut streams) {
                    Ok(Some(s)) => s,
                    Ok(None) => break Stop::DomainEnded,
                    Err(stop) => break stop,
                };
                match rings.relay(&dom, stream, &mut streams) {
                    Stop::Store(why) => {
                        tracing::warn!(domain = %dom.config.name, "xenstored connection lost ({why}); reconnecting");
                        streams.connection_lost();
                    }
                    stop => break stop,
                }
            };
            if let Stop::Guest(why) = stop {
                tracing::warn!(domain = %dom.config.name, "xenstore relay stopped: {why}");
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

/// Guest-physical address of the xenstore ring page (`start_info.store_mfn`).
fn store_page(dom: &DomainShared) -> u64 {
    dom.boot.report.store_mfn * rxen_abi::PAGE_SIZE
}

fn idx(dom: &DomainShared, off: u64) -> Result<&std::sync::atomic::AtomicU32, Stop> {
    dom.ram
        .atomic_u32(store_page(dom) + off)
        .map_err(|e| Stop::Guest(e.to_string()))
}

/// The guest's side: its ring page and the event channel to it.
struct Rings {
    endpoint: crate::evtchn::Dom0Port,
}

impl Rings {
    fn notify(&self, dom: &DomainShared) {
        let _ = dom
            .evtchn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .dom0_notify(self.endpoint.port);
    }

    /// Marks the ring broken with `code` and stops.
    fn fail(&self, dom: &DomainShared, code: u32, why: &str) -> Stop {
        if let Ok(e) = idx(dom, XS_ERROR) {
            e.store(code, SeqCst);
        }
        self.notify(dom);
        Stop::Guest(why.to_string())
    }

    /// Moves the guest's new request bytes into `streams`; true if any.
    fn take_guest_requests(&self, dom: &DomainShared, streams: &mut Streams) -> Result<bool, Stop> {
        let (req_cons, req_prod) = (idx(dom, XS_REQ_CONS)?, idx(dom, XS_REQ_PROD)?);
        let (cons, prod) = (req_cons.load(SeqCst), req_prod.load(SeqCst));
        let avail = prod.wrapping_sub(cons);
        if avail > RING {
            return Err(self.fail(
                dom,
                XENSTORE_ERROR_RINGIDX,
                "guest request ring indices are inconsistent",
            ));
        }
        if avail == 0 || streams.unsent_bytes() >= QUEUE_LIMIT {
            return Ok(false);
        }
        let mut bytes = vec![0u8; avail as usize];
        for (off, range) in ring_spans(cons, avail) {
            dom.ram
                .read(store_page(dom) + off, &mut bytes[range])
                .map_err(|e| Stop::Guest(e.to_string()))?;
        }
        req_cons.store(prod, SeqCst);
        streams.requests.push(&bytes);
        loop {
            match streams.requests.next_message() {
                Ok(Some(m)) => streams.unsent.push_back(m),
                Ok(None) => return Ok(true),
                Err(e) => {
                    return Err(self.fail(
                        dom,
                        XENSTORE_ERROR_PROTO,
                        &format!("guest request: {e}"),
                    ))
                }
            }
        }
    }

    /// Copies queued response bytes into the guest's response ring; true if any.
    fn give_guest_responses(
        &self,
        dom: &DomainShared,
        streams: &mut Streams,
    ) -> Result<bool, Stop> {
        if streams.to_guest.is_empty() {
            return Ok(false);
        }
        let (rsp_cons, rsp_prod) = (idx(dom, XS_RSP_CONS)?, idx(dom, XS_RSP_PROD)?);
        let (cons, prod) = (rsp_cons.load(SeqCst), rsp_prod.load(SeqCst));
        let used = prod.wrapping_sub(cons);
        if used > RING {
            return Err(self.fail(
                dom,
                XENSTORE_ERROR_RINGIDX,
                "guest response ring indices are inconsistent",
            ));
        }
        let n = ((RING - used) as usize).min(streams.to_guest.len());
        if n == 0 {
            return Ok(false);
        }
        let rsp_base = store_page(dom) + XENSTORE_RING_SIZE as u64;
        for (off, range) in ring_spans(prod, n as u32) {
            dom.ram
                .write(rsp_base + off, &streams.to_guest[range])
                .map_err(|e| Stop::Guest(e.to_string()))?;
        }
        streams.to_guest.drain(..n);
        std::sync::atomic::fence(SeqCst);
        rsp_prod.store(prod.wrapping_add(n as u32), SeqCst);
        Ok(true)
    }

    /// Writes queued whole requests to xenstored; true if any byte went.
    fn give_store_requests(
        &self,
        stream: &mut UnixStream,
        streams: &mut Streams,
    ) -> Result<bool, Stop> {
        let mut progressed = false;
        while streams.in_flight.len() < MAX_IN_FLIGHT {
            let Some((h, msg)) = streams.unsent.front() else {
                break;
            };
            match stream.write(&msg[streams.written..]) {
                Ok(n) => {
                    progressed |= n > 0;
                    streams.written += n;
                    if streams.written == msg.len() {
                        streams.in_flight.push_back(*h);
                        streams.unsent.pop_front();
                        streams.written = 0;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(Stop::Store(e.to_string())),
            }
        }
        Ok(progressed)
    }

    /// Reads what xenstored sent and queues its whole messages for the guest.
    fn take_store_messages(
        &self,
        stream: &mut UnixStream,
        streams: &mut Streams,
        buf: &mut [u8],
    ) -> Result<bool, Stop> {
        if streams.to_guest.len() >= QUEUE_LIMIT {
            return Ok(false);
        }
        let n = match stream.read(buf) {
            Ok(0) => return Err(Stop::Store("xenstored closed the connection".into())),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(Stop::Store(e.to_string())),
        };
        streams.responses.push(&buf[..n]);
        loop {
            match streams.responses.next_message() {
                Ok(Some((h, msg))) => {
                    if h.kind != XS_WATCH_EVENT {
                        streams.in_flight.pop_front();
                    }
                    streams.to_guest.extend(msg);
                }
                Ok(None) => return Ok(true),
                Err(e) => return Err(Stop::Store(format!("xenstored sent {e}"))),
            }
        }
    }

    /// Relays between the ring and one connection until it is lost or the domain ends.
    fn relay(&self, dom: &DomainShared, mut stream: UnixStream, streams: &mut Streams) -> Stop {
        if let Err(e) = stream.set_nonblocking(true) {
            return Stop::Store(e.to_string());
        }
        let mut buf = vec![0u8; 4096];
        loop {
            if dom.exit_reason().is_some() {
                return Stop::DomainEnded;
            }
            let step = (|| -> Result<bool, Stop> {
                let a = self.take_guest_requests(dom, streams)?;
                let b = self.give_store_requests(&mut stream, streams)?;
                let c = self.take_store_messages(&mut stream, streams, &mut buf)?;
                let d = self.give_guest_responses(dom, streams)?;
                Ok(a || b || c || d)
            })();
            match step {
                Err(stop) => return stop,
                Ok(true) => {
                    self.notify(dom);
                    continue;
                }
                Ok(false) => {}
            }
            // Sleep until the guest notifies or xenstored sends something.
            let mut fds = [
                libc::pollfd {
                    fd: self.endpoint.notify.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: stream.as_raw_fd(),
                    events: (if streams.to_guest.len() < QUEUE_LIMIT {
                        libc::POLLIN
                    } else {
                        0
                    }) | (if !streams.unsent.is_empty()
                        && streams.in_flight.len() < MAX_IN_FLIGHT
                    {
                        libc::POLLOUT
                    } else {
                        0
                    }),
                    revents: 0,
                },
            ];
            // SAFETY: poll on two valid descriptors owned by this thread for 200 ms at most.
            unsafe { libc::poll(fds.as_mut_ptr(), 2, 200) };
            let _ = self.endpoint.notify.read();
        }
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
