//! The vCPU thread's side of a trap stub exit: reads the registers, the CPU frame and
//! `cr2`, and either redirects the vCPU to the guest's handler ([`super::bounce`]) or
//! ends the domain as a crash.

use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_ioctls::{SyncReg, VcpuFd};

use super::bounce::{self, CpuFrame, Undeliverable, VECTOR_PF};
use super::{m2p, msr};
use crate::domain::DomainShared;
use crate::exit::DomainExit;
use crate::pv::rxen_area::M2pWindow;

/// Reads the registers (sync regs when valid, else ioctls).
fn read_state(fd: &mut VcpuFd, sync_regs: bool) -> Result<(kvm_regs, kvm_sregs), String> {
    if sync_regs {
        let s = fd.sync_regs();
        return Ok((s.regs, s.sregs));
    }
    let r = fd.get_regs().map_err(|e| format!("get regs: {e}"))?;
    let s = fd.get_sregs().map_err(|e| format!("get sregs: {e}"))?;
    Ok((r, s))
}

/// Writes the general registers back (sync regs when valid, else `KVM_SET_REGS`).
pub(super) fn write_regs(fd: &mut VcpuFd, sync_regs: bool, r: &kvm_regs) -> Result<(), String> {
    if sync_regs {
        fd.sync_regs_mut().regs = *r;
        fd.set_sync_dirty_reg(SyncReg::Register);
        return Ok(());
    }
    fd.set_regs(r).map_err(|e| format!("set regs: {e}"))
}

/// Ends the domain as a crash with `why` and the registers.
pub(super) fn crash(fd: &VcpuFd, dom: &DomainShared, id: u32, why: &dyn std::fmt::Display) {
    let registers = format!("{why}; {}", crate::vcpu::thread::dump_registers(fd));
    tracing::info!(vcpu = id, %why, "guest trap not deliverable: domain crashed");
    dom.request_exit(DomainExit::TripleFault {
        vcpu: id,
        registers,
    });
}

/// Handles an exit on the trap stub port. Returns `false` when the vCPU must stop.
pub fn handle(fd: &mut VcpuFd, dom: &DomainShared, id: u32, sync_regs: bool) -> bool {
    let (regs, sregs) = match read_state(fd, sync_regs) {
        Ok(s) => s,
        Err(e) => {
            dom.request_exit(DomainExit::Internal(format!("vCPU {id}: {e}")));
            return false;
        }
    };
    let user = super::guest_mode::is_user(dom, id);
    if let Some(done) = super::cpuid::emulate(fd, dom, id, sync_regs, &regs, &sregs) {
        return done;
    }
    // Privileged instructions are the guest kernel's only (Xen's `guest_kernel_mode`).
    if !user {
        if let Some(done) = emulate_msr(fd, dom, id, sync_regs, &regs, &sregs) {
            return done;
        }
        if let Some(done) = super::privop::emulate_exit(fd, dom, id, sync_regs, &regs, &sregs) {
            return done;
        }
    }
    // An exception in guest user mode enters the kernel first; its frame goes on the
    // kernel stack.
    let kernel_stack = if user {
        match super::guest_mode::enter_kernel(fd, dom, id, sync_regs) {
            Ok(k) => k,
            Err(e) => {
                dom.request_exit(DomainExit::Internal(format!("vCPU {id}: {e}")));
                return false;
            }
        }
    } else {
        None
    };
    match deliver(dom, id, &regs, &sregs, kernel_stack) {
        Ok(next) => match write_regs(fd, sync_regs, &next) {
            Ok(()) => true,
            Err(e) => {
                dom.request_exit(DomainExit::Internal(format!("vCPU {id}: {e}")));
                false
            }
        },
        Err(why) => {
            crash(fd, dom, id, &why);
            false
        }
    }
}

