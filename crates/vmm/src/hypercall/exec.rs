//! Execution of decoded hypercalls against a domain.

use std::time::Instant;

use rxen_abi::errno::*;
use rxen_abi::event_channel::*;
use rxen_abi::features::*;
use rxen_abi::hypercall::*;
use rxen_abi::memory::*;
use rxen_abi::vcpu::*;
use rxen_abi::version::*;
use rxen_abi::{layout, DOMID_SELF};
use zerocopy::{FromZeros, IntoBytes};

use super::decode::{EvtchnOp, Op, VcpuOp};
use crate::domain::{DomainShared, NR_WATCHDOGS};
use crate::evtchn::EventChannels;
use crate::exit::DomainExit;
use crate::guest_view::GuestView;
use crate::timers::TimerKind;
use crate::vcpu::VcpuState;

/// Xen version rxen reports: 4.19.
pub const XEN_MAJOR: u32 = 4;
pub const XEN_MINOR: u32 = 19;
/// Start of the hypervisor's reserved virtual range for 64-bit PV guests.
const HYPERVISOR_VIRT_START: u64 = 0xFFFF_8000_0000_0000;

fn ok_or(r: Result<(), i32>) -> i64 {
    match r {
        Ok(()) => 0,
        Err(e) => e as i64,
    }
}

fn write_back<T: IntoBytes + zerocopy::Immutable>(mem: &GuestView<'_>, ptr: u64, v: &T) -> i64 {
    match mem.write(ptr, v) {
        Ok(()) => 0,
        Err(_) => -EFAULT as i64,
    }
}

fn write_string(mem: &GuestView<'_>, ptr: u64, len: usize, s: &str) -> i64 {
    let mut buf = vec![0u8; len];
    let n = s.len().min(len - 1);
    buf[..n].copy_from_slice(&s.as_bytes()[..n]);
    match mem.write_bytes(ptr, &buf) {
        Ok(()) => 0,
        Err(_) => -EFAULT as i64,
    }
}

fn is_self(dom: &DomainShared, d: u16) -> bool {
    d == DOMID_SELF || d == dom.config.domid
}

pub(super) fn execute(dom: &DomainShared, vcpu: u32, mem: &GuestView<'_>, op: Op) -> i64 {
    match op {
        Op::XenVersion { cmd, ptr } => xen_version(dom, mem, cmd, ptr),
        Op::ConsoleWrite { bytes } => {
            if dom.pv_mmu.is_some() {
                dom.console.write_hypervisor_log(dom.config.domid, &bytes);
            } else {
                dom.console.write(&bytes);
            }
            bytes.len() as i64
        }
        Op::ConsoleRead { ptr, count } => {
            let input = dom.console.take_input(count as usize);
            match mem.write_bytes(ptr, &input) {
                Ok(()) => input.len() as i64,
                Err(_) => -EFAULT as i64,
            }
        }
        Op::SchedYield => {
            std::thread::yield_now();
            0
        }
        Op::SchedBlock => {
            block(dom, vcpu, None, None);
            update_runstate_area(dom, mem, vcpu);
            0
        }
        Op::SchedPoll { ports, timeout } => {
            let table = dom.evtchn.lock().unwrap_or_else(|e| e.into_inner());
            if ports.iter().any(|&p| !table.is_bound(p)) {
                return -EINVAL as i64;
            }
            drop(table);
            let deadline = (timeout != 0).then(|| dom.clock.instant_of(timeout));
            block(dom, vcpu, Some(&ports), deadline);
            update_runstate_area(dom, mem, vcpu);
            0
        }
        Op::SchedShutdown { reason } if reason == rxen_abi::sched::SHUTDOWN_SUSPEND => {
            // Xen's suspend protocol: the domain waits, paused, for the toolstack. The
            // 1 returned here is what the guest sees if the suspend is cancelled; a
            // restored domain sees 0 (`crate::snapshot::restore`).
            dom.suspend_by(vcpu);
            1
        }
        Op::SchedShutdown { reason } => {
            dom.request_exit(DomainExit::from_reason(reason));
            0
        }
        Op::SchedShutdownCode { reason } => {
            *dom.shutdown_code.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
            0
        }
        Op::SchedRemoteShutdown { dom: d, reason } => {
            if !is_self(dom, d) {
                return -EPERM as i64;
            }
            dom.request_exit(DomainExit::from_reason(reason));
            0
        }
        Op::SchedWatchdog { id, timeout } => watchdog(dom, id, timeout),
        Op::SetTimer { deadline } => {
            if deadline == 0 {
                dom.vcpus[vcpu as usize].lock().disarm_timer();
            } else {
                arm_timer(dom, vcpu, deadline);
            }
            0
        }
        Op::Vcpu { vcpu: target, op } => vcpu_op(dom, mem, vcpu, target, op),
        Op::Evtchn(op) => {
            let mut table = dom.evtchn.lock().unwrap_or_else(|e| e.into_inner());
            evtchn_op(mem, &mut table, op)
        }
        Op::MemoryReservation { dom: d, .. } => {
            if is_self(dom, d) {
                dom.guest_pages() as i64
            } else {
                -ESRCH as i64
            }
        }
        Op::MaximumRamPage => dom.guest_pages() as i64 - 1,
        Op::MemoryMap {
            ptr,
            nr_entries,
            buffer,
        } => memory_map(dom, mem, ptr, nr_entries, buffer),
        Op::SetSegmentBase { which, base } => set_segment_base(dom, vcpu, which, base),
        Op::GrantTable(op) => crate::grant::hypercall::execute(&dom.grants, mem, op),
        Op::AddToPhysmap(arg) => crate::grant::hypercall::add_to_physmap(&dom.grants, &arg),
    }
}

