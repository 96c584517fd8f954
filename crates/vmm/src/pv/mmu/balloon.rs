//! Frames a PV domain gives back and takes again (Xen's `guest_remove_page` and the
//! allocation of `populate_physmap`/`increase_reservation`, for a balloon driver).
//!
//! A frame leaves only when nothing references it: no entry maps it, it holds no type
//! (page table, descriptor frame, the permanent type of `shared_info`, a `vcpu_info`
//! frame), it is not pinned. It then belongs to [`Owner::Ballooned`], which no entry
//! can map and no type can take, until [`Mmu::balloon_in`] makes it the domain's RAM
//! again. The caller releases and zeroes the host memory; this is bookkeeping only.

use super::{FrameInfo, Mmu, MmuError, Owner};

impl Mmu {
    /// Takes `frame` from the domain (`XENMEM_decrease_reservation` of one page):
    /// it must be the domain's ordinary RAM and unreferenced.
    pub fn balloon_out(&mut self, frame: u64) -> Result<(), MmuError> {
        let info = self.info(frame).ok_or(MmuError::NotOwned(frame))?;
        if info.owner != Owner::Guest {
            return Err(MmuError::NotOwned(frame));
        }
        if info.refs != 0 || info.type_count != 0 || info.pinned {
            return Err(MmuError::Invalid("frame is still referenced"));
        }
        if let Some(slot) = self.info_mut(frame) {
            *slot = FrameInfo::new(Owner::Ballooned);
        }
        Ok(())
    }

    /// Gives one of the frames the domain gave up back to it (`populate_physmap` or
    /// `increase_reservation` of one page): `preferred` if it is one of them, else the
    /// lowest such frame at or after `*cursor` (then from 0), which moves past it.
    /// `None` when the domain gave up nothing (it is at its full RAM).
    pub fn balloon_in(&mut self, preferred: u64, cursor: &mut u64) -> Option<u64> {
        let is_ballooned = |m: &Mmu, f: u64| m.info(f).map(|i| i.owner) == Some(Owner::Ballooned);
        let frame = if is_ballooned(self, preferred) {
            preferred
        } else {
            let n = self.nr_frames();
            let start = (*cursor).min(n);
            let found = (start..n)
                .chain(0..start)
                .find(|&f| is_ballooned(self, f))?;
            *cursor = found + 1;
            found
        };
        if let Some(slot) = self.info_mut(frame) {
            *slot = FrameInfo::new(Owner::Guest);
        }
        Some(frame)
    }

    /// Number of frames the domain has given up and not taken back.
    pub fn ballooned_frames(&self) -> u64 {
        self.frames
            .iter()
            .filter(|i| i.owner == Owner::Ballooned)
            .count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::super::{entry, GuestFrames, VecFrames};
    use super::*;
    use rxen_abi::mmu::{MmuUpdate, MmuextOp, MMUEXT_PIN_L1_TABLE};

    const NR: u64 = 16;
    const L1: u64 = 1;
    const DATA: u64 = entry::PAGE_PRESENT | entry::PAGE_RW;

    fn with_l1() -> (Mmu, VecFrames) {
        let mut mem = VecFrames::new(NR);
        let mut mmu = Mmu::new(NR, 1);
        let pin = MmuextOp {
            cmd: MMUEXT_PIN_L1_TABLE,
            arg1: L1,
            ..Default::default()
        };
        assert_eq!(mmu.mmuext_op(&mut mem, 0, &[pin]).result, Ok(()));
        (mmu, mem)
    }

    fn map(mmu: &mut Mmu, mem: &mut VecFrames, slot: u64, frame: u64) -> Result<(), MmuError> {
        let req = MmuUpdate {
            ptr: (L1 << 12) | (slot << 3),
            val: (frame << 12) | DATA,
        };
        mmu.mmu_update(mem, &[req]).result
    }

    #[test]
    fn a_ballooned_frame_cannot_be_mapped_until_it_is_taken_back() {
        let (mut mmu, mut mem) = with_l1();
        mmu.balloon_out(5).unwrap();
        assert_eq!(mmu.ballooned_frames(), 1);
        assert!(map(&mut mmu, &mut mem, 0, 5).is_err());
        assert_eq!(mem.read_entry(L1, 0), 0);
        let mut cursor = 0;
        assert_eq!(mmu.balloon_in(5, &mut cursor), Some(5));
        assert_eq!(mmu.ballooned_frames(), 0);
        map(&mut mmu, &mut mem, 0, 5).unwrap();
        mmu.audit(&mem).unwrap();
    }

    #[test]
    fn referenced_frames_stay() {
        let (mut mmu, mut mem) = with_l1();
        map(&mut mmu, &mut mem, 0, 6).unwrap();
        assert!(mmu.balloon_out(6).is_err(), "mapped");
        assert!(mmu.balloon_out(L1).is_err(), "a pinned page table");
        assert!(mmu.balloon_out(NR).is_err(), "beyond RAM");
        assert!(mmu.balloon_out(u64::MAX).is_err(), "garbage");
        mmu.set_owner(7, Owner::SharedInfo).unwrap();
        assert!(mmu.balloon_out(7).is_err(), "shared_info");
        mmu.balloon_out(8).unwrap();
        assert!(mmu.balloon_out(8).is_err(), "already given up");
        assert_eq!(mmu.ballooned_frames(), 1);
        mmu.audit(&mem).unwrap();
    }

    #[test]
    fn taking_back_finds_any_given_up_frame_and_no_more() {
        let (mut mmu, _) = with_l1();
        mmu.balloon_out(9).unwrap();
        mmu.balloon_out(3).unwrap();
        let mut cursor = 0;
        // Frame 2 was not given up: another one comes back instead.
        assert_eq!(mmu.balloon_in(2, &mut cursor), Some(3));
        assert_eq!(mmu.balloon_in(u64::MAX, &mut cursor), Some(9));
        assert_eq!(mmu.balloon_in(9, &mut cursor), None, "nothing left to give");
    }
}