/// Bounces the trap to the guest's handler; returns the handler's registers.
fn deliver(
    dom: &DomainShared,
    id: u32,
    regs: &kvm_regs,
    sregs: &kvm_sregs,
    kernel_stack: Option<u64>,
) -> Result<kvm_regs, Undeliverable> {
    let vector = dom
        .boot
        .traps
        .vector_of_exit(regs.rip)
        .ok_or(Undeliverable::NotFromStub(regs.rip))?;
    let at = regs.rsp;
    let mut words = [None; 6];
    for (i, w) in words.iter_mut().enumerate() {
        *w = at
            .checked_add(8 * i as u64)
            .and_then(|a| super::guest_mem::read_u64(dom, id, a).ok());
    }
    if words[..5].iter().any(Option::is_none) {
        return Err(Undeliverable::FrameUnreadable(at));
    }
    let (mut frame, software) =
        bounce::parse_frame(vector, words, sregs.cs.selector, sregs.ss.selector, at)?;
    if vector == VECTOR_PF && !software && kernel_stack.is_none() {
        if let Some(next) = super::ptwr::emulate(dom, id, regs, sregs, &frame) {
            dom.stats.emulated(crate::stats::Emulated::PtWrite);
            return Ok(next);
        }
    }
    let mut not_emulated = None;
    if vector == VECTOR_PF && !software && m2p::SLOT_256.contains(&sregs.cr2) {
        if let Some(window) = dom.boot.m2p {
            match emulate_m2p(dom, id, regs, sregs, &frame, &window) {
                Ok(next) => {
                    dom.stats.emulated(crate::stats::Emulated::M2pRead);
                    tracing::trace!(
                        vcpu = id,
                        cr2 = sregs.cr2,
                        rip = frame.rip,
                        "M2P read emulated"
                    );
                    return Ok(next);
                }
                Err(why) => {
                    tracing::debug!(vcpu = id, cr2 = sregs.cr2, rip = frame.rip, %why, "slot-256 fault not emulated");
                    // Xen maps the M2P present and read-only: a write to it is a
                    // protection fault, not a missing page.
                    if window.gpa_of(sregs.cr2, 1).is_some() {
                        frame.error_code = frame.error_code.map(|e| e | 1);
                    }
                    not_emulated = Some(why);
                }
            }
        }
    }
    let delivery = {
        let traps = dom.traps.vcpu(id).ok_or(Undeliverable::NoHandler {
            vector,
            error_code: frame.error_code,
            rip: frame.rip,
        })?;
        bounce::decide(vector, &frame, software, &traps.table, dom.address_range()).map_err(
            |e| match (e, not_emulated) {
                (Undeliverable::NoHandler { rip, .. }, Some(why)) => Undeliverable::Slot256 {
                    cr2: sregs.cr2,
                    rip,
                    why,
                },
                (e, _) => e,
            },
        )?
    };
    let saved_mask = dom.shared_info.upcall_mask(id);
    let mut guest_frame = frame;
    guest_frame.cs = u64::from(super::frame_cs(
        dom,
        frame.cs as u16,
        kernel_stack.is_some(),
    ));
    let (mut frame_at, frame_words) =
        bounce::bounce_frame(regs, &guest_frame, &delivery, saved_mask);
    if let Some(sp) = kernel_stack {
        frame_at = (sp & !0xf).wrapping_sub(8 * frame_words.len() as u64);
    }
    let bytes: Vec<u8> = frame_words.iter().flat_map(|w| w.to_le_bytes()).collect();
    super::guest_mem::write(dom, id, frame_at, &bytes).map_err(|_| Undeliverable::BadStack {
        vector: delivery.vector,
        rsp: frame.rsp,
    })?;
    if delivery.vector == VECTOR_PF && delivery.error_code.is_some() {
        dom.shared_info.set_cr2(id, sregs.cr2);
    }
    if delivery.entry.masks_events() {
        dom.shared_info.set_upcall_mask(id, true);
    }
    dom.stats.trap(delivery.vector);
    tracing::trace!(
        vcpu = id,
        vector = delivery.vector,
        rip = frame.rip,
        "trap bounced"
    );
    Ok(bounce::handler_regs(regs, &frame, &delivery, frame_at))
}

