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
//!
//! Offloads ([`RxOffload`], what the frontend said it takes): a partially checksummed
//! frame goes out flagged `NETRXF_csum_blank | NETRXF_data_validated` to a frontend that
//! takes partial checksums for its IP version, else its checksum is completed here; a
//! checked one is flagged `NETRXF_data_validated`; an unsegmented TCP frame (GSO) goes
//! to a frontend that asked for that GSO type with a GSO extra-info slot right after
//! its first response (`NETRXF_extra_info`), and is dropped for others (the TAP is told
//! not to hand such frames over for them: [`super::tap::Tap::set_offload`]).

use std::collections::VecDeque;

use rxen_abi::netif::{
    NetifExtraInfo, NetifRxRequest, NetifRxResponse, NETIF_RSP_ERROR, NETRXF_CSUM_BLANK,
    NETRXF_DATA_VALIDATED, NETRXF_EXTRA_INFO, NETRXF_MORE_DATA, XEN_NETIF_GSO_TYPE_TCPV4,
    XEN_NETIF_GSO_TYPE_TCPV6,
};
use rxen_abi::PAGE_SIZE;
use zerocopy::IntoBytes;

use super::offload::{self, Checksum, IpVersion, PacketMeta};
use super::ring::{NetRing, RingError};
use crate::grant::{GrantTable, DOM0};

/// The RX ring.
pub type RxRing = NetRing<NetifRxRequest, NetifRxResponse>;

/// Frames held for the guest at most while it has no buffers.
pub const QUEUE_FRAMES: usize = 256;
/// The largest frame taken from the host: a 64 KiB IP packet (GSO) and its Ethernet
/// header with a VLAN tag.
pub const MAX_FRAME: usize = 0x10000 + 18;

/// What the frontend takes on its RX ring (its `feature-*` nodes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RxOffload {
    /// Frames over several buffers (`feature-sg`).
    pub sg: bool,
    /// Partial checksums of IPv4 (not `feature-no-csum-offload`) and IPv6
    /// (`feature-ipv6-csum-offload`) frames.
    pub csum_v4: bool,
    pub csum_v6: bool,
    /// Unsegmented TCP (`feature-gso-tcpv4`, `feature-gso-tcpv6`); needs `sg`.
    pub gso_v4: bool,
    pub gso_v6: bool,
}

impl RxOffload {
    fn csum(&self, ip: IpVersion) -> bool {
        match ip {
            IpVersion::V4 => self.csum_v4,
            IpVersion::V6 => self.csum_v6,
        }
    }

    /// Whether unsegmented TCP frames of `ip` may go to the frontend.
    pub fn gso(&self, ip: IpVersion) -> bool {
        self.sg
            && self.csum(ip)
            && match ip {
                IpVersion::V4 => self.gso_v4,
                IpVersion::V6 => self.gso_v6,
            }
    }
}

/// Frames waiting for the guest's buffers.
#[derive(Debug, Default)]
pub struct RxQueue {
    frames: VecDeque<(PacketMeta, Vec<u8>)>,
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
    pub fn push(&mut self, meta: PacketMeta, frame: Vec<u8>) {
        if self.frames.len() >= QUEUE_FRAMES {
            self.frames.pop_front();
            self.dropped += 1;
        }
        self.frames.push_back((meta, frame));
    }
}

/// Buffers a frame of `len` bytes takes.
fn slots_for(len: usize) -> u32 {
    len.div_ceil(PAGE_SIZE as usize).max(1) as u32
}

/// How a frame goes to this frontend: its first response's checksum flags and its GSO
/// extra-info slot, after fixing what the frontend cannot take; `Err` when it cannot
/// take the frame at all.
fn prepare(
    meta: &PacketMeta,
    frame: &mut [u8],
    offload: &RxOffload,
) -> Result<(u16, Option<NetifExtraInfo>), String> {
    let mut flags = 0;
    match meta.csum {
        Checksum::Unverified => {}
        Checksum::Validated => flags |= NETRXF_DATA_VALIDATED,
        Checksum::Partial { start, offset } => {
            let ip = match meta.gso {
                Some(g) => Some(g.ip),
                None => offload::parse_l4(frame).ok().map(|h| h.ip),
            };
            if ip.is_some_and(|ip| offload.csum(ip)) {
                flags |= NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED;
            } else {
                offload::complete_checksum(frame, start, offset).map_err(|e| e.to_string())?;
                flags |= NETRXF_DATA_VALIDATED;
            }
        }
    }
    let extra = match meta.gso {
        None => None,
        Some(g) if offload.gso(g.ip) => {
            let kind = match g.ip {
                IpVersion::V4 => XEN_NETIF_GSO_TYPE_TCPV4,
                IpVersion::V6 => XEN_NETIF_GSO_TYPE_TCPV6,
            };
            flags |= NETRXF_EXTRA_INFO;
            Some(NetifExtraInfo::gso(g.size, kind, 0))
        }
        Some(_) => return Err("an unsegmented frame for a frontend without GSO".into()),
    };
    Ok((flags, extra))
}

/// Copies queued frames into the guest's buffers while there are enough; when a frame
/// waits for buffers, asks the frontend to notify when they come. Returns whether the
/// frontend asked to be notified of the responses.
pub fn deliver(
    ring: &mut RxRing,
    grants: &GrantTable,
    queue: &mut RxQueue,
    offload: &RxOffload,
    name: &str,
) -> Result<bool, RingError> {
    while let Some((meta, frame)) = queue.frames.front() {
        let data_slots = slots_for(frame.len());
        let need = data_slots + u32::from(meta.gso.is_some());
        if data_slots > 1 && !offload.sg {
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
        let Some((meta, mut frame)) = queue.frames.pop_front() else {
            break;
        };
        let (first_flags, extra) = match prepare(&meta, &mut frame, offload) {
            Ok(v) => v,
            Err(why) => {
                tracing::debug!("{name}: RX frame of {} bytes dropped: {why}", frame.len());
                queue.dropped += 1;
                continue;
            }
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
            let more = i + 1 < data_slots as usize;
            let mut flags = if more { NETRXF_MORE_DATA } else { 0 };
            if i == 0 {
                flags |= first_flags;
            }
            rsps.push(NetifRxResponse {
                id: req.id,
                offset: 0,
                flags,
                status: chunk.len() as i16,
            });
            if let (0, Some(extra)) = (i, extra) {
                // The extra-info slot takes the next request's place in the ring.
                ring.take()?;
                let mut slot = NetifRxResponse::default();
                slot.as_mut_bytes().copy_from_slice(extra.as_bytes());
                rsps.push(slot);
            }
        }
        let extra_at = extra.map(|_| 1);
        for (i, mut r) in rsps.into_iter().enumerate() {
            if failed && Some(i) != extra_at {
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
        assert_eq!(slots_for(0xFFFF), 16);
        assert_eq!(slots_for(MAX_FRAME), 17);
    }
}
