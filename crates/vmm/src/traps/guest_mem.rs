//! Guest memory as the trap code reads and writes it on the guest's behalf (exception
//! frames, bounce and callback frames, `iret` contexts, instruction bytes).
//!
//! The one place to switch to a page-walking guest view: for now an rxen SDK domain
//! uses `GuestRam`'s checked guest accessors (its identity-mapped layout with holes),
//! and a Xen PV domain treats the address as guest-physical (true for Mini-OS, whose
//! virtual addresses equal its pseudo-physical ones, and `mfn == pfn` at build time),
//! allowing only the domain's own frames and, for writes, no frame that is a live page
//! table or descriptor table: a wrong guess about the address can then never hand the
//! guest rxen's pages or its page tables.

use crate::domain::DomainShared;
use crate::memory::MemoryError;
use crate::pv::layout::PAGE_SIZE;
use crate::pv::mmu::{FrameType, Mmu};

/// Whether the PV domain may have rxen touch `[addr, addr+len)` for it.
fn pv_allowed(mmu: &Mmu, addr: u64, len: u64, write: bool) -> bool {
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    if len == 0 {
        return true;
    }
    (addr / PAGE_SIZE..=(end - 1) / PAGE_SIZE).all(|pfn| {
        mmu.frame(pfn).is_some_and(|f| {
            f.owner.is_domains()
                && !(write
                    && f.type_count > 0
                    && matches!(f.ty, FrameType::Table(_) | FrameType::SegDesc))
        })
    })
}

fn check_pv(
    dom: &DomainShared,
    addr: u64,
    len: u64,
    write: bool,
) -> Option<Result<(), MemoryError>> {
    let mmu = dom.pv_mmu.as_ref()?;
    let mmu = mmu.lock().unwrap_or_else(|e| e.into_inner());
    Some(if pv_allowed(&mmu, addr, len, write) {
        Ok(())
    } else {
        Err(MemoryError::Forbidden {
            addr,
            len,
            access: if write { "writable" } else { "mapped" },
        })
    })
}

/// Reads guest bytes at guest address `va`.
pub(crate) fn read(dom: &DomainShared, va: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
    match check_pv(dom, va, buf.len() as u64, false) {
        None => dom.ram.read_guest_bytes(va, buf),
        Some(checked) => checked.and_then(|()| dom.ram.read(va, buf)),
    }
}

/// Reads a `u64` at guest address `va`.
pub(crate) fn read_u64(dom: &DomainShared, va: u64) -> Result<u64, MemoryError> {
    let mut b = [0u8; 8];
    read(dom, va, &mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// Writes guest bytes at guest address `va`.
pub(crate) fn write(dom: &DomainShared, va: u64, buf: &[u8]) -> Result<(), MemoryError> {
    match check_pv(dom, va, buf.len() as u64, true) {
        None => dom.ram.write_guest_bytes(va, buf),
        Some(checked) => checked.and_then(|()| dom.ram.write(va, buf)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pv::mmu::{Level, Owner, VecFrames};

    #[test]
    fn pv_access_only_to_own_frames_and_never_writes_live_tables() {
        let mut mem = VecFrames::new(16);
        let mut mmu = Mmu::new(16, 1);
        mmu.set_owner(12, Owner::Rxen).unwrap();
        mmu.set_owner(13, Owner::SharedInfo).unwrap();
        mmu.pin(&mut mem, 5, Level::L1).unwrap();
        let page = |pfn: u64| pfn * PAGE_SIZE;
        assert!(pv_allowed(&mmu, page(1), 8, true));
        assert!(pv_allowed(&mmu, page(5), 8, false), "a table is readable");
        assert!(
            !pv_allowed(&mmu, page(5), 8, true),
            "never written by rxen for the guest"
        );
        assert!(
            !pv_allowed(&mmu, page(5) - 4, 8, true),
            "straddling into it"
        );
        assert!(!pv_allowed(&mmu, page(12), 8, false), "rxen's frames");
        assert!(pv_allowed(&mmu, page(13), 8, true), "shared_info");
        assert!(!pv_allowed(&mmu, page(16), 8, false), "past the frames");
        assert!(!pv_allowed(&mmu, u64::MAX - 3, 8, false));
        mmu.unpin(&mut mem, 5).unwrap();
        assert!(pv_allowed(&mmu, page(5), 8, true), "no longer a table");
    }
}
