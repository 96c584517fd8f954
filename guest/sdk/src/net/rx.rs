//! The receive side of the netif frontend: the RX ring kept full of granted pages
//! (`request-rx-copy`: the backend copies each frame into them) and frames put back
//! together from their responses (`NETRXF_more_data` chains, `NETRXF_extra_info`
//! slots skipped). The first response's flags say what the frame's checksum is: a
//! partial one (`NETRXF_csum_blank`) is completed here, a validated one
//! (`NETRXF_data_validated`) is trusted, and any other TCP/UDP frame is verified here
//! (the stack itself is told not to check TCP/UDP checksums: see [`super::device`]).
//!
//! Buffer `i % n` goes with ring index `i` (as Linux's netfront): at most `n`
//! requests are outstanding, so the index names the buffer even when a response lies
//! about its id. Every response is read once from the shared page and checked; a
//! frame with a lying or failed response is dropped and counted, never trusted.

use alloc::vec::Vec;

use rxen_abi::netif::{
    rx_response_data, NetifExtraInfo, NetifRxRequest, NetifRxResponse, RxResponseFault,
    NETIF_RX_SLOT_SIZE, NETRXF_CSUM_BLANK, NETRXF_DATA_VALIDATED, NETRXF_EXTRA_INFO,
    NETRXF_MORE_DATA, XEN_NETIF_EXTRA_FLAG_MORE,
};
use zerocopy::{FromBytes, IntoBytes};

use super::ring::FrontRing;
use super::PAGE;

/// Largest frame put back together from a chain (a 64 KiB packet and its header);
/// longer chains are dropped.
pub const MAX_RX_FRAME: usize = 0x10000 + 64;

/// What the receive side counted.
#[derive(Debug, Clone, Copy, Default)]
pub struct RxStats {
    /// Frames handed to the stack, and their bytes.
    pub packets: u64,
    pub bytes: u64,
    /// Frames dropped (any of the reasons below, or shorter than an Ethernet header).
    pub dropped: u64,
    /// Responses with an error status from the backend.
    pub errors: u64,
    /// Responses that broke the protocol (wrong id, data outside the page, a
    /// producer index ahead of the requests, a frame over [`MAX_RX_FRAME`]).
    pub protocol_violations: u64,
    /// Frames dropped for a TCP/UDP checksum that does not verify, or a partial one
    /// that cannot be completed.
    pub checksum_errors: u64,
}

pub(crate) struct RxQueue {
    ring: FrontRing,
    /// `n` pages, buffer `i` at `i * PAGE`, granted as `first_ref + i`.
    buffers: *mut u8,
    n: u32,
    first_ref: u32,
    /// The frame being put together, or the complete one last returned.
    frame: Vec<u8>,
    /// The frame's bytes are complete and were handed out: clear before reuse.
    handed_out: bool,
    /// A response of the frame in progress failed or lied: drop it at its end.
    frame_bad: bool,
    /// The next slot(s) are extra-info slots.
    extra_pending: bool,
    /// The flags of the first response of the frame in progress.
    frame_flags: Option<u16>,
    pub(crate) stats: RxStats,
}

impl RxQueue {
    /// A queue over `ring` with `n` (a power of two, at most the ring's slots)
    /// buffer pages at `buffers`, granted from `first_ref` on.
    pub(crate) fn new(ring: FrontRing, buffers: *mut u8, n: u32, first_ref: u32) -> Self {
        Self {
            ring,
            buffers,
            n,
            first_ref,
            frame: Vec::with_capacity(PAGE),
            handed_out: false,
            frame_bad: false,
            extra_pending: false,
            frame_flags: None,
            stats: RxStats::default(),
        }
    }

    /// Posts a request for every buffer not outstanding (published by
    /// [`publish`](Self::publish)).
    pub(crate) fn refill(&mut self) {
        while self.ring.outstanding() < self.n {
            let idx = self.ring.req_prod_pvt;
            let id = idx % self.n;
            let req = NetifRxRequest {
                id: id as u16,
                pad: 0,
                gref: self.first_ref + id,
            };
            let slot = self.ring.slot(idx);
            // SAFETY: the slot lies in the ring page and is ours until req_prod covers
            // it; 8 bytes (the slot size).
            unsafe {
                core::ptr::copy_nonoverlapping(req.as_bytes().as_ptr(), slot, NETIF_RX_SLOT_SIZE)
            };
            self.ring.req_prod_pvt = idx.wrapping_add(1);
        }
    }

    /// Publishes posted requests; true if the backend asked to be notified.
    pub(crate) fn publish(&mut self) -> bool {
        self.ring.publish()
    }

