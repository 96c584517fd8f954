//! The generic shared ring of xen/include/public/io/ring.h: a header of producer and
//! event indices followed by a power-of-two array of request/response slots.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Ring index type (`RING_IDX`); indices are free-running and wrap modulo 2^32.
pub type RingIdx = u32;

/// Header of a shared ring page (`struct *_sring` without its slots).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SringHeader {
    pub req_prod: RingIdx,
    pub req_event: RingIdx,
    pub rsp_prod: RingIdx,
    pub rsp_event: RingIdx,
    /// `pvt` union (netif smartpoll, ...): 4 bytes.
    pub pvt: [u8; 4],
    pub pad: [u8; 44],
}

/// Offset of the first slot in a shared ring page.
pub const SRING_SLOTS_OFFSET: usize = core::mem::size_of::<SringHeader>();

/// Number of slots of a ring of `ring_bytes` bytes whose slot (the union of request and
/// response) is `slot_size` bytes: the largest power of two that fits (`__RING_SIZE`).
pub const fn ring_size(ring_bytes: usize, slot_size: usize) -> usize {
    if slot_size == 0 || ring_bytes <= SRING_SLOTS_OFFSET {
        return 0;
    }
    let n = (ring_bytes - SRING_SLOTS_OFFSET) / slot_size;
    if n == 0 {
        0
    } else {
        1 << (usize::BITS - 1 - n.leading_zeros())
    }
}

/// `RING_NEED_NOTIFY` test of `RING_PUSH_*_AND_CHECK_NOTIFY`: did the producer move
/// from `old` to `new` across the consumer's `event` index?
pub const fn need_notify(old: RingIdx, new: RingIdx, event: RingIdx) -> bool {
    new.wrapping_sub(event) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout_check::assert_layout;

    #[test]
    fn layouts() {
        assert_layout!(
            SringHeader,
            size = 64,
            req_prod = 0,
            req_event = 4,
            rsp_prod = 8,
            rsp_event = 12,
            pvt = 16,
            pad = 20
        );
    }

    #[test]
    fn ring_sizes_match_xen() {
        // blkif: 112-byte slots -> 32 slots in a page; netif tx: 12 -> 256; console-size 8 -> 256... capped by power of two.
        assert_eq!(ring_size(4096, 112), 32);
        assert_eq!(ring_size(4096, 12), 256);
        assert_eq!(ring_size(4096, 8), 256);
        assert_eq!(ring_size(4096, 4096), 0);
        assert_eq!(ring_size(10, 8), 0);
        assert_eq!(ring_size(4096, 0), 0);
    }

    #[test]
    fn notify_threshold() {
        assert!(need_notify(0, 1, 1));
        assert!(!need_notify(1, 2, 1));
        assert!(need_notify(u32::MAX, 1, 0));
    }
}

/// `struct xenstore_domain_interface` (io/xs_wire.h): the xenstore ring page.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenstoreDomainInterface {
    pub req: [u8; XENSTORE_RING_SIZE],
    pub rsp: [u8; XENSTORE_RING_SIZE],
    pub req_cons: u32,
    pub req_prod: u32,
    pub rsp_cons: u32,
    pub rsp_prod: u32,
    pub server_features: u32,
    pub connection: u32,
    pub error: u32,
}

/// Bytes in each direction of the xenstore ring.
pub const XENSTORE_RING_SIZE: usize = 1024;
/// Offsets of the index words of [`XenstoreDomainInterface`].
pub const XS_REQ_CONS: u64 = 2048;
pub const XS_REQ_PROD: u64 = 2052;
pub const XS_RSP_CONS: u64 = 2056;
pub const XS_RSP_PROD: u64 = 2060;
pub const XS_SERVER_FEATURES: u64 = 2064;
pub const XS_CONNECTION: u64 = 2068;
pub const XS_ERROR: u64 = 2072;
/// `XENSTORE_ERROR_PROTO`: the guest broke the ring protocol.
pub const XENSTORE_ERROR_PROTO: u32 = 3;
/// `XENSTORE_ERROR_RINGIDX`: invalid ring index.
pub const XENSTORE_ERROR_RINGIDX: u32 = 2;

#[cfg(test)]
mod xs_ring_tests {
    use super::*;
    use crate::layout_check::assert_layout;

    #[test]
    fn xenstore_interface_layout() {
        assert_layout!(
            XenstoreDomainInterface,
            size = 2076,
            req = 0,
            rsp = 1024,
            req_cons = 2048,
            req_prod = 2052,
            rsp_cons = 2056,
            rsp_prod = 2060,
            server_features = 2064,
            connection = 2068,
            error = 2072
        );
    }
}
