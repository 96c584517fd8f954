//! The `iret` hypercall (`HYPERVISOR_iret`, x86-64): returns from a bounced trap or
//! callback. `rsp` points at Xen's `iret_context` (`rax, r11, rcx, flags, rip, cs,
//! rflags, rsp, ss`; Xen's hypercall page pushes `rcx, r11, rax` below the rest). rxen
//! restores `rax`, `rip`, `rsp`, the arithmetic flags and DF, and `rcx`/`r11` unless
//! `flags` has `VGCF_in_syscall`; CS and SS must be the guest's own flat selectors (they
//! never change: one selector pair for the guest kernel); IOPL is never given; and, as
//! Xen does, `evtchn_upcall_mask` becomes `!rflags.IF` of the frame. A frame the VMM
//! cannot read, foreign selectors or a non-canonical `rip`/`rsp` end the domain (Xen
//! crashes a domain whose `iret` frame it cannot use).

use kvm_bindings::kvm_regs;
use kvm_ioctls::VcpuFd;
use rxen_abi::callback::{IretContext, VGCF_IN_SYSCALL};

use zerocopy::{FromZeros, IntoBytes};

use crate::domain::DomainShared;
use crate::exit::DomainExit;
use crate::vcpu::regs::{AddressRange, USER_CS, USER_DS};

const RFLAGS_IF: u64 = 1 << 9;
/// Xen's `FLAT_RING3_CS64` / `FLAT_RING3_SS64`: the same flat segments under Xen's
/// names, accepted from guests written for Xen.
const XEN_FLAT_CS64: u64 = 0xe033;
const XEN_FLAT_SS64: u64 = 0xe02b;

/// Why an `iret` frame is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadIret {
    #[error("iret frame at {0:#x} unreadable")]
    Unreadable(u64),
    #[error("iret to foreign selectors cs={cs:#x} ss={ss:#x}")]
    Selectors { cs: u64, ss: u64 },
    #[error("iret to non-canonical rip {rip:#x} / rsp {rsp:#x}")]
    Address { rip: u64, rsp: u64 },
}

/// The registers after `iret` with context `c`, and whether events become masked.
pub fn apply(
    r: &kvm_regs,
    c: &IretContext,
    range: AddressRange,
) -> Result<(kvm_regs, bool), BadIret> {
    // Xen forces the guest's privilege: a kernel frame's RPL-0 CS (see
    // `traps::frame_cs`) returns to the same ring-3 selector.
    let cs = (c.cs & 0xffff) | 3;
    let ss = (c.ss & 0xffff) | 3;
    if !(cs == u64::from(USER_CS) || cs == XEN_FLAT_CS64)
        || !(ss == u64::from(USER_DS) || ss == XEN_FLAT_SS64)
    {
        return Err(BadIret::Selectors { cs: c.cs, ss: c.ss });
    }
    if !range.contains(c.rip) || !range.contains(c.rsp) {
        return Err(BadIret::Address {
            rip: c.rip,
            rsp: c.rsp,
        });
    }
    let mut n = *r;
    n.rax = c.rax;
    if c.flags & VGCF_IN_SYSCALL == 0 {
        n.r11 = c.r11;
        n.rcx = c.rcx;
    }
    n.rip = c.rip;
    n.rsp = c.rsp;
    n.rflags = crate::vcpu::syscall::user_rflags(c.rflags);
    Ok((n, c.rflags & RFLAGS_IF == 0))
}

/// Handles the `iret` hypercall with the registers `r` at entry (`rsp` at the frame).
/// Returns `false` when the vCPU must stop.
pub fn handle(fd: &mut VcpuFd, dom: &DomainShared, id: u32, sync_regs: bool, r: &kvm_regs) -> bool {
    if let Some(v) = dom.vcpus.get(id as usize) {
        v.hypercalls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    dom.stats.hypercall(u64::from(rxen_abi::hypercall::IRET), 0);
    let mut c = IretContext::new_zeroed();
    let result = super::guest_mem::read(dom, id, r.rsp, c.as_mut_bytes())
        .map_err(|_| BadIret::Unreadable(r.rsp))
        .and_then(|()| apply(r, &c, dom.address_range()));
    match result {
        Ok((next, masked)) => {
            dom.shared_info.set_upcall_mask(id, masked);
            // Xen's rule: an RPL-3 CS returns to guest user mode.
            if c.cs & 3 == 3 {
                if let Err(e) = super::guest_mode::enter_user(fd, dom, id, sync_regs) {
                    dom.request_exit(DomainExit::Internal(format!("vCPU {id}: {e}")));
                    return false;
                }
            }
            match super::exit::write_regs(fd, sync_regs, &next) {
                Ok(()) => true,
                Err(e) => {
                    dom.request_exit(DomainExit::Internal(format!("vCPU {id}: {e}")));
                    false
                }
            }
        }
        Err(why) => {
            super::exit::crash(fd, dom, id, &why);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> IretContext {
        IretContext {
            rax: 1,
            r11: 2,
            rcx: 3,
            flags: 0,
            rip: 0x40_1000,
            cs: 0x33 | (1 << 32),
            rflags: 0x3246,
            rsp: 0x3f_ff00,
            ss: 0x2b,
        }
    }

    #[test]
    fn restores_registers_and_unmasks_by_if() {
        let r = kvm_regs::default();
        let (n, masked) = apply(&r, &ctx(), AddressRange::UserHalf).unwrap();
        assert_eq!(
            (n.rax, n.r11, n.rcx, n.rip, n.rsp),
            (1, 2, 3, 0x40_1000, 0x3f_ff00)
        );
        assert!(!masked);
        assert_eq!(
            n.rflags,
            crate::vcpu::syscall::user_rflags(0x3246),
            "IOPL is rxen's"
        );
        let mut c = ctx();
        c.rflags = 0x46;
        c.flags = VGCF_IN_SYSCALL;
        let r = kvm_regs {
            rcx: 9,
            r11: 8,
            ..Default::default()
        };
        let (n, masked) = apply(&r, &c, AddressRange::UserHalf).unwrap();
        assert!(masked);
        assert_eq!((n.rcx, n.r11), (9, 8), "in_syscall keeps rcx/r11");
    }

    #[test]
    fn refuses_foreign_selectors_and_addresses() {
        let r = kvm_regs::default();
        let mut c = ctx();
        c.cs = 0x08;
        assert!(matches!(
            apply(&r, &c, AddressRange::UserHalf),
            Err(BadIret::Selectors { .. })
        ));
        let mut c = ctx();
        c.ss = 0x10;
        assert!(matches!(
            apply(&r, &c, AddressRange::UserHalf),
            Err(BadIret::Selectors { .. })
        ));
        let mut c = ctx();
        c.rip = 0xffff_8000_0000_0000;
        assert!(matches!(
            apply(&r, &c, AddressRange::UserHalf),
            Err(BadIret::Address { .. })
        ));
        let mut c = ctx();
        c.cs = 0xe033;
        c.ss = 0xe02b;
        assert!(apply(&r, &c, AddressRange::UserHalf).is_ok());
    }
}
