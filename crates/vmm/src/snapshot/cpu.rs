//! One vCPU's processor state as KVM holds it, captured by the vCPU's own thread
//! (which owns its `VcpuFd`) while the domain is paused, and loaded into a new vCPU
//! before its thread starts.

use kvm_bindings::{kvm_msr_entry, kvm_regs, kvm_sregs, kvm_xcrs, kvm_xsave, Msrs};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// `MSR_IA32_TSC`.
pub const MSR_TSC: u32 = 0x10;
/// `MSR_KERNEL_GS_BASE` (the GS base `swapgs` brings in).
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// Guest-visible MSRs saved with a vCPU (the syscall MSRs are rxen's own and are
/// programmed again at restore).
const SAVED_MSRS: [u32; 2] = [MSR_TSC, MSR_KERNEL_GS_BASE];

/// A vCPU's registers, FPU/SSE/AVX state and guest-visible MSRs.
#[derive(Debug, Serialize, Deserialize)]
pub struct CpuState {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    /// `(index, value)`.
    pub msrs: Vec<(u32, u64)>,
}

impl CpuState {
    /// The value of MSR `index`, if saved.
    pub fn msr(&self, index: u32) -> Option<u64> {
        self.msrs.iter().find(|m| m.0 == index).map(|m| m.1)
    }
}

/// Reads the state of `fd`. With `from_sync_regs` (the thread ran the vCPU with
/// KVM's sync regs), registers an exit handler changed but KVM has not been given
/// yet (`kvm_dirty_regs`) are taken from the `kvm_run` copy, as the next `KVM_RUN`
/// would have loaded them.
pub fn capture(fd: &mut VcpuFd, from_sync_regs: bool) -> Result<CpuState, String> {
    let kvm = |what: &str, e: kvm_ioctls::Error| format!("{what}: {e}");
    let mut regs = fd.get_regs().map_err(|e| kvm("get regs", e))?;
    let mut sregs = fd.get_sregs().map_err(|e| kvm("get sregs", e))?;
    if from_sync_regs {
        let dirty = fd.get_kvm_run().kvm_dirty_regs;
        if dirty & u64::from(kvm_bindings::KVM_SYNC_X86_REGS) != 0 {
            regs = fd.sync_regs().regs;
        }
        if dirty & u64::from(kvm_bindings::KVM_SYNC_X86_SREGS) != 0 {
            sregs = fd.sync_regs().sregs;
        }
    }
    let xsave = fd.get_xsave().map_err(|e| kvm("get xsave", e))?;
    let xcrs = fd.get_xcrs().map_err(|e| kvm("get xcrs", e))?;
    let entries: Vec<kvm_msr_entry> = SAVED_MSRS
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    let mut msrs = Msrs::from_entries(&entries).map_err(|e| format!("msr list: {e:?}"))?;
    let n = fd.get_msrs(&mut msrs).map_err(|e| kvm("get msrs", e))?;
    let msrs = msrs
        .as_slice()
        .iter()
        .take(n)
        .map(|m| (m.index, m.data))
        .collect();
    Ok(CpuState {
        regs,
        sregs,
        xsave,
        xcrs,
        msrs,
    })
}

/// Checks that a saved state keeps the guest where rxen runs it: code and stack at
/// CPL 3, rxen's GDT, IDT and TSS, and the paging mode of `expected` (the control
/// state the builder gives every vCPU of this domain). An image is not trusted to
/// put a guest in ring 0 or to move rxen's trap tables.
pub fn check_control_state(
    state: &CpuState,
    expected: &kvm_sregs,
    tss_base: u64,
) -> Result<(), String> {
    let s = &state.sregs;
    let same = |a: &kvm_bindings::kvm_dtable, b: &kvm_bindings::kvm_dtable| {
        a.base == b.base && a.limit == b.limit
    };
    if s.cs.dpl != 3 || s.ss.dpl != 3 || s.cs.l != 1 {
        return Err("code or stack segment not 64-bit at CPL 3".into());
    }
    if !same(&s.gdt, &expected.gdt) || !same(&s.idt, &expected.idt) || s.tr.base != tss_base {
        return Err("GDT, IDT or TSS moved".into());
    }
    if s.cr0 != expected.cr0 || s.efer != expected.efer {
        return Err(format!(
            "cr0 {:#x} / efer {:#x} differ from rxen's {:#x} / {:#x}",
            s.cr0, s.efer, expected.cr0, expected.efer
        ));
    }
    Ok(())
}

/// Loads `state` into a vCPU that has not run yet.
pub fn load(fd: &VcpuFd, state: &CpuState) -> Result<(), String> {
    let kvm = |what: &str, e: kvm_ioctls::Error| format!("{what}: {e}");
    fd.set_sregs(&state.sregs)
        .map_err(|e| kvm("set sregs", e))?;
    fd.set_xcrs(&state.xcrs).map_err(|e| kvm("set xcrs", e))?;
    // SAFETY: `state.xsave` is a whole `kvm_xsave` (the legacy 4 KiB area, the size
    // `KVM_GET_XSAVE` returned it in), so KVM reads only inside it.
    unsafe { fd.set_xsave(&state.xsave) }.map_err(|e| kvm("set xsave", e))?;
    let entries: Vec<kvm_msr_entry> = state
        .msrs
        .iter()
        .filter(|m| SAVED_MSRS.contains(&m.0))
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|e| format!("msr list: {e:?}"))?;
    let n = fd.set_msrs(&msrs).map_err(|e| kvm("set msrs", e))?;
    if n != entries.len() {
        return Err(format!("KVM took {n} of {} MSRs", entries.len()));
    }
    fd.set_regs(&state.regs).map_err(|e| kvm("set regs", e))?;
    Ok(())
}
