//! The memory-management hypercalls of a Xen PV domain: `mmu_update`,
//! `update_va_mapping`, `mmuext_op`, `multicall`, `vm_assist` and the PV answers of
//! `memory_op` (`XENMEM_machphys_mapping`, no `XENMEM_memory_map`, the balloon's
//! reservation operations in [`super::balloon`]).
//!
//! This is the glue between the guest (arrays read and results written through its
//! [`GuestView`], nothing trusted before it is copied) and the validation core
//! ([`crate::pv::mmu`]): one batch runs under the domain's MMU lock, its
//! invalidations are applied with `madvise` before the guest runs again, and a new
//! kernel base pointer is loaded into the calling vCPU's CR3. Domains in rxen's own
//! layout never get here ([`handle`] returns `None` for them).

use kvm_ioctls::VcpuFd;
use rxen_abi::errno::*;
use rxen_abi::hypercall as nr;
use rxen_abi::memory::{MEMOP_CMD_MASK, XENMEM_CURRENT_RESERVATION};
use rxen_abi::mmu::*;
use rxen_abi::{DOMID_SELF, PAGE_SIZE};
use zerocopy::{FromBytes, IntoBytes};

use super::mmu::{BatchOutcome, Invalidations, Mmu, MmuError};
use super::ram_frames::RamFrames;
use crate::domain::DomainShared;
use crate::guest_view::GuestView;
use crate::hypercall::HypercallArgs;

/// Requests copied from the guest per step of a long `mmu_update`/`mmuext_op` array.
const CHUNK: u64 = 512;
/// `MMU_UPDATE_PREEMPTED`: the continuation flag in `count` (Xen's own use).
const MMU_UPDATE_PREEMPTED: u64 = 1 << 31;
/// Most entries of one `multicall` (Xen bounds nothing but preempts; rxen refuses).
const MAX_MULTICALL: u64 = 1 << 16;
/// `PHYSDEVOP_set_iopl` (xen/include/public/physdev.h).
const PHYSDEVOP_SET_IOPL: u64 = 6;
/// `XENMEM_memory_map`.
const XENMEM_MEMORY_MAP: u64 = 9;

/// `struct multicall_entry` (x86-64).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, zerocopy::Immutable)]
struct MulticallEntry {
    op: u64,
    result: u64,
    args: [u64; 6],
}

