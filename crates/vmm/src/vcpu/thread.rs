//! The vCPU thread: waits until its vCPU may run, enters the guest with `KVM_RUN`,
//! and handles exits (hypercalls through the hypercall port, faults, kicks).

use std::sync::Arc;

use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd};
use rxen_abi::layout::{HYPERCALL_PORT, NULL_PORT, SYSCALL_STUB_PORT, TRAP_STUB_PORT};

use crate::domain::DomainShared;
use crate::exit::DomainExit;
use crate::hypercall::{self, decode::HypercallArgs};
use crate::vcpu::regs;

/// Formats the registers of a vCPU for a crash report.
pub fn dump_registers(fd: &VcpuFd) -> String {
    match (fd.get_regs(), fd.get_sregs()) {
        (Ok(r), Ok(s)) => format!(
            "rip={:#018x} rsp={:#018x} rflags={:#x} rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} rbp={:#x} \
             r8={:#x} r9={:#x} r10={:#x} r11={:#x} r12={:#x} r13={:#x} r14={:#x} r15={:#x} cs={:#x} ss={:#x} cr2={:#x} cr3={:#x}",
            r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12,
            r.r13, r.r14, r.r15, s.cs.selector, s.ss.selector, s.cr2, s.cr3
        ),
        (Err(e), _) | (_, Err(e)) => format!("registers unavailable: {e}"),
    }
}

/// Outcome of a handled exit.
enum Next {
    Continue,
    Stop,
}

/// Runs vCPU `id` until the domain stops. The vCPU's `kvm_run` mapping (owned by `fd`)
/// is touched only by this thread and its kick-signal handler (see [`super::kick`]).
pub fn run(mut fd: VcpuFd, dom: Arc<DomainShared>, id: u32, sync_regs: bool) {
    crate::timers::precise_timer_slack();
    let ctl = dom.vcpus[id as usize].clone();
    let ie: *mut u8 = &mut fd.get_kvm_run().immediate_exit;
    // SAFETY: `ie` points into `fd`'s kvm_run mapping; `fd` is a parameter, so it is
    // dropped after this local guard, which is dropped on this thread.
    let _attached = unsafe { ctl.thread.attach(ie) };
    if sync_regs {
        fd.set_sync_valid_reg(SyncReg::Register);
        // `cr2` and the selectors for the trap path (`crate::traps`).
        fd.set_sync_valid_reg(SyncReg::SystemRegister);
        // Pending exceptions, for the upcall check (`crate::traps::upcall`).
        fd.set_sync_valid_reg(SyncReg::VcpuEvents);
    }
    // Whether sync regs hold this vCPU's registers: after a `KVM_RUN`, and not since a
    // context was loaded by ioctl.
    let mut in_sync_regs = false;
    loop {
        // Scheduling gate: wait until the vCPU may run guest code.
        let context = {
            let mut s = ctl.lock();
            loop {
                if s.stop {
                    break;
                }
                if s.capture_wanted {
                    // A save of the paused domain (`crate::snapshot::save`).
                    s.capture_wanted = false;
                    // KVM's `MSR_KERNEL_GS_BASE` may lag behind the VMM's copy.
                    let flushed = crate::traps::msr::flush_shadow_gs(&dom, id, &fd);
                    s.captured = Some(flushed.and_then(|()| {
                        crate::snapshot::cpu::capture(&mut fd, sync_regs && in_sync_regs)
                            .map(Box::new)
                    }));
                    ctl.notify_locked();
                    continue;
                }
                if s.may_run() {
                    break;
                }
                s = ctl.wait(s, None);
            }
            if s.stop {
                break;
            }
            s.pending_context.take()
        };
        if let Some(ctx) = context {
            if let Err(e) = load_context(&mut fd, &dom, id, &ctx) {
                dom.request_exit(DomainExit::Internal(format!(
                    "vCPU {id}: loading context: {e}"
                )));
                break;
            }
            // The registers are KVM's now, not the sync regs' copy, until the next
            // `KVM_RUN` (also when a kick sends the loop round again before it).
            in_sync_regs = false;
        }
        // An event upcall due (see `crate::traps::upcall`).
        if !crate::traps::upcall::maybe_deliver(&mut fd, &dom, id, sync_regs, in_sync_regs) {
            break;
        }
        if !ctl.thread.enter_guest() {
            // Kicked between the gate and here: read the scheduling record again.
            continue;
        }
        let exit = fd.run();
        dom.stats.exit(crate::stats::Exit::of(&exit));
        in_sync_regs = true;
        ctl.thread.leave_guest();
        let next = match exit {
            Ok(VcpuExit::IoOut(SYSCALL_STUB_PORT, _)) => {
                // `syscall` entry (see `super::syscall`).
                if super::syscall_exit::handle(&mut fd, &dom, id, sync_regs) {
                    Next::Continue
                } else {
                    Next::Stop
                }
            }
            Ok(VcpuExit::IoOut(TRAP_STUB_PORT, _)) => {
                // An exception through rxen's IDT (see `crate::traps`).
                if crate::traps::handle_stub_exit(&mut fd, &dom, id, sync_regs) {
                    Next::Continue
                } else {
                    Next::Stop
                }
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                let port_data = (
                    port,
                    data.len(),
                    u32::from_le_bytes([
                        data.first().copied().unwrap_or(0),
                        data.get(1).copied().unwrap_or(0),
                        data.get(2).copied().unwrap_or(0),
                        data.get(3).copied().unwrap_or(0),
                    ]),
                );
                handle_out(&mut fd, &dom, id, port_data, sync_regs)
            }
            Ok(VcpuExit::IoIn(_, data)) => {
                data.fill(0xff);
                Next::Continue
            }
            Ok(VcpuExit::MmioRead(_, data)) => {
                data.fill(0xff);
                Next::Continue
            }
            Ok(VcpuExit::MmioWrite(..)) => Next::Continue,
            Ok(VcpuExit::Shutdown) => {
                let registers = dump_registers(&fd);
                dom.request_exit(DomainExit::TripleFault {
                    vcpu: id,
                    registers,
                });
                Next::Stop
            }
            Ok(VcpuExit::Intr) => {
                fd.set_kvm_immediate_exit(0);
                Next::Continue
            }
            Ok(other) => {
                let what = format!("{other:?}");
                let why = format!("vCPU {id}: unexpected exit {what}; {}", dump_registers(&fd));
                dom.request_exit(DomainExit::Internal(why));
                Next::Stop
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                fd.set_kvm_immediate_exit(0);
                Next::Continue
            }
            Err(e) => {
                dom.request_exit(DomainExit::Internal(format!(
                    "vCPU {id}: KVM_RUN failed: {e}"
                )));
                Next::Stop
            }
        };
        if let Next::Stop = next {
            break;
        }
    }
}

