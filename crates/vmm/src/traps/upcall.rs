//! Asynchronous event upcalls: a vCPU with an event callback, events pending
//! (`evtchn_upcall_pending`) and not masked (`evtchn_upcall_mask`) is redirected to the
//! callback before it re-enters the guest, with Xen's frame `rcx, r11, rip, cs, rflags,
//! rsp, ss` below its `rsp` (rounded down to 16 bytes) and events masked, as Xen's
//! `create_bounce_frame` does for `CALLBACKTYPE_event`. The sender kicks a running vCPU
//! out of `KVM_RUN` when `evtchn_upcall_pending` goes from 0 to 1 (see
//! `Kick::upcall`), so the vCPU thread reaches this check promptly. The callback
//! returns by the `iret` hypercall, which unmasks events from the frame's IF.

use kvm_bindings::kvm_regs;
use kvm_ioctls::VcpuFd;

use super::exit::{crash, write_regs};
use crate::domain::DomainShared;
use crate::exit::DomainExit;

const RFLAGS_IF: u64 = 1 << 9;

/// Whether KVM holds an exception, interrupt or NMI it has not finished delivering.
/// `sync`: `kvm_run`'s sync regs hold the vCPU's current events (no ioctl). On an
/// ioctl error, assume one is (deferring an upcall is always safe).
fn exception_in_flight(fd: &mut VcpuFd, sync: bool) -> bool {
    let in_flight = |e: &kvm_bindings::kvm_vcpu_events| {
        e.exception.injected != 0
            || e.exception.pending != 0
            || e.interrupt.injected != 0
            || e.nmi.injected != 0
    };
    if sync {
        return in_flight(&fd.sync_regs().events);
    }
    match fd.get_vcpu_events() {
        Ok(e) => in_flight(&e),
        Err(_) => true,
    }
}

/// Whether `rip` is inside rxen's trap stubs or its `syscall` stub.
fn in_rxen_stub(dom: &DomainShared, rip: u64) -> bool {
    let page = |base: u64| (base..base + rxen_abi::PAGE_SIZE).contains(&rip);
    page(dom.boot.traps.stubs) || page(dom.boot.syscall_stub)
}

/// Where the event callback's frame goes and its words, lowest address first: Xen's
/// `create_bounce_frame` for a vCPU already in kernel context rounds the interrupted
/// `rsp` down to 16 bytes and pushes `ss, rsp, rflags, cs, rip` (no error code for an
/// event), then `r11, rcx`. The callback is entered with `rsp` at `rcx`, so `rsp` is
/// 8 modulo 16 whatever the interrupted `rsp` was. `rflags` carries IF = 1: events were
/// enabled (the saved upcall mask is 0) when the callback was taken.
pub(crate) fn event_frame(regs: &kvm_regs, cs: u16, ss: u16, stack: u64) -> (u64, [u64; 7]) {
    let words = [
        regs.rcx,
        regs.r11,
        regs.rip,
        u64::from(cs),
        regs.rflags | RFLAGS_IF,
        regs.rsp,
        u64::from(ss),
    ];
    let at = (stack & !0xf).wrapping_sub(8 * words.len() as u64);
    (at, words)
}