/// Handles `call` if it is one of the PV memory hypercalls and `dom` is a PV domain;
/// returns the guest's `rax`, or `None` to let the generic table handle it.
pub fn handle(
    dom: &DomainShared,
    vcpu: u32,
    fd: &VcpuFd,
    mem: &GuestView<'_>,
    call: &HypercallArgs,
) -> Option<i64> {
    let mmu = dom.pv_mmu.as_ref()?;
    let [a0, a1, a2, a3, _] = call.args;
    let number = u32::try_from(call.nr).ok()?;
    let rc = match number {
        nr::MMU_UPDATE => {
            let mut mmu = mmu.lock().unwrap_or_else(|e| e.into_inner());
            mmu_update(dom, &mut mmu, mem, a0, a1, a2, a3)
        }
        nr::MMUEXT_OP => {
            let mut mmu = mmu.lock().unwrap_or_else(|e| e.into_inner());
            let before = mmu.vcpu(vcpu as usize).and_then(|b| b.kernel);
            let rc = mmuext_op(dom, &mut mmu, vcpu, mem, a0, a1, a2, a3);
            let after = mmu.vcpu(vcpu as usize).and_then(|b| b.kernel);
            drop(mmu);
            if after != before {
                if let Some(l4) = after {
                    // The vCPU thread loads it after the hypercall.
                    if edit_sregs(dom, vcpu, |e| e.cr3 = Some(l4 * PAGE_SIZE)) != 0 {
                        return Some(i64::from(-EFAULT));
                    }
                }
            }
            rc
        }
        nr::UPDATE_VA_MAPPING => {
            let mut mmu = mmu.lock().unwrap_or_else(|e| e.into_inner());
            let mut frames = frames(dom);
            let out = mmu.update_va_mapping(&mut frames, vcpu as usize, a0, a1);
            finish(dom, out).1
        }
        nr::SET_GDT => {
            let mut mmu = mmu.lock().unwrap_or_else(|e| e.into_inner());
            set_gdt(dom, &mut mmu, vcpu, mem, a0, a1)
        }
        nr::UPDATE_DESCRIPTOR => {
            let mut mmu = mmu.lock().unwrap_or_else(|e| e.into_inner());
            rax(mmu.update_descriptor(&mut frames(dom), a0, a1))
        }
        nr::PHYSDEV_OP if a0 == PHYSDEVOP_SET_IOPL => match mem.read::<u32>(a1) {
            // The virtual IOPL lets the kernel's native `cli`/`sti` pass as no-ops
            // (`traps::privop`); port I/O finds no ports whatever it is.
            Ok(iopl) if iopl <= 3 => {
                if let Some(ctl) = dom.vcpus.get(vcpu as usize) {
                    ctl.lock().virtual_iopl = iopl;
                }
                0
            }
            Ok(_) => i64::from(-EINVAL),
            Err(_) => i64::from(-EFAULT),
        },
        nr::MULTICALL => multicall(dom, vcpu, fd, mem, a0, a1),
        nr::FPU_TASKSWITCH => fpu_taskswitch(dom, vcpu, a0),
        nr::SET_SEGMENT_BASE => set_segment_base(dom, vcpu, fd, a0, a1),
        nr::VM_ASSIST => vm_assist(a0, a1),
        nr::MEMORY_OP if a0 == XENMEM_MACHPHYS_MAPPING => {
            let (_, entries) = dom.pv_m2p;
            // The natively readable alias, not Xen's fixed RO_MPT_VIRT_START (slot
            // 256, emulated on this host); kernels that hardcode the latter still work.
            let v_start = super::rxen_area::M2P_ALIAS_VA;
            let map = MachphysMapping {
                v_start,
                v_end: v_start + entries * MACH2PHYS_ENTRY_SIZE,
                max_mfn: entries.saturating_sub(1),
            };
            match mem.write(a1, &map) {
                Ok(()) => 0,
                Err(_) => i64::from(-EFAULT),
            }
        }
        nr::MEMORY_OP if super::balloon::Reservation::of_command(a0).is_some() => {
            let op = super::balloon::Reservation::of_command(a0)?;
            let granted = |frame: u64| dom.grants.frame_pinned(frame);
            let target = super::balloon::BalloonDomain {
                ram: &dom.ram,
                m2p: dom.pv_m2p,
                domid: dom.config.domid,
                granted: &granted,
            };
            let mut mmu = mmu.lock().unwrap_or_else(|e| e.into_inner());
            super::balloon::reservation(&target, &mut mmu, mem, op, a0, a1)
        }
        nr::MEMORY_OP if a0 & MEMOP_CMD_MASK == XENMEM_CURRENT_RESERVATION => {
            let Ok(domid) = mem.read::<u16>(a1) else {
                return Some(i64::from(-EFAULT));
            };
            let mmu = mmu.lock().unwrap_or_else(|e| e.into_inner());
            match super::balloon::current_reservation(
                &mmu,
                dom.config.domid,
                domid,
                dom.guest_pages(),
            ) {
                Ok(pages) => pages as i64,
                Err(e) => i64::from(e),
            }
        }
        // A PV domain has no pseudo-physical memory map: Xen answers -ENOSYS and the
        // guest uses `start_info.nr_pages`.
        nr::MEMORY_OP if a0 == XENMEM_MEMORY_MAP => i64::from(-ENOSYS),
        _ => return None,
    };
    Some(rc)
}