fn xen_version(dom: &DomainShared, mem: &GuestView<'_>, cmd: u64, ptr: u64) -> i64 {
    match cmd {
        XENVER_VERSION => ((XEN_MAJOR << 16) | XEN_MINOR) as i64,
        XENVER_PAGESIZE => rxen_abi::PAGE_SIZE as i64,
        XENVER_EXTRAVERSION => write_string(mem, ptr, EXTRAVERSION_LEN, ".0-rxen"),
        XENVER_CAPABILITIES => write_string(mem, ptr, CAPABILITIES_LEN, "xen-3.0-x86_64"),
        XENVER_CHANGESET => write_string(
            mem,
            ptr,
            CHANGESET_LEN,
            concat!("rxen ", env!("CARGO_PKG_VERSION")),
        ),
        XENVER_COMPILE_INFO => {
            let mut ci = rxen_abi::version::CompileInfo::new_zeroed();
            ci.compiler[..5].copy_from_slice(b"rustc");
            ci.compile_by[..4].copy_from_slice(b"rxen");
            write_back(mem, ptr, &ci)
        }
        XENVER_PLATFORM_PARAMETERS => write_back(
            mem,
            ptr,
            &PlatformParameters {
                virt_start: HYPERVISOR_VIRT_START,
            },
        ),
        XENVER_GET_FEATURES => {
            let Ok(mut fi) = mem.read::<FeatureInfo>(ptr) else {
                return -EFAULT as i64;
            };
            if fi.submap_idx >= XENFEAT_NR_SUBMAPS {
                return -EINVAL as i64;
            }
            fi.submap = feature_submap(dom.pv_mmu.is_some());
            write_back(mem, ptr, &fi)
        }
        XENVER_GUEST_HANDLE => match mem.write_bytes(ptr, &dom.config.uuid) {
            Ok(()) => 0,
            Err(_) => -EFAULT as i64,
        },
        // Only privileged domains may read the hypervisor's command line and build id.
        XENVER_COMMANDLINE | XENVER_BUILD_ID => -EPERM as i64,
        _ => -ENOSYS as i64,
    }
}

/// Submap 0 of `XENVER_get_features`. Xen's rule (common/kernel.c): auto-translated
/// only for translated domains (rxen's own layout); a PV domain gets what Xen gives
/// every PV domain: `mmu_pt_update_preserve_ad`, `highmem_assist` and
/// `gnttab_map_avail_bits`. Linux panics at its first steps without the last one
/// ("XENFEAT_gnttab_map_avail_bits not available"), although rxen does not map grants
/// into PV page tables yet (`GNTMAP_host_map` is refused when it is asked for).
pub fn feature_submap(pv: bool) -> u32 {
    if pv {
        (1 << XENFEAT_MMU_PT_UPDATE_PRESERVE_AD)
            | (1 << XENFEAT_HIGHMEM_ASSIST)
            | (1 << XENFEAT_GNTTAB_MAP_AVAIL_BITS)
    } else {
        1 << XENFEAT_AUTO_TRANSLATED_PHYSMAP
    }
}

