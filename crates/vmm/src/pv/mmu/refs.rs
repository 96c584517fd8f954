//! References and types (Xen's `get_page`, `get_page_type`, `alloc_lN_table`,
//! `free_lN_table`, `get_page_from_lNe`, `put_page_from_lNe`).
//!
//! Recursion is bounded by the four levels: taking an L4 type validates L3 entries,
//! which take L3 types, and so on down to L1; a table can never reach a table of its
//! own level (that would need a type conflict to succeed), so there are no cycles.

use super::entry::{self, Level, ENTRIES, INVALID_MFN, PAGE_RW};
use super::{FrameType, GuestFrames, Invalidations, Mmu, MmuError, Owner};
use rxen_abi::mmu::is_guest_l4_slot;
use tracing::{debug, error};

impl Mmu {
    /// Takes a general reference on a frame of the domain (`get_page`).
    pub(super) fn get_page(&mut self, frame: u64) -> Result<(), MmuError> {
        let info = self.info_mut(frame).ok_or(MmuError::NotOwned(frame))?;
        if !info.owner.is_domains() {
            return Err(MmuError::NotOwned(frame));
        }
        info.refs = info
            .refs
            .checked_add(1)
            .ok_or(MmuError::CountOverflow(frame))?;
        Ok(())
    }

    pub(super) fn put_page(&mut self, frame: u64) {
        match self.info_mut(frame) {
            Some(info) if info.refs > 0 => info.refs -= 1,
            _ => error!(frame, "mmu: put_page without a reference"),
        }
    }

    /// Takes a type reference (`get_page_type`): if nothing holds a type, the frame
    /// takes `ty` (validating a page table's entries); otherwise the type must match.
    pub(super) fn get_type<G: GuestFrames + ?Sized>(
        &mut self,
        mem: &mut G,
        frame: u64,
        ty: FrameType,
    ) -> Result<(), MmuError> {
        let info = *self.info(frame).ok_or(MmuError::NotOwned(frame))?;
        if info.type_count > 0 {
            if info.ty != ty || !info.validated {
                debug!(frame, have = ?info.ty, want = ?ty, "mmu: bad type");
                return Err(MmuError::TypeConflict { frame });
            }
            let count = info
                .type_count
                .checked_add(1)
                .ok_or(MmuError::CountOverflow(frame))?;
            if let Some(i) = self.info_mut(frame) {
                i.type_count = count;
            }
            return Ok(());
        }
        if let Some(i) = self.info_mut(frame) {
            i.ty = ty;
            i.type_count = 1;
            i.validated = false;
        }
        let checked = match ty {
            FrameType::Table(level) => self.alloc_table(mem, frame, level),
            FrameType::SegDesc => self.alloc_segdesc(mem, frame),
            FrameType::None | FrameType::Writable => Ok(()),
        };
        if let Some(i) = self.info_mut(frame) {
            match checked {
                Ok(()) => i.validated = true,
                Err(_) => {
                    i.ty = FrameType::None;
                    i.type_count = 0;
                }
            }
        }
        checked
    }

    /// Drops a type reference (`put_page_type`). The last reference of a page-table
    /// type devalidates the table: its entries' references are released.
    pub(super) fn put_type<G: GuestFrames + ?Sized>(&mut self, mem: &mut G, frame: u64) {
        let Some(info) = self.info_mut(frame) else {
            error!(frame, "mmu: put_type out of range");
            return;
        };
        if info.type_count == 0 {
            error!(frame, "mmu: put_type without a type reference");
            return;
        }
        info.type_count -= 1;
        if info.type_count == 0 {
            if let (FrameType::Table(level), true) = (info.ty, info.validated) {
                info.validated = false;
                self.free_table(mem, frame, level);
            }
        }
    }

    /// `get_page_and_type`: a general reference and a type reference, or neither.
    pub fn get_page_and_type<G: GuestFrames + ?Sized>(
        &mut self,
        mem: &mut G,
        frame: u64,
        ty: FrameType,
    ) -> Result<(), MmuError> {
        self.get_page(frame)?;
        if let Err(e) = self.get_type(mem, frame, ty) {
            self.put_page(frame);
            return Err(e);
        }
        Ok(())
    }

    /// Releases what [`Mmu::get_page_and_type`] took.
    pub fn put_page_and_type<G: GuestFrames + ?Sized>(&mut self, mem: &mut G, frame: u64) {
        self.put_type(mem, frame);
        self.put_page(frame);
    }