/// `set_gdt(frame_list, entries)`: the list (unsigned longs, `ceil(entries / 512)` of
/// them) is copied from the guest, then the MMU takes the frames as the vCPU's GDT.
/// The CPU keeps using rxen's GDT, whose page 0 holds the same flat user selectors
/// (0x23, 0x2b, 0x33) as Linux's (docs/architecture.md, "Linux as a PV guest").
fn set_gdt(
    dom: &DomainShared,
    mmu: &mut Mmu,
    vcpu: u32,
    mem: &GuestView<'_>,
    list: u64,
    entries: u64,
) -> i64 {
    use super::mmu::segdesc::{DESCS_PER_FRAME, MAX_GDT_ENTRIES, MAX_GDT_FRAMES};
    if entries > MAX_GDT_ENTRIES {
        return i64::from(-EINVAL);
    }
    let count = entries.div_ceil(DESCS_PER_FRAME) as usize;
    let mut frame_list = [0u64; MAX_GDT_FRAMES];
    for (i, slot) in frame_list.iter_mut().take(count).enumerate() {
        match mem.read::<u64>(list.wrapping_add(8 * i as u64)) {
            Ok(f) => *slot = f,
            Err(_) => return i64::from(-EFAULT),
        }
    }
    let rc = mmu.set_gdt(
        &mut frames(dom),
        vcpu as usize,
        &frame_list[..count],
        entries,
    );
    if let Err(e) = &rc {
        tracing::debug!(vcpu, entries, "set_gdt refused: {e}");
    }
    rax(rc)
}

fn frames(dom: &DomainShared) -> RamFrames<'_> {
    let (base, entries) = dom.pv_m2p;
    RamFrames::with_m2p(&dom.ram, base, entries)
}

/// Makes a batch's invalidations take effect; returns `(done, rax)`.
fn finish(dom: &DomainShared, out: BatchOutcome) -> (usize, i64) {
    apply(dom, &out.invalidate);
    if let Err(e) = &out.result {
        tracing::debug!(domain = %dom.config.name, "MMU request refused: {e}");
    }
    (out.done, rax(out.result))
}

/// The guest's `rax` for an MMU result: 0, or Xen's errno negated.
fn rax(result: Result<(), MmuError>) -> i64 {
    match result {
        Ok(()) => 0,
        Err(e) => -i64::from(e.errno()),
    }
}

/// `madvise`s the frames whose old mappings must go (all of RAM when the batch was
/// too large to list them).
pub fn apply(dom: &DomainShared, inv: &Invalidations) {
    if inv.is_empty() {
        return;
    }
    let result = if inv.everything() {
        dom.ram.discard_frames(0, dom.ram.nr_pages())
    } else {
        inv.ranges()
            .into_iter()
            .try_for_each(|(first, count)| dom.ram.discard_frames(first, count))
    };
    if let Err(e) = result {
        // Frames come from validated entries inside RAM; failing here is rxen's bug,
        // and the guest could keep a stale mapping: end the domain rather than risk it.
        dom.request_exit(crate::exit::DomainExit::Internal(format!(
            "invalidating guest mappings: {e}"
        )));
    }
}

fn check_foreigndom(dom: &DomainShared, foreigndom: u64) -> Result<(), i64> {
    let d = foreigndom as u16;
    if foreigndom >> 16 != 0 || (d != DOMID_SELF && d != dom.config.domid) {
        return Err(i64::from(-EPERM));
    }
    Ok(())
}

/// Copies `count` records of `T` at `ptr` in chunks and feeds them to `step`; writes
/// the number done to `pdone` (if not null). Returns `rax`.
fn batched<T: FromBytes + IntoBytes + Clone>(
    mem: &GuestView<'_>,
    ptr: u64,
    count: u64,
    pdone: u64,
    mut step: impl FnMut(&[T]) -> (usize, i64),
) -> i64 {
    let size = size_of::<T>() as u64;
    let mut done = 0u64;
    let mut rc = 0i64;
    while done < count {
        let n = (count - done).min(CHUNK);
        let Some(at) = done.checked_mul(size).and_then(|o| ptr.checked_add(o)) else {
            rc = i64::from(-EFAULT);
            break;
        };
        let mut chunk = Vec::with_capacity(n as usize);
        for i in 0..n {
            match mem.read::<T>(at + i * size) {
                Ok(v) => chunk.push(v),
                Err(_) => {
                    rc = i64::from(-EFAULT);
                    break;
                }
            }
        }
        let copied = chunk.len();
        let (ok, step_rc) = step(&chunk);
        done += ok as u64;
        if step_rc != 0 {
            rc = step_rc;
            break;
        }
        if rc != 0 || copied < n as usize {
            break;
        }
    }
    if pdone != 0 && mem.write(pdone, &(done as u32)).is_err() && rc == 0 {
        rc = i64::from(-EFAULT);
    }
    rc
}

