//! A connected vif: the frontend's TX and RX ring pages mapped (writable grants),
//! domain 0's end(s) of its event channel(s), and one thread that moves packets both
//! ways whenever the frontend notifies or the TAP has frames: TX packets to the TAP,
//! TAP frames into posted RX buffers, one notify per batch (per channel when split).
//! Dropping or [`stop`](Connection::stop)ping it joins the thread, closes the channel
//! ends and unmaps the rings; the TAP stays with the device.
//!
//! [`quiesce`](Connection::quiesce) (for a save) stops the thread after its last
//! pass (every TX request taken was answered then; RX buffers are taken only when a
//! frame fills them) and returns the rings' [`SavedVif`] parts;
//! [`Connection::resume`] carries on from them. Frames queued for RX are dropped.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::negotiate::{EventChannels, FrontendRings};
use super::ring::RingError;
use super::rx::{self, RxOffload, RxQueue, RxRing, MAX_FRAME};
use super::saved::RingIndices;
use super::tap::{FrameIo, Tap};
use super::tx::{self, TxRing};
use crate::domain::DomainShared;
use crate::evtchn::Dom0Port;
use crate::grant::DOM0;

/// How long the thread sleeps at most without an event (a safety net only).
const IDLE_POLL_MS: i32 = 200;

/// Why a vif could not be connected.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("mapping {which} {gref}: {source}")]
    Ring {
        which: &'static str,
        gref: u32,
        source: crate::grant::GrantError,
    },
    #[error("binding event channel {port}: errno {errno}")]
    EventChannel { port: u32, errno: i32 },
    #[error("starting the vif thread: {0}")]
    Thread(std::io::Error),
}

/// The rings' private indices `(tx, rx)` the thread leaves when it ends unbroken.
type Ended = Option<(RingIndices, RingIndices)>;

/// One connected vif.
pub struct Connection {
    dom: Arc<DomainShared>,
    rings: FrontendRings,
    ports: Vec<u32>,
    stop: Arc<AtomicBool>,
    wake: Arc<vmm_sys_util::eventfd::EventFd>,
    thread: Option<JoinHandle<Ended>>,
}

fn close_ports(dom: &DomainShared, ports: &[u32]) {
    let mut ev = dom.evtchn.lock().unwrap_or_else(|e| e.into_inner());
    for p in ports {
        let _ = ev.dom0_close(*p);
    }
}

impl Connection {
    /// The rings the frontend gave.
    pub fn frontend_rings(&self) -> &FrontendRings {
        &self.rings
    }

    /// Maps the rings, binds the guest's unbound port(s) and starts moving packets
    /// between them and `tap`.
    pub fn start(
        dom: Arc<DomainShared>,
        tap: Arc<Mutex<Tap>>,
        rings: &FrontendRings,
        name: String,
    ) -> Result<Self, ConnectError> {
        Self::start_at(dom, tap, rings, name, ((0, 0), (0, 0)))
    }

    /// Serves rings saved by [`Self::quiesce`] again, from their private indices
    /// `(tx, rx)` (checked by `SavedVif::check`).
    pub fn resume(
        dom: Arc<DomainShared>,
        tap: Arc<Mutex<Tap>>,
        rings: &FrontendRings,
        name: String,
        at: (RingIndices, RingIndices),
    ) -> Result<Self, ConnectError> {
        Self::start_at(dom, tap, rings, name, at)
    }

