//! rxen's extension record: the VMM state Xen keeps in the hypervisor and has no
//! record for (event channels, grant table, trap tables and callbacks, timers, the
//! KVM register state, console and xenstore ring details).
//!
//! It travels in a libxl `EMULATOR_CONTEXT` record (type 3), emulator id 0
//! ("unknown"), index 0 — the record Xen uses for a device model's own opaque state.
//! Xen reserves libxc/libxl record types with bit 31 set for optional records, but
//! Xen 4.17's `verify-stream-v2` rejects every type it does not know, in either
//! stream, so a private type would make our images fail Xen's own checker. The body:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | emulator id (u32, 0), index (u32, 0) — libxl's emulator header |
//! | 8 | 8 | magic `"RXENVMM\0"` |
//! | 16 | 4 | version (u32 LE), [`RXEN_STATE_VERSION`] |
//! | 20 | 4 | reserved, 0 |
//! | 24 | n | the state document: UTF-8 JSON whose schema is the version's |
//!
//! A reader refuses versions it does not know; the VMM owns the document's schema
//! (`docs/migration.md`).

use crate::error::StreamError;
use crate::framing::le_u32;

/// The magic after libxl's emulator header.
pub const RXEN_STATE_MAGIC: &[u8; 8] = b"RXENVMM\0";
/// The version this build writes: 2 added the device backends' state (a version 1
/// document is a version 2 document without devices); 3 added the per-vCPU state a
/// Linux PV kernel sets up (runstate area, guest CR4, virtual IOPL, guest user mode,
/// a moved `vcpu_info`; a version 2 document is a version 3 document whose vCPUs
/// never set them).
pub const RXEN_STATE_VERSION: u32 = 3;
/// The oldest version this build reads.
pub const RXEN_STATE_MIN_VERSION: u32 = 1;

/// rxen's VMM state record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RxenState {
    pub version: u32,
    /// The state document (JSON).
    pub document: Vec<u8>,
}

impl RxenState {
    /// A record of the current version.
    pub fn new(document: Vec<u8>) -> Self {
        Self {
            version: RXEN_STATE_VERSION,
            document,
        }
    }

    pub(crate) fn encode_head(&self) -> [u8; 24] {
        let mut h = [0u8; 24];
        h[8..16].copy_from_slice(RXEN_STATE_MAGIC);
        h[16..20].copy_from_slice(&self.version.to_le_bytes());
        h
    }

    /// Parses an `EMULATOR_CONTEXT` body.
    pub(crate) fn decode(body: &[u8]) -> Result<Self, StreamError> {
        let bad = |d: &str| StreamError::bad("rxen state (EMULATOR_CONTEXT)", d);
        if body.len() < 24 {
            return Err(bad("shorter than its 24-byte header"));
        }
        if le_u32(body, 0) != 0 || le_u32(body, 4) != 0 {
            return Err(bad("emulator id/index are not rxen's (0, 0)"));
        }
        if &body[8..16] != RXEN_STATE_MAGIC {
            return Err(bad("no RXENVMM magic"));
        }
        let version = le_u32(body, 16);
        if !(RXEN_STATE_MIN_VERSION..=RXEN_STATE_VERSION).contains(&version) {
            return Err(StreamError::bad(
                "rxen state (EMULATOR_CONTEXT)",
                format!(
                    "version {version}; this build reads versions \
                     {RXEN_STATE_MIN_VERSION} to {RXEN_STATE_VERSION}"
                ),
            ));
        }
        if le_u32(body, 20) != 0 {
            return Err(bad("reserved bits set"));
        }
        Ok(Self {
            version,
            document: body[24..].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn body(version: u32) -> Vec<u8> {
        let mut h = RxenState::new(b"{}".to_vec()).encode_head().to_vec();
        h[16..20].copy_from_slice(&version.to_le_bytes());
        h.extend_from_slice(b"{}");
        h
    }

    #[test]
    fn versions_one_to_three_are_read_others_refused() {
        assert_eq!(RxenState::new(Vec::new()).version, 3);
        for v in [1, 2, 3] {
            let s = RxenState::decode(&body(v)).unwrap();
            assert_eq!((s.version, &s.document[..]), (v, &b"{}"[..]));
        }
        for v in [0, 4, u32::MAX] {
            assert!(RxenState::decode(&body(v)).is_err(), "{v}");
        }
    }
}
