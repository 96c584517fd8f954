//! A connected ring: the frontend's ring page mapped (writable grant), domain 0's end
//! of its event channel, and a thread that serves the ring whenever the frontend
//! notifies. Dropping or [`stop`](Connection::stop)ping it joins the thread, closes
//! the event channel end and unmaps the page (the frontend may then end its grant).

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::disk::Disk;
use super::io;
use super::ring::BackRing;
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
    #[error("starting the ring thread: {0}")]
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

impl Connection {
    /// Maps `ring_ref`, binds the guest's unbound port `evtchn` and starts serving.
    pub fn start(
        dom: Arc<DomainShared>,
        disk: Arc<Disk>,
        ring_ref: u32,
        evtchn: u32,
        name: String,
    ) -> Result<Self, ConnectError> {
        let page = dom
            .grants
            .map(DOM0, ring_ref, false)
            .map_err(|source| ConnectError::Ring {
                gref: ring_ref,
                source,
            })?;
        let endpoint = dom
            .evtchn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .dom0_bind_interdomain(evtchn)
            .map_err(|errno| ConnectError::EventChannel {
                port: evtchn,
                errno,
            })?;
        let stop = Arc::new(AtomicBool::new(false));
        let wake = endpoint.notify.clone();
        let dom0_port = endpoint.port;
        let (t_dom, t_stop) = (dom.clone(), stop.clone());
        let spawned = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let mut ring = BackRing::new(page);
                let port = endpoint.port;
                let notify = || {
                    let _ = t_dom
                        .evtchn
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .dom0_notify(port);
                };
                loop {
                    let served = ring.serve(|req| io::handle(req, &disk, &t_dom.grants), notify);
                    if let Err(why) = served {
                        tracing::warn!("{name}: the frontend broke the ring ({why}); ring stopped");
                        return;
                    }
                    if t_stop.load(SeqCst) || t_dom.exit_reason().is_some() {
                        return;
                    }
                    let mut fds = [libc::pollfd {
                        fd: endpoint.notify.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    }];
                    // SAFETY: poll on one valid descriptor (owned by the endpoint this
                    // thread holds) for a bounded time.
                    unsafe { libc::poll(fds.as_mut_ptr(), 1, IDLE_POLL_MS) };
                    let _ = endpoint.notify.read();
                }
            });
        let thread = match spawned {
            Ok(t) => t,
            Err(e) => {
                let _ = dom
                    .evtchn
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .dom0_close(dom0_port);
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
