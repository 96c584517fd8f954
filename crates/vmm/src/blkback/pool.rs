//! The ring's I/O workers: a few threads that run [`Job`]s with `pread`/`pwrite`, so
//! that many requests are in flight at once and the device stays busy; each finished
//! job's response is queued and an eventfd wakes the ring thread, which publishes all
//! responses finished by then in one batch (one notify).
//!
//! A thread pool rather than io_uring: see docs/architecture.md "Block devices".

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rxen_abi::blkif::BlkifResponse;
use vmm_sys_util::eventfd::EventFd;

use super::io::{self, Job, Store};
use crate::grant::GrantTable;

/// Worker threads per ring.
pub const WORKERS: usize = 4;

/// Finished responses and the eventfd that announces them.
struct Done {
    list: Mutex<Vec<BlkifResponse>>,
    wake: EventFd,
}

/// A ring's workers.
pub struct Pool {
    tx: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    done: Arc<Done>,
}

impl Pool {
    /// Starts `workers` threads named after `name`.
    pub fn new(
        name: &str,
        workers: usize,
        store: Arc<Store>,
        grants: GrantTable,
    ) -> std::io::Result<Self> {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let done = Arc::new(Done {
            list: Mutex::new(Vec::new()),
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
        });
        let mut pool = Self {
            tx: Some(tx),
            threads: Vec::new(),
            done: done.clone(),
        };
        for i in 0..workers.max(1) {
            let (rx, done, store, grants) =
                (rx.clone(), done.clone(), store.clone(), grants.clone());
            let t = std::thread::Builder::new()
                .name(format!("{name}-io{i}"))
                .spawn(move || worker(&rx, &done, &store, &grants))?;
            pool.threads.push(t);
        }
        Ok(pool)
    }

    /// Queues `job`.
    pub fn submit(&self, job: Job) {
        if let Some(tx) = &self.tx {
            // The workers only stop when `tx` is dropped: this cannot fail.
            let _ = tx.send(job);
        }
    }

    /// The responses finished since the last call.
    pub fn take_done(&self) -> Vec<BlkifResponse> {
        let _ = self.done.wake.read();
        std::mem::take(&mut *self.done.list.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The eventfd that becomes readable when a response is queued.
    pub fn wake_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.done.wake.as_raw_fd()
    }
}

impl Drop for Pool {
    /// Lets the workers finish what was queued, then joins them.
    fn drop(&mut self) {
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Runs `exec` for `job`; a panic in it (an rxen bug a guest's request found) answers
/// `BLKIF_RSP_ERROR` and keeps the worker serving, where it used to end the thread
/// silently and leave the guest waiting for the answer forever.
fn answer(job: &Job, exec: impl FnOnce() -> BlkifResponse) -> BlkifResponse {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(exec)) {
        Ok(rsp) => rsp,
        Err(_) => {
            tracing::error!(
                id = job.req.id,
                operation = job.req.operation,
                "blkback: a request made the I/O worker panic; answered with an error"
            );
            io::response(
                job.req.id,
                job.req.operation,
                rxen_abi::blkif::BLKIF_RSP_ERROR,
            )
        }
    }
}

fn worker(rx: &Mutex<Receiver<Job>>, done: &Done, store: &Store, grants: &GrantTable) {
    let mut bounce = io::Bounce::default();
    loop {
        let job = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
            Ok(j) => j,
            Err(_) => return,
        };
        let rsp = answer(&job, || io::run(&job, store, grants, &mut bounce));
        drop(job);
        done.list
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(rsp);
        let _ = done.wake.write(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blkback::request::{Op, Request};

    /// A panicking request is answered with an error for its id and operation.
    #[test]
    #[allow(clippy::panic)]
    fn a_panicking_request_is_answered_with_an_error() {
        let job = Job {
            req: Request {
                id: 77,
                operation: rxen_abi::blkif::BLKIF_OP_WRITE,
                op: Op::Write,
                sector: 0,
                segments: Vec::new(),
            },
            pages: Vec::new(),
        };
        let rsp = answer(&job, || panic!("an rxen bug"));
        assert_eq!(
            (rsp.id, rsp.operation, rsp.status),
            (
                77,
                rxen_abi::blkif::BLKIF_OP_WRITE,
                rxen_abi::blkif::BLKIF_RSP_ERROR
            )
        );
        let ok = answer(&job, || io::response(77, 0, 0));
        assert_eq!(ok.status, 0);
    }
}
