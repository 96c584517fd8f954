//! The console ring backend (xenconsoled's job, inside the VMM): serves the guest's
//! `xencons_interface` page and event channel that the builder put in `start_info`
//! (`console.domU.mfn`, `console.domU.evtchn`).
//!
//! Output the guest produced in `out` goes to the domain's [`Console`](super::Console),
//! the same one `console_io` writes reach, so the rate limit, the size-capped log, the
//! tail and the counters apply to both. Host input queued by
//! [`Console::push_ring_input`](super::Console::push_ring_input) goes into `in`, as much
//! as the guest left room for; the rest waits for the guest to consume (its notify
//! wakes the backend). Each pass moves what is there and ends with one notify at most.
//!
//! Ring indices come from guest memory and are hostile: each is read once, checked
//! (`prod - cons` never exceeds the ring's size), then used. A guest that breaks the
//! protocol loses its console ring: the backend logs why and stops serving it (Xen's
//! console has no error field to report it in); `console_io` keeps working.
//!
//! The backend must not interpret the bytes, wait for the guest, or write anywhere but
//! the ring page and the [`Console`](super::Console).

use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, AtomicBool, AtomicU32, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;

use rxen_abi::console::XenconsInterface;
use rxen_abi::PAGE_SIZE;

use crate::domain::DomainShared;
use crate::evtchn::Dom0Port;

/// Size of the `in` ring (host to guest).
pub const IN_RING: u32 = 1024;
/// Size of the `out` ring (guest to host).
pub const OUT_RING: u32 = 2048;

// Offsets in `struct xencons_interface` (checked by the layout test in `rxen_abi`).
const IN_OFF: u64 = std::mem::offset_of!(XenconsInterface, input) as u64;
const OUT_OFF: u64 = std::mem::offset_of!(XenconsInterface, output) as u64;
const IN_CONS: u64 = std::mem::offset_of!(XenconsInterface, in_cons) as u64;
const IN_PROD: u64 = std::mem::offset_of!(XenconsInterface, in_prod) as u64;
const OUT_CONS: u64 = std::mem::offset_of!(XenconsInterface, out_cons) as u64;
const OUT_PROD: u64 = std::mem::offset_of!(XenconsInterface, out_prod) as u64;

/// How long the backend sleeps at most without a notify (a safety net only: the
/// guest's notifies, host input and [`ConsoleRingBackend::stop`] all wake it).
const IDLE_POLL_MS: i32 = 200;

/// The running backend of one domain. [`stop`](Self::stop) drains the ring a last time
/// (output the guest wrote just before it ended still reaches the log) and joins.
pub struct ConsoleRingBackend {
    stop: Arc<AtomicBool>,
    wake: Arc<vmm_sys_util::eventfd::EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl ConsoleRingBackend {
    /// Binds domain 0's end of the console event channel and starts the backend
    /// thread. Call it before the guest runs, so that no notify is lost.
    pub fn start(dom: Arc<DomainShared>) -> Result<Self, String> {
        let page = dom
            .boot
            .report
            .console_mfn
            .checked_mul(PAGE_SIZE)
            .ok_or("the console page is outside the address space")?;
        let endpoint = dom
            .evtchn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .dom0_bind_interdomain(dom.boot_channels.console_evtchn)
            .map_err(|e| format!("binding the console event channel: {e}"))?;
        let wake = endpoint.notify.clone();
        dom.console.set_ring_waker(wake.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("{}-console", dom.config.name))
            .spawn(move || {
                let ring = Ring {
                    dom: &dom,
                    page,
                    endpoint,
                };
                if let Err(why) = ring.serve(&thread_stop) {
                    tracing::warn!(
                        domain = %dom.config.name,
                        "console ring backend stopped: {why}; console_io still works"
                    );
                }
            })
            .map_err(|e| format!("starting the console ring backend: {e}"))?;
        Ok(Self {
            stop,
            wake,
            thread: Some(thread),
        })
    }

    /// Drains the ring a last time, stops the thread and waits for it.
    pub fn stop(&mut self) {
        self.stop.store(true, SeqCst);
        let _ = self.wake.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ConsoleRingBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The guest broke the ring protocol.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("output ring indices are inconsistent (out_cons {cons:#x}, out_prod {prod:#x})")]
    Output { cons: u32, prod: u32 },
    #[error("input ring indices are inconsistent (in_cons {cons:#x}, in_prod {prod:#x})")]
    Input { cons: u32, prod: u32 },
    #[error("the console page is not guest RAM: {0}")]
    Memory(#[from] crate::memory::MemoryError),
}

/// The (ring offset, byte range) pieces of `len` bytes starting at free-running index
/// `start` in a ring of `size` bytes (a power of two): one piece, or two on a wrap.
fn ring_spans(start: u32, len: u32, size: u32) -> Vec<(u64, std::ops::Range<usize>)> {
    let first = start & (size - 1);
    let head = len.min(size - first);
    let mut out = vec![(first as u64, 0..head as usize)];
    if head < len {
        out.push((0, head as usize..len as usize));
    }
    out
}

struct Ring<'a> {
    dom: &'a DomainShared,
    page: u64,
    endpoint: Dom0Port,
}

impl Ring<'_> {
    fn index(&self, off: u64) -> Result<&AtomicU32, RingError> {
        Ok(self.dom.ram.atomic_u32(self.page + off)?)
    }

