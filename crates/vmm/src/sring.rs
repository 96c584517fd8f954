//! What rxen's backends share about Xen's shared rings (`io/ring.h`): where the four
//! indices sit in the ring's first page, and how a frontend breaks the protocol.
//! The ring code itself lives with each backend (`blkback::ring`, `netback::ring`):
//! their slot types and page counts differ.

use crate::grant::GrantError;

/// Byte offsets of `req_prod`, `req_event`, `rsp_prod`, `rsp_event` in the first page.
pub const REQ_PROD: u64 = core::mem::offset_of!(rxen_abi::ring::SringHeader, req_prod) as u64;
pub const REQ_EVENT: u64 = core::mem::offset_of!(rxen_abi::ring::SringHeader, req_event) as u64;
pub const RSP_PROD: u64 = core::mem::offset_of!(rxen_abi::ring::SringHeader, rsp_prod) as u64;
pub const RSP_EVENT: u64 = core::mem::offset_of!(rxen_abi::ring::SringHeader, rsp_event) as u64;

/// The frontend broke the ring protocol.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("req_prod {prod:#x} is more than {size} requests ahead of the responses ({rsp:#x})")]
    Overflow { prod: u32, rsp: u32, size: u32 },
    #[error("ring page: {0}")]
    Page(#[from] GrantError),
}

#[cfg(test)]
mod tests {
    #[test]
    fn indices_are_where_ring_h_puts_them() {
        assert_eq!(
            (
                super::REQ_PROD,
                super::REQ_EVENT,
                super::RSP_PROD,
                super::RSP_EVENT
            ),
            (0, 4, 8, 12)
        );
    }
}