fn handle_out(
    fd: &mut VcpuFd,
    dom: &Arc<DomainShared>,
    id: u32,
    (port, len, value): (u16, usize, u32),
    sync_regs: bool,
) -> Next {
    if port == NULL_PORT {
        return Next::Continue;
    }
    if port != HYPERCALL_PORT || len != 4 {
        tracing::debug!(vcpu = id, port, "write to unassigned I/O port ignored");
        return Next::Continue;
    }
    let r = if sync_regs {
        fd.sync_regs().regs
    } else {
        match fd.get_regs() {
            Ok(r) => r,
            Err(e) => {
                dom.request_exit(DomainExit::Internal(format!("vCPU {id}: get regs: {e}")));
                return Next::Stop;
            }
        }
    };
    let result = if crate::traps::guest_mode::is_user(dom, id) {
        // Hypercalls are the guest kernel's ("may only be issued by kernel-level
        // software", Xen's hypercall ABI), but the port is open to every CPL-3 `out`,
        // guest user processes included: refused as Xen refuses a user-mode hypercall
        // of an HVM guest.
        tracing::debug!(
            vcpu = id,
            nr = value,
            "hypercall from guest user mode refused"
        );
        i64::from(-rxen_abi::errno::EPERM)
    } else if value == rxen_abi::hypercall::IRET {
        // `iret` through the hypercall page: `rsp` is at the `iret_context`.
        return if crate::traps::iret::handle(fd, dom, id, sync_regs, &r) {
            Next::Continue
        } else {
            Next::Stop
        };
    } else {
        let call = HypercallArgs {
            nr: value as u64,
            args: [r.rdi, r.rsi, r.rdx, r.r10, r.r8],
        };
        let result = hypercall::handle(dom, id, fd, call);
        if !super::syscall_exit::apply_sregs_edits(fd, dom, id, sync_regs) {
            return Next::Stop;
        }
        result
    };
    if sync_regs {
        fd.sync_regs_mut().regs.rax = result as u64;
        fd.set_sync_dirty_reg(SyncReg::Register);
    } else {
        let mut r = r;
        r.rax = result as u64;
        if let Err(e) = fd.set_regs(&r) {
            dom.request_exit(DomainExit::Internal(format!("vCPU {id}: set regs: {e}")));
            return Next::Stop;
        }
    }
    Next::Continue
}

/// Loads a `VCPUOP_initialise` context. For a PV vCPU (`pv`) also CR3 =
/// `ctrlreg[3]`, which `VCPUOP_initialise` made the vCPU's base in the MMU, and the
/// kernel GS base; the selectors stay the domain's flat ones. The context replaces
/// whatever an earlier exit left in `kvm_run`'s sync regs for the next `KVM_RUN`.
fn load_context(
    fd: &mut VcpuFd,
    dom: &DomainShared,
    id: u32,
    ctx: &rxen_abi::vcpu::VcpuGuestContext,
) -> Result<(), String> {
    let pv = dom.pv_mmu.is_some();
    fd.get_kvm_run().kvm_dirty_regs = 0;
    let kvm = |what: &str, e: kvm_ioctls::Error| format!("{what}: {e}");
    fd.set_regs(&regs::context_regs(ctx))
        .map_err(|e| kvm("set regs", e))?;
    let mut s = fd.get_sregs().map_err(|e| kvm("get sregs", e))?;
    // A PV kernel lives in the upper half: its segment bases may be any canonical
    // address (Linux's `gs_base_kernel` is the CPU's per-CPU offset, 0xffff88...);
    // `pv::vcpu_context` refused a non-canonical one.
    let base_ok = |base: u64| {
        if pv {
            crate::guest_view::is_canonical(base)
        } else {
            regs::is_canonical_user(base)
        }
    };
    if pv {
        s.cr3 = ctx.ctrlreg[3] & 0x000f_ffff_ffff_f000;
        if base_ok(ctx.gs_base_kernel) {
            s.gs.base = ctx.gs_base_kernel;
        }
    }
    if base_ok(ctx.fs_base) {
        s.fs.base = ctx.fs_base;
    }
    if !pv && base_ok(ctx.gs_base_user) {
        s.gs.base = ctx.gs_base_user;
    }
    fd.set_sregs(&s).map_err(|e| kvm("set sregs", e))?;
    if pv && base_ok(ctx.gs_base_user) {
        // The user GS base is the one `swapgs` brings in (`MSR_KERNEL_GS_BASE`).
        crate::traps::msr::write_shadow_gs(dom, id, fd, ctx.gs_base_user)?;
    }
    Ok(())
}
