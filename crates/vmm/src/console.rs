//! The domain's emergency console (`console_io` hypercall): output to a sink, input
//! from a bounded buffer that raises `VIRQ_CONSOLE`.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Mutex;

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

impl ConsoleSink for CaptureSink {
    fn write(&mut self, bytes: &[u8]) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(bytes);
    }
}

/// The console of one domain.
pub struct Console {
    sink: Mutex<Box<dyn ConsoleSink>>,
    input: Mutex<VecDeque<u8>>,
}

impl Console {
    pub fn new(sink: Box<dyn ConsoleSink>) -> Self {
        Self {
            sink: Mutex::new(sink),
            input: Mutex::new(VecDeque::new()),
        }
    }

    /// Guest output.
    pub fn write(&self, bytes: &[u8]) {
        self.sink
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write(bytes);
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
}
