//! `mmuext_op` (Xen's `do_mmuext_op`, `new_guest_cr3`).

use super::entry::{Level, ENTRIES};
use super::{BatchOutcome, FrameType, GuestFrames, Invalidations, Mmu, MmuError, VcpuBases};
use rxen_abi::mmu::*;

/// Most LDT entries `MMUEXT_SET_LDT` accepts.
const MAX_LDT_ENTRIES: u64 = 8192;

impl Mmu {
    /// Executes an `mmuext_op` array for `vcpu` in order, stopping at the first refusal.
    /// The `vcpumask` of the `*_MULTI` commands is not read (flushes need no work).
    pub fn mmuext_op<G: GuestFrames + ?Sized>(
        &mut self,
        mem: &mut G,
        vcpu: usize,
        ops: &[MmuextOp],
    ) -> BatchOutcome {
        let invalidate = Invalidations::default();
        for (done, op) in ops.iter().enumerate() {
            if let Err(e) = self.one_ext(mem, vcpu, op) {
                return BatchOutcome {
                    done,
                    result: Err(e),
                    invalidate,
                };
            }
        }
        BatchOutcome {
            done: ops.len(),
            result: Ok(()),
            invalidate,
        }
    }

    fn one_ext<G: GuestFrames + ?Sized>(
        &mut self,
        mem: &mut G,
        vcpu: usize,
        op: &MmuextOp,
    ) -> Result<(), MmuError> {
        match op.cmd {
            MMUEXT_PIN_L1_TABLE => self.pin(mem, op.arg1, Level::L1),
            MMUEXT_PIN_L2_TABLE => self.pin(mem, op.arg1, Level::L2),
            MMUEXT_PIN_L3_TABLE => self.pin(mem, op.arg1, Level::L3),
            MMUEXT_PIN_L4_TABLE => self.pin(mem, op.arg1, Level::L4),
            MMUEXT_UNPIN_TABLE => self.unpin(mem, op.arg1),
            MMUEXT_NEW_BASEPTR => self.new_baseptr(mem, vcpu, op.arg1),
            MMUEXT_NEW_USER_BASEPTR => self.new_user_baseptr(mem, vcpu, op.arg1),
            MMUEXT_TLB_FLUSH_LOCAL
            | MMUEXT_INVLPG_LOCAL
            | MMUEXT_TLB_FLUSH_MULTI
            | MMUEXT_INVLPG_MULTI
            | MMUEXT_TLB_FLUSH_ALL
            | MMUEXT_INVLPG_ALL => Ok(()),
            MMUEXT_FLUSH_CACHE => Err(MmuError::CacheFlushDenied),
            MMUEXT_FLUSH_CACHE_GLOBAL => Err(MmuError::Invalid("cache flush not permitted")),
            MMUEXT_SET_LDT => self.set_ldt(vcpu, op.arg1, op.arg2),
            MMUEXT_CLEAR_PAGE => self.clear_page(mem, op.arg1),
            MMUEXT_COPY_PAGE => self.copy_page(mem, op.arg1, op.arg2),
            MMUEXT_MARK_SUPER | MMUEXT_UNMARK_SUPER => Err(MmuError::NotSupported(op.cmd)),
            other => Err(MmuError::UnknownExtCommand(other)),
        }
    }

    /// `MMUEXT_PIN_Ln_TABLE`: gives `frame` the table type (validating it) and keeps a
    /// reference and a type reference until `UNPIN`.
    pub fn pin<G: GuestFrames + ?Sized>(
        &mut self,
        mem: &mut G,
        frame: u64,
        level: Level,
    ) -> Result<(), MmuError> {
        self.get_page_and_type(mem, frame, FrameType::Table(level))?;
        match self.info_mut(frame) {
            Some(info) if !info.pinned => {
                info.pinned = true;
                Ok(())
            }
            _ => {
                self.put_page_and_type(mem, frame);
                Err(MmuError::AlreadyPinned(frame))
            }
        }
    }

