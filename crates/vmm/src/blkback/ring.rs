//! The back end of a blkif shared ring (xen/include/public/io/ring.h) of one page or of
//! `1 << ring-page-order` pages (`ring-ref0`.., at most [`MAX_RING_PAGE_ORDER`]): takes
//! requests the frontend produced, puts responses (in any order: each carries the
//! request's id), and notifies with Xen's `req_event`/`rsp_event` protocol
//! (`RING_FINAL_CHECK_FOR_REQUESTS`, `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`): one
//! notify at most per batch of responses.
//!
//! The pages are the frontend's and hostile. The backend keeps its own `req_cons` and
//! `rsp_prod_pvt` (never read back from the page); `req_prod` is loaded once per pass
//! and checked (`RING_REQUEST_PROD_OVERFLOW`: never more than a ring's worth ahead of
//! the responses); each request slot is copied out once and parsed from the copy. A
//! frontend that breaks the ring gets [`RingError`]: its ring is stopped with a log line
//! and nothing else is touched. Slots are 112 bytes and may straddle two pages of a
//! multi-page ring: every access is split at page boundaries.

use std::sync::atomic::{fence, Ordering::SeqCst};

use rxen_abi::blkif::{blkif_ring_size, BlkifRequest, BlkifResponse, BLKIF_SLOT_SIZE};
use rxen_abi::ring::SRING_SLOTS_OFFSET;
use rxen_abi::PAGE_SIZE;
use zerocopy::{FromBytes, IntoBytes};

use crate::grant::{GrantError, GrantMapping};

/// Largest `ring-page-order` offered (`max-ring-page-order`): 16 pages, 512 slots.
pub const MAX_RING_PAGE_ORDER: u32 = 4;

pub use crate::sring::RingError;
use crate::sring::{REQ_EVENT, REQ_PROD, RSP_EVENT, RSP_PROD};

/// Xen's `RING_NEED_NOTIFY` test: did the producer index move from `old` to `new`
/// across the other end's event index?
fn need_notify(old: u32, new: u32, event: u32) -> bool {
    rxen_abi::ring::need_notify(old, new, event)
}

/// The backend's view of the ring: its private indices and the mapped pages.
pub struct BackRing {
    pages: Vec<GrantMapping>,
    size: u32,
    req_cons: u32,
    rsp_prod_pvt: u32,
}

impl BackRing {
    /// A one-page ring on a freshly initialised page (`BACK_RING_INIT`).
    pub fn new(page: GrantMapping) -> Self {
        Self::with_pages(vec![page])
    }

    /// A ring over `pages` (in `ring-ref0`.. order); their number must be a power of
    /// two up to `1 << MAX_RING_PAGE_ORDER` (the caller checked `ring-page-order`).
    pub fn with_pages(pages: Vec<GrantMapping>) -> Self {
        let order = pages.len().max(1).trailing_zeros().min(MAX_RING_PAGE_ORDER);
        Self {
            size: blkif_ring_size(order) as u32,
            pages,
            req_cons: 0,
            rsp_prod_pvt: 0,
        }
    }

    /// A ring over `pages` that carries on from a saved backend's private indices
    /// (`crate::blkback::saved`): nothing is re-initialised, the shared indices are
    /// the frontend's as it left them.
    pub fn resumed(pages: Vec<GrantMapping>, req_cons: u32, rsp_prod_pvt: u32) -> Self {
        Self {
            req_cons,
            rsp_prod_pvt,
            ..Self::with_pages(pages)
        }
    }

    /// The backend's private `(req_cons, rsp_prod_pvt)`.
    pub fn indices(&self) -> (u32, u32) {
        (self.req_cons, self.rsp_prod_pvt)
    }

    /// Slots of the ring.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Requests taken and not yet answered.
    pub fn in_flight(&self) -> u32 {
        self.req_cons.wrapping_sub(self.rsp_prod_pvt)
    }

    fn slot_offset(&self, idx: u32) -> u64 {
        SRING_SLOTS_OFFSET as u64 + u64::from(idx & (self.size - 1)) * BLKIF_SLOT_SIZE as u64
    }
}

/// The pieces of `[offset, offset + len)` of a multi-page ring: (page, offset in page,
/// len).
fn pieces(offset: u64, len: usize) -> impl Iterator<Item = (usize, u64, usize)> {
    {
        let mut at = offset;
        let end = offset + len as u64;
        std::iter::from_fn(move || {
            if at >= end {
                return None;
            }
            let page = (at / PAGE_SIZE) as usize;
            let in_page = at % PAGE_SIZE;
            let n = (PAGE_SIZE - in_page).min(end - at);
            let piece = (page, in_page, n as usize);
            at += n;
            Some(piece)
        })
    }
}