fn mmu_update(
    dom: &DomainShared,
    mmu: &mut Mmu,
    mem: &GuestView<'_>,
    reqs: u64,
    count: u64,
    pdone: u64,
    foreigndom: u64,
) -> i64 {
    if let Err(rc) = check_foreigndom(dom, foreigndom) {
        return rc;
    }
    let count = count & !MMU_UPDATE_PREEMPTED;
    batched::<MmuUpdate>(mem, reqs, count, pdone, |chunk| {
        let mut frames = frames(dom);
        finish(dom, mmu.mmu_update(&mut frames, chunk))
    })
}

#[allow(clippy::too_many_arguments)]
fn mmuext_op(
    dom: &DomainShared,
    mmu: &mut Mmu,
    vcpu: u32,
    mem: &GuestView<'_>,
    ops: u64,
    count: u64,
    pdone: u64,
    foreigndom: u64,
) -> i64 {
    if let Err(rc) = check_foreigndom(dom, foreigndom) {
        return rc;
    }
    let count = count & !MMU_UPDATE_PREEMPTED;
    batched::<MmuextOp>(mem, ops, count, pdone, |chunk| {
        dom.stats.mmuext_ops(chunk);
        let mut frames = frames(dom);
        finish(dom, mmu.mmuext_op(&mut frames, vcpu as usize, chunk))
    })
}

/// Records a change of the calling vCPU's special registers, which its thread applies
/// after the hypercall (`crate::vcpu::sregs_edits`); `-EIO` for an unknown vCPU.
fn edit_sregs(
    dom: &DomainShared,
    vcpu: u32,
    f: impl FnOnce(&mut crate::vcpu::sregs_edits::SregsEdits),
) -> i64 {
    match dom.vcpus.get(vcpu as usize) {
        Some(ctl) => {
            ctl.edit_sregs(f);
            0
        }
        None => i64::from(-EIO),
    }
}

/// `fpu_taskswitch(set)`: sets (`set` != 0) or clears CR0.TS, so that the guest's
/// next FPU instruction raises #NM (delivered to its trap table) — Xen's lazy FPU
/// switching for PV kernels.
fn fpu_taskswitch(dom: &DomainShared, vcpu: u32, set: u64) -> i64 {
    edit_sregs(dom, vcpu, |e| e.cr0_ts = Some(set != 0))
}

/// `set_segment_base(which, value)` as Xen's 64-bit PV kernels use it: the FS base,
/// the kernel's (active) GS base, the user GS base (swapped in by `swapgs`, here
/// `MSR_KERNEL_GS_BASE`), or a user GS selector (its base becomes the descriptor's, 0).
fn set_segment_base(dom: &DomainShared, vcpu: u32, fd: &VcpuFd, which: u64, value: u64) -> i64 {
    use rxen_abi::hypercall::{
        SEGBASE_FS, SEGBASE_GS_KERNEL, SEGBASE_GS_USER, SEGBASE_GS_USER_SEL,
    };
    let shadow = |base: u64| -> i64 {
        match crate::traps::msr::write_shadow_gs(dom, vcpu, fd, base) {
            Ok(()) => 0,
            Err(_) => i64::from(-EIO),
        }
    };
    match which {
        SEGBASE_FS | SEGBASE_GS_KERNEL | SEGBASE_GS_USER
            if !crate::guest_view::is_canonical(value) =>
        {
            i64::from(-EINVAL)
        }
        SEGBASE_FS => edit_sregs(dom, vcpu, |e| e.fs_base = Some(value)),
        SEGBASE_GS_KERNEL => edit_sregs(dom, vcpu, |e| e.gs_base = Some(value)),
        SEGBASE_GS_USER => shadow(value),
        SEGBASE_GS_USER_SEL => match value as u16 | 3 {
            3 => 0,
            0xe02b | 0x2b => shadow(0),
            // Xen loads the selector and fails with -EFAULT when that faults.
            _ => i64::from(-EFAULT),
        },
        _ => i64::from(-EINVAL),
    }
}

