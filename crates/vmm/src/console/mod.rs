//! The domain's console: output from the console ring ([`ring_backend`]) and the
//! emergency console (`console_io` hypercall) to one sink; input for the ring, or for
//! `console_io` read (raising `VIRQ_CONSOLE`), from bounded buffers.
//!
//! Guest output is hostile in volume: it passes a token bucket ([`rate`]) first, and
//! what exceeds it is dropped and counted, never waited for, so a flooding guest costs
//! the host a bounded rate of writes. What passes goes to the sink (stdout, or a
//! size-capped rotated file, [`log_file`]) and to an in-memory ring of the newest
//! bytes ([`tail`]) that the control protocol returns.

pub mod log_file;
pub mod rate;
pub mod ring_backend;
pub mod tail;

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use vmm_sys_util::eventfd::EventFd;

pub use log_file::RotatingLog;
use rate::TokenBucket;
use tail::TailRing;

/// Bytes of console input buffered at most; older input is dropped beyond it.
pub const INPUT_BUFFER: usize = 64 * 1024;

/// Where guest console output goes.
pub trait ConsoleSink: Send {
    fn write(&mut self, bytes: &[u8]);
}

/// Writes console output to the VMM's stdout.
pub struct StdoutSink;

impl ConsoleSink for StdoutSink {
    fn write(&mut self, bytes: &[u8]) {
        let mut out = std::io::stdout().lock();
        // A closed stdout must not stop the guest; output is then discarded.
        let _ = out.write_all(bytes);
        let _ = out.flush();
    }
}

/// Collects console output in memory (tests, benchmarks, embedding).
#[derive(Clone, Default)]
pub struct CaptureSink(pub std::sync::Arc<Mutex<Vec<u8>>>);

impl CaptureSink {
    /// What was captured so far, as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

impl ConsoleSink for CaptureSink {
    fn write(&mut self, bytes: &[u8]) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(bytes);
    }
}

/// How much console output a domain may produce and how much of it is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsoleLimits {
    /// Sustained output rate, bytes per second.
    pub rate: u64,
    /// Output allowed at once above the rate (the bucket's size), bytes.
    pub burst: u64,
    /// Newest output kept in memory for [`Console::tail`], bytes.
    pub ring: usize,
}

impl Default for ConsoleLimits {
    /// 64 KiB/s sustained, 1 MiB burst, 64 KiB in memory.
    fn default() -> Self {
        ConsoleLimits {
            rate: 64 * 1024,
            burst: 1024 * 1024,
            ring: 64 * 1024,
        }
    }
}

impl ConsoleLimits {
    /// No rate limit (benchmarks and tests that count every byte).
    pub fn unlimited() -> Self {
        ConsoleLimits {
            rate: u64::MAX / 2,
            burst: u64::MAX / 2,
            ..Self::default()
        }
    }
}

/// Console output counters since boot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsoleCounters {
    /// Bytes the guest wrote (kept or dropped).
    pub total: u64,
    /// Bytes dropped by the rate limit.
    pub dropped: u64,
}

struct Output {
    sink: Box<dyn ConsoleSink>,
    bucket: TokenBucket,
    ring: TailRing,
}

/// Once the bucket is empty, output is dropped without taking the output lock until
/// this many bytes' worth of tokens have accumulated: flooding vCPUs then never
/// contend for the lock, and neither Status nor the tail waits behind them.
const REOPEN_BYTES: u64 = 4096;

/// Host input waiting for the guest's console ring.
#[derive(Default)]
struct RingInput {
    bytes: VecDeque<u8>,
    /// Wakes the ring backend (its event-channel endpoint), once it runs.
    wake: Option<Arc<EventFd>>,
}

/// The console of one domain.
pub struct Console {
    output: Mutex<Output>,
    /// Input for `console_io` read.
    input: Mutex<VecDeque<u8>>,
    /// Input for the console ring.
    ring_input: Mutex<RingInput>,
    total: AtomicU64,
    dropped: AtomicU64,
    /// Output is dropped unlocked until this time (ns since `epoch`).
    closed_until: AtomicU64,
    epoch: Instant,
}

impl Console {
    /// A console with the default limits.
    pub fn new(sink: Box<dyn ConsoleSink>) -> Self {
        Self::with_limits(sink, ConsoleLimits::default())
    }