impl BackRing {
    fn page(&self, i: usize) -> Result<&GrantMapping, RingError> {
        self.pages
            .get(i)
            .ok_or(RingError::Page(GrantError::BadCopyArg {
                offset: i as u64 * PAGE_SIZE,
                len: 0,
            }))
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), RingError> {
        let mut done = 0;
        for (p, off, n) in pieces(offset, buf.len()) {
            self.page(p)?.read(off, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), RingError> {
        let mut done = 0;
        for (p, off, n) in pieces(offset, data.len()) {
            self.page(p)?.write(off, &data[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    fn header(&self, offset: u64) -> Result<&std::sync::atomic::AtomicU32, RingError> {
        Ok(self.page(0)?.atomic_u32(offset)?)
    }

    /// Requests produced and not yet taken, checked against overflow.
    fn unconsumed(&self) -> Result<u32, RingError> {
        let prod = self.header(REQ_PROD)?.load(SeqCst);
        if prod.wrapping_sub(self.rsp_prod_pvt) > self.size {
            return Err(RingError::Overflow {
                prod,
                rsp: self.rsp_prod_pvt,
                size: self.size,
            });
        }
        fence(SeqCst);
        Ok(prod.wrapping_sub(self.req_cons))
    }

    fn take(&mut self) -> Result<BlkifRequest, RingError> {
        let mut slot = [0u8; BLKIF_SLOT_SIZE];
        self.read(self.slot_offset(self.req_cons), &mut slot)?;
        self.req_cons = self.req_cons.wrapping_add(1);
        // The array has exactly the request's size: this cannot fail.
        Ok(BlkifRequest::read_from_bytes(&slot).unwrap_or_default())
    }

    /// Takes every request the frontend produced (a ring's worth at most).
    pub fn take_requests(&mut self) -> Result<Vec<BlkifRequest>, RingError> {
        let n = self.unconsumed()?;
        let mut out = Vec::with_capacity(n as usize);
        for _ in 0..n {
            out.push(self.take()?);
        }
        Ok(out)
    }

    fn put(&mut self, rsp: &BlkifResponse) -> Result<(), RingError> {
        self.write(self.slot_offset(self.rsp_prod_pvt), rsp.as_bytes())?;
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Puts `rsps` (never more than the requests taken and unanswered: extra ones are
    /// dropped with an error), publishes them, and says whether the frontend asked to
    /// be notified (one notify for the whole batch).
    pub fn put_responses(&mut self, rsps: &[BlkifResponse]) -> Result<bool, RingError> {
        for r in rsps.iter().take(self.in_flight() as usize) {
            self.put(r)?;
        }
        let prod = self.header(RSP_PROD)?;
        let old = prod.load(SeqCst);
        let new = self.rsp_prod_pvt;
        fence(SeqCst);
        prod.store(new, SeqCst);
        fence(SeqCst);
        let event = self.header(RSP_EVENT)?.load(SeqCst);
        Ok(old != new && need_notify(old, new, event))
    }

    /// `RING_FINAL_CHECK_FOR_REQUESTS`: arms `req_event` for the next request, then
    /// looks once more; true if requests arrived meanwhile.
    pub fn final_check(&mut self) -> Result<bool, RingError> {
        if self.unconsumed()? > 0 {
            return Ok(true);
        }
        self.header(REQ_EVENT)?
            .store(self.req_cons.wrapping_add(1), SeqCst);
        fence(SeqCst);
        Ok(self.unconsumed()? > 0)
    }

    /// Serves every request there is synchronously, answering each with `handle` in
    /// order, until the ring is empty and `req_event` is armed. Calls `notify` once at
    /// most per batch. Returns how many requests were handled.
    pub fn serve(
        &mut self,
        mut handle: impl FnMut(&BlkifRequest) -> BlkifResponse,
        mut notify: impl FnMut(),
    ) -> Result<u32, RingError> {
        let mut handled = 0u32;
        loop {
            let reqs = self.take_requests()?;
            let rsps: Vec<BlkifResponse> = reqs.iter().map(&mut handle).collect();
            handled = handled.wrapping_add(rsps.len() as u32);
            if self.put_responses(&rsps)? {
                notify();
            }
            if !self.final_check()? {
                return Ok(handled);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ring_sizes_follow_ring_h() {
        assert_eq!(blkif_ring_size(0), 32);
        assert_eq!(blkif_ring_size(MAX_RING_PAGE_ORDER), 512);
        // Slot 36 starts exactly at page 1; slot 72 (8128..8240) straddles pages 1
        // and 2 of a 4-page ring.
        let slot = |i: u64, n: usize| pieces(64 + i * 112, n).collect::<Vec<_>>();
        assert_eq!(slot(35, 112), vec![(0, 3984, 112)]);
        assert_eq!(slot(36, 112), vec![(1, 0, 112)]);
        assert_eq!(slot(72, 112), vec![(1, 4032, 64), (2, 0, 48)]);
        assert_eq!(slot(72, 0), vec![]);
    }

    #[test]
    fn notify_only_across_the_event() {
        assert!(need_notify(0, 1, 1));
        assert!(!need_notify(1, 2, 1));
        assert!(need_notify(1, 5, 3));
        assert!(need_notify(u32::MAX, 0, 0));
    }
}
