//! Descriptor-table frames: `set_gdt` and `update_descriptor` (Xen's
//! `arch/x86/pv/descriptor-tables.c`: `pv_set_gdt`, `do_update_descriptor`,
//! `check_descriptor`, and `alloc_segdesc_page` in mm.c).
//!
//! A GDT frame holds the [`FrameType::SegDesc`] type while a vCPU uses it, so it can
//! never be mapped writable (the guest changes it only through `update_descriptor`);
//! taking the type checks all 512 descriptors and fixes their DPL up to 3, as Xen does
//! for 64-bit PV guests, whose kernel runs in ring 3.

use super::{FrameType, GuestFrames, Mmu, MmuError};

/// Descriptors per frame.
pub const DESCS_PER_FRAME: u64 = 512;
/// Xen's `FIRST_RESERVED_GDT_PAGE`: a guest GDT has at most 14 frames.
pub const MAX_GDT_FRAMES: usize = 14;
/// Xen's `FIRST_RESERVED_GDT_ENTRY`: at most this many guest GDT entries.
pub const MAX_GDT_ENTRIES: u64 = MAX_GDT_FRAMES as u64 * DESCS_PER_FRAME;

const PRESENT: u64 = 1 << 47;
const DPL_SHIFT: u32 = 45;
const DPL: u64 = 3 << DPL_SHIFT;
/// The S bit: a code or data segment (not a system descriptor).
const CODE_OR_DATA: u64 = 1 << 44;
const TYPE_SHIFT: u32 = 40;

/// A vCPU's guest GDT: its frames and entry count (`set_gdt`). Saved with the MMU in
/// a domain's image; a restored one is recounted by the MMU audit like the rest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GdtFrames {
    pub frames: [u64; MAX_GDT_FRAMES],
    pub count: usize,
    pub entries: u64,
}

impl GdtFrames {
    /// The frames in use.
    pub fn frames(&self) -> &[u64] {
        &self.frames[..self.count.min(MAX_GDT_FRAMES)]
    }
}

/// Xen's `check_descriptor` for a 64-bit PV domain: the descriptor as it may be
/// stored (DPL raised to 3), or `None` if the guest may not have it. Not-present
/// descriptors and the all-zero type (a call gate's second half) are harmless; code
/// and data segments are fine with any base and limit; system descriptors (TSS, LDT,
/// gates) are refused: rxen accepts no call gates (Xen checks their target; Linux
/// uses none).
pub fn check_descriptor(d: u64) -> Option<u64> {
    if d & PRESENT == 0 {
        return Some(d);
    }
    let fixed = d | DPL;
    if d & CODE_OR_DATA != 0 {
        return Some(fixed);
    }
    if (d >> TYPE_SHIFT) & 0xf == 0 {
        return Some(d);
    }
    None
}

impl Mmu {
    /// Validates a frame taking the descriptor type: every descriptor must pass
    /// [`check_descriptor`]; fixed-up ones are written back.
    pub(super) fn alloc_segdesc<G: GuestFrames + ?Sized>(
        &mut self,
        mem: &mut G,
        frame: u64,
    ) -> Result<(), MmuError> {
        let mut fixed = Vec::new();
        for i in 0..DESCS_PER_FRAME as usize {
            let d = mem.read_entry(frame, i);
            let ok = check_descriptor(d).ok_or(MmuError::Invalid("bad segment descriptor"))?;
            if ok != d {
                fixed.push((i, ok));
            }
        }
        for (i, d) in fixed {
            mem.write_entry(frame, i, d);
        }
        Ok(())
    }

