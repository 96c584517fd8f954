//! A connected ring: the frontend's ring pages mapped (writable grants), domain 0's end
//! of its event channel, a thread that takes requests whenever the frontend notifies,
//! and the ring's I/O workers ([`super::pool`]). The ring thread prepares each request
//! ([`super::dispatch`]), hands it to the workers and goes on taking more (up to a
//! ring's worth in flight); whenever workers finish, it publishes every response
//! finished by then and notifies once for the batch. Dropping or
//! [`stop`](Connection::stop)ping it joins the threads, closes the event channel end and
//! unmaps the pages (the frontend may then end its grants).

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::disk::Disk;
use super::dispatch::Dispatcher;
use super::io::Store;
use super::negotiate::FrontendRing;
use super::pool::{Pool, WORKERS};
use super::request::{Limits, MAX_INDIRECT_SEGMENTS};
use super::ring::{BackRing, RingError};
use crate::domain::DomainShared;
use crate::grant::DOM0;

/// How long a ring thread sleeps at most without a notify (a safety net only).
const IDLE_POLL_MS: i32 = 200;

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
    dom0_port: u32,
    stop: Arc<AtomicBool>,
    wake: Arc<vmm_sys_util::eventfd::EventFd>,
    thread: Option<JoinHandle<()>>,
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
        let dispatcher = Dispatcher::new(limits_of(&disk), dom.grants.clone(), ring.persistent);
        let stop = Arc::new(AtomicBool::new(false));
        let wake = endpoint.notify.clone();
        let (t_dom, t_stop) = (dom.clone(), stop.clone());
        let spawned = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let mut ring = BackRing::with_pages(pages);
                let port = endpoint.port;
                let notify = || {
                    let _ = t_dom
                        .evtchn
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .dom0_notify(port);
                };
                let fds = [endpoint.notify.as_raw_fd(), pool.wake_fd()];
                let r = serve(&mut ring, dispatcher, &pool, notify, || {
                    if t_stop.load(SeqCst) || t_dom.exit_reason().is_some() {
                        return false;
                    }
                    wait(&fds);
                    let _ = endpoint.notify.read();
                    true
                });
                if let Err(why) = r {
                    tracing::warn!("{name}: the frontend broke the ring ({why}); ring stopped");
                }
                // Dropping the pool lets queued jobs finish before the pages go.
                drop(pool);
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
            dom0_port,
            stop,
            wake,
            thread: Some(thread),
        })
    }

    /// Stops serving, closes domain 0's end of the channel and unmaps the ring.
    pub fn stop(&mut self) {
        self.stop.store(true, SeqCst);
        let _ = self.wake.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
            let _ = self
                .dom
                .evtchn
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .dom0_close(self.dom0_port);
        }
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
    mut dispatcher: Dispatcher,
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
