//! The console: `print!`/`println!` through the console ring (one notify per line),
//! or through `console_io` before the ring is usable (very early output) and for
//! what the ring cannot take (a stalled or broken backend). Input comes from the
//! ring, and from `console_io` read for input the host queued there.

use core::fmt::{self, Write};

struct LineBuffer {
    buf: [u8; 512],
    len: usize,
}

impl LineBuffer {
    fn flush(&mut self) {
        if self.len > 0 {
            emit(&self.buf[..self.len]);
            self.len = 0;
        }
    }
}

impl Write for LineBuffer {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
            if b == b'\n' {
                self.flush();
            }
        }
        Ok(())
    }
}

static CONSOLE: spin::Mutex<LineBuffer> = spin::Mutex::new(LineBuffer {
    buf: [0; 512],
    len: 0,
});

#[doc(hidden)]
pub fn _print(args: fmt::Arguments) {
    let mut c = CONSOLE.lock();
    let _ = c.write_fmt(args);
    c.flush();
}

/// Sends bytes to the console: through the ring when usable, the rest (or all,
/// before the ring is usable) through `console_io`. Callers serialise ring writers.
fn emit(bytes: &[u8]) {
    let sent = crate::console_ring::write(bytes);
    if sent < bytes.len() {
        crate::hypercall::console_write(&bytes[sent..]);
    }
}

/// Writes raw bytes to the console (no line buffering): the ring takes up to 2 KiB per
/// notify, so large writes cost few hypercalls.
pub fn write_bytes(bytes: &[u8]) {
    let mut c = CONSOLE.lock();
    c.flush();
    emit(bytes);
}

/// Waits (at most a second) until the console backend has taken everything written
/// to the ring, e.g. before the guest scribbles over its own console page.
pub fn flush() {
    let _c = CONSOLE.lock();
    crate::console_ring::flush();
}

/// Prints without waiting for the console lock (panic path): through the ring if the
/// lock is free, else through `console_io` (the holder may be the panicking code).
pub fn emergency_print(args: fmt::Arguments) {
    let mut b = LineBuffer {
        buf: [0; 512],
        len: 0,
    };
    match CONSOLE.try_lock() {
        Some(_held) => {
            let _ = b.write_fmt(args);
            b.flush();
        }
        None => {
            let _ = DirectWriter.write_fmt(args);
        }
    }
}

/// Writes straight through `console_io`, one hypercall per piece.
struct DirectWriter;

impl Write for DirectWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        crate::hypercall::console_write(s.as_bytes());
        Ok(())
    }
}

/// Makes the console ring usable (boot, once `start_info` is known).
pub(crate) fn init_ring(si: &rxen_abi::xen::StartInfo) {
    crate::console_ring::init(si.console_mfn << 12, si.console_evtchn);
}

/// The console event channel: it fires when input arrives in the ring (and when the
/// backend took output). `None` before the ring is usable.
pub fn event_port() -> Option<crate::events::Port> {
    crate::console_ring::port()
}

/// Calls `handler` whenever the console event channel fires (input may have
/// arrived: read it with [`read`], which may return 0). Returns the port.
pub fn on_event(handler: fn(crate::events::Port)) -> Option<crate::events::Port> {
    let port = event_port()?;
    crate::events::set_handler(port, handler);
    let _ = crate::events::unmask(port);
    Some(port)
}

/// Prints to the domain console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::_print(format_args!($($arg)*)) };
}

/// Prints a line to the domain console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::console::_print(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Reads available console input (non-blocking): from the ring (its event channel,
/// [`on_event`], signals new input), else what the host queued for `console_io` read
/// (for guests that bound `VIRQ_CONSOLE`).
pub fn read(buf: &mut [u8]) -> usize {
    let n = crate::console_ring::read(buf);
    if n > 0 {
        return n;
    }
    crate::hypercall::console_read(buf).unwrap_or(0)
}
