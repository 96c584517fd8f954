//! The network interface of xen/include/public/io/netif.h (x86-64): the slots of the
//! transmit (guest to backend) and receive (backend to guest) shared rings, their
//! flags and statuses, and the extra-info slot a flagged request is followed by.
//!
//! A packet on the TX ring is one request per fragment: the first carries the whole
//! packet's `size`, later ones their own; every one but the last has
//! [`NETTXF_MORE_DATA`]. On the RX ring (`request-rx-copy`) the frontend posts pages
//! (`gref`, `id`) and the backend answers each with the bytes it copied (`status` > 0,
//! `offset`, [`NETRXF_MORE_DATA`] when the packet continues in the next response).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::ring::ring_size;

/// `NETTXF_csum_blank`: the protocol checksum field is blank (offload).
pub const NETTXF_CSUM_BLANK: u16 = 1 << 0;
/// `NETTXF_data_validated`: the packet data has been validated against its checksum.
pub const NETTXF_DATA_VALIDATED: u16 = 1 << 1;
/// `NETTXF_more_data`: the packet continues in the next request.
pub const NETTXF_MORE_DATA: u16 = 1 << 2;
/// `NETTXF_extra_info`: the request is followed by an extra-info slot.
pub const NETTXF_EXTRA_INFO: u16 = 1 << 3;

/// `NETRXF_data_validated`.
pub const NETRXF_DATA_VALIDATED: u16 = 1 << 0;
/// `NETRXF_csum_blank`.
pub const NETRXF_CSUM_BLANK: u16 = 1 << 1;
/// `NETRXF_more_data`: the packet continues in the next response.
pub const NETRXF_MORE_DATA: u16 = 1 << 2;
/// `NETRXF_extra_info`: the response is followed by an extra-info slot.
pub const NETRXF_EXTRA_INFO: u16 = 1 << 3;
/// `NETRXF_gso_prefix` (deprecated).
pub const NETRXF_GSO_PREFIX: u16 = 1 << 4;

/// `NETIF_RSP_DROPPED`.
pub const NETIF_RSP_DROPPED: i16 = -2;
/// `NETIF_RSP_ERROR`.
pub const NETIF_RSP_ERROR: i16 = -1;
/// `NETIF_RSP_OKAY`.
pub const NETIF_RSP_OKAY: i16 = 0;
/// `NETIF_RSP_NULL`: the response of an extra-info slot.
pub const NETIF_RSP_NULL: i16 = 1;

/// `XEN_NETIF_EXTRA_FLAG_MORE`: another extra-info slot follows.
pub const XEN_NETIF_EXTRA_FLAG_MORE: u8 = 1 << 0;
/// `XEN_NETIF_EXTRA_TYPE_GSO`: the extra-info slot carries `u.gso`.
pub const XEN_NETIF_EXTRA_TYPE_GSO: u8 = 1;
/// `XEN_NETIF_GSO_TYPE_NONE`.
pub const XEN_NETIF_GSO_TYPE_NONE: u8 = 0;
/// `XEN_NETIF_GSO_TYPE_TCPV4`.
pub const XEN_NETIF_GSO_TYPE_TCPV4: u8 = 1;
/// `XEN_NETIF_GSO_TYPE_TCPV6`.
pub const XEN_NETIF_GSO_TYPE_TCPV6: u8 = 2;
/// `XEN_NETIF_NR_SLOTS_MIN`: slots a packet may take that every backend must accept.
pub const XEN_NETIF_NR_SLOTS_MIN: usize = 18;
/// `XEN_NETIF_MAX_TX_SIZE`: the largest packet a TX request may announce.
pub const XEN_NETIF_MAX_TX_SIZE: u32 = 0xFFFF;

/// `struct netif_tx_request`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct NetifTxRequest {
    /// Grant of the buffer page.
    pub gref: u32,
    /// Offset of the data in the page.
    pub offset: u16,
    /// `NETTXF_*`.
    pub flags: u16,
    /// Echoed in the response.
    pub id: u16,
    /// First request of a packet: the packet's size; later ones: this fragment's.
    pub size: u16,
}

/// `struct netif_tx_response`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct NetifTxResponse {
    pub id: u16,
    /// `NETIF_RSP_*`.
    pub status: i16,
}

/// `struct netif_extra_info`: a type, flags and 6 bytes of type-specific data.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct NetifExtraInfo {
    pub kind: u8,
    /// `XEN_NETIF_EXTRA_FLAG_*`.
    pub flags: u8,
    pub data: [u8; 6],
}

impl NetifExtraInfo {
    /// A `XEN_NETIF_EXTRA_TYPE_GSO` slot: segments of `size` bytes, `gso_type`
    /// (`XEN_NETIF_GSO_TYPE_*`), `flags` (`XEN_NETIF_EXTRA_FLAG_*`).
    pub fn gso(size: u16, gso_type: u8, flags: u8) -> Self {
        let mut data = [0u8; 6];
        data[..2].copy_from_slice(&size.to_le_bytes());
        data[2] = gso_type;
        Self {
            kind: XEN_NETIF_EXTRA_TYPE_GSO,
            flags,
            data,
        }
    }

