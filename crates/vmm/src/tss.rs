//! The TSS rxen gives every vCPU: no stacks (the guest never enters CPL 0), only the
//! I/O permission bitmap that KVM consults when it emulates a CPL-3 `out`. Shared by
//! rxen's own layout ([`crate::builder`]) and a Xen PV domain's rxen area
//! ([`crate::pv::rxen_area`]).

use rxen_abi::layout::{
    HYPERCALL_PORT, NULL_PORT, SYSCALL_STUB_PORT, TRAP_STUB_PORT, TSS_IOMAP_OFFSET,
};

use crate::memory::{GuestRam, MemoryError};

/// Writes the TSS: no stacks (the guest never enters CPL 0), and an I/O permission
/// bitmap that allows exactly the hypercall and null ports (4 byte ports each) and the
/// syscall stub's port. KVM consults it when it
/// emulates a guest `out`. Written at guest-physical `base` (three pages).
pub fn write_tss(ram: &GuestRam, base: u64) -> Result<(), MemoryError> {
    ram.write_obj(base + 0x66, &(TSS_IOMAP_OFFSET as u16))?;
    let mut bitmap = vec![0xffu8; 8192 + 1];
    // A 4-byte `out` needs all four of its byte ports allowed.
    for base in [HYPERCALL_PORT, NULL_PORT] {
        for port in base..base + 4 {
            bitmap[port as usize / 8] &= !(1 << (port % 8));
        }
    }
    // The syscall stub's one-byte `out` (the VMM checks it comes from the stub).
    // The trap stubs' one-byte `out` (the VMM checks it comes from a stub).
    for port in [SYSCALL_STUB_PORT, TRAP_STUB_PORT] {
        bitmap[port as usize / 8] &= !(1 << (port % 8));
    }
    ram.write(base + TSS_IOMAP_OFFSET, &bitmap)
}
