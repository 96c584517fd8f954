//! The receive path: frames from the host copied into buffers the guest posted on its
//! RX ring (`request-rx-copy`: each request names a writable grant of a page).
//!
//! A frame takes one buffer per page of its length, filled from offset 0; each is
//! answered with the request's `id`, `offset` 0, the bytes copied in `status`, and
//! `NETRXF_more_data` on every response of the frame but the last. A frame larger than
//! one page is delivered only to a frontend that offered `feature-sg`; others drop it.
//! A frame waits (in [`RxQueue`], bounded: beyond [`QUEUE_FRAMES`] the oldest go) until
//! enough buffers are posted. A buffer whose grant does not copy turns the frame's
//! responses into `NETIF_RSP_ERROR` (the frontend drops it) and a log line.

use std::collections::VecDeque;

use rxen_abi::netif::{NetifRxRequest, NetifRxResponse, NETIF_RSP_ERROR, NETRXF_MORE_DATA};
use rxen_abi::PAGE_SIZE;

use super::ring::{NetRing, RingError};
use crate::grant::{GrantTable, DOM0};

/// The RX ring.
pub type RxRing = NetRing<NetifRxRequest, NetifRxResponse>;

/// Frames held for the guest at most while it has no buffers.
pub const QUEUE_FRAMES: usize = 256;
/// The largest frame taken from the host (a netif packet's size is 16 bits).
pub const MAX_FRAME: usize = 0xFFFF;

/// Frames waiting for the guest's buffers.
#[derive(Debug, Default)]
pub struct RxQueue {
    frames: VecDeque<Vec<u8>>,
    /// Frames dropped because the queue was full or the frame too large.
    pub dropped: u64,
    /// Frames delivered.
    pub delivered: u64,
}

impl RxQueue {
    /// Whether more frames can be queued without dropping one.
    pub fn has_room(&self) -> bool {
        self.frames.len() < QUEUE_FRAMES
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether no frame waits.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Queues `frame` for the guest (dropping the oldest when full).
    pub fn push(&mut self, frame: Vec<u8>) {
        if self.frames.len() >= QUEUE_FRAMES {
            self.frames.pop_front();
            self.dropped += 1;
        }
        self.frames.push_back(frame);
    }
}

/// Buffers a frame of `len` bytes takes.
fn slots_for(len: usize) -> u32 {
    len.div_ceil(PAGE_SIZE as usize).max(1) as u32
}

/// Copies queued frames into the guest's buffers while there are enough; when a frame
/// waits for buffers, asks the frontend to notify when they come. Returns whether the
/// frontend asked to be notified of the responses.
pub fn deliver(
    ring: &mut RxRing,
    grants: &GrantTable,
    queue: &mut RxQueue,
    sg: bool,
    name: &str,
) -> Result<bool, RingError> {
    while let Some(frame) = queue.frames.front() {
        let need = slots_for(frame.len());
        if need > 1 && !sg {
            tracing::debug!(
                "{name}: RX frame of {} bytes dropped: the frontend has no feature-sg",
                frame.len()
            );
            queue.frames.pop_front();
            queue.dropped += 1;
            continue;
        }
        if ring.unconsumed()? < need && !ring.want_requests(need)? {
            break;
        }
        let Some(frame) = queue.frames.pop_front() else {
            break;
        };
        let mut rsps = Vec::with_capacity(need as usize);
        let mut failed = false;
        for (i, chunk) in frame.chunks(PAGE_SIZE as usize).enumerate() {
            let req = ring.take()?;
            if let Err(e) = grants.copy_to_grant(DOM0, req.gref, 0, chunk) {
                if !failed {
                    tracing::warn!("{name}: RX buffer grant {}: {e}; frame dropped", req.gref);
                }
                failed = true;
            }
            let more = i + 1 < need as usize;
            rsps.push(NetifRxResponse {
                id: req.id,
                offset: 0,
                flags: if more { NETRXF_MORE_DATA } else { 0 },
                status: chunk.len() as i16,
            });
        }
        for mut r in rsps {
            if failed {
                r.status = NETIF_RSP_ERROR;
            }
            ring.put(&r)?;
        }
        if failed {
            queue.dropped += 1;
        } else {
            queue.delivered += 1;
        }
    }
    ring.push_responses()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_per_frame() {
        assert_eq!(slots_for(0), 1);
        assert_eq!(slots_for(60), 1);
        assert_eq!(slots_for(4096), 1);
        assert_eq!(slots_for(4097), 2);
        assert_eq!(slots_for(MAX_FRAME), 16);
    }
}
