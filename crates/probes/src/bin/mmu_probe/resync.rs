//! The candidate ways for the VMM to make KVM notice a page-table entry it rewrote
//! through the memfd mapping.

use std::time::{Duration, Instant};

use kvm_ioctls::SyncReg;

use crate::vm::{Probe, ALT_PML4, PML4};

/// What the VMM does between rewriting an entry and the guest's next access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resync {
    /// Nothing but the guest's exit to userspace and the next `KVM_RUN`.
    ExitOnly,
    /// `KVM_SET_SREGS` with the same CR3.
    SregsSameCr3,
    /// `KVM_SET_SREGS` to another L4 and back, without running in between.
    SregsOtherCr3AndBack,
    /// `KVM_SET_SREGS` to another L4, one guest run on it, then back.
    SregsOtherCr3RunBack,
    /// CR3 to another L4 and back carried in `kvm_run->s.regs` (`KVM_CAP_SYNC_REGS`),
    /// one guest run on each.
    SyncRegsOtherCr3RunBack,
    /// `KVM_SET_USER_MEMORY_REGION` with unchanged parameters.
    SlotSame,
    /// Dirty logging switched on and off (`KVM_MEM_LOG_DIRTY_PAGES`).
    SlotDirtyLogToggle,
    /// Slot 0 deleted and added back.
    SlotDeleteReadd,
    /// `KVM_SET_NR_MMU_PAGES` down to the minimum and back up.
    NrMmuPagesShrink,
    /// `KVM_SET_TSC_KHZ` with the current frequency.
    SetTscKhz,
    /// `madvise(MADV_DONTNEED)` on the VMM's mapping of the page the old entry pointed
    /// at (fires KVM's MMU notifier for that one frame).
    MadviseOldFrame,
    /// `mprotect` read-only and back on the VMM's mapping of the old frame(s).
    MprotectOldFrame,
    /// `madvise(MADV_DONTNEED)` on the VMM's mapping of the page-table page itself.
    MadvisePageTable,
}

impl Resync {
    pub const ALL: [Resync; 13] = [
        Resync::ExitOnly,
        Resync::SregsSameCr3,
        Resync::SregsOtherCr3AndBack,
        Resync::SregsOtherCr3RunBack,
        Resync::SyncRegsOtherCr3RunBack,
        Resync::SlotSame,
        Resync::SlotDirtyLogToggle,
        Resync::SlotDeleteReadd,
        Resync::NrMmuPagesShrink,
        Resync::SetTscKhz,
        Resync::MadviseOldFrame,
        Resync::MprotectOldFrame,
        Resync::MadvisePageTable,
    ];

    /// Applies the mechanism; `old` is the guest-physical range `(start, len)` the old
    /// entry mapped and `table` the rewritten table page. Returns how long the VMM spent.
    pub fn apply(
        self,
        p: &mut Probe,
        old: (u64, u64),
        table: u64,
    ) -> Result<Duration, Box<dyn std::error::Error>> {
        let t = Instant::now();
        match self {
            Resync::ExitOnly => {}
            Resync::SregsSameCr3 => p.set_cr3(PML4)?,
            Resync::SregsOtherCr3AndBack => {
                p.set_cr3(ALT_PML4)?;
                p.set_cr3(PML4)?;
            }
            Resync::SregsOtherCr3RunBack => {
                p.set_cr3(ALT_PML4)?;
                p.command(crate::vm::cmd::NOP, 0)?;
                p.set_cr3(PML4)?;
            }
            Resync::SyncRegsOtherCr3RunBack => {
                sync_regs_cr3(p, ALT_PML4)?;
                p.command(crate::vm::cmd::NOP, 0)?;
                sync_regs_cr3(p, PML4)?;
                // The change is applied by the next KVM_RUN: the guest's access.
            }
            Resync::SlotSame => p.set_slot_flags(0)?,
            Resync::SlotDirtyLogToggle => p.toggle_dirty_log()?,
            Resync::SlotDeleteReadd => p.readd_slot()?,
            Resync::NrMmuPagesShrink => {
                p.set_nr_mmu_pages(64)?;
                p.set_nr_mmu_pages(4096)?;
            }
            Resync::SetTscKhz => {
                let khz = p.vcpu.get_tsc_khz()?;
                p.vcpu.set_tsc_khz(khz)?;
            }
            Resync::MadviseOldFrame => p.ram.madvise_dontneed(old.0, old.1)?,
            Resync::MprotectOldFrame => p.ram.mprotect_toggle(old.0, old.1)?,
            Resync::MadvisePageTable => p.ram.madvise_dontneed(table, 4096)?,
        }
        Ok(t.elapsed())
    }
}

/// Puts `cr3` into `kvm_run->s.regs.sregs` and marks it dirty: the next `KVM_RUN`
/// loads it without a separate ioctl.
pub fn sync_regs_cr3(p: &mut Probe, cr3: u64) -> Result<(), Box<dyn std::error::Error>> {
    // The sync area holds the sregs of the last exit only if they were asked for;
    // fill it from KVM_GET_SREGS so that every other field stays as it is.
    let sregs = p.vcpu.get_sregs()?;
    p.vcpu.set_sync_valid_reg(SyncReg::SystemRegister);
    let sync = p.vcpu.sync_regs_mut();
    sync.sregs = sregs;
    sync.sregs.cr3 = cr3;
    p.vcpu.set_sync_dirty_reg(SyncReg::SystemRegister);
    Ok(())
}
