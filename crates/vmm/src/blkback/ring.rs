//! The back end of a one-page blkif shared ring (xen/include/public/io/ring.h): takes
//! requests the frontend produced, puts responses, and notifies with Xen's
//! `req_event`/`rsp_event` protocol (`RING_FINAL_CHECK_FOR_REQUESTS`,
//! `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`).
//!
//! The page is the frontend's and hostile. The backend keeps its own `req_cons` and
//! `rsp_prod_pvt` (never read back from the page); `req_prod` is loaded once per pass
//! and checked (`RING_REQUEST_PROD_OVERFLOW`: never more than a ring's worth ahead of
//! the responses); each request slot is copied out once and parsed from the copy. A
//! frontend that breaks the ring gets [`RingError`]: its ring is stopped with a log line
//! and nothing else is touched.

use std::sync::atomic::{fence, Ordering::SeqCst};

use rxen_abi::blkif::{BlkifRequest, BlkifResponse, BLKIF_RING_SIZE_1PAGE, BLKIF_SLOT_SIZE};
use rxen_abi::ring::SRING_SLOTS_OFFSET;
use zerocopy::{FromBytes, IntoBytes};

use crate::grant::{GrantError, GrantMapping};

const RING_SIZE: u32 = BLKIF_RING_SIZE_1PAGE as u32;
const REQ_PROD: u64 = 0;
const REQ_EVENT: u64 = 4;
const RSP_PROD: u64 = 8;
const RSP_EVENT: u64 = 12;

/// The frontend broke the ring protocol.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error(
        "req_prod {prod:#x} is more than {RING_SIZE} requests ahead of the responses ({rsp:#x})"
    )]
    Overflow { prod: u32, rsp: u32 },
    #[error("ring page: {0}")]
    Page(#[from] GrantError),
}

/// Xen's `RING_NEED_NOTIFY` test: did the producer index move from `old` to `new`
/// across the other end's event index?
fn need_notify(old: u32, new: u32, event: u32) -> bool {
    rxen_abi::ring::need_notify(old, new, event)
}

/// The backend's view of the ring: its private indices and the mapped page.
pub struct BackRing {
    page: GrantMapping,
    req_cons: u32,
    rsp_prod_pvt: u32,
}

impl BackRing {
    /// A ring on a freshly initialised page (`BACK_RING_INIT`: both indices 0).
    pub fn new(page: GrantMapping) -> Self {
        Self {
            page,
            req_cons: 0,
            rsp_prod_pvt: 0,
        }
    }

    fn slot_offset(idx: u32) -> u64 {
        SRING_SLOTS_OFFSET as u64 + u64::from(idx & (RING_SIZE - 1)) * BLKIF_SLOT_SIZE as u64
    }

    /// Requests produced and not yet taken, checked against overflow.
    fn unconsumed(&self) -> Result<u32, RingError> {
        let prod = self.page.atomic_u32(REQ_PROD)?.load(SeqCst);
        if prod.wrapping_sub(self.rsp_prod_pvt) > RING_SIZE {
            return Err(RingError::Overflow {
                prod,
                rsp: self.rsp_prod_pvt,
            });
        }
        fence(SeqCst);
        Ok(prod.wrapping_sub(self.req_cons))
    }

    fn take(&mut self) -> Result<BlkifRequest, RingError> {
        let mut slot = [0u8; BLKIF_SLOT_SIZE];
        self.page
            .read(Self::slot_offset(self.req_cons), &mut slot)?;
        self.req_cons = self.req_cons.wrapping_add(1);
        // The array has exactly the request's size: this cannot fail.
        Ok(BlkifRequest::read_from_bytes(&slot).unwrap_or_default())
    }

    fn put(&mut self, rsp: &BlkifResponse) -> Result<(), RingError> {
        self.page
            .write(Self::slot_offset(self.rsp_prod_pvt), rsp.as_bytes())?;
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publishes the responses put so far; true if the frontend wants a notify.
    fn push_responses(&mut self) -> Result<bool, RingError> {
        let prod = self.page.atomic_u32(RSP_PROD)?;
        let old = prod.load(SeqCst);
        let new = self.rsp_prod_pvt;
        fence(SeqCst);
        prod.store(new, SeqCst);
        fence(SeqCst);
        let event = self.page.atomic_u32(RSP_EVENT)?.load(SeqCst);
        Ok(need_notify(old, new, event))
    }

    /// Serves every request there is, answering each with `handle` in order, until the
    /// ring is empty and `req_event` is armed for the next one. Calls `notify` once at
    /// most per batch of responses the frontend asked to hear about. Returns how many
    /// requests were handled.
    pub fn serve(
        &mut self,
        mut handle: impl FnMut(&BlkifRequest) -> BlkifResponse,
        mut notify: impl FnMut(),
    ) -> Result<u32, RingError> {
        let mut handled = 0u32;
        loop {
            let mut n = self.unconsumed()?;
            while n > 0 {
                let req = self.take()?;
                let rsp = handle(&req);
                self.put(&rsp)?;
                handled = handled.wrapping_add(1);
                n -= 1;
            }
            if self.push_responses()? {
                notify();
            }
            // RING_FINAL_CHECK_FOR_REQUESTS: arm req_event, then look once more.
            self.page
                .atomic_u32(REQ_EVENT)?
                .store(self.req_cons.wrapping_add(1), SeqCst);
            fence(SeqCst);
            if self.unconsumed()? == 0 {
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
    fn slot_offsets_follow_ring_h() {
        assert_eq!(BackRing::slot_offset(0), 64);
        assert_eq!(BackRing::slot_offset(1), 64 + 112);
        assert_eq!(BackRing::slot_offset(31), 64 + 31 * 112);
        assert_eq!(BackRing::slot_offset(32), 64);
        assert!(BackRing::slot_offset(u32::MAX) + 112 <= 4096);
        assert_eq!(RING_SIZE, 32);
    }

    #[test]
    fn notify_only_across_the_event() {
        assert!(need_notify(0, 1, 1));
        assert!(!need_notify(1, 2, 1));
        assert!(need_notify(1, 5, 3));
        assert!(need_notify(u32::MAX, 0, 0));
    }
}
