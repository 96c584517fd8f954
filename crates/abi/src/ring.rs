//! The generic shared ring of xen/include/public/io/ring.h: a header of producer and
//! event indices followed by a power-of-two array of request/response slots.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

// The xenstore ring page is defined with the rest of xs_wire.h; these names stay
// here too for the users of this module.
pub use crate::xs_wire::{
    XenstoreDomainInterface, XENSTORE_ERROR_PROTO, XENSTORE_ERROR_RINGIDX, XENSTORE_RING_SIZE,
    XS_CONNECTION, XS_ERROR_FIELD as XS_ERROR, XS_REQ_CONS, XS_REQ_PROD, XS_RSP_CONS, XS_RSP_PROD,
    XS_SERVER_FEATURES,
};

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
