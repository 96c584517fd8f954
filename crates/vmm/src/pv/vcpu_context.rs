//! `VCPUOP_initialise` of a Xen PV vCPU: what of the guest's `vcpu_guest_context`
//! (xen/include/public/arch-x86/xen-x86_64.h) becomes the vCPU's state before it first
//! runs, as Xen's `arch_set_info_guest` takes it for a 64-bit PV guest.
//!
//! Linux's `cpu_initialize_context` (arch/x86/xen/smp_pv.c) fills, for a secondary
//! CPU: `user_regs` (rip = `asm_cpu_bringup_and_idle`, rsp, rflags with IOPL 1),
//! `flags = VGCF_in_kernel`, `trap_ctxt` (its IDT converted, vector `i` at index `i`),
//! `gdt_frames`/`gdt_ents` (the CPU's GDT page, made read-only), `kernel_ss`/`kernel_sp`,
//! `gs_base_kernel` (the per-CPU offset), `event_callback_eip`, `failsafe_callback_eip`
//! and `ctrlreg[3]` (`xen_pfn_to_cr3` of `swapper_pg_dir`). The syscall callback and
//! the trap table are registered again by the new CPU itself (`xen_enable_syscall`,
//! `xen_load_idt`).
//!
//! Here, under the target vCPU's scheduling lock and before it is marked initialised:
//! the GDT frames are typed and referenced as `set_gdt` does, the kernel L4 as
//! `MMUEXT_NEW_BASEPTR` (and `ctrlreg[1]`, the user L4, as `NEW_USER_BASEPTR`), then
//! the trap table, callbacks, kernel stack and virtual IOPL are stored. Registers, CR3
//! and the segment bases are loaded by the vCPU's thread (`vcpu::thread`). Not taken:
//! `debugreg` (rxen emulates no debug registers), `vm_assist` (domain-wide in rxen, as
//! the `vm_assist` hypercall sets it), the LDT (`ldt_ents`: KVM here has no LDT, see
//! docs/linux-guest.md "Segments on this host") and the selectors (every vCPU runs on
//! rxen's flat ones).

use rxen_abi::errno::EINVAL;
use rxen_abi::vcpu::{VcpuGuestContext, VGCF_IN_KERNEL};

use super::mmu::segdesc::{DESCS_PER_FRAME, MAX_GDT_ENTRIES};
use super::ram_frames::RamFrames;
use crate::domain::DomainShared;
use crate::guest_view::is_canonical;
use crate::traps::{Callback, TrapEntry};

/// `VGCF_failsafe_disables_events`: the failsafe callback masks events.
pub const VGCF_FAILSAFE_DISABLES_EVENTS: u64 = 1 << 3;
/// `VGCF_syscall_disables_events`: the syscall callback masks events.
pub const VGCF_SYSCALL_DISABLES_EVENTS: u64 = 1 << 4;

/// Takes `ctx` as PV vCPU `vcpu`'s state (see the module doc); on an error nothing of
/// it stays and the hypercall fails with it. The caller sets the virtual IOPL
/// ([`virtual_iopl`]) in the scheduling record it holds locked.
pub fn accept(dom: &DomainShared, vcpu: u32, ctx: &VcpuGuestContext) -> Result<(), i32> {
    let Some(mmu) = dom.pv_mmu.as_ref() else {
        return Ok(());
    };
    check(ctx)?;
    let refused = |what: &str, e: &dyn std::fmt::Display| {
        tracing::debug!(vcpu, "VCPUOP_initialise: {what}: {e}");
        -EINVAL
    };
    let v = vcpu as usize;
    {
        let mut mmu = mmu.lock().unwrap_or_else(|e| e.into_inner());
        let (base, entries) = dom.pv_m2p;
        let mut frames = RamFrames::with_m2p(&dom.ram, base, entries);
        let count = ctx.gdt_ents.div_ceil(DESCS_PER_FRAME) as usize;
        let gdt = ctx.gdt_frames.get(..count).ok_or(-EINVAL)?;
        mmu.set_gdt(&mut frames, v, gdt, ctx.gdt_ents)
            .map_err(|e| refused("GDT", &e))?;
        let undo_gdt = |mmu: &mut super::mmu::Mmu, frames: &mut RamFrames<'_>| {
            let _ = mmu.set_gdt(frames, v, &[], 0);
        };
        // The user L4 first: undoing it is `NEW_USER_BASEPTR(0)`; the kernel L4 has no
        // "none" to go back to.
        if let Err(e) = mmu.new_user_baseptr(&mut frames, v, ctx.ctrlreg[1] >> 12) {
            undo_gdt(&mut mmu, &mut frames);
            return Err(refused("user L4 (ctrlreg[1])", &e));
        }
        if let Err(e) = mmu.new_baseptr(&mut frames, v, ctx.ctrlreg[3] >> 12) {
            let _ = mmu.new_user_baseptr(&mut frames, v, 0);
            undo_gdt(&mut mmu, &mut frames);
            return Err(refused("kernel L4 (ctrlreg[3])", &e));
        }
    }
    let mut t = dom.traps.vcpu(vcpu).ok_or(-EINVAL)?;
    for (entry, info) in t.table.iter_mut().zip(ctx.trap_ctxt.iter()) {
        *entry = TrapEntry {
            flags: info.flags,
            cs: info.cs,
            address: info.address,
        };
    }
    let callback = |address: u64, mask_events: bool| {
        (address != 0).then_some(Callback {
            address,
            mask_events,
        })
    };
    t.callbacks.event = callback(ctx.event_callback_eip, false);
    t.callbacks.failsafe = callback(
        ctx.failsafe_callback_eip,
        ctx.flags & VGCF_FAILSAFE_DISABLES_EVENTS != 0,
    );
    t.callbacks.syscall = callback(
        ctx.syscall_callback_eip,
        ctx.flags & VGCF_SYSCALL_DISABLES_EVENTS != 0,
    );
    t.kernel_stack = ((ctx.kernel_ss as u16) | 3, ctx.kernel_sp);
    t.user_mode = false;
    dom.traps.note_callbacks(vcpu, &t);
    Ok(())
}