    /// `u.gso.size` and `u.gso.type` of a GSO slot.
    pub fn gso_fields(&self) -> (u16, u8) {
        (
            u16::from_le_bytes([self.data[0], self.data[1]]),
            self.data[2],
        )
    }
}

/// `struct netif_rx_request`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct NetifRxRequest {
    /// Echoed in the response.
    pub id: u16,
    pub pad: u16,
    /// Grant of the page to receive into (writable).
    pub gref: u32,
}

/// `struct netif_rx_response`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct NetifRxResponse {
    pub id: u16,
    /// Offset of the data in the page.
    pub offset: u16,
    /// `NETRXF_*`.
    pub flags: u16,
    /// Negative: `NETIF_RSP_*`; positive: bytes received in this page.
    pub status: i16,
}

/// A TX ring slot: the union of request and response (12 bytes).
pub const NETIF_TX_SLOT_SIZE: usize = 12;
/// An RX ring slot: the union of request and response (8 bytes).
pub const NETIF_RX_SLOT_SIZE: usize = 8;
/// Slots of a one-page TX ring (`NET_TX_RING_SIZE`).
pub const NET_TX_RING_SIZE: usize = ring_size(crate::PAGE_SIZE as usize, NETIF_TX_SLOT_SIZE);
/// Slots of a one-page RX ring (`NET_RX_RING_SIZE`).
pub const NET_RX_RING_SIZE: usize = ring_size(crate::PAGE_SIZE as usize, NETIF_RX_SLOT_SIZE);

/// Why a frontend cannot use an RX response (`request-rx-copy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxResponseFault {
    /// The response names another buffer than the one posted at its ring index.
    WrongId { expected: u16, got: u16 },
    /// The backend failed the copy (`NETIF_RSP_*` < 0).
    Status(i16),
    /// `offset` + bytes leave the buffer's page.
    OutsidePage { offset: u16, len: u16 },
}

/// The bytes of buffer page (`page_size` bytes) that `rsp`, read from the ring slot
/// where the request for buffer `expected_id` was posted, says were received: the
/// frontend's check of a response before it trusts it.
pub fn rx_response_data(
    rsp: &NetifRxResponse,
    expected_id: u16,
    page_size: usize,
) -> Result<core::ops::Range<usize>, RxResponseFault> {
    if rsp.id != expected_id {
        return Err(RxResponseFault::WrongId {
            expected: expected_id,
            got: rsp.id,
        });
    }
    if rsp.status < 0 {
        return Err(RxResponseFault::Status(rsp.status));
    }
    let (offset, len) = (usize::from(rsp.offset), rsp.status as usize);
    if offset + len > page_size {
        return Err(RxResponseFault::OutsidePage {
            offset: rsp.offset,
            len: rsp.status as u16,
        });
    }
    Ok(offset..offset + len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout_check::assert_layout;

    #[test]
    fn layouts() {
        assert_layout!(
            NetifTxRequest,
            size = 12,
            gref = 0,
            offset = 4,
            flags = 6,
            id = 8,
            size = 10
        );
        assert_layout!(NetifTxResponse, size = 4, id = 0, status = 2);
        assert_layout!(NetifExtraInfo, size = 8, kind = 0, flags = 1, data = 2);
        assert_layout!(NetifRxRequest, size = 8, id = 0, pad = 2, gref = 4);
        assert_layout!(
            NetifRxResponse,
            size = 8,
            id = 0,
            offset = 2,
            flags = 4,
            status = 6
        );
    }

    #[test]
    fn ring_sizes() {
        assert_eq!(NET_TX_RING_SIZE, 256);
        assert_eq!(NET_RX_RING_SIZE, 256);
        assert_eq!(NETTXF_MORE_DATA, 4);
        assert_eq!(NETRXF_MORE_DATA, 4);
        assert_eq!(NETTXF_EXTRA_INFO, 8);
    }

    #[test]
    fn rx_responses_are_checked_before_use() {
        let rsp = |id, offset, status| NetifRxResponse {
            id,
            offset,
            flags: 0,
            status,
        };
        assert_eq!(rx_response_data(&rsp(3, 0, 1514), 3, 4096), Ok(0..1514));
        assert_eq!(rx_response_data(&rsp(3, 96, 4000), 3, 4096), Ok(96..4096));
        assert_eq!(rx_response_data(&rsp(3, 0, 0), 3, 4096), Ok(0..0));
        assert_eq!(
            rx_response_data(&rsp(4, 0, 60), 3, 4096),
            Err(RxResponseFault::WrongId {
                expected: 3,
                got: 4
            })
        );
        assert_eq!(
            rx_response_data(&rsp(3, 0, NETIF_RSP_ERROR), 3, 4096),
            Err(RxResponseFault::Status(NETIF_RSP_ERROR))
        );
        // Lies about where the data is: past the page, by offset or by length.
        assert_eq!(
            rx_response_data(&rsp(3, 4000, 200), 3, 4096),
            Err(RxResponseFault::OutsidePage {
                offset: 4000,
                len: 200
            })
        );
        assert!(rx_response_data(&rsp(3, u16::MAX, i16::MAX), 3, 4096).is_err());
        assert!(rx_response_data(&rsp(3, 0, 4097), 3, 4096).is_err());
    }
}
