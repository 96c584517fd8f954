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

use kvm_ioctls::VcpuFd;

use crate::domain::DomainShared;

/// Whether vCPU `id` runs guest user code.
pub fn is_user(dom: &DomainShared, id: u32) -> bool {
    dom.traps.vcpu(id).is_some_and(|t| t.user_mode)
}

/// Loads `cr3` and swaps the GS bases (`KVM_SET_SREGS`, `KVM_SET_MSRS`).
fn switch(fd: &VcpuFd, cr3: u64) -> Result<(), String> {
    let mut sregs = fd.get_sregs().map_err(|e| format!("get sregs: {e}"))?;
    let shadow = super::msr::read_shadow_gs(fd);
    super::msr::write_shadow_gs(fd, sregs.gs.base)?;
    sregs.gs.base = shadow;
    sregs.cr3 = cr3;
    fd.set_sregs(&sregs).map_err(|e| format!("set sregs: {e}"))
}

/// Enters guest kernel mode if the vCPU is in user mode: the kernel L4, the kernel's
/// GS. Returns the kernel stack pointer (`stack_switch`) where the entry's frame goes,
/// or `None` when the vCPU was in kernel mode already.
pub fn enter_kernel(fd: &VcpuFd, dom: &DomainShared, id: u32) -> Result<Option<u64>, String> {
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
    switch(fd, kernel * rxen_abi::PAGE_SIZE)?;
    dom.stats.event(crate::stats::Event::ToKernel);
    t.user_mode = false;
    Ok(Some(t.kernel_stack.1))
}

/// Enters guest user mode (an `iret` to RPL 3): the user L4 and the user's GS. Returns
/// `false`, changing nothing, when the vCPU has no user L4 or is in user mode already.
pub fn enter_user(fd: &VcpuFd, dom: &DomainShared, id: u32) -> Result<bool, String> {
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
    switch(fd, user * rxen_abi::PAGE_SIZE)?;
    dom.stats.event(crate::stats::Event::ToUser);
    t.user_mode = true;
    Ok(true)
}
