//! The transmit path: packets the guest put on its TX ring, copied out of its granted
//! pages (`GNTTABOP_copy` semantics: each fragment within one page) and handed to the
//! host as Ethernet frames.
//!
//! A packet is a chain of requests: the first's `size` is the whole packet's, each
//! later one's its own, all but the last flagged `NETTXF_more_data`; a request flagged
//! `NETTXF_extra_info` is followed by extra-info slots, answered `NETIF_RSP_NULL`: a GSO
//! slot asks the host to segment the packet, other kinds are ignored. The first
//! request's `NETTXF_csum_blank` asks for a checksum and `NETTXF_data_validated` says
//! it was checked; both travel to the host with the frame ([`super::offload`]). Every slot gets a response with
//! its request's `id`. A packet that lies (a fragment leaving its page, fragments
//! larger than the packet, more than [`MAX_SLOTS`] slots, shorter than an Ethernet
//! header, a grant that does not copy) is dropped: `NETIF_RSP_ERROR` for each of its
//! slots (the caller logs: [`super::connection::Io`], with a growing interval). A chain the frontend has not finished producing is left on
//! the ring until it has.

use rxen_abi::netif::{
    NetifExtraInfo, NetifTxRequest, NetifTxResponse, NETIF_RSP_ERROR, NETIF_RSP_NULL,
    NETIF_RSP_OKAY, NETTXF_CSUM_BLANK, NETTXF_DATA_VALIDATED, NETTXF_EXTRA_INFO, NETTXF_MORE_DATA,
    XEN_NETIF_EXTRA_FLAG_MORE, XEN_NETIF_EXTRA_TYPE_GSO, XEN_NETIF_NR_SLOTS_MIN,
};
use rxen_abi::PAGE_SIZE;
use zerocopy::{FromBytes, IntoBytes};

use super::offload::{self, OffloadError};
use super::ring::{NetRing, RingError};
use super::tap::FrameIo;
use crate::grant::{GrantTable, DOM0};

/// The TX ring.
pub type TxRing = NetRing<NetifTxRequest, NetifTxResponse>;

/// Most slots (data and extra) one packet may take (`XEN_NETIF_NR_SLOTS_MIN`).
pub const MAX_SLOTS: u32 = XEN_NETIF_NR_SLOTS_MIN as u32;
/// The shortest frame sent: an Ethernet header.
pub const ETH_HLEN: usize = 14;

/// What one pass over the TX ring did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TxStats {
    pub sent: u32,
    pub dropped: u32,
    /// Why the first packet dropped in the pass was dropped (the caller logs it).
    pub first_drop: Option<TxDrop>,
}

/// One slot of a packet: a data request, or an extra-info slot.
enum Slot {
    Data(NetifTxRequest),
    Extra(NetifExtraInfo),
}

/// The slots of the packet at the head of the ring; `None` when the frontend has not
/// produced all of it yet. A chain longer than [`MAX_SLOTS`] is cut there (it is
/// dropped whole: its first `MAX_SLOTS + 1` slots).
fn scan(ring: &TxRing, avail: u32) -> Result<Option<(Vec<Slot>, bool)>, RingError> {
    let mut slots = Vec::new();
    let mut extra_follows = false;
    let mut more = false;
    let mut i = 0u32;
    loop {
        if i >= avail {
            return Ok(None);
        }
        if i > MAX_SLOTS {
            return Ok(Some((slots, true)));
        }
        if extra_follows {
            // An extra-info slot: the first 8 bytes of the request slot.
            let raw = ring.peek(i)?;
            let extra = NetifExtraInfo::read_from_prefix(raw.as_bytes())
                .map(|(e, _)| e)
                .unwrap_or_default();
            slots.push(Slot::Extra(extra));
            extra_follows = extra.flags & XEN_NETIF_EXTRA_FLAG_MORE != 0;
        } else {
            let req = ring.peek(i)?;
            extra_follows = req.flags & NETTXF_EXTRA_INFO != 0;
            more = req.flags & NETTXF_MORE_DATA != 0;
            slots.push(Slot::Data(req));
        }
        i += 1;
        if !more && !extra_follows {
            return Ok(Some((slots, false)));
        }
    }
}

