//! Secondary vCPUs: start one on a Rust function with `VCPUOP_initialise` + `up`.

use alloc::vec;
use rxen_abi::vcpu::*;

use crate::hypercall::{vcpu_op, Errno};

/// Stack size of a secondary vCPU.
pub const STACK_SIZE: usize = 256 * 1024;

/// Starts vCPU `id` running `f(id)`; when `f` returns, the vCPU takes itself down.
pub fn start_vcpu(id: u32, f: fn(u32)) -> Result<(), Errno> {
    let stack = vec![0u8; STACK_SIZE].leak();
    let top = (stack.as_ptr() as u64 + STACK_SIZE as u64) & !0xf;
    crate::percpu::prepare(id);
    let mut ctx: alloc::boxed::Box<VcpuGuestContext> = zeroed_context();
    ctx.flags = VGCF_ONLINE;
    ctx.user_regs.rip = secondary_entry as *const () as u64;
    ctx.user_regs.rsp = top - 8;
    ctx.user_regs.rdi = id as u64;
    ctx.user_regs.rsi = f as *const () as u64;
    ctx.fs_base = crate::percpu::record_address(id);
    if crate::start::is_pv() {
        // Xen's PV vCPU context: flat kernel selectors, the kernel stack, and CR3 =
        // the current L4's machine address (`xen_pfn_to_cr3`).
        let (cs, ss) = crate::start::kernel_selectors();
        ctx.flags |= VGCF_IN_KERNEL;
        ctx.user_regs.cs = cs;
        ctx.user_regs.ss = ss;
        ctx.user_regs.ds = ss;
        ctx.user_regs.es = ss;
        ctx.user_regs.rflags = 0x200;
        ctx.kernel_ss = u64::from(ss);
        ctx.kernel_sp = top - 8;
        ctx.ctrlreg[3] = crate::pv::current_l4_mfn() << 12;
    }
    vcpu_op(VCPUOP_INITIALISE, id, Some(&mut *ctx))?;
    vcpu_op::<()>(VCPUOP_UP, id, None)?;
    Ok(())
}

fn zeroed_context() -> alloc::boxed::Box<VcpuGuestContext> {
    let layout = core::alloc::Layout::new::<VcpuGuestContext>();
    // SAFETY: VcpuGuestContext is plain old data for which all-zero bytes are valid;
    // the allocation has its layout and is owned by the returned Box.
    unsafe {
        let p = alloc::alloc::alloc_zeroed(layout) as *mut VcpuGuestContext;
        if p.is_null() {
            alloc::alloc::handle_alloc_error(layout);
        }
        alloc::boxed::Box::from_raw(p)
    }
}

extern "C" fn secondary_entry(id: u64, f: u64) -> ! {
    crate::start::init_vcpu(id as u32);
    // SAFETY: `f` is the `fn(u32)` passed to `start_vcpu`.
    let f: fn(u32) = unsafe { core::mem::transmute::<usize, fn(u32)>(f as usize) };
    f(id as u32);
    let _ = vcpu_op::<()>(VCPUOP_DOWN, id as u32, None);
    loop {
        crate::hypercall::block();
    }
}

/// Is vCPU `id` up?
pub fn is_up(id: u32) -> Result<bool, Errno> {
    vcpu_op::<()>(VCPUOP_IS_UP, id, None).map(|v| v != 0)
}

/// Runstate of vCPU `id`.
pub fn runstate(id: u32) -> Result<VcpuRunstateInfo, Errno> {
    let mut r = VcpuRunstateInfo::default();
    vcpu_op(VCPUOP_GET_RUNSTATE_INFO, id, Some(&mut r))?;
    Ok(r)
}
