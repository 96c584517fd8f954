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

/// The failsafe callback's entry for a refused `iret` frame `c`: the registers the
/// callback starts with, where its frame goes and its words (lowest address first),
/// and whether events are masked once it runs. `r` are the registers at the
/// hypercall, `segs` the data segment selectors `ds, es, fs, gs`, `kernel_sp` the
/// `stack_switch` stack.
pub fn failsafe_bounce(
    r: &kvm_regs,
    c: &IretContext,
    segs: [u16; 4],
    callback: &crate::traps::Callback,
    kernel_sp: u64,
) -> (kvm_regs, u64, Vec<u64>, bool) {
    // Xen's do_iret restored the registers and the mask before its iretq faulted.
    let mut n = *r;
    n.rax = c.rax;
    if c.flags & VGCF_IN_SYSCALL == 0 {
        n.r11 = c.r11;
        n.rcx = c.rcx;
    }
    let saved_mask = c.rflags & RFLAGS_IF == 0;
    let virtual_if = if saved_mask { 0 } else { RFLAGS_IF };
    let mut words = vec![n.rcx, n.r11];
    words.extend(segs.map(u64::from));
    words.extend([
        c.rip,
        (c.cs & 0xffff) | (u64::from(saved_mask) << 32),
        (c.rflags & !RFLAGS_IF) | virtual_if,
        c.rsp,
        c.ss & 0xffff,
    ]);
    let top = if c.cs & 3 == 3 { kernel_sp } else { c.rsp };
    let at = (top & !0xf).wrapping_sub(8 * words.len() as u64);
    n.rip = callback.address;
    n.rsp = at;
    n.rflags = crate::vcpu::syscall::user_rflags(c.rflags);
    (n, at, words, saved_mask || callback.mask_events)
}

/// Bounces a refused `iret` to vCPU `id`'s failsafe callback; `Err` (the domain
/// crashes) when it has none or the frame cannot be written.
fn to_failsafe(
    fd: &mut VcpuFd,
    dom: &DomainShared,
    id: u32,
    sync_regs: bool,
    r: &kvm_regs,
    c: &IretContext,
) -> Result<(), String> {
    let (callback, kernel_sp) = {
        let t = dom.traps.vcpu(id).ok_or("no trap state")?;
        (t.callbacks.failsafe, t.kernel_stack.1)
    };
    let callback = callback
        .filter(|cb| cb.address != 0 && dom.address_range().contains(cb.address))
        .ok_or("no failsafe callback")?;
    // Xen's frame holds the data selectors the CPU has, and Linux compares them with
    // its own `mov %ds` etc.: equal means a bad `iret` (#GP), different a bad segment
    // (retry the `iret`). KVM's view of them is not the CPU's here (PVM loads them
    // through the host's GDT: KVM answered Xen's 0xe02b where the CPU had 0, and Linux
    // retried forever), so rxen makes them known: null, bases kept, and pushes those.
    crate::vcpu::sregs_edits::update(fd, sync_regs, |s| {
        for seg in [&mut s.ds, &mut s.es, &mut s.fs, &mut s.gs] {
            seg.selector = 0;
        }
    })?;
    let (next, at, words, masked) = failsafe_bounce(r, c, [0; 4], &callback, kernel_sp);
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    super::guest_mem::write(dom, id, at, &bytes)
        .map_err(|_| format!("failsafe frame at {at:#x} not writable"))?;
    dom.shared_info.set_upcall_mask(id, masked);
    super::exit::write_regs(fd, sync_regs, &next)
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
        Err(why @ (BadIret::Selectors { .. } | BadIret::Address { .. })) => {
            match to_failsafe(fd, dom, id, sync_regs, r, &c) {
                Ok(()) => {
                    tracing::debug!(vcpu = id, %why, "iret refused: failsafe callback");
                    true
                }
                Err(e) => {
                    super::exit::crash(fd, dom, id, &format!("{why} ({e})"));
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

    /// A user process's `rt_sigreturn` to CS 0x1237 made Linux's `iret` carry it: rxen
    /// crashed the domain ("iret to foreign selectors"); Xen bounces to the failsafe
    /// callback with Linux's expected frame on the kernel stack.
    #[test]
    fn a_refused_user_iret_bounces_to_the_failsafe_callback_on_the_kernel_stack() {
        let r = kvm_regs {
            rcx: 0x77,
            r11: 0x88,
            rbx: 5,
            ..Default::default()
        };
        let c = IretContext {
            cs: 0x1237,
            ..ctx()
        };
        assert!(matches!(
            apply(&r, &c, AddressRange::UserHalf),
            Err(BadIret::Selectors { .. })
        ));
        let cb = crate::traps::Callback {
            address: 0xffff_ffff_8100_2000,
            mask_events: true,
        };
        let kernel_sp = 0xffff_c900_0040_4008;
        let (n, at, words, masked) = failsafe_bounce(&r, &c, [0x2b, 0x2b, 0, 0x63], &cb, kernel_sp);
        assert_eq!(
            at,
            0xffff_c900_0040_4000 - 11 * 8,
            "below the aligned kernel stack"
        );
        assert_eq!(
            words,
            vec![3, 2, 0x2b, 0x2b, 0, 0x63, 0x40_1000, 0x1237, 0x3246, 0x3f_ff00, 0x2b],
            "rcx, r11 (from the frame), ds, es, fs, gs, rip, cs, rflags, rsp, ss"
        );
        assert_eq!((n.rip, n.rsp, n.rax, n.rbx), (cb.address, at, 1, 5));
        assert_eq!(n.rflags, crate::vcpu::syscall::user_rflags(0x3246));
        assert!(masked, "VGCF_failsafe_disables_events");
        // Events off in the frame: the saved mask in CS bits 32-39, virtual IF clear.
        let c = IretContext {
            rflags: 0x46,
            flags: VGCF_IN_SYSCALL,
            ..c
        };
        let cb = crate::traps::Callback {
            mask_events: false,
            ..cb
        };
        let (n, _, words, masked) = failsafe_bounce(&r, &c, [0; 4], &cb, kernel_sp);
        assert_eq!(
            (words[0], words[1]),
            (0x77, 0x88),
            "in_syscall keeps rcx/r11"
        );
        assert_eq!((n.rcx, n.r11), (0x77, 0x88));
        assert_eq!(words[7], 0x1237 | (1 << 32));
        assert_eq!(words[8], 0x46);
        assert!(masked, "the frame's IF was clear");
    }

    /// A refused `iret` back to the kernel (RPL 0 CS) puts the failsafe frame below the
    /// frame's own `rsp`, as Xen's bounce on the kernel's current stack.
    #[test]
    fn a_refused_kernel_iret_puts_the_failsafe_frame_on_the_returned_to_stack() {
        let c = IretContext {
            cs: 0x08,
            rsp: 0xffff_c900_0000_1f08,
            ..ctx()
        };
        let cb = crate::traps::Callback {
            address: 0xffff_ffff_8100_2000,
            mask_events: false,
        };
        let (n, at, words, masked) =
            failsafe_bounce(&kvm_regs::default(), &c, [0; 4], &cb, 0xdead_0000);
        assert_eq!(at, 0xffff_c900_0000_1f00 - 88);
        assert_eq!(n.rsp, at);
        assert_eq!(words[7], 0x08);
        assert!(!masked);
    }
}