    fn notify(&self) {
        let _ = self
            .dom
            .evtchn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .dom0_notify(self.endpoint.port);
    }

    /// Serves the ring until `stop` is set (then after one last pass) or the guest
    /// breaks the protocol.
    fn serve(&self, stop: &AtomicBool) -> Result<(), RingError> {
        loop {
            let stopping = stop.load(SeqCst);
            let out = self.take_output()?;
            let inp = self.give_input()?;
            if out || inp {
                self.notify();
            }
            if stopping {
                return Ok(());
            }
            let mut fds = [libc::pollfd {
                fd: self.endpoint.notify.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            // SAFETY: poll on one valid descriptor (owned by the endpoint this thread
            // holds) for a bounded time.
            unsafe { libc::poll(fds.as_mut_ptr(), 1, IDLE_POLL_MS) };
            let _ = self.endpoint.notify.read();
        }
    }

    /// Moves the guest's output to the console; true if there was any.
    fn take_output(&self) -> Result<bool, RingError> {
        let (cons_idx, prod_idx) = (self.index(OUT_CONS)?, self.index(OUT_PROD)?);
        let (cons, prod) = (cons_idx.load(SeqCst), prod_idx.load(SeqCst));
        let avail = prod.wrapping_sub(cons);
        if avail > OUT_RING {
            return Err(RingError::Output { cons, prod });
        }
        if avail == 0 {
            return Ok(false);
        }
        let mut bytes = vec![0u8; avail as usize];
        for (off, range) in ring_spans(cons, avail, OUT_RING) {
            self.dom
                .ram
                .read(self.page + OUT_OFF + off, &mut bytes[range])?;
        }
        fence(SeqCst);
        cons_idx.store(prod, SeqCst);
        self.dom.console.write(&bytes);
        Ok(true)
    }

    /// Moves queued host input into the guest's `in` ring, as much as fits; true if any.
    fn give_input(&self) -> Result<bool, RingError> {
        if !self.dom.console.has_ring_input() {
            return Ok(false);
        }
        let (cons_idx, prod_idx) = (self.index(IN_CONS)?, self.index(IN_PROD)?);
        let (cons, prod) = (cons_idx.load(SeqCst), prod_idx.load(SeqCst));
        let used = prod.wrapping_sub(cons);
        if used > IN_RING {
            return Err(RingError::Input { cons, prod });
        }
        let bytes = self.dom.console.take_ring_input((IN_RING - used) as usize);
        if bytes.is_empty() {
            return Ok(false);
        }
        for (off, range) in ring_spans(prod, bytes.len() as u32, IN_RING) {
            self.dom
                .ram
                .write(self.page + IN_OFF + off, &bytes[range])?;
        }
        fence(SeqCst);
        prod_idx.store(prod.wrapping_add(bytes.len() as u32), SeqCst);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_wrap_once() {
        assert_eq!(ring_spans(10, 5, OUT_RING), vec![(10, 0..5)]);
        assert_eq!(
            ring_spans(2040, 10, OUT_RING),
            vec![(2040, 0..8), (0, 8..10)]
        );
        assert_eq!(
            ring_spans(u32::MAX, 2, IN_RING),
            vec![(1023, 0..1), (0, 1..2)]
        );
        assert_eq!(ring_spans(2048, 1024, IN_RING), vec![(0, 0..1024)]);
    }

    #[test]
    fn offsets_are_xens() {
        assert_eq!((IN_OFF, OUT_OFF), (0, 1024));
        assert_eq!(
            (IN_CONS, IN_PROD, OUT_CONS, OUT_PROD),
            (3072, 3076, 3080, 3084)
        );
        assert_eq!(
            (IN_RING as usize, OUT_RING as usize),
            (
                std::mem::size_of::<[u8; 1024]>(),
                std::mem::size_of::<[u8; 2048]>()
            )
        );
    }
}
