//! A connected ring: the frontend's ring pages mapped (writable grants), domain 0's end
//! of its event channel, a thread that takes requests whenever the frontend notifies,
//! and the ring's I/O workers ([`super::pool`]). The ring thread prepares each request
//! ([`super::dispatch`]), hands it to the workers and goes on taking more (up to a
//! ring's worth in flight); whenever workers finish, it publishes every response
//! finished by then and notifies once for the batch. Dropping or
//! [`stop`](Connection::stop)ping it joins the threads, closes the event channel end and
//! unmaps the pages (the frontend may then end its grants).
//!
//! [`quiesce`](Connection::quiesce) (for a save) stops taking requests, waits until
//! every request taken is answered and its response published, then stops like
//! `stop` and returns the ring's [`SavedRing`]; [`Connection::resume`] serves a saved
//! ring again from its private indices, so the frontend does not notice.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::disk::Disk;
use super::dispatch::Dispatcher;
use super::io::Store;
use super::negotiate::FrontendRing;
use super::pool::{Pool, WORKERS};
use super::request::{Limits, MAX_INDIRECT_SEGMENTS};
use super::ring::{BackRing, RingError};
use super::saved::SavedRing;
use crate::domain::DomainShared;
use crate::grant::DOM0;

/// How long a ring thread sleeps at most without a notify (a safety net only).
const IDLE_POLL_MS: i32 = 200;
/// Longest wait for the requests in flight to finish when quiescing for a save.
const DRAIN_DEADLINE: Duration = Duration::from_secs(15);

/// What the ring thread leaves when it ends after a quiesce: the private indices and
/// the persistent grants it had mapped.
type Quiesced = Option<(u32, u32, Vec<u32>)>;

/// Why a ring could not be connected.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("mapping ring-ref {gref}: {source}")]
    Ring {
        gref: u32,
        source: crate::grant::GrantError,
    },
    #[error("binding event-channel {port}: errno {errno}")]
    EventChannel { port: u32, errno: i32 },
    #[error("starting the ring threads: {0}")]
    Thread(std::io::Error),
}

/// One connected vbd ring.
pub struct Connection {
    dom: Arc<DomainShared>,
    ring: FrontendRing,
    dom0_port: u32,
    stop: Arc<AtomicBool>,
    /// Set with `stop` by a quiesce: answer what is in flight before ending.
    drain: Arc<AtomicBool>,
    wake: Arc<vmm_sys_util::eventfd::EventFd>,
    thread: Option<JoinHandle<Quiesced>>,
}

/// The features offered for `disk` (see [`super::negotiate::backend_features`]).
pub fn limits_of(disk: &Disk) -> Limits {
    Limits {
        disk_sectors: disk.sectors(),
        writable: disk.writable(),
        max_indirect_segments: MAX_INDIRECT_SEGMENTS,
        discard: disk.writable(),
    }
}

impl Connection {
    /// Maps the ring pages, binds the guest's unbound port and starts serving.
    pub fn start(
        dom: Arc<DomainShared>,
        disk: Arc<Disk>,
        ring: &FrontendRing,
        name: String,
    ) -> Result<Self, ConnectError> {
        Self::start_at(dom, disk, ring, name, (0, 0))
    }

    /// Serves a ring saved by [`Self::quiesce`] again: maps its pages, binds its port
    /// (unbound for domain 0 after a quiesce or a restore) and carries on from its
    /// private indices (its contents were checked by `SavedVbd::check`).
    pub fn resume(
        dom: Arc<DomainShared>,
        disk: Arc<Disk>,
        saved: &SavedRing,
        name: String,
    ) -> Result<Self, ConnectError> {
        let ring = FrontendRing {
            ring_refs: saved.ring_refs.clone(),
            evtchn: saved.evtchn,
            persistent: saved.persistent,
        };
        Self::start_at(dom, disk, &ring, name, (saved.req_cons, saved.rsp_prod_pvt))
    }