/// Blocks vCPU `vcpu` until an event is pending for it (`ports == None`, Xen's
/// `SCHEDOP_block`) or one of `ports` is pending (`SCHEDOP_poll`), or `deadline`.
/// While blocked, the vCPU fires its own singleshot timer when it is due.
fn block(dom: &DomainShared, vcpu: u32, ports: Option<&[u32]>, deadline: Option<Instant>) {
    let ctl = &dom.vcpus[vcpu as usize];
    if ports.is_none() {
        // SCHEDOP_block enables event delivery, as in Xen.
        dom.shared_info.set_upcall_mask(vcpu, false);
    }
    let ready = || match ports {
        None => dom.shared_info.upcall_pending(vcpu),
        Some(ps) => ps.iter().any(|&p| dom.shared_info.is_pending(p)),
    };
    let mut s = ctl.lock();
    // Set before `ready()` is first checked, so a sender either sees the flag or its
    // event is seen by the check (both sides use SeqCst).
    ctl.polling
        .store(ports.is_some(), std::sync::atomic::Ordering::SeqCst);
    s.block(dom.clock.now_ns());
    loop {
        // A save (`capture_wanted`) takes the vCPU out of the block: the guest sees
        // an early return of `SCHEDOP_block`/`SCHEDOP_poll`, which Xen allows.
        if s.stop || s.capture_wanted || s.state != VcpuState::Blocked || ready() {
            break;
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| d <= now) {
            break;
        }
        let timer_at = s.timer.map(|t| dom.clock.instant_of(t));
        if timer_at.is_some_and(|t| t <= now) {
            if s.take_due_timer(None, u64::MAX) {
                drop(s);
                dom.evtchn
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .raise_virq(VIRQ_TIMER, vcpu);
                s = ctl.lock();
            }
            continue;
        }
        let wake_at = match (deadline, timer_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        s = ctl.wait(s, wake_at);
    }
    s.wake(dom.clock.now_ns());
    ctl.polling
        .store(false, std::sync::atomic::Ordering::SeqCst);
    drop(s);
    dom.update_time_info(vcpu);
}

fn arm_timer(dom: &DomainShared, vcpu: u32, deadline: u64) {
    let generation = dom.vcpus[vcpu as usize].lock().arm_timer(deadline);
    let at = dom.clock.instant_of(deadline);
    if at <= Instant::now() {
        dom.fire_vcpu_timer(vcpu, Some(generation));
    } else {
        dom.timers.add(at, TimerKind::Vcpu { vcpu, generation });
    }
}

fn watchdog(dom: &DomainShared, id: u32, timeout: u32) -> i64 {
    let mut wd = dom.watchdogs.lock().unwrap_or_else(|e| e.into_inner());
    let slot = if id == 0 {
        // Create: the new watchdog's id (1-based) is returned.
        if timeout == 0 {
            return -EINVAL as i64;
        }
        match wd.iter().position(|w| !w.1) {
            Some(i) => i,
            None => return -EEXIST as i64,
        }
    } else {
        let i = id as usize - 1;
        if i >= NR_WATCHDOGS || !wd[i].1 {
            return -EINVAL as i64;
        }
        i
    };
    wd[slot].0 += 1;
    if timeout == 0 {
        wd[slot].1 = false;
        return 0;
    }
    wd[slot].1 = true;
    let generation = wd[slot].0;
    dom.timers.add(
        Instant::now() + std::time::Duration::from_secs(timeout as u64),
        TimerKind::Watchdog {
            id: slot as u32,
            generation,
        },
    );
    if id == 0 {
        slot as i64 + 1
    } else {
        0
    }
}

/// `VCPUOP_register_vcpu_info` (PV domains; Xen's `map_vcpu_info`): the frame must
/// be the domain's own RAM and stays writable-typed for good; the `vcpu_info` must fit
/// in it. `-EINVAL` for anything else, and for a second registration.
fn register_vcpu_info(dom: &DomainShared, vcpu: u32, mfn: u64, offset: u32) -> i64 {
    let Some(mmu) = dom.pv_mmu.as_ref() else {
        return -ENOSYS as i64;
    };
    if u64::from(offset) > rxen_abi::PAGE_SIZE - crate::shared_info::VCPU_INFO_SIZE
        || !offset.is_multiple_of(8)
    {
        return -EINVAL as i64;
    }
    let mut mmu = mmu.lock().unwrap_or_else(|e| e.into_inner());
    if mmu.frame(mfn).map(|f| f.owner) != Some(crate::pv::mmu::Owner::Guest) {
        return -EINVAL as i64;
    }
    let (base, entries) = dom.pv_m2p;
    let mut frames = crate::pv::ram_frames::RamFrames::with_m2p(&dom.ram, base, entries);
    if let Err(e) = mmu.hold_vcpu_info(&mut frames, vcpu as usize, mfn) {
        tracing::debug!(vcpu, mfn, "register_vcpu_info: {e}");
        return -EINVAL as i64;
    }
    drop(mmu);
    let gpa = mfn * rxen_abi::PAGE_SIZE + u64::from(offset);
    match dom.shared_info.relocate_vcpu_info(vcpu, gpa) {
        Ok(()) => {
            dom.update_time_info(vcpu);
            0
        }
        Err(e) => {
            tracing::debug!(vcpu, gpa, "register_vcpu_info: {e}");
            -EINVAL as i64
        }
    }
}

/// Writes vCPU `vcpu`'s runstate into the area it registered, if any (through the
/// calling vCPU's view: the area is in the kernel's address space). A bad area is
/// dropped silently, as Xen does.
fn update_runstate_area(dom: &DomainShared, mem: &GuestView<'_>, vcpu: u32) {
    let Some(ctl) = dom.vcpus.get(vcpu as usize) else {
        return;
    };
    let now = dom.clock.now_ns();
    let (area, r) = {
        let s = ctl.lock();
        (s.runstate_area, s.runstate.snapshot(now))
    };
    if let Some(addr) = area {
        let info = VcpuRunstateInfo {
            state: r.state,
            pad: 0,
            state_entry_time: r.entry_time,
            time: r.time,
        };
        if mem.write(addr, &info).is_err() {
            tracing::debug!(vcpu, addr, "runstate area not writable");
        }
    }
}

fn vcpu_op(dom: &DomainShared, mem: &GuestView<'_>, current: u32, target: u64, op: VcpuOp) -> i64 {
    let Some(ctl) = dom.vcpus.get(target as usize) else {
        return -ENOENT as i64;
    };
    let target = target as u32;
    let now = dom.clock.now_ns();
    match op {
        VcpuOp::Initialise(ctx) => {
            // A PV vCPU takes its context's L4s, GDT, trap table, callbacks, kernel
            // stack and IOPL (`pv::vcpu_context`); the thread loads the registers.
            let iopl = crate::pv::vcpu_context::virtual_iopl(&ctx);
            let mut s = ctl.lock();
            let r = s.initialise_with(ctx, |ctx| crate::pv::vcpu_context::accept(dom, target, ctx));
            if r.is_ok() && dom.pv_mmu.is_some() {
                s.virtual_iopl = iopl;
            }
            ok_or(r)
        }
        VcpuOp::Up => {
            let r = dom.online.up(ctl, now);
            if r.is_ok() {
                dom.update_time_info(target);
                ctl.wake();
            }
            ok_or(r)
        }
        VcpuOp::Down => {
            if let Err(e) = dom.online.down(ctl, now) {
                return e as i64;
            }
            if target != current {
                ctl.interrupt();
            }
            0
        }
        VcpuOp::IsUp => (ctl.lock().state != VcpuState::Down) as i64,
        VcpuOp::RegisterVcpuInfo { mfn, offset } => register_vcpu_info(dom, target, mfn, offset),
        VcpuOp::RegisterRunstateArea { addr } => {
            // Xen checks only that the address is a guest address; it writes the
            // area now and at every state change (rxen: after every block).
            if addr != 0 && !dom.address_range().contains(addr) {
                return -EINVAL as i64;
            }
            ctl.lock().runstate_area = (addr != 0).then_some(addr);
            if target == current {
                update_runstate_area(dom, mem, current);
            }
            0
        }
        VcpuOp::GetRunstateInfo { ptr } => {
            let r = ctl.lock().runstate.snapshot(now);
            write_back(
                mem,
                ptr,
                &VcpuRunstateInfo {
                    state: r.state,
                    pad: 0,
                    state_entry_time: r.entry_time,
                    time: r.time,
                },
            )
        }
        VcpuOp::SetSingleshotTimer {
            timeout_abs_ns,
            flags,
        } => {
            if target != current {
                return -EINVAL as i64;
            }
            if flags & VCPU_SSHOTTMR_FUTURE != 0 && timeout_abs_ns < now {
                return -ETIME as i64;
            }
            arm_timer(dom, current, timeout_abs_ns);
            0
        }
        VcpuOp::StopSingleshotTimer => {
            if target != current {
                return -EINVAL as i64;
            }
            ctl.lock().disarm_timer();
            0
        }
        // No periodic timer ever runs, so stopping it always succeeds.
        VcpuOp::StopPeriodicTimer => 0,
    }
}

fn evtchn_op(mem: &GuestView<'_>, t: &mut EventChannels, op: EvtchnOp) -> i64 {
    match op {
        EvtchnOp::AllocUnbound { ptr, mut arg } => match t.alloc_unbound(arg.dom, arg.remote_dom) {
            Ok(p) => {
                arg.port = p;
                write_back(mem, ptr, &arg)
            }
            Err(e) => e as i64,
        },
        EvtchnOp::BindInterdomain { ptr, mut arg } => {
            match t.bind_interdomain(arg.remote_dom, arg.remote_port) {
                Ok(p) => {
                    arg.local_port = p;
                    write_back(mem, ptr, &arg)
                }
                Err(e) => e as i64,
            }
        }
        EvtchnOp::BindVirq { ptr, mut arg } => match t.bind_virq(arg.virq, arg.vcpu) {
            Ok(p) => {
                arg.port = p;
                write_back(mem, ptr, &arg)
            }
            Err(e) => e as i64,
        },
        EvtchnOp::BindIpi { ptr, mut arg } => match t.bind_ipi(arg.vcpu) {
            Ok(p) => {
                arg.port = p;
                write_back(mem, ptr, &arg)
            }
            Err(e) => e as i64,
        },
        EvtchnOp::Close { port } => ok_or(t.close(port)),
        EvtchnOp::Send { port } => ok_or(t.send(port)),
        EvtchnOp::Unmask { port } => ok_or(t.unmask(port)),
        EvtchnOp::BindVcpu { port, vcpu } => ok_or(t.bind_vcpu(port, vcpu)),
        EvtchnOp::Reset { dom: d } => ok_or(t.reset(d)),
        EvtchnOp::Status { ptr, dom: d, port } => match t.status(d, port) {
            Ok(s) => {
                let out = EvtchnStatus {
                    dom: d,
                    pad: 0,
                    port,
                    status: s.status,
                    vcpu: s.vcpu,
                    u0: s.u0,
                    u1: s.u1,
                };
                write_back(mem, ptr, &out)
            }
            Err(e) => e as i64,
        },
    }
}

fn memory_map(
    dom: &DomainShared,
    mem: &GuestView<'_>,
    ptr: u64,
    nr_entries: u32,
    buffer: u64,
) -> i64 {
    let map = [
        E820Entry {
            addr: 0,
            size: layout::KERNEL_MIN,
            kind: E820_RESERVED,
        },
        E820Entry {
            addr: layout::KERNEL_MIN,
            size: dom.ram.size() - layout::KERNEL_MIN,
            kind: E820_RAM,
        },
    ];
    let n = (nr_entries as usize).min(map.len());
    if mem.write_bytes(buffer, map[..n].as_bytes()).is_err() {
        return -EFAULT as i64;
    }
    write_back(
        mem,
        ptr,
        &XenMemoryMap {
            nr_entries: n as u32,
            pad: 0,
            buffer,
        },
    )
}

/// `set_segment_base` of rxen's own guests: the FS or GS base, in the user half. The
/// vCPU thread loads it after the hypercall (`crate::vcpu::sregs_edits`).
fn set_segment_base(dom: &DomainShared, vcpu: u32, which: u64, base: u64) -> i64 {
    if !crate::vcpu::regs::is_canonical_user(base) {
        return -EINVAL as i64;
    }
    let Some(ctl) = dom.vcpus.get(vcpu as usize) else {
        return -EIO as i64;
    };
    match which {
        SEGBASE_FS => ctl.edit_sregs(|e| e.fs_base = Some(base)),
        SEGBASE_GS_USER => ctl.edit_sregs(|e| e.gs_base = Some(base)),
        _ => return -EINVAL as i64,
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian's 6.1 kernel panicked right after its first hypercall when
    /// `gnttab_map_avail_bits` was missing (a native `cli` in `panic` then faulted).
    #[test]
    fn pv_domains_get_the_features_xen_gives_every_pv_domain() {
        let pv = feature_submap(true);
        assert_ne!(pv & (1 << XENFEAT_GNTTAB_MAP_AVAIL_BITS), 0);
        assert_ne!(pv & (1 << XENFEAT_MMU_PT_UPDATE_PRESERVE_AD), 0);
        assert_eq!(pv & (1 << XENFEAT_AUTO_TRANSLATED_PHYSMAP), 0);
        assert_eq!(pv & (1 << XENFEAT_WRITABLE_PAGE_TABLES), 0);
        assert_eq!(feature_submap(false), 1 << XENFEAT_AUTO_TRANSLATED_PHYSMAP);
    }
}
