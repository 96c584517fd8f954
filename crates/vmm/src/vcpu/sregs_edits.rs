//! Special-register changes a hypercall makes to its own vCPU: CR3 after
//! `MMUEXT_NEW_BASEPTR` (each guest process switch), CR0.TS (`fpu_taskswitch`), the FS
//! and GS bases (`set_segment_base`). Hypercall code only records them
//! ([`VcpuControl::edit_sregs`](super::VcpuControl::edit_sregs)); the vCPU thread
//! applies them once the hypercall returns ([`apply`]), through `kvm_run`'s sync regs
//! when KVM has them (no ioctl), else with one `KVM_GET_SREGS`/`KVM_SET_SREGS` pair.
//! Recording keeps every special-register change of an exit in one place, so the
//! `kvm_run` copy the next `KVM_RUN` loads is never older than an ioctl's write.

use kvm_bindings::kvm_sregs;
use kvm_ioctls::{SyncReg, VcpuFd};

const CR0_TS: u64 = 1 << 3;

/// Changes to the special registers, to be applied before the vCPU runs again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SregsEdits {
    pub cr3: Option<u64>,
    /// CR0.TS set (`true`) or clear.
    pub cr0_ts: Option<bool>,
    pub fs_base: Option<u64>,
    pub gs_base: Option<u64>,
}

impl SregsEdits {
    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Applies the changes to `s`.
    pub fn apply_to(&self, s: &mut kvm_sregs) {
        if let Some(cr3) = self.cr3 {
            s.cr3 = cr3;
        }
        match self.cr0_ts {
            Some(true) => s.cr0 |= CR0_TS,
            Some(false) => s.cr0 &= !CR0_TS,
            None => {}
        }
        if let Some(base) = self.fs_base {
            s.fs.base = base;
        }
        if let Some(base) = self.gs_base {
            s.gs.base = base;
        }
    }
}

/// Applies what hypercalls recorded for the vCPU of `fd` (`ctl`'s record, which is
/// emptied). `sync`: `kvm_run`'s sync regs hold the vCPU's current special registers.
pub fn apply(fd: &mut VcpuFd, ctl: &super::VcpuControl, sync: bool) -> Result<(), String> {
    let edits = ctl.take_sregs_edits();
    if edits.is_empty() {
        return Ok(());
    }
    update(fd, sync, |s| edits.apply_to(s))
}

/// Changes the special registers of the vCPU of `fd` with `f`: in `kvm_run`'s sync
/// copy when `sync` (it holds the current values; KVM loads it at the next
/// `KVM_RUN`), else by `KVM_GET_SREGS`/`KVM_SET_SREGS`. Returns what `f` returned.
pub fn update<T>(
    fd: &mut VcpuFd,
    sync: bool,
    f: impl FnOnce(&mut kvm_sregs) -> T,
) -> Result<T, String> {
    if sync {
        let out = f(&mut fd.sync_regs_mut().sregs);
        fd.set_sync_dirty_reg(SyncReg::SystemRegister);
        return Ok(out);
    }
    let mut s = fd.get_sregs().map_err(|e| format!("get sregs: {e}"))?;
    let out = f(&mut s);
    fd.set_sregs(&s).map_err(|e| format!("set sregs: {e}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_recorded_fields_change() {
        let mut s = kvm_sregs {
            cr0: 0x8005_0033,
            cr3: 0x1000,
            ..Default::default()
        };
        s.fs.base = 7;
        s.gs.base = 8;
        let before = s;
        SregsEdits::default().apply_to(&mut s);
        assert_eq!(s, before);
        let edits = SregsEdits {
            cr3: Some(0x2000),
            cr0_ts: Some(true),
            gs_base: Some(0xffff_8880_0000_0000),
            ..Default::default()
        };
        assert!(!edits.is_empty());
        edits.apply_to(&mut s);
        assert_eq!(
            (s.cr3, s.cr0, s.fs.base, s.gs.base),
            (0x2000, 0x8005_0033 | CR0_TS, 7, 0xffff_8880_0000_0000)
        );
        SregsEdits {
            cr0_ts: Some(false),
            ..Default::default()
        }
        .apply_to(&mut s);
        assert_eq!(s.cr0, 0x8005_0033);
    }
}
