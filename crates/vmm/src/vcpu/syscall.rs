//! Hypercall entry by `syscall`, as Xen's 64-bit PV guests make it: `rax` = hypercall
//! number, arguments in `rdi, rsi, rdx, r10, r8`, result in `rax`; `rcx` and `r11`
//! are clobbered.
//!
//! What `syscall` does on this host (measured, see docs/architecture.md): the PVM
//! backend runs it as an ordinary jump *without a privilege change*: `rcx` = the
//! address after it, `r11` = `rflags`, `rip` = `MSR_LSTAR`, `rflags &= !MSR_SYSCALL_MASK`,
//! and CS/SS stay the guest's CPL-3 selectors. (The PVM MSRs that would give a real
//! supervisor mode, `MSR_PVM_VCPU_STRUCT` & co., are refused by this KVM.) So nothing
//! ever runs at CPL 0, and the `syscall` target must be reachable from CPL 3.
//!
//! Each vCPU's `MSR_LSTAR` points at [`SYSCALL_STUB`], a read-only page whose first
//! instruction is `out SYSCALL_STUB_PORT, al` (the TSS bitmap allows that port) and
//! whose next is `ud2`. The VMM accepts an exit on that port only with `rip` just past
//! the stub's `out` and a canonical user return address in `rcx`; anything else (guest
//! code writing the port elsewhere, a jump into the stub with a bad `rcx`) ends the
//! domain as a crash. It then runs the hypercall and returns as `sysret` would, by
//! setting the registers through `kvm_run`'s sync regs: `rax` = result, `rip` = `rcx`,
//! `rflags` from `r11` (the flags a guest may choose only). A guest that jumps into the
//! stub instead of using `syscall` gains nothing: it gets a hypercall and a jump to its
//! own `rcx`.
//!
//! On a host with hardware virtualization, `syscall` would enter CPL 0 for real; the
//! return would then also have to restore CS/SS to the user selectors (not
//! implemented: not testable here).
//!
//! There is no guest user mode yet (the guest kernel itself runs at CPL 3 and every
//! `syscall` is a hypercall). When there is, a `syscall` from guest user mode must be
//! bounced to the guest kernel's syscall callback (`CALLBACKTYPE_syscall`) instead.

use kvm_bindings::{kvm_msr_entry, kvm_regs, Msrs};
use kvm_ioctls::VcpuFd;
use rxen_abi::layout::{SYSCALL_STUB, SYSCALL_STUB_PORT};
use rxen_abi::PAGE_SIZE;

use super::regs::{self, AddressRange};

const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;

/// Code selector `syscall` would load on real hardware (GDT index 1, RPL 0).
const KERNEL_CS: u16 = 0x08;
/// `STAR[63:48]`: `sysret` to 64-bit mode loads CS = this + 16 = 0x33 and
/// SS = this + 8 = 0x2b, the guest's selectors ([`regs::USER_CS`], [`regs::USER_DS`]).
const SYSRET_BASE: u16 = regs::USER_CS - 16;

/// Flags `syscall` clears on entry (`MSR_SYSCALL_MASK`): TF, IF, DF, NT, AC.
const SYSCALL_MASK: u64 = 0x100 | 0x200 | 0x400 | 0x4000 | 0x40000;

/// Flags the guest keeps across a hypercall (`r11` holds them at the stub): the
/// arithmetic flags and DF. TF (a #DB would triple-fault: there is no IDT), IOPL, IF and
/// the rest are rxen's, as in [`regs::START_RFLAGS`].
const GUEST_FLAGS: u64 = 0x8d5 | 0x400;

/// Offset of the compatibility-mode entry (`MSR_CSTAR`): `ud2`. Guests cannot enter
/// compatibility mode (no GDT); should one `syscall` from there, the fault ends the
/// domain.
const ENTRY_COMPAT: u64 = 0x10;

/// `rip` after the stub's `out` for rxen's own layout: where the VMM sees a `syscall`
/// hypercall. (PV domains have their stub elsewhere: [`rip_after_exit`].)
pub const RIP_AFTER_EXIT: u64 = SYSCALL_STUB + 2;

/// `rip` after the `out` of the stub mapped at `stub`.
pub const fn rip_after_exit(stub: u64) -> u64 {
    stub + 2
}

/// The stub page's bytes: `out SYSCALL_STUB_PORT, al; ud2` at the 64-bit entry, `ud2`
/// at the compatibility entry, `int3` everywhere else.
pub fn stub_page() -> [u8; PAGE_SIZE as usize] {
    let mut page = [0xCCu8; PAGE_SIZE as usize];
    page[..4].copy_from_slice(&[0xE6, SYSCALL_STUB_PORT as u8, 0x0F, 0x0B]);
    let compat = ENTRY_COMPAT as usize;
    page[compat..compat + 2].copy_from_slice(&[0x0F, 0x0B]);
    page
}

/// Programs the vCPU's `syscall` MSRs so that `syscall` lands in the stub, mapped at
/// virtual address `stub` ([`SYSCALL_STUB`] in rxen's own layout).
pub fn program_msrs(fd: &VcpuFd, stub: u64) -> Result<(), SyscallSetupError> {
    let star = (u64::from(SYSRET_BASE) << 48) | (u64::from(KERNEL_CS) << 32);
    let entries = [
        (MSR_STAR, star),
        (MSR_LSTAR, stub),
        (MSR_CSTAR, stub + ENTRY_COMPAT),
        (MSR_SYSCALL_MASK, SYSCALL_MASK),
    ]
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    });
    let msrs = Msrs::from_entries(&entries).map_err(|_| SyscallSetupError::MsrList)?;
    let written = fd.set_msrs(&msrs).map_err(SyscallSetupError::Kvm)?;
    if written != entries.len() {
        return Err(SyscallSetupError::Refused(written));
    }
    Ok(())
}