    /// `set_gdt`: `frames` (the guest's machine frames, `ceil(entries / 512)` of
    /// them) become `vcpu`'s GDT, each holding a reference and the descriptor type;
    /// the previous GDT's are released. Nothing changes on error.
    pub fn set_gdt<G: GuestFrames + ?Sized>(
        &mut self,
        mem: &mut G,
        vcpu: usize,
        frames: &[u64],
        entries: u64,
    ) -> Result<(), MmuError> {
        if entries > MAX_GDT_ENTRIES {
            return Err(MmuError::Invalid("too many GDT entries"));
        }
        let needed = entries.div_ceil(DESCS_PER_FRAME) as usize;
        if frames.len() != needed || self.vcpu(vcpu).is_none() {
            return Err(MmuError::Invalid(
                "GDT frame list does not match its entries",
            ));
        }
        let mut new = GdtFrames {
            entries,
            ..GdtFrames::default()
        };
        for (i, &f) in frames.iter().enumerate() {
            if let Err(e) = self.get_page_and_type(mem, f, FrameType::SegDesc) {
                for &taken in &frames[..i] {
                    self.put_page_and_type(mem, taken);
                }
                return Err(e);
            }
            new.frames[i] = f;
        }
        new.count = needed;
        let old = self
            .vcpus
            .get_mut(vcpu)
            .map(|v| std::mem::replace(&mut v.gdt, new));
        if let Some(old) = old {
            for &f in old.frames() {
                self.put_page_and_type(mem, f);
            }
        }
        Ok(())
    }

    /// Holds `frame` writable for `vcpu`'s relocated `vcpu_info` (once per vCPU).
    pub fn hold_vcpu_info<G: GuestFrames + ?Sized>(
        &mut self,
        mem: &mut G,
        vcpu: usize,
        frame: u64,
    ) -> Result<(), MmuError> {
        match self.vcpus.get(vcpu) {
            None => return Err(MmuError::Invalid("no such vCPU")),
            Some(v) if v.vcpu_info.is_some() => {
                return Err(MmuError::Invalid("vcpu_info already registered"))
            }
            Some(_) => {}
        }
        self.get_page_and_type(mem, frame, FrameType::Writable)?;
        if let Some(v) = self.vcpus.get_mut(vcpu) {
            v.vcpu_info = Some(frame);
        }
        Ok(())
    }

    /// Drops `vcpu`'s hold on its `vcpu_info` frame (a restored domain that is a new
    /// domain to its guest, which registers its `vcpu_info` again); the frame it was.
    pub fn release_vcpu_info<G: GuestFrames + ?Sized>(
        &mut self,
        mem: &mut G,
        vcpu: usize,
    ) -> Option<u64> {
        let frame = self.vcpus.get_mut(vcpu)?.vcpu_info.take()?;
        self.put_page_and_type(mem, frame);
        Some(frame)
    }

