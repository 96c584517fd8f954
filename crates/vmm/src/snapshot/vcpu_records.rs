//! Xen's per-vCPU records written from a captured [`CpuState`], so that Xen's tools
//! see a vCPU where Xen would put one: `X86_PV_VCPU_BASIC` (Xen's
//! `vcpu_guest_context`), `X86_PV_VCPU_XSAVE` (`xcr0`, `xcr0_accum`, XSAVE area) and
//! `X86_PV_VCPU_MSRS`. rxen restores from its own state record, which holds the full
//! KVM state; these are written for Xen's tools and readers.

use rxen_abi::vcpu::{VcpuGuestContext, VGCF_IN_KERNEL, VGCF_ONLINE};
use rxen_migration::{Record, VcpuRecordKind};
use zerocopy::{FromZeros, IntoBytes};

use super::cpu::CpuState;

/// The three records of vCPU `id`.
pub fn records(id: u32, cpu: &CpuState, online: bool) -> Vec<Record> {
    let mut ctx = VcpuGuestContext::new_zeroed();
    let r = &cpu.regs;
    let u = &mut ctx.user_regs;
    (u.r15, u.r14, u.r13, u.r12, u.rbp, u.rbx) = (r.r15, r.r14, r.r13, r.r12, r.rbp, r.rbx);
    (u.r11, u.r10, u.r9, u.r8, u.rax, u.rcx) = (r.r11, r.r10, r.r9, r.r8, r.rax, r.rcx);
    (u.rdx, u.rsi, u.rdi, u.rip, u.rflags, u.rsp) = (r.rdx, r.rsi, r.rdi, r.rip, r.rflags, r.rsp);
    let s = &cpu.sregs;
    (u.cs, u.ss, u.ds, u.es, u.fs, u.gs) = (
        s.cs.selector,
        s.ss.selector,
        s.ds.selector,
        s.es.selector,
        s.fs.selector,
        s.gs.selector,
    );
    ctx.flags = VGCF_IN_KERNEL | if online { VGCF_ONLINE } else { 0 };
    ctx.ctrlreg[0] = s.cr0;
    ctx.ctrlreg[3] = s.cr3;
    ctx.ctrlreg[4] = s.cr4;
    ctx.fs_base = s.fs.base;
    ctx.gs_base_kernel = s.gs.base;
    ctx.gs_base_user = cpu.msr(super::cpu::MSR_KERNEL_GS_BASE).unwrap_or(0);
    let mut xsave = Vec::with_capacity(16 + 4096);
    let xcr0 = cpu.xcrs.xcrs.first().map_or(1, |x| x.value);
    xsave.extend_from_slice(&xcr0.to_le_bytes());
    xsave.extend_from_slice(&xcr0.to_le_bytes());
    xsave.extend_from_slice(cpu.xsave.region.as_bytes());
    let mut msrs = Vec::with_capacity(cpu.msrs.len() * 16);
    for &(index, value) in &cpu.msrs {
        msrs.extend_from_slice(&index.to_le_bytes());
        msrs.extend_from_slice(&0u32.to_le_bytes());
        msrs.extend_from_slice(&value.to_le_bytes());
    }
    vec![
        Record::X86PvVcpu {
            kind: VcpuRecordKind::Basic,
            vcpu_id: id,
            data: ctx.as_bytes().to_vec(),
        },
        Record::X86PvVcpu {
            kind: VcpuRecordKind::Xsave,
            vcpu_id: id,
            data: xsave,
        },
        Record::X86PvVcpu {
            kind: VcpuRecordKind::Msrs,
            vcpu_id: id,
            data: msrs,
        },
    ]
}
