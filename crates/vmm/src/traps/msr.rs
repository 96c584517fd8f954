//! `wrmsr`/`rdmsr` of the segment-base MSRs by a PV kernel, emulated as Xen does for
//! 64-bit PV guests (`emulate_privileged_op`): the instruction faults with #GP at CPL 3,
//! rxen recognises it and applies it to the vCPU's FS/GS bases; every other MSR, and
//! any other instruction, is left to the guest's #GP handler.
//!
//! `MSR_FS_BASE` is the FS base, `MSR_GS_BASE` the GS base the kernel runs with (the
//! active one: guest kernel and user code share CPL 3 here), `MSR_SHADOW_GS_BASE` the
//! base `swapgs` would exchange it with (KVM's `MSR_KERNEL_GS_BASE`).

use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;

/// `MSR_FS_BASE`.
pub const MSR_FS_BASE: u32 = 0xc000_0100;
/// `MSR_GS_BASE`.
pub const MSR_GS_BASE: u32 = 0xc000_0101;
/// `MSR_SHADOW_GS_BASE` (`MSR_KERNEL_GS_BASE`).
pub const MSR_SHADOW_GS_BASE: u32 = 0xc000_0102;

/// Vector of #GP.
pub const VECTOR_GP: u8 = 13;

/// What an emulated instruction changes besides `rip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// New registers (and segment registers) to load.
    Regs,
    /// `MSR_SHADOW_GS_BASE` := value (set through `KVM_SET_MSRS`).
    ShadowGs(u64),
}

/// Emulates the instruction starting with `code` at the faulting `rip` if it is a
/// `wrmsr`/`rdmsr` of a segment-base MSR: updates `regs` (rip, rax/rdx for a read) and
/// `sregs`, and returns what else to apply. `shadow_gs` is the current shadow base.
pub fn emulate(
    code: &[u8],
    regs: &mut kvm_regs,
    sregs: &mut kvm_sregs,
    shadow_gs: u64,
) -> Option<Effect> {
    let write = match code {
        [0x0f, 0x30, ..] => true,
        [0x0f, 0x32, ..] => false,
        _ => return None,
    };
    let msr = regs.rcx as u32;
    let mut effect = Effect::Regs;
    if write {
        let value = (regs.rdx << 32) | (regs.rax & 0xffff_ffff);
        if !crate::guest_view::is_canonical(value) {
            return None;
        }
        match msr {
            MSR_FS_BASE => sregs.fs.base = value,
            MSR_GS_BASE => sregs.gs.base = value,
            MSR_SHADOW_GS_BASE => effect = Effect::ShadowGs(value),
            _ => return None,
        }
    } else {
        let value = match msr {
            MSR_FS_BASE => sregs.fs.base,
            MSR_GS_BASE => sregs.gs.base,
            MSR_SHADOW_GS_BASE => shadow_gs,
            _ => return None,
        };
        regs.rax = value & 0xffff_ffff;
        regs.rdx = value >> 32;
    }
    regs.rip = regs.rip.wrapping_add(2);
    Some(effect)
}

/// The vCPU's inactive GS base (`MSR_SHADOW_GS_BASE`, KVM's `MSR_KERNEL_GS_BASE`),
/// as the VMM keeps it. A guest mode switch ([`super::guest_mode`]) swaps the active
/// and the inactive base on every user system call; writing KVM's MSR each time would
/// cost an ioctl, so the switch changes only this copy and KVM's MSR is brought up to
/// date ([`ShadowGs::flush`]) before anything reads it from KVM (a snapshot). Nothing
/// in the guest reads the MSR behind the VMM's back: `swapgs` and `rdmsr` fault at
/// CPL 3 and come here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShadowGs {
    /// The value, once read from KVM or written by the VMM.
    value: Option<u64>,
    /// Whether KVM's MSR differs from `value` (a switch changed it lazily).
    kvm_stale: bool,
}