/// Why a packet was dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TxDrop {
    #[error("more than {MAX_SLOTS} slots")]
    TooManySlots,
    #[error("fragment at {offset}+{len} leaves its page")]
    Fragment { offset: u16, len: u16 },
    #[error("fragments add up to more than the packet's {0} bytes")]
    Sizes(u16),
    #[error("a {0}-byte packet is shorter than an Ethernet header")]
    Short(usize),
    #[error("grant {gref}: {why}")]
    Grant { gref: u32, why: String },
    #[error("offload: {0}")]
    Offload(#[from] OffloadError),
}

/// Copies the packet made of `data` requests out of the guest.
fn assemble(grants: &GrantTable, data: &[NetifTxRequest]) -> Result<Vec<u8>, TxDrop> {
    let Some(first) = data.first() else {
        return Err(TxDrop::Short(0));
    };
    let rest: u32 = data[1..].iter().map(|r| u32::from(r.size)).sum();
    let first_len = u32::from(first.size)
        .checked_sub(rest)
        .ok_or(TxDrop::Sizes(first.size))?;
    let mut frame = Vec::with_capacity(usize::from(first.size));
    for (i, r) in data.iter().enumerate() {
        let len = if i == 0 { first_len } else { u32::from(r.size) };
        if u64::from(r.offset) + u64::from(len) > PAGE_SIZE {
            return Err(TxDrop::Fragment {
                offset: r.offset,
                len: len as u16,
            });
        }
        let at = frame.len();
        frame.resize(at + len as usize, 0);
        grants
            .copy_from_grant(DOM0, r.gref, u64::from(r.offset), &mut frame[at..])
            .map_err(|e| TxDrop::Grant {
                gref: r.gref,
                why: e.to_string(),
            })?;
    }
    if frame.len() < ETH_HLEN {
        return Err(TxDrop::Short(frame.len()));
    }
    Ok(frame)
}

/// Sends every complete packet on the ring to `out` and answers its slots; returns
/// what it did and whether the frontend asked to be notified of the responses.
pub fn transmit(
    ring: &mut TxRing,
    grants: &GrantTable,
    out: &mut dyn FrameIo,
) -> Result<(TxStats, bool), RingError> {
    let mut stats = TxStats::default();
    loop {
        let avail = ring.unconsumed()?;
        if avail == 0 {
            break;
        }
        let Some((slots, too_long)) = scan(ring, avail)? else {
            break;
        };
        let data: Vec<NetifTxRequest> = slots
            .iter()
            .filter_map(|s| match s {
                Slot::Data(r) => Some(*r),
                Slot::Extra(_) => None,
            })
            .collect();
        let gso = slots.iter().find_map(|s| match s {
            Slot::Extra(e) if e.kind == XEN_NETIF_EXTRA_TYPE_GSO => {
                let (size, kind) = e.gso_fields();
                Some((kind, size))
            }
            _ => None,
        });
        let result = if too_long {
            Err(TxDrop::TooManySlots)
        } else {
            assemble(grants, &data).and_then(|mut frame| {
                let flags = data.first().map(|r| r.flags).unwrap_or(0);
                let meta = offload::tx_meta(
                    &mut frame,
                    flags & NETTXF_CSUM_BLANK != 0,
                    flags & NETTXF_DATA_VALIDATED != 0,
                    gso,
                )?;
                Ok((meta, frame))
            })
        };
        let status = match result {
            Ok((meta, frame)) => {
                out.send(&meta, &frame);
                stats.sent += 1;
                NETIF_RSP_OKAY
            }
            Err(why) => {
                stats.dropped += 1;
                stats.first_drop.get_or_insert(why);
                NETIF_RSP_ERROR
            }
        };
        for s in &slots {
            ring.take()?;
            let rsp = match s {
                Slot::Data(r) => NetifTxResponse { id: r.id, status },
                Slot::Extra(_) => NetifTxResponse {
                    id: 0,
                    status: NETIF_RSP_NULL,
                },
            };
            ring.put(&rsp)?;
        }
    }
    let notify = ring.push_responses()?;
    Ok((stats, notify))
}
