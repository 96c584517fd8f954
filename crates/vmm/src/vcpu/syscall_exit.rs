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
    if regs.rax == u64::from(rxen_abi::hypercall::IRET) {
        return crate::traps::iret::handle(fd, dom, id, sync_regs, &regs);
    }
    let call = HypercallArgs {
        nr: regs.rax,
        args: [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8],
    };
    let result = hypercall::handle(dom, id, fd, call);
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