/// `multicall(entries, count)`: each entry runs as its own hypercall, in order; its
/// result goes to the entry. Nested multicalls fail with `-EINVAL` (as in Xen).
fn multicall(
    dom: &DomainShared,
    vcpu: u32,
    fd: &VcpuFd,
    mem: &GuestView<'_>,
    entries: u64,
    count: u64,
) -> i64 {
    if count > MAX_MULTICALL {
        return i64::from(-EINVAL);
    }
    let size = size_of::<MulticallEntry>() as u64;
    for i in 0..count {
        let Some(at) = i.checked_mul(size).and_then(|o| entries.checked_add(o)) else {
            return i64::from(-EFAULT);
        };
        let Ok(mut entry) = mem.read::<MulticallEntry>(at) else {
            return i64::from(-EFAULT);
        };
        entry.result = if entry.op == u64::from(nr::MULTICALL) || entry.op == u64::from(nr::IRET) {
            i64::from(-EINVAL) as u64
        } else {
            let [a0, a1, a2, a3, a4, _] = entry.args;
            let call = HypercallArgs {
                nr: entry.op,
                args: [a0, a1, a2, a3, a4],
            };
            crate::hypercall::handle(dom, vcpu, fd, call) as u64
        };
        if mem.write(at + 8, &entry.result).is_err() {
            return i64::from(-EFAULT);
        }
    }
    0
}

/// `vm_assist(cmd, type)`: the assists a 64-bit PV guest may ask for are accepted
/// (none changes how rxen behaves) except writable page tables, which rxen does not
/// offer (docs/guest-abi.md).
fn vm_assist(cmd: u64, kind: u64) -> i64 {
    if cmd != u64::from(VMASST_CMD_ENABLE) && cmd != u64::from(VMASST_CMD_DISABLE) {
        return i64::from(-ENOSYS);
    }
    let Ok(kind) = u32::try_from(kind) else {
        return i64::from(-EINVAL);
    };
    // Writable page tables are always on (`traps::ptwr` emulates a direct write of an
    // L1 entry whether or not the guest asked), so enabling them succeeds.
    match kind {
        VMASST_TYPE_4GB_SEGMENTS
        | VMASST_TYPE_4GB_SEGMENTS_NOTIFY
        | VMASST_TYPE_WRITABLE_PAGETABLES
        | VMASST_TYPE_PAE_EXTENDED_CR3
        | VMASST_TYPE_ARCHITECTURAL_IOPL
        | VMASST_TYPE_RUNSTATE_UPDATE_FLAG
        | VMASST_TYPE_M2P_STRICT => 0,
        _ => i64::from(-EINVAL),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_assist_answers_like_xen() {
        assert_eq!(vm_assist(0, u64::from(VMASST_TYPE_4GB_SEGMENTS)), 0);
        // Linux enables writable page tables (emulated since traps/ptwr.rs).
        assert_eq!(vm_assist(0, u64::from(VMASST_TYPE_WRITABLE_PAGETABLES)), 0);
        assert_eq!(vm_assist(1, u64::from(VMASST_TYPE_WRITABLE_PAGETABLES)), 0);
        assert_eq!(vm_assist(0, 7), i64::from(-EINVAL));
        assert_eq!(vm_assist(9, 0), i64::from(-ENOSYS));
        assert_eq!(vm_assist(0, 1 << 40), i64::from(-EINVAL));
    }

    #[test]
    fn refusals_return_negative_errnos() {
        // Regression: refusals used to reach the guest as positive numbers (success
        // for a guest that checks `rc < 0`).
        assert_eq!(rax(Ok(())), 0);
        assert_eq!(rax(Err(MmuError::CannotMap(5))), i64::from(-EBUSY));
        assert_eq!(rax(Err(MmuError::NotPinned(5))), i64::from(-EINVAL));
        assert_eq!(rax(Err(MmuError::NotRam(5))), i64::from(-EPERM));
        assert_eq!(rax(Err(MmuError::UnknownCommand(7))), i64::from(-ENOSYS));
    }

    #[test]
    fn multicall_entry_is_xens_layout() {
        assert_eq!(size_of::<MulticallEntry>(), 64);
    }
}
