//! Guest kernel and guest user mode of a PV vCPU (Xen's `TF_kernel_mode` and
//! `toggle_guest_mode`). Both run at CPL 3 here; what tells them apart is the page
//! table (the kernel L4 from `NEW_BASEPTR`, the user L4 from `NEW_USER_BASEPTR`) and
//! the GS base (the active and shadow bases swap, as Xen's `swapgs` on a mode change).
//!
//! * `iret` to a CS with RPL 3 enters user mode when the vCPU has a user L4
//!   ([`enter_user`]); a vCPU without one stays in kernel mode (Mini-OS, PV-GRUB and
//!   the SDK's guests never have one).
//! * A `syscall` in user mode, an exception in user mode and an event upcall in user
//!   mode enter kernel mode first ([`enter_kernel`]) and put their frame on the kernel
//!   stack of `stack_switch`, with the user CS/SS in it (RPL 3).
//!
//! Only the vCPU's own thread changes its mode, between two `KVM_RUN`s.
//!
//! A switch costs no ioctl when KVM has sync regs (`KVM_CAP_SYNC_REGS`): the new CR3
//! and GS base go into `kvm_run`'s copy of the special registers, which the next
//! `KVM_RUN` loads together with the general registers the caller writes there; the
//! inactive GS base stays in the VMM ([`super::msr::ShadowGs`]). Without sync regs it
//! takes `KVM_GET_SREGS` and `KVM_SET_SREGS`.

use kvm_ioctls::VcpuFd;

use crate::domain::DomainShared;

/// Whether vCPU `id` runs guest user code.
pub fn is_user(dom: &DomainShared, id: u32) -> bool {
    dom.traps.vcpu(id).is_some_and(|t| t.user_mode)
}

/// Loads `cr3` and swaps the active and the inactive GS base. `sync`: `kvm_run`'s sync
/// regs hold the vCPU's current special registers (the thread ran it and loaded
/// nothing by ioctl since), so the change goes there; else by ioctl.
fn switch(
    fd: &mut VcpuFd,
    sync: bool,
    cr3: u64,
    shadow_gs: &mut super::msr::ShadowGs,
) -> Result<(), String> {
    let inactive = shadow_gs.get(fd);
    let active = crate::vcpu::sregs_edits::update(fd, sync, |sregs| {
        sregs.cr3 = cr3;
        std::mem::replace(&mut sregs.gs.base, inactive)
    })?;
    shadow_gs.set(active);
    Ok(())
}

/// Enters guest kernel mode if the vCPU is in user mode: the kernel L4, the kernel's
/// GS. Returns the kernel stack pointer (`stack_switch`) where the entry's frame goes,
/// or `None` when the vCPU was in kernel mode already. `sync`: as for `switch`.
pub fn enter_kernel(
    fd: &mut VcpuFd,
    dom: &DomainShared,
    id: u32,
    sync: bool,
) -> Result<Option<u64>, String> {
    let Some(mut t) = dom.traps.vcpu(id) else {
        return Ok(None);
    };
    if !t.user_mode {
        return Ok(None);
    }
    let mmu = dom.pv_mmu.as_ref().ok_or("user mode without an MMU")?;
    let kernel = mmu
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .vcpu(id as usize)
        .and_then(|b| b.kernel)
        .ok_or("no kernel page table")?;
    switch(fd, sync, kernel * rxen_abi::PAGE_SIZE, &mut t.shadow_gs)?;
    dom.stats.event(crate::stats::Event::ToKernel);
    t.user_mode = false;
    Ok(Some(t.kernel_stack.1))
}

/// Enters guest user mode (an `iret` to RPL 3): the user L4 and the user's GS. Returns
/// `false`, changing nothing, when the vCPU has no user L4 or is in user mode already.
/// `sync`: as for `switch`.
pub fn enter_user(
    fd: &mut VcpuFd,
    dom: &DomainShared,
    id: u32,
    sync: bool,
) -> Result<bool, String> {
    let Some(mmu) = dom.pv_mmu.as_ref() else {
        return Ok(false);
    };
    let Some(mut t) = dom.traps.vcpu(id) else {
        return Ok(false);
    };
    if t.user_mode {
        return Ok(false);
    }
    let Some(user) = mmu
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .vcpu(id as usize)
        .and_then(|b| b.user)
    else {
        return Ok(false);
    };
    switch(fd, sync, user * rxen_abi::PAGE_SIZE, &mut t.shadow_gs)?;
    dom.stats.event(crate::stats::Event::ToUser);
    t.user_mode = true;
    Ok(true)
}
