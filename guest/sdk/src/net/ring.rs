//! The frontend's end of one shared ring page (xen/include/public/io/ring.h): the
//! private request producer and response consumer, publishing requests with Xen's
//! notify rule and re-arming `rsp_event` (`RING_FINAL_CHECK_FOR_RESPONSES`). Slots are
//! raw bytes here; the netif layouts live in `rxen_abi::netif`.

use core::sync::atomic::{fence, AtomicU32, Ordering::SeqCst};

use rxen_abi::ring::{need_notify, SRING_SLOTS_OFFSET};

const REQ_PROD: usize = 0;
const REQ_EVENT: usize = 4;
const RSP_PROD: usize = 8;
const RSP_EVENT: usize = 12;

/// One page shared with the backend, slots of `slot_size` bytes, `slots` of them.
pub(crate) struct FrontRing {
    page: *mut u8,
    slot_size: usize,
    slots: u32,
    /// Requests written but not yet published.
    pub(crate) req_prod_pvt: u32,
    /// Next response to read.
    pub(crate) rsp_cons: u32,
}

impl FrontRing {
    /// Takes `page` (a zeroed page granted to the backend) and initialises its header
    /// as `SHARED_RING_INIT` does (indices 0, events 1).
    ///
    /// # Safety
    /// `page` must be a page-aligned, zeroed 4 KiB allocation that lives as long as
    /// the ring and that nothing else on the guest's side writes.
    pub(crate) unsafe fn init(page: *mut u8, slot_size: usize, slots: u32) -> Self {
        let ring = Self {
            page,
            slot_size,
            slots,
            req_prod_pvt: 0,
            rsp_cons: 0,
        };
        ring.word(REQ_EVENT).store(1, SeqCst);
        ring.word(RSP_EVENT).store(1, SeqCst);
        ring
    }

    fn word(&self, off: usize) -> &AtomicU32 {
        // SAFETY: a 4-byte-aligned header word of the ring page this value owns,
        // shared with the backend and only accessed atomically.
        unsafe { &*(self.page.add(off) as *const AtomicU32) }
    }

    /// Slots in the ring.
    pub(crate) fn slots(&self) -> u32 {
        self.slots
    }

    /// The address of slot `idx` (modulo the ring size).
    pub(crate) fn slot(&self, idx: u32) -> *mut u8 {
        let at = SRING_SLOTS_OFFSET + (idx % self.slots) as usize * self.slot_size;
        // SAFETY: `at` + slot_size lies within the page (slots * slot_size fits after
        // the header, as `ring_size` computed).
        unsafe { self.page.add(at) }
    }

    /// Requests written and not yet answered (as the frontend counts them).
    pub(crate) fn outstanding(&self) -> u32 {
        self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }

    /// Publishes the requests written since the last call; true when the backend
    /// asked to be notified of them (`RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`).
    pub(crate) fn publish(&mut self) -> bool {
        let old = self.word(REQ_PROD).load(SeqCst);
        let new = self.req_prod_pvt;
        if old == new {
            return false;
        }
        fence(SeqCst);
        self.word(REQ_PROD).store(new, SeqCst);
        fence(SeqCst);
        need_notify(old, new, self.word(REQ_EVENT).load(SeqCst))
    }

    /// The backend's response producer, read once and checked: it may not run ahead
    /// of the requests published. `Err` carries the clamped value for a backend that
    /// lies (the caller counts it and uses the clamp).
    pub(crate) fn rsp_prod(&self) -> Result<u32, u32> {
        let prod = self.word(RSP_PROD).load(SeqCst);
        fence(SeqCst);
        if prod.wrapping_sub(self.rsp_cons) > self.outstanding() {
            return Err(self.req_prod_pvt);
        }
        Ok(prod)
    }

    /// Asks for an event at the next response and says whether one is already there
    /// (`RING_FINAL_CHECK_FOR_RESPONSES`).
    pub(crate) fn arm_rsp_event(&self) -> bool {
        self.word(RSP_EVENT)
            .store(self.rsp_cons.wrapping_add(1), SeqCst);
        fence(SeqCst);
        self.rsp_prod().unwrap_or_else(|clamped| clamped) != self.rsp_cons
    }
}
