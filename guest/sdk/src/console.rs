//! The console: `print!`/`println!` through `console_io`, one hypercall per line.

use core::fmt::{self, Write};

struct LineBuffer {
    buf: [u8; 512],
    len: usize,
}

impl LineBuffer {
    fn flush(&mut self) {
        if self.len > 0 {
            crate::hypercall::console_write(&self.buf[..self.len]);
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

/// Prints without taking the console lock (panic path).
pub fn emergency_print(args: fmt::Arguments) {
    let mut b = LineBuffer {
        buf: [0; 512],
        len: 0,
    };
    let _ = b.write_fmt(args);
    b.flush();
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

/// Reads available console input (non-blocking; `VIRQ_CONSOLE` signals new input).
pub fn read(buf: &mut [u8]) -> usize {
    crate::hypercall::console_read(buf).unwrap_or(0)
}