/// Errors of setting up `syscall` entry.
#[derive(Debug, thiserror::Error)]
pub enum SyscallSetupError {
    #[error("building the MSR list failed")]
    MsrList,
    #[error("KVM_SET_MSRS: {0}")]
    Kvm(kvm_ioctls::Error),
    #[error("KVM refused the syscall MSRs after {0} of them")]
    Refused(usize),
}

/// Why an exit on the stub's port is not a hypercall the VMM may complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadEntry {
    #[error("write to the syscall port at rip {rip:#x}, not from the stub")]
    NotFromStub { rip: u64 },
    #[error("return address {rcx:#x} (rcx) is not a canonical user address")]
    BadReturn { rcx: u64 },
    #[error("return address {rcx:#x} (rcx) is not canonical")]
    NotCanonical { rcx: u64 },
}

/// Checks that the exit came from the stub at `stub` and that `rcx` is a place to
/// return to.
pub fn check_entry(r: &kvm_regs, stub: u64, range: AddressRange) -> Result<(), BadEntry> {
    if r.rip != rip_after_exit(stub) {
        return Err(BadEntry::NotFromStub { rip: r.rip });
    }
    match range {
        _ if range.contains(r.rcx) => Ok(()),
        AddressRange::UserHalf => Err(BadEntry::BadReturn { rcx: r.rcx }),
        AddressRange::Canonical => Err(BadEntry::NotCanonical { rcx: r.rcx }),
    }
}

/// The `rflags` the guest returns with: its own arithmetic flags and DF from `r11`,
/// rxen's for everything else.
pub fn user_rflags(r11: u64) -> u64 {
    regs::START_RFLAGS | (r11 & GUEST_FLAGS)
}

/// Registers after the hypercall, as `sysret` leaves them: `rax` = `result`,
/// `rip` = `rcx`, `rflags` from `r11`.
pub fn return_regs(r: &mut kvm_regs, result: i64) {
    r.rax = result as u64;
    r.rip = r.rcx;
    r.rflags = user_rflags(r.r11);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_exits_first_and_faults_after() {
        let p = stub_page();
        assert_eq!(&p[0..4], &[0xE6, SYSCALL_STUB_PORT as u8, 0x0F, 0x0B]);
        assert_eq!(&p[0x10..0x12], &[0x0F, 0x0B]);
        assert!(p[0x12..].iter().all(|&b| b == 0xCC));
    }

    #[test]
    fn star_gives_user_selectors_on_sysret() {
        assert_eq!(SYSRET_BASE + 16, 0x33);
        assert_eq!(SYSRET_BASE + 8, 0x2b);
    }

    #[test]
    fn return_follows_sysret_and_keeps_privilege() {
        let mut r = kvm_regs {
            rip: RIP_AFTER_EXIT,
            rcx: 0x40_1234,
            // Everything set: TF, IF, IOPL 3, NT, RF, VM, AC, VIF, ID...
            r11: u64::MAX,
            ..Default::default()
        };
        assert_eq!(
            check_entry(&r, SYSCALL_STUB, AddressRange::UserHalf),
            Ok(())
        );
        return_regs(&mut r, -38);
        assert_eq!(r.rip, 0x40_1234);
        assert_eq!(r.rax as i64, -38);
        assert_eq!(r.rflags, 0x3002 | 0x8d5 | 0x400);
        assert_eq!(r.rflags & 0x100, 0, "TF");
        assert_eq!(r.rflags & 0x20000, 0, "VM");
    }

    #[test]
    fn wrong_states_are_refused() {
        let ok = kvm_regs {
            rip: RIP_AFTER_EXIT,
            rcx: 0x40_0000,
            ..Default::default()
        };
        let mut r = ok;
        r.rip = 0x40_0002;
        assert_eq!(
            check_entry(&r, SYSCALL_STUB, AddressRange::UserHalf),
            Err(BadEntry::NotFromStub { rip: 0x40_0002 })
        );
        let mut r = ok;
        r.rcx = 0xffff_8000_0000_0000;
        assert!(matches!(
            check_entry(&r, SYSCALL_STUB, AddressRange::UserHalf),
            Err(BadEntry::BadReturn { .. })
        ));
    }

    /// Linux's hypercalls return to its kernel text at 0xffffffff8...; PV domains
    /// accept that. Failed before: Debian's kernel crashed on its first hypercall with
    /// "return address 0xffffffff81a442b5 (rcx) is not a canonical user address".
    #[test]
    fn pv_domains_return_to_the_upper_half() {
        let mut r = kvm_regs {
            rip: RIP_AFTER_EXIT,
            rcx: 0xffff_ffff_81a4_42b5,
            ..Default::default()
        };
        assert_eq!(
            check_entry(&r, SYSCALL_STUB, AddressRange::Canonical),
            Ok(())
        );
        r.rcx = 0x0000_8000_0000_0000;
        assert_eq!(
            check_entry(&r, SYSCALL_STUB, AddressRange::Canonical),
            Err(BadEntry::NotCanonical { rcx: r.rcx })
        );
        r.rcx = 0x40_0000;
        assert_eq!(
            check_entry(&r, SYSCALL_STUB, AddressRange::Canonical),
            Ok(())
        );
    }
}