    /// The references a present entry of a `level` table needs (`get_page_from_lNe`).
    pub(super) fn get_from_entry<G: GuestFrames + ?Sized>(
        &mut self,
        mem: &mut G,
        level: Level,
        e: u64,
    ) -> Result<(), MmuError> {
        let bits = e & level.disallowed();
        if bits != 0 {
            return Err(MmuError::BadFlags { entry: e, bits });
        }
        let target = entry::mfn(e);
        let Some(child) = level.child() else {
            return self.get_from_l1e(mem, e);
        };
        self.get_page_and_type(mem, target, FrameType::Table(child))
    }

    fn get_from_l1e<G: GuestFrames + ?Sized>(
        &mut self,
        mem: &mut G,
        e: u64,
    ) -> Result<(), MmuError> {
        let target = entry::mfn(e);
        let owner = self.info(target).map(|i| i.owner);
        match owner {
            None | Some(Owner::Absent) if target == INVALID_MFN => Err(MmuError::InvalidMfn),
            None | Some(Owner::Absent) => Err(MmuError::NotRam(target)),
            Some(Owner::Rxen) => Err(MmuError::CannotMap(target)),
            Some(_) => {
                self.get_page(target)?;
                if e & PAGE_RW != 0 && self.get_type(mem, target, FrameType::Writable).is_err() {
                    self.put_page(target);
                    return Err(MmuError::CannotMap(target));
                }
                Ok(())
            }
        }
    }

    /// Releases the references of a present entry (`put_page_from_lNe`).
    pub(super) fn put_from_entry<G: GuestFrames + ?Sized>(
        &mut self,
        mem: &mut G,
        level: Level,
        e: u64,
    ) {
        let target = entry::mfn(e);
        if level != Level::L1 || e & PAGE_RW != 0 {
            self.put_type(mem, target);
        }
        self.put_page(target);
    }

    /// Validates every present entry of a new table (`alloc_lN_table`); on failure
    /// releases what the earlier entries took. An L4's reserved slots are not the
    /// guest's: they are overwritten with rxen's entries and never counted.
    fn alloc_table<G: GuestFrames + ?Sized>(
        &mut self,
        mem: &mut G,
        frame: u64,
        level: Level,
    ) -> Result<(), MmuError> {
        for i in 0..ENTRIES {
            if level == Level::L4 && !is_guest_l4_slot(i) {
                continue;
            }
            let e = mem.read_entry(frame, i);
            if !entry::present(e) {
                continue;
            }
            if let Err(err) = self.get_from_entry(mem, level, e) {
                debug!(frame, slot = i, ?level, %err, "mmu: table validation failed");
                for j in (0..i).rev() {
                    if level == Level::L4 && !is_guest_l4_slot(j) {
                        continue;
                    }
                    let prev = mem.read_entry(frame, j);
                    if entry::present(prev) {
                        self.put_from_entry(mem, level, prev);
                    }
                }
                return Err(err);
            }
            let stored = entry::adjust(level, e);
            if stored != e {
                mem.write_entry(frame, i, stored);
            }
        }
        if level == Level::L4 {
            for (k, value) in self.xen_l4.iter().enumerate() {
                mem.write_entry(frame, rxen_abi::mmu::L4_FIRST_XEN_SLOT + k, *value);
            }
        }
        Ok(())
    }

    /// Releases the references of every present entry (`free_lN_table`).
    fn free_table<G: GuestFrames + ?Sized>(&mut self, mem: &mut G, frame: u64, level: Level) {
        for i in 0..ENTRIES {
            if level == Level::L4 && !is_guest_l4_slot(i) {
                continue;
            }
            let e = mem.read_entry(frame, i);
            if entry::present(e) {
                self.put_from_entry(mem, level, e);
            }
        }
    }

    /// Records what an entry of a `level` table reached: the frame itself for L1, every
    /// frame mapped below it for higher levels (KVM keeps an unlinked subtree's shadow).
    pub(super) fn collect_reach<G: GuestFrames + ?Sized>(
        &self,
        mem: &G,
        level: Level,
        e: u64,
        out: &mut Invalidations,
    ) {
        let target = entry::mfn(e);
        let Some(child) = level.child() else {
            out.add(target);
            return;
        };
        if self.info(target).and_then(|i| i.table_level()) != Some(child) || !out.walk_table() {
            return;
        }
        for i in 0..ENTRIES {
            if out.everything() {
                return;
            }
            let ce = mem.read_entry(target, i);
            if entry::present(ce) {
                self.collect_reach(mem, child, ce, out);
            }
        }
    }
}
