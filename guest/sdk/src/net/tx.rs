//! The transmit side of the netif frontend: a pool of pages granted read-only to the
//! backend, one frame per page and per TX request (frames up to one page: the stack's
//! MTU is 1500), published in batches. Buffers come back by the `id` of their
//! response, which is checked against the requests in flight.

use alloc::vec;
use alloc::vec::Vec;

use rxen_abi::netif::{NetifTxRequest, NetifTxResponse, NETIF_RSP_OKAY, NETIF_TX_SLOT_SIZE};
use zerocopy::{FromBytes, IntoBytes};

use super::ring::FrontRing;
use super::PAGE;

/// What the transmit side counted.
#[derive(Debug, Clone, Copy, Default)]
pub struct TxStats {
    /// Frames put on the ring, and their bytes.
    pub packets: u64,
    pub bytes: u64,
    /// Frames not sent: no free buffer, or larger than a page.
    pub dropped: u64,
    /// Responses with an error status (the backend dropped the frame).
    pub errors: u64,
    /// Responses that broke the protocol (unknown id, producer ahead of requests).
    pub protocol_violations: u64,
}

pub(crate) struct TxQueue {
    ring: FrontRing,
    /// `n` pages, buffer `i` at `i * PAGE`, granted as `first_ref + i`.
    buffers: *mut u8,
    first_ref: u32,
    free: Vec<u16>,
    in_flight: Vec<bool>,
    pub(crate) stats: TxStats,
}

impl TxQueue {
    pub(crate) fn new(ring: FrontRing, buffers: *mut u8, n: u32, first_ref: u32) -> Self {
        Self {
            ring,
            buffers,
            first_ref,
            free: (0..n as u16).rev().collect(),
            in_flight: vec![false; n as usize],
            stats: TxStats::default(),
        }
    }

    /// Can a frame be queued now?
    pub(crate) fn has_space(&self) -> bool {
        !self.free.is_empty() && self.ring.outstanding() < self.ring.slots()
    }

    /// Takes the backend's responses and frees their buffers.
    pub(crate) fn reclaim(&mut self) {
        let prod = self.ring.rsp_prod().unwrap_or_else(|clamped| {
            self.stats.protocol_violations += 1;
            clamped
        });
        while self.ring.rsp_cons != prod {
            let slot = self.ring.slot(self.ring.rsp_cons);
            // SAFETY: a published response slot of the ring page, read once as a copy.
            let raw: [u8; 4] = unsafe { core::ptr::read_volatile(slot as *const [u8; 4]) };
            self.ring.rsp_cons = self.ring.rsp_cons.wrapping_add(1);
            let Ok(rsp) = NetifTxResponse::read_from_bytes(&raw) else {
                continue;
            };
            let id = usize::from(rsp.id);
            if self.in_flight.get(id).copied() != Some(true) {
                self.stats.protocol_violations += 1;
                continue;
            }
            self.in_flight[id] = false;
            self.free.push(rsp.id);
            if rsp.status != NETIF_RSP_OKAY {
                self.stats.errors += 1;
            }
        }
    }

    /// Builds a frame of `len` bytes with `f` in a free buffer and queues it (not yet
    /// published). Without a free buffer, or for a frame over a page, `f` writes into
    /// scratch memory and the frame is counted as dropped.
    pub(crate) fn send<R>(&mut self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
        if len > PAGE || !self.has_space() {
            self.stats.dropped += 1;
            let mut scratch = vec![0u8; len];
            return f(&mut scratch);
        }
        let Some(id) = self.free.pop() else {
            let mut scratch = vec![0u8; len];
            return f(&mut scratch);
        };
        // SAFETY: buffer page `id` (< n) of the pool, not in flight, so the backend
        // does not read it now; `len` <= one page.
        let buf = unsafe {
            core::slice::from_raw_parts_mut(self.buffers.add(usize::from(id) * PAGE), len)
        };
        let r = f(buf);
        let req = NetifTxRequest {
            gref: self.first_ref + u32::from(id),
            offset: 0,
            flags: 0,
            id,
            size: len as u16,
        };
        let idx = self.ring.req_prod_pvt;
        // SAFETY: the slot lies in the ring page and is ours until req_prod covers it
        // (has_space checked that the ring has room); 12 bytes, the slot size.
        unsafe {
            core::ptr::copy_nonoverlapping(
                req.as_bytes().as_ptr(),
                self.ring.slot(idx),
                NETIF_TX_SLOT_SIZE,
            )
        };
        self.ring.req_prod_pvt = idx.wrapping_add(1);
        self.in_flight[usize::from(id)] = true;
        self.stats.packets += 1;
        self.stats.bytes += len as u64;
        r
    }

    /// Publishes queued frames; true if the backend asked to be notified.
    pub(crate) fn publish(&mut self) -> bool {
        self.ring.publish()
    }

    /// Re-arms the response event; true if responses are already waiting.
    pub(crate) fn arm(&self) -> bool {
        self.ring.arm_rsp_event()
    }
}