    /// `update_descriptor`: writes descriptor `desc` at byte `maddr` (8-aligned) of
    /// the domain's memory. The frame must be a descriptor frame or able to be
    /// writable (not a page table); the descriptor must pass [`check_descriptor`].
    pub fn update_descriptor<G: GuestFrames + ?Sized>(
        &mut self,
        mem: &mut G,
        maddr: u64,
        desc: u64,
    ) -> Result<(), MmuError> {
        if !maddr.is_multiple_of(8) {
            return Err(MmuError::Invalid("descriptor address not 8-aligned"));
        }
        let d = check_descriptor(desc).ok_or(MmuError::Invalid("bad segment descriptor"))?;
        let frame = maddr / 4096;
        let ty = match self.frame(frame).map(|i| (i.ty, i.type_count)) {
            Some((FrameType::SegDesc, n)) if n > 0 => FrameType::SegDesc,
            Some(_) => FrameType::Writable,
            None => return Err(MmuError::NotOwned(frame)),
        };
        self.get_page_and_type(mem, frame, ty)?;
        mem.write_entry(frame, ((maddr % 4096) / 8) as usize, d);
        self.put_page_and_type(mem, frame);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pv::mmu::VecFrames;

    /// Linux's 64-bit GDT entries: kernel CS (DPL 0), user DS and CS (DPL 3).
    const KERNEL_CS: u64 = 0x00af_9b00_0000_ffff;
    const USER_DS: u64 = 0x00cf_f300_0000_ffff;
    const USER_CS: u64 = 0x00af_fb00_0000_ffff;
    const TSS: u64 = 0x0000_8900_0000_0067;

    #[test]
    fn descriptors_are_checked_like_xen() {
        assert_eq!(check_descriptor(0), Some(0));
        assert_eq!(
            check_descriptor(KERNEL_CS),
            Some(KERNEL_CS | DPL),
            "DPL 0 -> 3"
        );
        assert_eq!(check_descriptor(USER_CS), Some(USER_CS));
        assert_eq!(check_descriptor(USER_DS), Some(USER_DS));
        assert_eq!(
            check_descriptor(TSS),
            None,
            "system descriptors are refused"
        );
        assert_eq!(check_descriptor(TSS & !PRESENT), Some(TSS & !PRESENT));
    }

    #[test]
    fn set_gdt_types_the_frames_and_releases_the_old_ones() {
        let mut mem = VecFrames::new(16);
        let mut mmu = Mmu::new(16, 1);
        mem.write_entry(3, 2, KERNEL_CS);
        mem.write_entry(3, 6, USER_CS);
        mmu.set_gdt(&mut mem, 0, &[3], 16).unwrap();
        assert_eq!(mem.read_entry(3, 2), KERNEL_CS | DPL, "fixed up in place");
        assert_eq!(mmu.frame(3).unwrap().ty, FrameType::SegDesc);
        assert_eq!(mmu.vcpu(0).unwrap().gdt.frames(), &[3]);
        mmu.audit(&mem).unwrap();
        // A second GDT replaces the first, which loses its type.
        mmu.set_gdt(&mut mem, 0, &[4], 16).unwrap();
        assert_eq!(mmu.frame(3).unwrap().type_count, 0);
        mmu.audit(&mem).unwrap();
    }

    #[test]
    fn bad_gdts_change_nothing() {
        let mut mem = VecFrames::new(16);
        let mut mmu = Mmu::new(16, 1);
        mem.write_entry(5, 8, TSS);
        assert!(mmu.set_gdt(&mut mem, 0, &[4, 5], 1024).is_err());
        assert_eq!(mmu.frame(4).unwrap().type_count, 0, "first frame released");
        assert_eq!(mmu.vcpu(0).unwrap().gdt.count, 0);
        assert!(
            mmu.set_gdt(&mut mem, 0, &[4], 1024).is_err(),
            "count mismatch"
        );
        assert!(mmu
            .set_gdt(&mut mem, 0, &[4; 15], MAX_GDT_ENTRIES + 1)
            .is_err());
        assert!(mmu.set_gdt(&mut mem, 1, &[4], 16).is_err(), "no such vCPU");
        assert!(
            mmu.set_gdt(&mut mem, 0, &[99], 16).is_err(),
            "not the domain's"
        );
        mmu.audit(&mem).unwrap();
    }

    #[test]
    fn update_descriptor_checks_and_writes() {
        let mut mem = VecFrames::new(16);
        let mut mmu = Mmu::new(16, 1);
        mmu.set_gdt(&mut mem, 0, &[3], 16).unwrap();
        mmu.update_descriptor(&mut mem, 3 * 4096 + 6 * 8, USER_CS)
            .unwrap();
        assert_eq!(mem.read_entry(3, 6), USER_CS);
        assert!(mmu.update_descriptor(&mut mem, 3 * 4096 + 8, TSS).is_err());
        assert!(mmu
            .update_descriptor(&mut mem, 3 * 4096 + 4, USER_CS)
            .is_err());
        // A frame that is not a descriptor frame is written as a writable one.
        mmu.update_descriptor(&mut mem, 7 * 4096, KERNEL_CS)
            .unwrap();
        assert_eq!(mem.read_entry(7, 0), KERNEL_CS | DPL);
        mmu.audit(&mem).unwrap();
    }

    /// A restored new domain (Linux's suspend) drops the vcpu_info hold so the guest
    /// can register again; Linux panicked on the -EINVAL of a second registration.
    #[test]
    fn a_released_vcpu_info_frame_can_be_registered_again() {
        let mut mem = VecFrames::new(16);
        let mut mmu = Mmu::new(16, 1);
        mmu.hold_vcpu_info(&mut mem, 0, 9).unwrap();
        assert!(mmu.hold_vcpu_info(&mut mem, 0, 9).is_err());
        assert_eq!(mmu.frame(9).map(|f| (f.refs, f.type_count)), Some((1, 1)));
        assert_eq!(mmu.release_vcpu_info(&mut mem, 0), Some(9));
        assert_eq!(mmu.frame(9).map(|f| (f.refs, f.type_count)), Some((0, 0)));
        assert_eq!(mmu.release_vcpu_info(&mut mem, 0), None);
        mmu.hold_vcpu_info(&mut mem, 0, 9).unwrap();
        mmu.audit(&mem).unwrap();
    }
}
