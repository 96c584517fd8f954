//! The shared grant entry word (`flags | domid << 16`), updated as Xen does: one
//! atomic load, checks, then a compare-and-swap that sets `GTF_reading` /
//! `GTF_writing`; the frame is loaded once, after the pin succeeded.

use std::sync::atomic::{AtomicU32, Ordering};

use rxen_abi::grant_table::*;
use rxen_abi::DomId;

use super::GrantError;

/// How often a compare-and-swap may lose against the guest before the entry counts
/// as unstable (Xen gives up after 4 retries too).
const PIN_RETRIES: u32 = 4;

/// What a pin asks of the entry.
#[derive(Clone, Copy, Debug)]
pub(super) struct PinRequest {
    pub gref: u32,
    pub grantee: DomId,
    pub readonly: bool,
    /// The entry is not pinned yet: check its type and domid (Xen checks them only on
    /// the first pin; later pins trust the active entry).
    pub first: bool,
    /// A mapping (rather than a copy): v1 entries with `GTF_sub_page` are refused.
    pub mapping: bool,
}

/// Sets `GTF_reading` (and `GTF_writing` for a writable pin) in the entry word after
/// checking it, as Xen's `_set_status_v1`.
pub(super) fn pin(word: &AtomicU32, req: PinRequest) -> Result<(), GrantError> {
    let mask = if req.mapping {
        GTF_TYPE_MASK | GTF_SUB_PAGE
    } else {
        GTF_TYPE_MASK
    };
    let mut current = word.load(Ordering::Acquire);
    for _ in 0..=PIN_RETRIES {
        let flags = current as u16;
        let domid = (current >> 16) as u16;
        if req.first && ((flags & mask) != GTF_PERMIT_ACCESS || domid != req.grantee) {
            return Err(GrantError::NotPermitted {
                gref: req.gref,
                grantee: req.grantee,
                flags,
                domid,
            });
        }
        let mut new_flags = flags | GTF_READING;
        if !req.readonly {
            if flags & GTF_READONLY != 0 {
                return Err(GrantError::ReadOnlyGrant(req.gref));
            }
            new_flags |= GTF_WRITING;
        }
        let new = (current & 0xffff_0000) | u32::from(new_flags);
        match word.compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Ok(()),
            Err(seen) => current = seen,
        }
    }
    Err(GrantError::Unstable(req.gref))
}

/// Clears `flags` bits of the entry word (Xen's `gnttab_clear_flags`).
pub(super) fn clear_flags(word: &AtomicU32, flags: u16) {
    word.fetch_and(!u32::from(flags), Ordering::AcqRel);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(first: bool, readonly: bool) -> PinRequest {
        PinRequest {
            gref: 1,
            grantee: 0,
            readonly,
            first,
            mapping: true,
        }
    }

    #[test]
    fn pin_checks_type_domid_and_readonly() {
        let w = AtomicU32::new(u32::from(GTF_PERMIT_ACCESS) | (5 << 16));
        assert!(matches!(
            pin(&w, req(true, true)),
            Err(GrantError::NotPermitted { domid: 5, .. })
        ));
        let w = AtomicU32::new(u32::from(GTF_ACCEPT_TRANSFER));
        assert!(pin(&w, req(true, true)).is_err());
        let w = AtomicU32::new(u32::from(GTF_PERMIT_ACCESS | GTF_SUB_PAGE));
        assert!(pin(&w, req(true, true)).is_err());
        let w = AtomicU32::new(u32::from(GTF_PERMIT_ACCESS | GTF_READONLY));
        assert_eq!(pin(&w, req(true, false)), Err(GrantError::ReadOnlyGrant(1)));
        pin(&w, req(true, true)).unwrap();
        assert_eq!(
            w.load(Ordering::SeqCst) as u16,
            GTF_PERMIT_ACCESS | GTF_READONLY | GTF_READING
        );
        let w = AtomicU32::new(u32::from(GTF_PERMIT_ACCESS));
        pin(&w, req(true, false)).unwrap();
        assert_eq!(
            w.load(Ordering::SeqCst) as u16,
            GTF_PERMIT_ACCESS | GTF_READING | GTF_WRITING
        );
        clear_flags(&w, GTF_WRITING);
        assert_eq!(
            w.load(Ordering::SeqCst) as u16,
            GTF_PERMIT_ACCESS | GTF_READING
        );
        // A later pin does not re-check type and domid (Xen trusts the active entry).
        let w = AtomicU32::new(0);
        pin(&w, req(false, true)).unwrap();
    }
}
