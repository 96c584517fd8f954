//! Guest memory as the trap code reads and writes it on the guest's behalf (exception
//! frames, bounce and callback frames, `iret` contexts, instruction bytes).
//!
//! Everything goes through the vCPU's [`GuestView`](crate::guest_view::GuestView): rxen's
//! identity layout with its holes, or in a Xen PV domain a walk of the vCPU's current
//! page tables (whose validation guarantees that a writable mapping is never a page
//! table, a descriptor table or one of rxen's frames).

use crate::domain::DomainShared;
use crate::memory::MemoryError;

/// Reads guest bytes at guest address `va` as vCPU `vcpu` sees it.
pub(crate) fn read(
    dom: &DomainShared,
    vcpu: u32,
    va: u64,
    buf: &mut [u8],
) -> Result<(), MemoryError> {
    dom.guest_view(vcpu).read_bytes(va, buf)
}

/// Reads a `u64` at guest address `va`.
pub(crate) fn read_u64(dom: &DomainShared, vcpu: u32, va: u64) -> Result<u64, MemoryError> {
    let mut b = [0u8; 8];
    read(dom, vcpu, va, &mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// Writes guest bytes at guest address `va` (only where the guest itself may write).
pub(crate) fn write(dom: &DomainShared, vcpu: u32, va: u64, buf: &[u8]) -> Result<(), MemoryError> {
    dom.guest_view(vcpu).write_bytes(va, buf)
}
