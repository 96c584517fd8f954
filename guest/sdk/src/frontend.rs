//! What the SDK's split-driver frontends ([`crate::blkfront`], [`crate::net`]) share:
//! zeroed pages for rings and buffers, the frame number of an SDK pointer, and waiting
//! for the backend's xenbus state. It owns no device protocol.

use alloc::alloc::{alloc_zeroed, Layout};
use alloc::format;
use alloc::string::String;

use rxen_abi::PAGE_SIZE;

use crate::xenstore::Xenstore;

/// xenbus states (io/xenbus.h).
pub(crate) const STATE_INIT_WAIT: u32 = 2;
pub(crate) const STATE_INITIALISED: u32 = 3;
pub(crate) const STATE_CONNECTED: u32 = 4;
pub(crate) const STATE_CLOSING: u32 = 5;
/// How long a frontend waits for each backend state.
pub(crate) const BACKEND_TIMEOUT_NS: u64 = 10_000_000_000;

/// `n` zeroed, page-aligned pages (at least one), never freed: a device lives as long
/// as the guest, so no grant can point at reused memory. `None` when out of memory.
pub(crate) fn alloc_pages(n: usize) -> Option<*mut u8> {
    let layout = Layout::from_size_align(n.max(1) * PAGE_SIZE as usize, PAGE_SIZE as usize).ok()?;
    // SAFETY: a non-zero-sized layout; the result is checked for null.
    let p = unsafe { alloc_zeroed(layout) };
    (!p.is_null()).then_some(p)
}

/// The frame of `p`: SDK guests are identity-mapped, so the virtual address is the
/// pseudo-physical one.
pub(crate) fn pfn_of(p: *const u8) -> u64 {
    p as u64 / PAGE_SIZE
}

/// The xenbus state at `path` (0 when absent or not a number).
pub(crate) fn read_state(xs: &mut Xenstore, path: &str) -> u32 {
    xs.read(path)
        .ok()
        .and_then(|v| v.trim_end_matches('\0').trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until the backend at `backend` is in state `want`; an error (as text) when
/// it goes Closing or beyond, or stays elsewhere for [`BACKEND_TIMEOUT_NS`].
pub(crate) fn wait_state(xs: &mut Xenstore, backend: &str, want: u32) -> Result<(), String> {
    let deadline = crate::time::now_ns().saturating_add(BACKEND_TIMEOUT_NS);
    loop {
        let s = read_state(xs, &format!("{backend}/state"));
        if s == want {
            return Ok(());
        }
        if s >= STATE_CLOSING {
            return Err(format!("backend state {s}"));
        }
        if crate::time::now_ns() > deadline {
            return Err(format!("backend stayed in state {s}, wanted {want}"));
        }
        crate::time::sleep_ms(1);
    }
}
