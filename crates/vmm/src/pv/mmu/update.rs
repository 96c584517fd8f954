//! `mmu_update` and `update_va_mapping` (Xen's `do_mmu_update`, `mod_lN_entry`,
//! `do_update_va_mapping`).

use super::entry::{self, Level, ENTRIES, PAGE_ACCESSED, PAGE_DIRTY};
use super::{BatchOutcome, FrameType, GuestFrames, Invalidations, Mmu, MmuError};
use rxen_abi::mmu::{
    is_guest_l4_slot, MmuUpdate, HYPERVISOR_VIRT_END, HYPERVISOR_VIRT_START, MMU_MACHPHYS_UPDATE,
    MMU_NORMAL_PT_UPDATE, MMU_PT_UPDATE_NO_TRANSLATE, MMU_PT_UPDATE_PRESERVE_AD,
    MMU_UPDATE_CMD_MASK,
};

impl Mmu {
    /// Executes an `mmu_update` array in order, stopping at the first refusal.
    pub fn mmu_update<G: GuestFrames + ?Sized>(
        &mut self,
        mem: &mut G,
        reqs: &[MmuUpdate],
    ) -> BatchOutcome {
        let mut invalidate = Invalidations::default();
        for (done, req) in reqs.iter().enumerate() {
            if let Err(e) = self.one_update(mem, req, &mut invalidate) {
                return BatchOutcome {
                    done,
                    result: Err(e),
                    invalidate,
                };
            }
        }
        BatchOutcome {
            done: reqs.len(),
            result: Ok(()),
            invalidate,
        }
    }

    fn one_update<G: GuestFrames + ?Sized>(
        &mut self,
        mem: &mut G,
        req: &MmuUpdate,
        inv: &mut Invalidations,
    ) -> Result<(), MmuError> {
        let cmd = req.ptr & MMU_UPDATE_CMD_MASK;
        let frame = req.ptr >> 12;
        match cmd {
            MMU_NORMAL_PT_UPDATE | MMU_PT_UPDATE_PRESERVE_AD | MMU_PT_UPDATE_NO_TRANSLATE => {
                let index = ((req.ptr & 0xfff) >> 3) as usize;
                let info = *self
                    .info(frame)
                    .filter(|i| i.owner.is_domains())
                    .ok_or(MmuError::NotOwned(frame))?;
                let preserve_ad = cmd == MMU_PT_UPDATE_PRESERVE_AD;
                if let Some(level) = info.table_level() {
                    return self.mod_entry(mem, frame, level, index, req.val, preserve_ad, inv);
                }
                if info.type_count > 0 && info.ty != FrameType::Writable {
                    return Err(MmuError::TypeConflict { frame });
                }
                // Not a table in use: an ordinary write, under a writable type.
                self.get_type(mem, frame, FrameType::Writable)?;
                mem.write_entry(frame, index, req.val);
                self.put_type(mem, frame);
                Ok(())
            }
            MMU_MACHPHYS_UPDATE => {
                if !self.info(frame).is_some_and(|i| i.owner.is_domains()) {
                    return Err(MmuError::NotOwned(frame));
                }
                mem.set_m2p(frame, req.val);
                Ok(())
            }
            other => Err(MmuError::UnknownCommand(other)),
        }
    }

    /// Replaces entry `index` of validated table `frame` (`mod_l1_entry` ..
    /// `mod_l4_entry`): checks the new entry, takes its references, writes it, then
    /// releases the old entry's, recording what the old entry reached if access is
    /// taken away.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn mod_entry<G: GuestFrames + ?Sized>(
        &mut self,
        mem: &mut G,
        frame: u64,
        level: Level,
        index: usize,
        new: u64,
        preserve_ad: bool,
        inv: &mut Invalidations,
    ) -> Result<(), MmuError> {
        if index >= ENTRIES {
            return Err(MmuError::Invalid("entry index out of range"));
        }
        if level == Level::L4 && !is_guest_l4_slot(index) {
            return Err(MmuError::ReservedSlot(index));
        }
        let old = mem.read_entry(frame, index);
        let mut stored = entry::adjust(level, new);
        if entry::present(new) {
            let bits = new & level.disallowed();
            if bits != 0 {
                return Err(MmuError::BadFlags { entry: new, bits });
            }
            if preserve_ad && entry::present(old) {
                stored |= old & (PAGE_ACCESSED | PAGE_DIRTY);
            }
            if entry::present(old) && entry::fastpath(old, stored) {
                if entry::takes_access_away(old, stored) {
                    self.collect_reach(mem, level, old, inv);
                }
                mem.write_entry(frame, index, stored);
                return Ok(());
            }
            self.get_from_entry(mem, level, new)?;
        }
        if entry::present(old) && entry::takes_access_away(old, stored) {
            self.collect_reach(mem, level, old, inv);
        }
        mem.write_entry(frame, index, stored);
        if entry::present(old) {
            self.put_from_entry(mem, level, old);
        }
        Ok(())
    }

    /// `update_va_mapping`: replaces the L1 entry that maps `va` in `vcpu`'s kernel
    /// page tables. The `UVMF_*` flush flags need no work here: every change that takes
    /// access away is in the returned invalidations, which the caller applies before
    /// the guest runs again.
    pub fn update_va_mapping<G: GuestFrames + ?Sized>(
        &mut self,
        mem: &mut G,
        vcpu: usize,
        va: u64,
        val: u64,
    ) -> BatchOutcome {
        let mut invalidate = Invalidations::default();
        let result = self.l1_slot_of(mem, vcpu, va).and_then(|(l1, idx)| {
            self.mod_entry(mem, l1, Level::L1, idx, val, false, &mut invalidate)
        });
        BatchOutcome {
            done: usize::from(result.is_ok()),
            result,
            invalidate,
        }
    }

    /// The L1 table and slot that map `va` under `vcpu`'s kernel L4.
    fn l1_slot_of<G: GuestFrames + ?Sized>(
        &self,
        mem: &G,
        vcpu: usize,
        va: u64,
    ) -> Result<(u64, usize), MmuError> {
        let canonical = (va as i64) >> 47 == 0 || (va as i64) >> 47 == -1;
        if !canonical || (HYPERVISOR_VIRT_START..HYPERVISOR_VIRT_END).contains(&va) {
            return Err(MmuError::Invalid("address not the guest's"));
        }
        let mut table = self
            .vcpus
            .get(vcpu)
            .and_then(|v| v.kernel)
            .ok_or(MmuError::Invalid("no page tables"))?;
        for (level, shift) in [(Level::L4, 39), (Level::L3, 30), (Level::L2, 21)] {
            let e = mem.read_entry(table, ((va >> shift) & 0x1ff) as usize);
            if !entry::present(e) {
                return Err(MmuError::Invalid("no L1 table maps this address"));
            }
            table = entry::mfn(e);
            let want = level.child();
            if self.info(table).and_then(|i| i.table_level()) != want {
                return Err(MmuError::Invalid("no L1 table maps this address"));
            }
        }
        Ok((table, ((va >> 12) & 0x1ff) as usize))
    }
}