    fn start_at(
        dom: Arc<DomainShared>,
        disk: Arc<Disk>,
        ring: &FrontendRing,
        name: String,
        (req_cons, rsp_prod_pvt): (u32, u32),
    ) -> Result<Self, ConnectError> {
        let mut pages = Vec::with_capacity(ring.ring_refs.len());
        for gref in &ring.ring_refs {
            let page = dom
                .grants
                .map(DOM0, *gref, false)
                .map_err(|source| ConnectError::Ring {
                    gref: *gref,
                    source,
                })?;
            pages.push(page);
        }
        let endpoint = dom
            .evtchn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .dom0_bind_interdomain(ring.evtchn)
            .map_err(|errno| ConnectError::EventChannel {
                port: ring.evtchn,
                errno,
            })?;
        let dom0_port = endpoint.port;
        let close = |dom: &DomainShared| {
            let _ = dom
                .evtchn
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .dom0_close(dom0_port);
        };
        let store = Arc::new(Store::new(disk.clone(), disk.direct_io()));
        let pool = match Pool::new(&name, WORKERS, store, dom.grants.clone()) {
            Ok(p) => p,
            Err(e) => {
                close(&dom);
                return Err(ConnectError::Thread(e));
            }
        };
        let mut dispatcher = Dispatcher::new(limits_of(&disk), dom.grants.clone(), ring.persistent);
        let stop = Arc::new(AtomicBool::new(false));
        let drain = Arc::new(AtomicBool::new(false));
        let wake = endpoint.notify.clone();
        let (t_dom, t_stop, t_drain) = (dom.clone(), stop.clone(), drain.clone());
        let spawned = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let mut ring = BackRing::resumed(pages, req_cons, rsp_prod_pvt);
                let port = endpoint.port;
                let mut notify = || {
                    let _ = t_dom
                        .evtchn
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .dom0_notify(port);
                };
                let fds = [endpoint.notify.as_raw_fd(), pool.wake_fd()];
                let r = serve(&mut ring, &mut dispatcher, &pool, &mut notify, || {
                    if t_stop.load(SeqCst) || t_dom.exit_reason().is_some() {
                        return false;
                    }
                    wait(&fds);
                    let _ = endpoint.notify.read();
                    true
                });
                let mut quiesced = None;
                match r {
                    Err(why) => {
                        tracing::warn!("{name}: the frontend broke the ring ({why}); ring stopped")
                    }
                    Ok(()) if t_drain.load(SeqCst) => {
                        match drain_in_flight(&mut ring, &pool, &mut notify) {
                            Ok(()) => {
                                let (req_cons, rsp_prod_pvt) = ring.indices();
                                quiesced =
                                    Some((req_cons, rsp_prod_pvt, dispatcher.persistent_refs()));
                            }
                            Err(why) => tracing::warn!("{name}: not quiesced: {why}"),
                        }
                    }
                    Ok(()) => {}
                }
                // Dropping the pool lets queued jobs finish before the pages go.
                drop(pool);
                quiesced
            });
        let thread = match spawned {
            Ok(t) => t,
            Err(e) => {
                close(&dom);
                return Err(ConnectError::Thread(e));
            }
        };
        Ok(Self {
            dom,
            ring: ring.clone(),
            dom0_port,
            stop,
            drain,
            wake,
            thread: Some(thread),
        })
    }

    /// The ring the frontend gave (its pages, port, persistent grants).
    pub fn frontend_ring(&self) -> &FrontendRing {
        &self.ring
    }

    /// Stops serving, closes domain 0's end of the channel and unmaps the ring.
    pub fn stop(&mut self) {
        let _ = self.end();
    }

    /// Quiesces the ring for a save (see the module's description): every request
    /// taken is answered, then the ring is stopped and unmapped and domain 0's end of
    /// the channel closed (the guest's port is unbound for domain 0 again). `None`
    /// when the ring had broken or its requests did not finish in time.
    pub fn quiesce(mut self) -> Option<SavedRing> {
        self.drain.store(true, SeqCst);
        let (req_cons, rsp_prod_pvt, persistent_grants) = self.end()?;
        Some(SavedRing {
            ring_refs: self.ring.ring_refs.clone(),
            evtchn: self.ring.evtchn,
            persistent: self.ring.persistent,
            req_cons,
            rsp_prod_pvt,
            persistent_grants,
        })
    }

    fn end(&mut self) -> Quiesced {
        self.stop.store(true, SeqCst);
        let _ = self.wake.write(1);
        let t = self.thread.take()?;
        let quiesced = t.join().ok().flatten();
        let _ = self
            .dom
            .evtchn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .dom0_close(self.dom0_port);
        quiesced
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Blocks until one of `fds` is readable (or the idle timeout).
fn wait(fds: &[i32; 2]) {
    let mut p = fds.map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    // SAFETY: poll on two valid descriptors owned by the caller, for a bounded time.
    unsafe { libc::poll(p.as_mut_ptr(), 2, IDLE_POLL_MS) };
}

/// The ring thread's loop: take and dispatch every request, publish every finished
/// response in one batch (one notify), arm `req_event`, and `idle` (wait for a notify
/// or a finished job; false: stop) when there is nothing to take.
pub fn serve(
    ring: &mut BackRing,
    dispatcher: &mut Dispatcher,
    pool: &Pool,
    mut notify: impl FnMut(),
    mut idle: impl FnMut() -> bool,
) -> Result<(), RingError> {
    loop {
        let mut ready = Vec::new();
        for raw in ring.take_requests()? {
            match dispatcher.prepare(&raw) {
                Ok(job) => pool.submit(job),
                Err(rsp) => ready.push(rsp),
            }
        }
        ready.extend(pool.take_done());
        if !ready.is_empty() && ring.put_responses(&ready)? {
            notify();
        }
        if ring.final_check()? {
            continue;
        }
        if !idle() {
            return Ok(());
        }
    }
}

/// Waits until every request taken is answered, publishing responses as the
/// workers finish them (one notify per batch), for at most [`DRAIN_DEADLINE`].
pub fn drain_in_flight(
    ring: &mut BackRing,
    pool: &Pool,
    mut notify: impl FnMut(),
) -> Result<(), String> {
    let deadline = Instant::now() + DRAIN_DEADLINE;
    loop {
        let done = pool.take_done();
        if !done.is_empty() && ring.put_responses(&done).map_err(|e| e.to_string())? {
            notify();
        }
        if ring.in_flight() == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} requests still in flight after {DRAIN_DEADLINE:?}",
                ring.in_flight()
            ));
        }
        let fd = pool.wake_fd();
        wait(&[fd, fd]);
    }
}