    pub fn with_limits(sink: Box<dyn ConsoleSink>, limits: ConsoleLimits) -> Self {
        Self {
            output: Mutex::new(Output {
                sink,
                bucket: TokenBucket::new(limits.rate, limits.burst),
                ring: TailRing::new(limits.ring),
            }),
            input: Mutex::new(VecDeque::new()),
            ring_input: Mutex::new(RingInput::default()),
            total: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            closed_until: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Guest output: what the rate limit lets through goes to the sink and the ring,
    /// the rest is dropped and counted. Never waits for tokens.
    pub fn write(&self, bytes: &[u8]) {
        let Some((mut out, granted)) = self.admit(bytes.len() as u64) else {
            return;
        };
        let kept = &bytes[..granted];
        out.ring.push(kept);
        out.sink.write(kept);
    }

    /// A Xen PV domain's `console_io` write: in Xen that is the hypervisor's console
    /// (`xl dmesg`), not the domain's, whose console is its ring. rxen logs it (target
    /// `rxen_vmm::hypervisor_console`, prefixed `(dN)`), under the same rate limit as
    /// the console, and keeps it out of the domain's console so nothing shows twice.
    pub fn write_hypervisor_log(&self, domid: u16, bytes: &[u8]) {
        let Some((out, granted)) = self.admit(bytes.len() as u64) else {
            return;
        };
        drop(out);
        let text = String::from_utf8_lossy(&bytes[..granted]);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            tracing::info!(target: "rxen_vmm::hypervisor_console", "(d{domid}) {line}");
        }
    }

    /// Counts `len` bytes of output and takes what the rate limit grants, with the
    /// output locked (`None`: nothing; while the bucket is empty that is decided
    /// without taking the lock).
    fn admit(&self, len: u64) -> Option<(std::sync::MutexGuard<'_, Output>, usize)> {
        self.total.fetch_add(len, Relaxed);
        let now = self.epoch.elapsed().as_nanos() as u64;
        if now < self.closed_until.load(Relaxed) {
            self.dropped.fetch_add(len, Relaxed);
            return None;
        }
        let mut out = self.output.lock().unwrap_or_else(|e| e.into_inner());
        let granted = out.bucket.take(len);
        if granted < len {
            self.dropped.fetch_add(len - granted, Relaxed);
            let wait = out.bucket.ns_for(REOPEN_BYTES);
            self.closed_until.store(now.saturating_add(wait), Relaxed);
        }
        (granted > 0).then_some((out, granted as usize))
    }

    /// Output counters since boot.
    pub fn counters(&self) -> ConsoleCounters {
        ConsoleCounters {
            total: self.total.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
        }
    }

    /// The newest `max` bytes of output kept in memory, and the counters.
    pub fn tail(&self, max: usize) -> (Vec<u8>, ConsoleCounters) {
        let out = self.output.lock().unwrap_or_else(|e| e.into_inner());
        (out.ring.last(max), self.counters())
    }

    /// Host input for the guest; returns true if the buffer was empty before.
    pub fn push_input(&self, bytes: &[u8]) -> bool {
        let mut q = self.input.lock().unwrap_or_else(|e| e.into_inner());
        let was_empty = q.is_empty();
        q.extend(bytes);
        while q.len() > INPUT_BUFFER {
            q.pop_front();
        }
        was_empty
    }

    /// Takes up to `max` bytes of input.
    pub fn take_input(&self, max: usize) -> Vec<u8> {
        let mut q = self.input.lock().unwrap_or_else(|e| e.into_inner());
        let n = max.min(q.len());
        q.drain(..n).collect()
    }

    /// Host input for the guest's console ring (at most [`INPUT_BUFFER`] bytes wait;
    /// older input is dropped beyond it); wakes the ring backend.
    pub fn push_ring_input(&self, bytes: &[u8]) {
        let mut q = self.ring_input.lock().unwrap_or_else(|e| e.into_inner());
        q.bytes.extend(bytes);
        while q.bytes.len() > INPUT_BUFFER {
            q.bytes.pop_front();
        }
        if let Some(w) = &q.wake {
            let _ = w.write(1);
        }
    }

    /// Is host input waiting for the ring?
    pub fn has_ring_input(&self) -> bool {
        let q = self.ring_input.lock().unwrap_or_else(|e| e.into_inner());
        !q.bytes.is_empty()
    }

    /// Takes up to `max` bytes of input for the ring.
    pub fn take_ring_input(&self, max: usize) -> Vec<u8> {
        let mut q = self.ring_input.lock().unwrap_or_else(|e| e.into_inner());
        let n = max.min(q.bytes.len());
        q.bytes.drain(..n).collect()
    }

    /// The ring backend's wake-up (called once when it starts).
    pub(crate) fn set_ring_waker(&self, wake: Arc<EventFd>) {
        self.ring_input
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .wake = Some(wake);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_over_the_limit_is_dropped_and_counted() {
        let cap = CaptureSink::default();
        let c = Console::with_limits(
            Box::new(cap.clone()),
            ConsoleLimits {
                rate: 0,
                burst: 10,
                ring: 4,
            },
        );
        c.write(b"0123456");
        c.write(b"789abc");
        c.write(b"def");
        assert_eq!(&*cap.0.lock().unwrap(), b"0123456789");
        assert_eq!(
            c.counters(),
            ConsoleCounters {
                total: 16,
                dropped: 6
            }
        );
        let (tail, _) = c.tail(100);
        assert_eq!(tail, b"6789");
    }

    #[test]
    fn ring_input_is_bounded_and_taken_in_order() {
        let c = Console::new(Box::new(CaptureSink::default()));
        assert!(!c.has_ring_input());
        c.push_ring_input(b"abc");
        c.push_ring_input(&vec![b'x'; INPUT_BUFFER]);
        assert!(c.has_ring_input());
        let first = c.take_ring_input(1024);
        assert_eq!(first, vec![b'x'; 1024], "the oldest bytes were dropped");
        assert_eq!(c.take_ring_input(usize::MAX).len(), INPUT_BUFFER - 1024);
        assert!(!c.has_ring_input());
        assert!(c.take_input(10).is_empty(), "console_io input is separate");
    }
}