impl ShadowGs {
    /// The inactive GS base; asks KVM only the first time (0 if KVM does not answer).
    pub fn get(&mut self, fd: &VcpuFd) -> u64 {
        if let Some(v) = self.value {
            return v;
        }
        let v = read_kvm_shadow_gs(fd);
        self.value = Some(v);
        v
    }

    /// Sets it in the VMM's copy only (a mode switch, the guest's `wrmsr` or
    /// `set_segment_base`); KVM's MSR follows at the next [`ShadowGs::flush`].
    pub fn set(&mut self, value: u64) {
        if self.value != Some(value) {
            self.value = Some(value);
            self.kvm_stale = true;
        }
    }

    /// Whether KVM's MSR lags behind the VMM's copy.
    pub fn is_stale(&self) -> bool {
        self.kvm_stale
    }

    /// Writes a lazily set value to KVM's MSR (before KVM's MSRs are read).
    pub fn flush(&mut self, fd: &VcpuFd) -> Result<(), String> {
        match self.value {
            Some(v) if self.kvm_stale => {
                write_kvm_shadow_gs(fd, v)?;
                self.kvm_stale = false;
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// KVM's `MSR_KERNEL_GS_BASE` of the vCPU (0 if KVM does not answer).
fn read_kvm_shadow_gs(fd: &VcpuFd) -> u64 {
    let Ok(mut msrs) = kvm_bindings::Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
        index: MSR_SHADOW_GS_BASE,
        ..Default::default()
    }]) else {
        return 0;
    };
    match fd.get_msrs(&mut msrs) {
        Ok(1) => msrs.as_slice()[0].data,
        _ => 0,
    }
}

/// Sets KVM's `MSR_KERNEL_GS_BASE` of the vCPU.
fn write_kvm_shadow_gs(fd: &VcpuFd, value: u64) -> Result<(), String> {
    let msrs = kvm_bindings::Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
        index: MSR_SHADOW_GS_BASE,
        data: value,
        ..Default::default()
    }])
    .map_err(|e| format!("MSR list: {e:?}"))?;
    match fd.set_msrs(&msrs) {
        Ok(1) => Ok(()),
        Ok(_) => Err("KVM refused MSR_KERNEL_GS_BASE".into()),
        Err(e) => Err(format!("set MSR_KERNEL_GS_BASE: {e}")),
    }
}

/// The inactive GS base of vCPU `id` of `dom` (see [`ShadowGs`]).
pub(crate) fn read_shadow_gs(dom: &crate::domain::DomainShared, id: u32, fd: &VcpuFd) -> u64 {
    match dom.traps.vcpu(id) {
        Some(mut t) => t.shadow_gs.get(fd),
        None => read_kvm_shadow_gs(fd),
    }
}

/// Sets the inactive GS base of vCPU `id` of `dom` (see [`ShadowGs`]: KVM's MSR
/// follows before a snapshot).
pub(crate) fn write_shadow_gs(
    dom: &crate::domain::DomainShared,
    id: u32,
    fd: &VcpuFd,
    value: u64,
) -> Result<(), String> {
    match dom.traps.vcpu(id) {
        Some(mut t) => {
            t.shadow_gs.set(value);
            Ok(())
        }
        None => write_kvm_shadow_gs(fd, value),
    }
}