/// The CPU frame of the exception that exited at `regs.rip`, if it is an exception of
/// `vector` raised by an instruction (not `int n`).
pub(super) fn hardware_frame(
    dom: &DomainShared,
    id: u32,
    regs: &kvm_regs,
    sregs: &kvm_sregs,
    vector: u8,
) -> Option<CpuFrame> {
    if dom.boot.traps.vector_of_exit(regs.rip)? != vector {
        return None;
    }
    let mut words = [None; 6];
    for (i, w) in words.iter_mut().enumerate() {
        *w = regs
            .rsp
            .checked_add(8 * i as u64)
            .and_then(|a| super::guest_mem::read_u64(dom, id, a).ok());
    }
    let (frame, software) = bounce::parse_frame(
        vector,
        words,
        sregs.cs.selector,
        sregs.ss.selector,
        regs.rsp,
    )
    .ok()?;
    (!software).then_some(frame)
}

/// A #GP from `wrmsr`/`rdmsr` of a segment-base MSR, emulated (see [`msr`]):
/// `Some(keep running)` when it was one, `None` to deliver the exception as usual.
fn emulate_msr(
    fd: &mut VcpuFd,
    dom: &DomainShared,
    id: u32,
    sync_regs: bool,
    regs: &kvm_regs,
    sregs: &kvm_sregs,
) -> Option<bool> {
    let frame = hardware_frame(dom, id, regs, sregs, msr::VECTOR_GP)?;
    let mut code = [0u8; 2];
    super::guest_mem::read(dom, id, frame.rip, &mut code).ok()?;
    let mut next = *regs;
    next.rip = frame.rip;
    next.rsp = frame.rsp;
    next.rflags = crate::vcpu::syscall::user_rflags(frame.rflags);
    let mut next_sregs = *sregs;
    let shadow = msr::read_shadow_gs(dom, id, fd);
    let effect = msr::emulate(&code, &mut next, &mut next_sregs, shadow)?;
    dom.stats.emulated(crate::stats::Emulated::Msr);
    let applied = (|| -> Result<(), String> {
        if let msr::Effect::ShadowGs(value) = effect {
            msr::write_shadow_gs(dom, id, fd, value)?;
        }
        if next_sregs != *sregs {
            if sync_regs {
                fd.sync_regs_mut().sregs = next_sregs;
                fd.set_sync_dirty_reg(SyncReg::SystemRegister);
            } else {
                fd.set_sregs(&next_sregs)
                    .map_err(|e| format!("set sregs: {e}"))?;
            }
        }
        write_regs(fd, sync_regs, &next)
    })();
    tracing::trace!(
        vcpu = id,
        msr = regs.rcx as u32,
        rip = frame.rip,
        "MSR access emulated"
    );
    Some(match applied {
        Ok(()) => true,
        Err(e) => {
            dom.request_exit(DomainExit::Internal(format!("vCPU {id}: {e}")));
            false
        }
    })
}

/// Emulates a read of the M2P that faulted (see [`m2p`]); returns the registers after
/// the load.
fn emulate_m2p(
    dom: &DomainShared,
    id: u32,
    regs: &kvm_regs,
    sregs: &kvm_sregs,
    frame: &CpuFrame,
    window: &M2pWindow,
) -> Result<kvm_regs, m2p::NotEmulated> {
    let mut interrupted = *regs;
    interrupted.rip = frame.rip;
    interrupted.rsp = frame.rsp;
    interrupted.rflags = crate::vcpu::syscall::user_rflags(frame.rflags);
    // At most 15 bytes, fewer when the next page is not the guest's.
    let mut code = [0u8; 15];
    let to_page_end = (0x1000 - (frame.rip & 0xfff)).min(15) as usize;
    let n = if super::guest_mem::read(dom, id, frame.rip, &mut code).is_ok() {
        15
    } else {
        super::guest_mem::read(dom, id, frame.rip, &mut code[..to_page_end])
            .map_err(|_| m2p::NotEmulated::Undecodable)?;
        to_page_end
    };
    let fault = m2p::Fault {
        regs: &interrupted,
        fs_base: sregs.fs.base,
        gs_base: sregs.gs.base,
        cr2: sregs.cr2,
        long_mode: frame.cs & 0xffff == u64::from(sregs.cs.selector),
    };
    m2p::emulate_load(&code[..n], &fault, window, |gpa, len| {
        let mut b = [0u8; 8];
        dom.ram.read(gpa, &mut b[..len]).ok()?;
        Some(u64::from_le_bytes(b))
    })
}
