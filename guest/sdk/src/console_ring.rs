//! The guest's end of the console ring (`xencons_interface`, Xen's `io/console.h`):
//! the page and event channel named in `start_info.console.domU`.
//!
//! The guest produces into `out` and consumes from `in`; after each change it notifies
//! the backend on the console event channel. Indices the backend writes (`out_cons`,
//! `in_prod`) are read once and checked: a ring that looks broken is not used (the
//! caller falls back to `console_io`).

use core::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering::SeqCst};

use rxen_abi::console::XenconsInterface;

const IN_RING: u32 = 1024;
const OUT_RING: u32 = 2048;
const IN_OFF: u64 = core::mem::offset_of!(XenconsInterface, input) as u64;
const OUT_OFF: u64 = core::mem::offset_of!(XenconsInterface, output) as u64;
const IN_CONS: u64 = core::mem::offset_of!(XenconsInterface, in_cons) as u64;
const IN_PROD: u64 = core::mem::offset_of!(XenconsInterface, in_prod) as u64;
const OUT_CONS: u64 = core::mem::offset_of!(XenconsInterface, out_cons) as u64;
const OUT_PROD: u64 = core::mem::offset_of!(XenconsInterface, out_prod) as u64;

/// How long a writer waits for the backend to make room before it gives up and
/// writes the rest through `console_io`.
const STALL_NS: u64 = 1_000_000_000;

/// Address of the ring page, 0 until [`init`] ran.
static PAGE: AtomicU64 = AtomicU64::new(0);
static PORT: AtomicU32 = AtomicU32::new(0);

/// Makes the ring usable (at boot, once `start_info` is known).
pub(crate) fn init(page: u64, port: u32) {
    PORT.store(port, SeqCst);
    PAGE.store(page, SeqCst);
}

/// The console event channel, once the ring is usable.
pub(crate) fn port() -> Option<u32> {
    (PAGE.load(SeqCst) != 0).then(|| PORT.load(SeqCst))
}

fn index(page: u64, off: u64) -> &'static AtomicU32 {
    // SAFETY: `page` is the console ring page from `start_info`, mapped read/write for
    // the life of the domain; the index is 4-byte aligned and shared with the backend,
    // so it is only accessed atomically.
    unsafe { &*((page + off) as *const AtomicU32) }
}

fn notify() {
    let _ = crate::events::send(PORT.load(SeqCst));
}

/// Writes `bytes` to the `out` ring, waiting for room as the backend drains it.
/// Returns how many bytes went (all of them unless the ring is unusable, broken, or
/// the backend stalled). The caller serialises writers.
pub(crate) fn write(bytes: &[u8]) -> usize {
    let page = PAGE.load(SeqCst);
    if page == 0 {
        return 0;
    }
    let (cons_idx, prod_idx) = (index(page, OUT_CONS), index(page, OUT_PROD));
    let mut done = 0;
    let mut stalled_since = None;
    while done < bytes.len() {
        let cons = cons_idx.load(SeqCst);
        let prod = prod_idx.load(SeqCst);
        let used = prod.wrapping_sub(cons);
        if used > OUT_RING {
            break;
        }
        let n = ((OUT_RING - used) as usize).min(bytes.len() - done);
        if n == 0 {
            notify();
            let now = crate::time::now_ns();
            match stalled_since {
                None => stalled_since = Some(now),
                Some(t) if now.saturating_sub(t) > STALL_NS => break,
                Some(_) => {}
            }
            crate::hypercall::yield_now();
            continue;
        }
        stalled_since = None;
        for (i, &b) in bytes[done..done + n].iter().enumerate() {
            let at = prod.wrapping_add(i as u32) & (OUT_RING - 1);
            // SAFETY: inside the `out` array of the ring page (masked index).
            unsafe { core::ptr::write_volatile((page + OUT_OFF + at as u64) as *mut u8, b) };
        }
        fence(SeqCst);
        prod_idx.store(prod.wrapping_add(n as u32), SeqCst);
        done += n;
    }
    if done > 0 {
        notify();
    }
    done
}

/// Waits (at most [`STALL_NS`]) until the backend consumed everything written.
pub(crate) fn flush() {
    let page = PAGE.load(SeqCst);
    if page == 0 {
        return;
    }
    let start = crate::time::now_ns();
    while index(page, OUT_CONS).load(SeqCst) != index(page, OUT_PROD).load(SeqCst) {
        if crate::time::now_ns().saturating_sub(start) > STALL_NS {
            return;
        }
        notify();
        crate::hypercall::yield_now();
    }
}

/// Serialises readers of the `in` ring (vCPUs may read at the same time).
static READER: spin::Mutex<()> = spin::Mutex::new(());

/// Reads available input from the `in` ring (non-blocking).
pub(crate) fn read(buf: &mut [u8]) -> usize {
    let page = PAGE.load(SeqCst);
    if page == 0 {
        return 0;
    }
    let _reader = READER.lock();
    let (cons_idx, prod_idx) = (index(page, IN_CONS), index(page, IN_PROD));
    let cons = cons_idx.load(SeqCst);
    let prod = prod_idx.load(SeqCst);
    let avail = prod.wrapping_sub(cons);
    if avail > IN_RING {
        return 0;
    }
    let n = (avail as usize).min(buf.len());
    if n == 0 {
        return 0;
    }
    fence(SeqCst);
    for (i, slot) in buf[..n].iter_mut().enumerate() {
        let at = cons.wrapping_add(i as u32) & (IN_RING - 1);
        // SAFETY: inside the `in` array of the ring page (masked index).
        *slot = unsafe { core::ptr::read_volatile((page + IN_OFF + at as u64) as *const u8) };
    }
    fence(SeqCst);
    cons_idx.store(cons.wrapping_add(n as u32), SeqCst);
    notify();
    n
}
