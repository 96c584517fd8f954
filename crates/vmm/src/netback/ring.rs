//! The backend's end of one netif shared ring (xen/include/public/io/ring.h over one
//! page): TX (requests are packets the guest sends) or RX (requests are buffers the
//! guest posts). Generic over the slot types of io/netif.h.
//!
//! The page is the frontend's and hostile: the backend keeps its own `req_cons` and
//! `rsp_prod_pvt`, loads `req_prod` once per look and checks it (never more than a
//! ring's worth ahead of the responses: [`RingError::Overflow`]), and copies every
//! slot out before parsing it. Responses are published together
//! ([`NetRing::push_responses`]: Xen's `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`, one
//! notify per batch).

use std::marker::PhantomData;
use std::sync::atomic::{fence, Ordering::SeqCst};

use rxen_abi::ring::{need_notify, ring_size, SRING_SLOTS_OFFSET};
use rxen_abi::PAGE_SIZE;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::grant::GrantMapping;

pub use crate::sring::RingError;
use crate::sring::{REQ_EVENT, REQ_PROD, RSP_EVENT, RSP_PROD};

/// One mapped netif ring with request slots `Req` and response slots `Rsp`.
pub struct NetRing<Req, Rsp> {
    page: GrantMapping,
    slot: usize,
    size: u32,
    req_cons: u32,
    rsp_prod_pvt: u32,
    _slots: PhantomData<fn() -> (Req, Rsp)>,
}

impl<Req, Rsp> NetRing<Req, Rsp>
where
    Req: FromBytes + IntoBytes + Immutable + KnownLayout + Default,
    Rsp: FromBytes + IntoBytes + Immutable + KnownLayout,
{
    /// The backend's view of a freshly initialised ring page (`BACK_RING_INIT`).
    pub fn new(page: GrantMapping) -> Self {
        let slot = std::mem::size_of::<Req>().max(std::mem::size_of::<Rsp>());
        Self {
            page,
            slot,
            size: ring_size(PAGE_SIZE as usize, slot) as u32,
            req_cons: 0,
            rsp_prod_pvt: 0,
            _slots: PhantomData,
        }
    }

    /// A ring that carries on from a saved backend's private indices
    /// (`crate::netback::saved`): the shared indices are the frontend's as it left
    /// them.
    pub fn resumed(page: GrantMapping, req_cons: u32, rsp_prod_pvt: u32) -> Self {
        Self {
            req_cons,
            rsp_prod_pvt,
            ..Self::new(page)
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

    fn slot_offset(&self, idx: u32) -> u64 {
        SRING_SLOTS_OFFSET as u64 + u64::from(idx & (self.size - 1)) * self.slot as u64
    }

    /// Requests produced and not yet taken, checked against overflow.
    pub fn unconsumed(&self) -> Result<u32, RingError> {
        let prod = self.page.atomic_u32(REQ_PROD)?.load(SeqCst);
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

    /// The request `ahead` slots after the next one, without taking it (the caller
    /// checked [`unconsumed`](Self::unconsumed)).
    pub fn peek(&self, ahead: u32) -> Result<Req, RingError> {
        let mut buf = vec![0u8; std::mem::size_of::<Req>()];
        self.page.read(
            self.slot_offset(self.req_cons.wrapping_add(ahead)),
            &mut buf,
        )?;
        // The buffer has exactly the request's size: this cannot fail.
        Ok(Req::read_from_bytes(&buf).unwrap_or_default())
    }

    /// Takes the next request (the caller checked [`unconsumed`](Self::unconsumed)).
    pub fn take(&mut self) -> Result<Req, RingError> {
        let r = self.peek(0)?;
        self.req_cons = self.req_cons.wrapping_add(1);
        Ok(r)
    }

    /// Puts a response in the next slot (published by
    /// [`push_responses`](Self::push_responses)); never more than the requests taken.
    pub fn put(&mut self, rsp: &Rsp) -> Result<(), RingError> {
        if self.req_cons.wrapping_sub(self.rsp_prod_pvt) == 0 {
            return Ok(());
        }
        self.page
            .write(self.slot_offset(self.rsp_prod_pvt), rsp.as_bytes())?;
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publishes the responses put so far; true when the frontend asked to be told.
    pub fn push_responses(&mut self) -> Result<bool, RingError> {
        let prod = self.page.atomic_u32(RSP_PROD)?;
        let old = prod.load(SeqCst);
        let new = self.rsp_prod_pvt;
        if old == new {
            return Ok(false);
        }
        fence(SeqCst);
        prod.store(new, SeqCst);
        fence(SeqCst);
        let event = self.page.atomic_u32(RSP_EVENT)?.load(SeqCst);
        Ok(need_notify(old, new, event))
    }

    /// `RING_FINAL_CHECK_FOR_REQUESTS`: asks to be notified of the next request, then
    /// looks once more; true if requests arrived meanwhile.
    pub fn final_check(&mut self) -> Result<bool, RingError> {
        if self.unconsumed()? > 0 {
            return Ok(true);
        }
        self.page
            .atomic_u32(REQ_EVENT)?
            .store(self.req_cons.wrapping_add(1), SeqCst);
        fence(SeqCst);
        Ok(self.unconsumed()? > 0)
    }

    /// Asks to be notified once `n` requests are there (an RX ring waiting for enough
    /// buffers for a packet), then looks once more; true if they are there now.
    pub fn want_requests(&mut self, n: u32) -> Result<bool, RingError> {
        self.page
            .atomic_u32(REQ_EVENT)?
            .store(self.req_cons.wrapping_add(n.max(1)), SeqCst);
        fence(SeqCst);
        Ok(self.unconsumed()? >= n)
    }
}