/// The checks that need no state: kernel mode (rxen starts a PV vCPU in guest kernel
/// mode only), a GDT within Xen's bound, canonical addresses.
fn check(ctx: &VcpuGuestContext) -> Result<(), i32> {
    if ctx.flags & VGCF_IN_KERNEL == 0 {
        tracing::debug!("VCPUOP_initialise: a PV vCPU starting in user mode is not supported");
        return Err(-EINVAL);
    }
    if ctx.gdt_ents > MAX_GDT_ENTRIES {
        return Err(-EINVAL);
    }
    let addresses = [
        ctx.user_regs.rip,
        ctx.user_regs.rsp,
        ctx.kernel_sp,
        ctx.event_callback_eip,
        ctx.failsafe_callback_eip,
        ctx.syscall_callback_eip,
        ctx.fs_base,
        ctx.gs_base_kernel,
        ctx.gs_base_user,
    ];
    if !addresses.iter().all(|&a| is_canonical(a)) {
        return Err(-EINVAL);
    }
    if !ctx.trap_ctxt.iter().all(|t| is_canonical(t.address)) {
        return Err(-EINVAL);
    }
    Ok(())
}

/// The virtual IOPL of the context's flags (Xen keeps `eflags & X86_EFLAGS_IOPL`):
/// Linux starts its CPUs with IOPL 1, which lets their native `cli`/`sti` pass.
pub fn virtual_iopl(ctx: &VcpuGuestContext) -> u32 {
    ((ctx.user_regs.rflags >> 12) & 3) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::FromZeros;

    /// The context Linux's `cpu_initialize_context` passes for CPU 1 (the fields it
    /// sets; addresses from Debian's 6.1 kernel).
    fn linux_context() -> Box<VcpuGuestContext> {
        let mut ctx = VcpuGuestContext::new_box_zeroed().unwrap();
        ctx.flags = VGCF_IN_KERNEL;
        ctx.user_regs.rip = 0xffff_ffff_8100_1f40;
        ctx.user_regs.rsp = 0xffff_c900_4009_3f58;
        ctx.user_regs.rflags = 0x1000;
        ctx.trap_ctxt[14].address = 0xffff_ffff_81a0_0b30;
        ctx.gdt_frames[0] = 0x2a3f;
        ctx.gdt_ents = 16;
        ctx.kernel_ss = 0xe02b;
        ctx.kernel_sp = 0xffff_c900_4009_4000;
        ctx.gs_base_kernel = 0xffff_8880_0f40_0000;
        ctx.event_callback_eip = 0xffff_ffff_81a0_1230;
        ctx.failsafe_callback_eip = 0xffff_ffff_81a0_12f0;
        ctx.ctrlreg[3] = 0x2a10 << 12;
        ctx
    }

    #[test]
    fn linux_cpu_context_passes_the_checks() {
        let ctx = linux_context();
        assert_eq!(check(&ctx), Ok(()));
        // IOPL 1 (`IOPL_RING1`): the new CPU's native cli/sti pass as on CPU 0.
        assert_eq!(virtual_iopl(&ctx), 1);
    }

    #[test]
    fn user_mode_starts_big_gdts_and_non_canonical_addresses_are_refused() {
        let mut ctx = linux_context();
        ctx.flags = 0;
        assert_eq!(check(&ctx), Err(-EINVAL), "user mode start");
        let mut ctx = linux_context();
        ctx.gdt_ents = MAX_GDT_ENTRIES + 1;
        assert_eq!(check(&ctx), Err(-EINVAL), "GDT past Xen's reserved entries");
        let mut ctx = linux_context();
        ctx.gs_base_kernel = 0x8000_0000_0000_0000;
        assert_eq!(check(&ctx), Err(-EINVAL), "GS base");
        let mut ctx = linux_context();
        ctx.trap_ctxt[3].address = 0x0000_8000_0000_0000;
        assert_eq!(check(&ctx), Err(-EINVAL), "trap handler");
        let mut ctx = linux_context();
        ctx.kernel_sp = 0x00ff_0000_0000_0000;
        assert_eq!(check(&ctx), Err(-EINVAL), "kernel stack");
    }
}