    /// Re-arms the response event; true if responses are already waiting.
    pub(crate) fn arm(&self) -> bool {
        self.ring.arm_rsp_event()
    }

    /// Reads responses until a whole frame is there; it is then in
    /// [`frame`](Self::frame) until the next call. False when no frame is complete
    /// (a partial chain stays for the next call).
    pub(crate) fn next_frame(&mut self) -> bool {
        if self.handed_out {
            self.frame.clear();
            self.handed_out = false;
        }
        let prod = self.ring.rsp_prod().unwrap_or_else(|clamped| {
            self.stats.protocol_violations += 1;
            clamped
        });
        while self.ring.rsp_cons != prod {
            let idx = self.ring.rsp_cons;
            // SAFETY: a slot of the ring page the backend published; read once, as a
            // copy, so later changes by the backend cannot affect the checks below.
            let raw: [u8; NETIF_RX_SLOT_SIZE] =
                unsafe { core::ptr::read_volatile(self.ring.slot(idx) as *const [u8; 8]) };
            self.ring.rsp_cons = idx.wrapping_add(1);
            if self.extra_pending {
                let more = NetifExtraInfo::read_from_bytes(&raw)
                    .map(|e| e.flags & XEN_NETIF_EXTRA_FLAG_MORE != 0)
                    .unwrap_or(false);
                self.extra_pending = more;
                continue;
            }
            let Ok(rsp) = NetifRxResponse::read_from_bytes(&raw) else {
                continue;
            };
            if rsp.flags & NETRXF_EXTRA_INFO != 0 {
                self.extra_pending = true;
            }
            let flags = *self.frame_flags.get_or_insert(rsp.flags);
            self.take_data(idx % self.n, &rsp);
            if rsp.flags & NETRXF_MORE_DATA != 0 {
                continue;
            }
            self.frame_flags = None;
            let bad = core::mem::take(&mut self.frame_bad) || self.frame.len() < 14;
            if bad || !self.checksum_ok(flags) {
                self.stats.dropped += 1;
                self.frame.clear();
                continue;
            }
            self.stats.packets += 1;
            self.stats.bytes += self.frame.len() as u64;
            self.handed_out = true;
            return true;
        }
        false
    }

    /// Appends the bytes of one response (for buffer `buffer`) to the frame, or marks
    /// the frame bad.
    fn take_data(&mut self, buffer: u32, rsp: &NetifRxResponse) {
        let data = match rx_response_data(rsp, buffer as u16, PAGE) {
            Ok(d) if self.frame.len() + d.len() <= MAX_RX_FRAME => d,
            Ok(_) | Err(RxResponseFault::WrongId { .. } | RxResponseFault::OutsidePage { .. }) => {
                self.stats.protocol_violations += 1;
                self.frame_bad = true;
                return;
            }
            Err(RxResponseFault::Status(_)) => {
                self.stats.errors += 1;
                self.frame_bad = true;
                return;
            }
        };
        if self.frame_bad {
            return;
        }
        let at = self.frame.len();
        self.frame.resize(at + data.len(), 0);
        // SAFETY: bytes `data` (checked to lie within one page) of buffer page
        // `buffer` (< n), inside the buffer allocation; the backend answered for it,
        // so it no longer writes it.
        unsafe {
            core::ptr::copy_nonoverlapping(
                self.buffers.add(buffer as usize * PAGE + data.start),
                self.frame.as_mut_ptr().add(at),
                data.len(),
            )
        };
    }

    /// Makes the complete frame's TCP/UDP checksum right or proves it is: completes a
    /// partial one, trusts a validated one, verifies the rest. False: drop the frame.
    fn checksum_ok(&mut self, flags: u16) -> bool {
        let ok = if flags & NETRXF_CSUM_BLANK != 0 {
            rxen_netcsum::parse_l4(&self.frame)
                .and_then(|h| {
                    let (start, offset) = (h.l4_start as u16, h.csum_offset() as u16);
                    // The field holds the pseudo-header sum (Linux's partial state).
                    rxen_netcsum::complete_checksum(&mut self.frame, start, offset)
                })
                .is_ok()
        } else if flags & NETRXF_DATA_VALIDATED != 0 {
            true
        } else {
            // Not TCP/UDP (ARP, ICMP...): the stack checks what it has checksums for.
            rxen_netcsum::verify(&self.frame).unwrap_or(true)
        };
        if !ok {
            self.stats.checksum_errors += 1;
        }
        ok
    }

    /// The frame [`next_frame`](Self::next_frame) completed.
    pub(crate) fn frame(&self) -> &[u8] {
        &self.frame
    }
}