/// Brings KVM's `MSR_KERNEL_GS_BASE` of vCPU `id` up to date (before a snapshot reads
/// the vCPU's MSRs).
pub(crate) fn flush_shadow_gs(
    dom: &crate::domain::DomainShared,
    id: u32,
    fd: &VcpuFd,
) -> Result<(), String> {
    match dom.traps.vcpu(id) {
        Some(mut t) => t.shadow_gs.flush(fd),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(rcx: u64, rdx: u64, rax: u64) -> kvm_regs {
        kvm_regs {
            rcx,
            rdx,
            rax,
            rip: 0x1000,
            ..Default::default()
        }
    }

    #[test]
    fn writes_and_reads_the_segment_bases() {
        let mut s = kvm_sregs::default();
        let mut r = regs(u64::from(MSR_GS_BASE), 0, 0x40a80);
        assert_eq!(
            emulate(&[0x0f, 0x30], &mut r, &mut s, 0),
            Some(Effect::Regs)
        );
        assert_eq!((s.gs.base, r.rip), (0x40a80, 0x1002));
        let mut r = regs(u64::from(MSR_FS_BASE), 0x7fff, 0x1234_5678_9abc);
        emulate(&[0x0f, 0x30, 0x90], &mut r, &mut s, 0).unwrap();
        assert_eq!(
            s.fs.base, 0x7fff_5678_9abc,
            "edx:eax, the high half of rax ignored"
        );
        let mut r = regs(u64::from(MSR_SHADOW_GS_BASE), 1, 2);
        assert_eq!(
            emulate(&[0x0f, 0x30], &mut r, &mut s, 0),
            Some(Effect::ShadowGs((1 << 32) | 2))
        );
        let mut r = regs(u64::from(MSR_GS_BASE), 9, 9);
        emulate(&[0x0f, 0x32], &mut r, &mut s, 0).unwrap();
        assert_eq!((r.rax, r.rdx), (0x40a80, 0));
        let mut r = regs(u64::from(MSR_SHADOW_GS_BASE), 0, 0);
        emulate(&[0x0f, 0x32], &mut r, &mut s, 0xffff_8000_0000_1000).unwrap();
        assert_eq!((r.rax, r.rdx), (0x1000, 0xffff_8000));
    }

    /// A mode switch and the guest's writes change only the VMM's copy; KVM's MSR
    /// gets the value at `flush` (before a snapshot reads the vCPU's MSRs), and a value
    /// KVM already had is read from it once.
    #[test]
    fn the_inactive_gs_base_reaches_kvm_only_when_flushed() {
        if !rxen_testkit::kvm_available("the_inactive_gs_base_reaches_kvm_only_when_flushed") {
            return;
        }
        let kvm = kvm_ioctls::Kvm::new().expect("open /dev/kvm");
        let vm = kvm.create_vm().expect("create VM");
        let fd = vm.create_vcpu(0).expect("create vCPU");
        write_kvm_shadow_gs(&fd, 0xffff_8880_0000_1000).expect("KVM takes the MSR");
        let mut gs = ShadowGs::default();
        assert_eq!(gs.get(&fd), 0xffff_8880_0000_1000, "read from KVM at first");
        assert!(!gs.is_stale());
        gs.set(0xffff_8880_0000_1000);
        assert!(!gs.is_stale(), "the value KVM holds");
        gs.set(0x7f00_0000_0000);
        assert!(gs.is_stale());
        assert_eq!(gs.get(&fd), 0x7f00_0000_0000);
        assert_eq!(read_kvm_shadow_gs(&fd), 0xffff_8880_0000_1000, "not yet");
        gs.flush(&fd).expect("flush");
        assert!(!gs.is_stale());
        assert_eq!(read_kvm_shadow_gs(&fd), 0x7f00_0000_0000);
    }

    #[test]
    fn leaves_everything_else_to_the_guest() {
        let mut s = kvm_sregs::default();
        for (code, rcx) in [
            (&[0x0f, 0x30][..], 0x1b),                   // APIC base: not emulated
            (&[0x0f, 0x32][..], 0xc0000080),             // EFER
            (&[0x0f, 0x0b][..], u64::from(MSR_GS_BASE)), // ud2
            (&[0x0f][..], u64::from(MSR_GS_BASE)),       // truncated
        ] {
            let mut r = regs(rcx, 0, 0);
            assert_eq!(emulate(code, &mut r, &mut s, 0), None);
            assert_eq!(r.rip, 0x1000, "untouched");
        }
        // A non-canonical base is the guest's #GP, as on hardware.
        let mut r = regs(u64::from(MSR_FS_BASE), 0x8000, 0);
        assert_eq!(emulate(&[0x0f, 0x30], &mut r, &mut s, 0), None);
        assert_eq!(s.fs.base, 0);
    }
}