    fn start_at(
        dom: Arc<DomainShared>,
        tap: Arc<Mutex<Tap>>,
        rings: &FrontendRings,
        name: String,
        (tx_at, rx_at): (RingIndices, RingIndices),
    ) -> Result<Self, ConnectError> {
        let map = |which, gref| {
            dom.grants
                .map(DOM0, gref, false)
                .map_err(|source| ConnectError::Ring {
                    which,
                    gref,
                    source,
                })
        };
        let tx_page = map("tx-ring-ref", rings.tx_ring_ref)?;
        let rx_page = map("rx-ring-ref", rings.rx_ring_ref)?;
        let guest_ports = match rings.evtchn {
            EventChannels::Shared(p) => vec![p],
            EventChannels::Split { tx, rx } => vec![tx, rx],
        };
        let mut ends: Vec<Dom0Port> = Vec::new();
        for p in guest_ports {
            let bound = dom
                .evtchn
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .dom0_bind_interdomain(p);
            match bound {
                Ok(end) => ends.push(end),
                Err(errno) => {
                    let ports: Vec<u32> = ends.iter().map(|e| e.port).collect();
                    close_ports(&dom, &ports);
                    return Err(ConnectError::EventChannel { port: p, errno });
                }
            }
        }
        let ports: Vec<u32> = ends.iter().map(|e| e.port).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let wake = ends[0].notify.clone();
        let (t_dom, t_stop, t_ports) = (dom.clone(), stop.clone(), ports.clone());
        let rx_offload = rings.rx;
        {
            let tap = tap.lock().unwrap_or_else(|e| e.into_inner());
            // Partial checksums of the IP version a frontend cannot take are completed
            // here (rx.rs); unsegmented frames must match what it takes exactly.
            let csum = rx_offload.csum_v4 || rx_offload.csum_v6;
            let tso4 = rx_offload.gso(super::offload::IpVersion::V4);
            let tso6 = rx_offload.gso(super::offload::IpVersion::V6);
            if let Err(e) = tap.set_offload(csum, tso4, tso6) {
                // Without offloads the host finishes every frame: slower, still right.
                tracing::warn!("{name}: {e}; the host will checksum and segment every frame");
            }
        }
        let spawned = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let mut io = Io {
                    tx: TxRing::resumed(tx_page, tx_at.0, tx_at.1),
                    rx: RxRing::resumed(rx_page, rx_at.0, rx_at.1),
                    queue: RxQueue::default(),
                    rx_offload,
                    name: name.clone(),
                    tx_dropped: 0,
                };
                let notify = |port_index: usize| {
                    let port = t_ports[port_index.min(t_ports.len() - 1)];
                    let _ = t_dom
                        .evtchn
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .dom0_notify(port);
                };
                let mut fds: Vec<RawFd> = ends.iter().map(|e| e.notify.as_raw_fd()).collect();
                let tap_fd = tap.lock().unwrap_or_else(|e| e.into_inner()).as_raw_fd();
                fds.push(tap_fd);
                let mut buf = vec![0u8; MAX_FRAME];
                loop {
                    if t_stop.load(SeqCst) || t_dom.exit_reason().is_some() {
                        break;
                    }
                    for e in &ends {
                        let _ = e.notify.read();
                    }
                    // A panic on the guest's input (a bug: every value is checked) stops
                    // this vif with a log line instead of ending the thread silently.
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let mut tap = tap.lock().unwrap_or_else(|e| e.into_inner());
                        io.pass(&t_dom.grants, &mut *tap, &mut buf)
                    }));
                    let Ok(r) = r else {
                        tracing::error!("{name}: a pass over the rings panicked; vif stopped");
                        return None;
                    };
                    match r {
                        Ok((tx_notify, rx_notify)) => {
                            if t_ports.len() == 1 {
                                if tx_notify || rx_notify {
                                    notify(0);
                                }
                            } else {
                                if tx_notify {
                                    notify(0);
                                }
                                if rx_notify {
                                    notify(1);
                                }
                            }
                        }
                        Err(why) => {
                            tracing::warn!(
                                "{name}: the frontend broke a ring ({why}); vif stopped"
                            );
                            return None;
                        }
                    }
                    let watch_tap = io.queue.has_room();
                    wait(&fds, watch_tap);
                }
                Some((io.tx.indices(), io.rx.indices()))
            });
        match spawned {
            Ok(t) => Ok(Self {
                dom,
                rings: rings.clone(),
                ports,
                stop,
                wake,
                thread: Some(t),
            }),
            Err(e) => {
                close_ports(&dom, &ports);
                Err(ConnectError::Thread(e))
            }
        }
    }

    /// Stops moving packets, closes domain 0's channel ends and unmaps the rings.
    pub fn stop(&mut self) {
        let _ = self.end();
    }

    /// Stops for a save (see the module's description): returns the rings the
    /// frontend negotiated and their private indices `(tx, rx)`; `None` when the
    /// frontend had broken a ring.
    pub fn quiesce(mut self) -> Option<(FrontendRings, (RingIndices, RingIndices))> {
        let at = self.end()?;
        Some((self.rings.clone(), at))
    }

    fn end(&mut self) -> Ended {
        self.stop.store(true, SeqCst);
        let _ = self.wake.write(1);
        let t = self.thread.take()?;
        let ended = t.join().ok().flatten();
        close_ports(&self.dom, &self.ports);
        ended
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The two rings of a connected vif and the frames waiting for RX buffers.
pub struct Io {
    pub tx: TxRing,
    pub rx: RxRing,
    pub queue: RxQueue,
    pub rx_offload: RxOffload,
    pub name: String,
    /// TX packets dropped so far.
    pub tx_dropped: u64,
}

impl Io {
    /// One pass: every TX packet to `host`, host frames into the queue (while it has
    /// room), queued frames into RX buffers, `req_event` armed on TX. Returns whether
    /// the TX and the RX side need a notify.
    pub fn pass(
        &mut self,
        grants: &crate::grant::GrantTable,
        host: &mut dyn FrameIo,
        buf: &mut [u8],
    ) -> Result<(bool, bool), RingError> {
        let mut tx_notify = false;
        loop {
            let (stats, n) = tx::transmit(&mut self.tx, grants, host)?;
            tx_notify |= n;
            self.log_tx_drops(stats);
            // An unfinished chain stays on the ring: wake up for the request after it.
            let left = self.tx.unconsumed()?;
            if !self.tx.want_requests(left + 1)? {
                break;
            }
        }
        while self.queue.has_room() {
            match host.recv(buf) {
                Some((n, meta)) => self.queue.push(meta, buf[..n].to_vec()),
                None => break,
            }
        }
        let rx_notify = rx::deliver(
            &mut self.rx,
            grants,
            &mut self.queue,
            &self.rx_offload,
            &self.name,
        )?;
        Ok((tx_notify, rx_notify))
    }

    /// Logs dropped TX packets with a growing interval (the 1st, 2nd, 4th, 8th...), so
    /// that a lying frontend cannot flood the log.
    fn log_tx_drops(&mut self, stats: tx::TxStats) {
        let before = self.tx_dropped;
        self.tx_dropped += u64::from(stats.dropped);
        let crossed = (before + 1..=self.tx_dropped).any(u64::is_power_of_two);
        if let (true, Some(why)) = (crossed, stats.first_drop) {
            tracing::warn!(
                "{}: TX packet dropped: {why} ({} dropped so far)",
                self.name,
                self.tx_dropped
            );
        }
    }
}

/// Blocks until a channel end (or, with `watch_tap`, the TAP: the last fd) is
/// readable, or the idle timeout.
fn wait(fds: &[RawFd], watch_tap: bool) {
    let n = if watch_tap { fds.len() } else { fds.len() - 1 };
    let mut p: Vec<libc::pollfd> = fds[..n]
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: poll on descriptors owned by the caller, for a bounded time; the array
    // lives for the call.
    unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, IDLE_POLL_MS) };
}