    /// `MMUEXT_UNPIN_TABLE`: drops the pin's references; the type goes when nothing
    /// else holds it.
    pub fn unpin<G: GuestFrames + ?Sized>(
        &mut self,
        mem: &mut G,
        frame: u64,
    ) -> Result<(), MmuError> {
        let info = self
            .info_mut(frame)
            .filter(|i| i.owner.is_domains())
            .ok_or(MmuError::NotOwned(frame))?;
        if !info.pinned {
            return Err(MmuError::NotPinned(frame));
        }
        info.pinned = false;
        self.put_page_and_type(mem, frame);
        Ok(())
    }

    /// `MMUEXT_NEW_BASEPTR` (`new_guest_cr3`): `frame` must be, or validate as, an L4.
    /// The caller loads it into CR3 (see [`Mmu::vcpu`]).
    pub fn new_baseptr<G: GuestFrames + ?Sized>(
        &mut self,
        mem: &mut G,
        vcpu: usize,
        frame: u64,
    ) -> Result<(), MmuError> {
        self.swap_baseptr(mem, vcpu, Some(frame), |v| &mut v.kernel)
    }

    /// `MMUEXT_NEW_USER_BASEPTR`: as `NEW_BASEPTR` for the user L4; frame 0 means none.
    pub fn new_user_baseptr<G: GuestFrames + ?Sized>(
        &mut self,
        mem: &mut G,
        vcpu: usize,
        frame: u64,
    ) -> Result<(), MmuError> {
        self.swap_baseptr(mem, vcpu, (frame != 0).then_some(frame), |v| &mut v.user)
    }

    /// Replaces one base pointer of `vcpu`: the new L4 takes its references before the
    /// old one drops its own (so swapping to the same tables never devalidates them).
    fn swap_baseptr<G: GuestFrames + ?Sized>(
        &mut self,
        mem: &mut G,
        vcpu: usize,
        new: Option<u64>,
        base: fn(&mut VcpuBases) -> &mut Option<u64>,
    ) -> Result<(), MmuError> {
        let old = *base(
            self.vcpus
                .get_mut(vcpu)
                .ok_or(MmuError::Invalid("no such vCPU"))?,
        );
        if old == new {
            return Ok(());
        }
        if let Some(frame) = new {
            self.get_page_and_type(mem, frame, FrameType::Table(Level::L4))?;
        }
        if let Some(v) = self.vcpus.get_mut(vcpu) {
            *base(v) = new;
        }
        if let Some(old) = old {
            self.put_page_and_type(mem, old);
        }
        Ok(())
    }

    fn set_ldt(&mut self, vcpu: usize, base: u64, ents: u64) -> Result<(), MmuError> {
        let ents = ents & 0xffff_ffff;
        let canonical = (base as i64) >> 47 == 0 || (base as i64) >> 47 == -1;
        let in_xen = (HYPERVISOR_VIRT_START..HYPERVISOR_VIRT_END).contains(&base);
        if ents > MAX_LDT_ENTRIES || (ents != 0 && (base & 0xfff != 0 || !canonical || in_xen)) {
            return Err(MmuError::Invalid("bad SET_LDT arguments"));
        }
        let v = self
            .vcpus
            .get_mut(vcpu)
            .ok_or(MmuError::Invalid("no such vCPU"))?;
        v.ldt = (if ents == 0 { 0 } else { base }, ents as u32);
        Ok(())
    }

    fn clear_page<G: GuestFrames + ?Sized>(
        &mut self,
        mem: &mut G,
        frame: u64,
    ) -> Result<(), MmuError> {
        self.get_page_and_type(mem, frame, FrameType::Writable)
            .map_err(|_| MmuError::NotOwned(frame))?;
        for i in 0..ENTRIES {
            mem.write_entry(frame, i, 0);
        }
        self.put_page_and_type(mem, frame);
        Ok(())
    }

    fn copy_page<G: GuestFrames + ?Sized>(
        &mut self,
        mem: &mut G,
        dst: u64,
        src: u64,
    ) -> Result<(), MmuError> {
        self.get_page(src)?;
        if self
            .get_page_and_type(mem, dst, FrameType::Writable)
            .is_err()
        {
            self.put_page(src);
            return Err(MmuError::NotOwned(dst));
        }
        for i in 0..ENTRIES {
            let v = mem.read_entry(src, i);
            mem.write_entry(dst, i, v);
        }
        self.put_page_and_type(mem, dst);
        self.put_page(src);
        Ok(())
    }
}
