//! The vCPU thread's side of `syscall` entry (see [`super::syscall`]): checks where
//! the stub's exit left the vCPU, runs the hypercall and returns as `sysret` would
//! (through `kvm_run`'s sync regs when KVM has them: no extra ioctl).

use kvm_ioctls::{SyncReg, VcpuFd};

use super::syscall;
use crate::domain::DomainShared;
use crate::exit::DomainExit;
use crate::hypercall::{self, decode::HypercallArgs};

/// Handles an exit of the stub. Returns `false` when the vCPU must stop (the domain
/// was ended: an exit elsewhere is a guest crash, an ioctl failure a VMM error).
pub fn handle(fd: &mut VcpuFd, dom: &DomainShared, id: u32, sync_regs: bool) -> bool {
    let regs = if sync_regs {
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
    if let Err(bad) = syscall::check_entry(&regs, dom.boot.syscall_stub, dom.address_range()) {
        let registers = format!("{bad}; {}", super::thread::dump_registers(fd));
        dom.request_exit(DomainExit::TripleFault {
            vcpu: id,
            registers,
        });
        return false;
    }
    if crate::traps::guest_mode::is_user(dom, id) {
        return user_syscall(fd, dom, id, sync_regs, &regs);
    }
    if regs.rax == u64::from(rxen_abi::hypercall::IRET) {
        return crate::traps::iret::handle(fd, dom, id, sync_regs, &regs);
    }
    let call = HypercallArgs {
        nr: regs.rax,
        args: [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8],
    };
    let result = hypercall::handle(dom, id, fd, call);
    if !apply_sregs_edits(fd, dom, id, sync_regs) {
        return false;
    }
    let mut back = regs;
    syscall::return_regs(&mut back, result);
    if sync_regs {
        fd.sync_regs_mut().regs = back;
        fd.set_sync_dirty_reg(SyncReg::Register);
        return true;
    }
    match fd.set_regs(&back) {
        Ok(()) => true,
        Err(e) => {
            dom.request_exit(DomainExit::Internal(format!("vCPU {id}: set regs: {e}")));
            false
        }
    }
}

/// Applies the special-register changes the hypercall recorded
/// ([`super::sregs_edits`]). Returns `false` when the vCPU must stop.
pub(super) fn apply_sregs_edits(
    fd: &mut VcpuFd,
    dom: &DomainShared,
    id: u32,
    sync_regs: bool,
) -> bool {
    let Some(ctl) = dom.vcpus.get(id as usize) else {
        return true;
    };
    match super::sregs_edits::apply(fd, ctl, sync_regs) {
        Ok(()) => true,
        Err(e) => {
            dom.request_exit(DomainExit::Internal(format!("vCPU {id}: {e}")));
            false
        }
    }
}

/// A `syscall` in guest user mode is the guest kernel's system call, not a hypercall:
/// rxen enters kernel mode and bounces to the kernel's `CALLBACKTYPE_syscall` callback
/// on its `stack_switch` stack with Xen's frame `rcx, r11, rip, cs, rflags, rsp, ss`
/// (`rip`/`rflags` are what `syscall` left in `rcx`/`r11`; the saved event mask is in
/// the CS word's bits 32-39, and events are masked if the callback asks).
fn user_syscall(
    fd: &mut VcpuFd,
    dom: &DomainShared,
    id: u32,
    sync_regs: bool,
    regs: &kvm_bindings::kvm_regs,
) -> bool {
    dom.stats.event(crate::stats::Event::UserSyscall);
    let callback = dom.traps.vcpu(id).and_then(|t| t.callbacks.syscall);
    let Some(cb) = callback else {
        dom.request_exit(DomainExit::TripleFault {
            vcpu: id,
            registers: format!(
                "syscall from guest user mode without a syscall callback; {}",
                super::thread::dump_registers(fd)
            ),
        });
        return false;
    };
    let kernel_sp = match crate::traps::guest_mode::enter_kernel(fd, dom, id, sync_regs) {
        Ok(Some(sp)) => sp,
        Ok(None) => regs.rsp,
        Err(e) => {
            dom.request_exit(DomainExit::Internal(format!("vCPU {id}: {e}")));
            return false;
        }
    };
    let (cs, ss) = dom.boot.selectors;
    let saved_mask = dom.shared_info.upcall_mask(id);
    let words = [
        regs.rcx,
        regs.r11,
        regs.rcx,
        u64::from(cs) | (u64::from(saved_mask) << 32),
        regs.r11,
        regs.rsp,
        u64::from(ss),
    ];
    let at = (kernel_sp & !0xf).wrapping_sub(8 * words.len() as u64);
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    if dom.guest_view(id).write_bytes(at, &bytes).is_err() {
        dom.request_exit(DomainExit::TripleFault {
            vcpu: id,
            registers: format!(
                "kernel stack {kernel_sp:#x} not writable for a syscall frame; {}",
                super::thread::dump_registers(fd)
            ),
        });
        return false;
    }
    if cb.mask_events {
        dom.shared_info.set_upcall_mask(id, true);
    }
    let mut next = *regs;
    next.rip = cb.address;
    next.rsp = at;
    next.rflags = syscall::user_rflags(0);
    if sync_regs {
        fd.sync_regs_mut().regs = next;
        fd.set_sync_dirty_reg(SyncReg::Register);
        return true;
    }
    match fd.set_regs(&next) {
        Ok(()) => true,
        Err(e) => {
            dom.request_exit(DomainExit::Internal(format!("vCPU {id}: set regs: {e}")));
            false
        }
    }
}
