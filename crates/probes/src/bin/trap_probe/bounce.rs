//! What the VMM does on a trap: read the hardware frame an exit stub left, build Xen's
//! bounce frame on the guest stack and redirect the vCPU to a guest handler; and the
//! `iret` hypercall that undoes it.

use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_ioctls::{SyncReg, VcpuFd};

use crate::vm::*;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const TF: u64 = 1 << 8;
const NT: u64 = 1 << 14;
const RF: u64 = 1 << 16;

/// How the VMM reads and writes the vCPU's registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegAccess {
    /// `KVM_GET_REGS`/`KVM_SET_REGS`/`KVM_GET_SREGS` (about 5 µs each here).
    Ioctl,
    /// `kvm_run->s.regs` (`KVM_CAP_SYNC_REGS`): copied by `KVM_RUN` itself.
    Sync,
}

/// Makes `KVM_RUN` fill `kvm_run->s.regs` (regs, and sregs when `sregs`) on every exit.
pub fn enable_sync(vcpu: &mut VcpuFd, sregs: bool) {
    vcpu.set_sync_valid_reg(SyncReg::Register);
    if sregs {
        vcpu.set_sync_valid_reg(SyncReg::SystemRegister);
    }
}

pub fn get_regs(vcpu: &VcpuFd, acc: RegAccess) -> Res<kvm_regs> {
    Ok(match acc {
        RegAccess::Ioctl => vcpu.get_regs()?,
        RegAccess::Sync => vcpu.sync_regs().regs,
    })
}

pub fn get_sregs(vcpu: &VcpuFd, acc: RegAccess) -> Res<kvm_sregs> {
    Ok(match acc {
        RegAccess::Ioctl => vcpu.get_sregs()?,
        RegAccess::Sync => vcpu.sync_regs().sregs,
    })
}

pub fn set_regs(vcpu: &mut VcpuFd, acc: RegAccess, regs: &kvm_regs) -> Res<()> {
    match acc {
        RegAccess::Ioctl => vcpu.set_regs(regs)?,
        RegAccess::Sync => {
            vcpu.sync_regs_mut().regs = *regs;
            vcpu.set_sync_dirty_reg(SyncReg::Register);
        }
    }
    Ok(())
}

/// The state the VMM finds at an exit stub.
#[derive(Debug, Clone, Copy)]
pub struct Fault {
    pub vector: u8,
    /// CPL the stub ran at (`CS.selector & 3`) and its code selector.
    pub cpl: u16,
    pub stub_cs: u16,
    /// `rsp` at the stub (where the CPU pushed the frame).
    pub stub_rsp: u64,
    pub error_code: Option<u64>,
    /// The hardware frame: rip, cs, rflags, rsp, ss.
    pub frame: [u64; 5],
    pub cr2: u64,
    pub rcx: u64,
    pub r11: u64,
}

/// Reads the state at a stub exit for `vector` (`KVM_GET_REGS` + `KVM_GET_SREGS`).
pub fn read_fault(vm: &Vm, vector: u8, acc: RegAccess) -> Res<Fault> {
    let regs = get_regs(&vm.vcpu, acc)?;
    let sregs = get_sregs(&vm.vcpu, acc)?;
    let mut p = regs.rsp;
    let error_code = if has_error_code(vector) {
        let e = vm.ram.read(p);
        p += 8;
        Some(e)
    } else {
        None
    };
    let w = vm.words(p, 5);
    Ok(Fault {
        vector,
        cpl: sregs.cs.selector & 3,
        stub_cs: sregs.cs.selector,
        stub_rsp: regs.rsp,
        error_code,
        frame: [w[0], w[1], w[2], w[3], w[4]],
        cr2: sregs.cr2,
        rcx: regs.rcx,
        r11: regs.r11,
    })
}

/// Writes Xen's bounce frame `{ rcx, r11, [err], rip, cs, rflags, rsp, ss }` below the
/// interrupted `rsp` (16-byte aligned, as Xen does); returns the new `rsp`.
pub fn push_bounce_frame(
    ram: &Ram,
    interrupted: [u64; 5],
    err: Option<u64>,
    rcx: u64,
    r11: u64,
) -> u64 {
    let [rip, cs, rflags, rsp, ss] = interrupted;
    let mut words = vec![rcx, r11];
    words.extend(err);
    words.extend([rip, cs, rflags, rsp, ss]);
    let new_rsp = (rsp & !15) - 8 * words.len() as u64;
    for (i, w) in words.iter().enumerate() {
        ram.write(new_rsp + 8 * i as u64, *w);
    }
    new_rsp
}

/// Bounces `f` to the guest handler (`H_ERR`/`H_NOERR`) by rewriting registers: the
/// path for a stub that ran at CPL 3 on the interrupted stack.
pub fn bounce_by_regs(vm: &mut Vm, f: &Fault, acc: RegAccess) -> Res<()> {
    let new_rsp = push_bounce_frame(&vm.ram, f.frame, f.error_code, f.rcx, f.r11);
    let mut regs = get_regs(&vm.vcpu, acc)?;
    regs.rsp = new_rsp;
    regs.rip = if f.error_code.is_some() {
        H_ERR
    } else {
        H_NOERR
    };
    regs.rflags = (f.frame[2] & !(TF | NT | RF)) | 2;
    set_regs(&mut vm.vcpu, acc, &regs)?;
    Ok(())
}

/// Bounces `f` by rewriting the frame the stub's `iretq` will pop (and `rsp` past the
/// error code): the path for a stub that ran at CPL 0 on `TSS.rsp0`.
pub fn bounce_by_stub_iret(vm: &Vm, f: &Fault) -> Res<()> {
    let new_rsp = push_bounce_frame(&vm.ram, f.frame, f.error_code, f.rcx, f.r11);
    let handler = if f.error_code.is_some() {
        H_ERR
    } else {
        H_NOERR
    };
    let mut regs = vm.vcpu.get_regs()?;
    if f.error_code.is_some() {
        regs.rsp += 8;
    }
    let iret = [
        handler,
        u64::from(USER_CS),
        f.frame[2] & !(TF | NT | RF),
        new_rsp,
        u64::from(USER_SS),
    ];
    for (i, w) in iret.iter().enumerate() {
        vm.ram.write(regs.rsp + 8 * i as u64, *w);
    }
    vm.vcpu.set_regs(&regs)?;
    Ok(())
}

/// Xen's `iret` hypercall: `rsp` points at `{ rax, r11, rcx, flags, rip, cs, rflags,
/// rsp, ss }`; restores them by `KVM_SET_REGS`. `rflags_or` is ORed into the restored
/// flags (the flags case uses it to try IF/IOPL).
pub fn iret_hypercall(
    vcpu: &mut VcpuFd,
    ram: &Ram,
    acc: RegAccess,
    rflags_or: u64,
) -> Res<[u64; 9]> {
    let mut regs = get_regs(vcpu, acc)?;
    let w: Vec<u64> = (0..9).map(|i| ram.read(regs.rsp + 8 * i)).collect();
    let ctx = [w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8]];
    if ctx[5] != u64::from(USER_CS) || ctx[8] != u64::from(USER_SS) {
        return Err(format!("iret to cs {:#x} ss {:#x}", ctx[5], ctx[8]).into());
    }
    regs.rax = ctx[0];
    regs.r11 = ctx[1];
    regs.rcx = ctx[2];
    regs.rip = ctx[4];
    regs.rflags = (ctx[6] & !(TF | NT | RF | (3 << 12))) | 2 | rflags_or;
    regs.rsp = ctx[7];
    set_regs(vcpu, acc, &regs)?;
    Ok(ctx)
}