/// Delivers a pending upcall to vCPU `id` if one is due. `regs_fresh`: the vCPU's
/// registers in sync regs are current (false right after a context was loaded by
/// ioctl). Returns `false` when the vCPU must stop.
pub fn maybe_deliver(
    fd: &mut VcpuFd,
    dom: &DomainShared,
    id: u32,
    sync_regs: bool,
    regs_fresh: bool,
) -> bool {
    if !dom.traps.wants_upcalls(id)
        || !dom.shared_info.upcall_pending(id)
        || dom.shared_info.upcall_mask(id)
    {
        return true;
    }
    let Some(cb) = dom.traps.vcpu(id).and_then(|t| t.callbacks.event) else {
        return true;
    };
    // KVM may have left an exception half-delivered (a kick arrived while it was
    // injecting, say, the #PF of an M2P read): rewriting rip/rsp now would make KVM
    // finish the injection with a frame claiming the fault happened at the callback's
    // first instruction. Wait: the exception reaches rxen's trap stub, whose exit comes
    // back here before the vCPU runs again.
    if exception_in_flight(fd, sync_regs && regs_fresh) {
        tracing::trace!(
            vcpu = id,
            "event upcall deferred: exception being delivered"
        );
        return true;
    }
    let regs = if sync_regs && regs_fresh {
        fd.sync_regs().regs
    } else {
        match fd.get_regs() {
            Ok(r) => r,
            Err(e) => {
                dom.request_exit(DomainExit::Internal(format!("vCPU {id}: get regs: {e}")));
                return false;
            }
        }
    };
    // Nor in the middle of rxen's stubs (between the CPU's exception frame and the
    // stub's exit, or the syscall stub's): the exit must see the state that led there.
    if in_rxen_stub(dom, regs.rip) {
        tracing::trace!(
            vcpu = id,
            rip = regs.rip,
            "event upcall deferred: in a stub"
        );
        return true;
    }
    if !dom.address_range().contains(cb.address) {
        crash(
            fd,
            dom,
            id,
            &format_args!(
                "event callback {:#x} is not a canonical user address",
                cb.address
            ),
        );
        return false;
    }
    // Events were unmasked (checked above): the saved mask is 0 and the virtual IF 1.
    // CS/SS: the guest's own flat selectors (Xen's 0xe033/0xe02b for a PV kernel).
    let (cs, ss) = dom.boot.selectors;
    // From guest user mode: kernel page table and GS first, the frame on the kernel
    // stack (`traps::guest_mode`).
    let kernel_stack = match super::guest_mode::enter_kernel(fd, dom, id, sync_regs && regs_fresh) {
        Ok(k) => k,
        Err(e) => {
            dom.request_exit(DomainExit::Internal(format!("vCPU {id}: {e}")));
            return false;
        }
    };
    let frame_cs = super::frame_cs(dom, cs, kernel_stack.is_some());
    let (at, words) = event_frame(&regs, frame_cs, ss, kernel_stack.unwrap_or(regs.rsp));
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    if super::guest_mem::write(dom, id, at, &bytes).is_err() {
        crash(
            fd,
            dom,
            id,
            &format_args!(
                "guest stack at {:#x} not writable for the event callback frame",
                regs.rsp
            ),
        );
        return false;
    }
    dom.shared_info.set_upcall_mask(id, true);
    let mut next = regs;
    next.rip = cb.address;
    next.rsp = at;
    next.rflags = crate::vcpu::syscall::user_rflags(regs.rflags);
    if let Err(e) = write_regs(fd, sync_regs && regs_fresh, &next) {
        dom.request_exit(DomainExit::Internal(format!("vCPU {id}: {e}")));
        return false;
    }
    dom.stats.event(crate::stats::Event::Upcall);
    tracing::trace!(vcpu = id, callback = cb.address, "event upcall");
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(rsp: u64) -> kvm_regs {
        kvm_regs {
            rsp,
            rip: 0x23aa,
            rcx: 0x11,
            r11: 0x22,
            rflags: 0x2,
            ..Default::default()
        }
    }

    /// Mini-OS's `hypervisor_callback` pops `rcx`/`r11` and builds a 15-word register
    /// frame plus an error-code word on top of Xen's five; it calls C code from there
    /// (nested events) expecting Xen's 16-byte rounding: the callback is entered with
    /// `rsp` 8 modulo 16 from any interrupted `rsp`, as in Xen.
    #[test]
    fn the_callback_is_entered_with_rsp_8_modulo_16_below_the_rounded_stack() {
        for rsp in 0xffed0..0xffee0u64 {
            let (at, _) = event_frame(&regs(rsp), 0xe033, 0xe02b, rsp);
            assert_eq!(at, (rsp & !0xf) - 56, "rsp {rsp:#x}");
            assert_eq!(at % 16, 8, "rsp {rsp:#x}");
        }
    }

    #[test]
    fn the_frame_holds_rcx_r11_then_the_iret_frame_with_if_set() {
        let (_, words) = event_frame(&regs(0xffed8), 0xe033, 0xe02b, 0xffed8);
        assert_eq!(
            words,
            [0x11, 0x22, 0x23aa, 0xe033, 0x2 | RFLAGS_IF, 0xffed8, 0xe02b]
        );
    }
}
