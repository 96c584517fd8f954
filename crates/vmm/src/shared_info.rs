//! Atomic access to the event bits of the guest's `shared_info` page.
//!
//! The guest changes these words concurrently (it clears pending bits and selector
//! bits, sets masks), so the VMM only ever uses atomic read-modify-write on them,
//! through [`GuestRam`]'s checked atomic accessors.
//!
//! A vCPU's `vcpu_info` starts in `shared_info` (the first 32 vCPUs) and may move into
//! guest RAM with `VCPUOP_register_vcpu_info` ([`SharedInfoPage::relocate_vcpu_info`]);
//! every `vcpu_info` access here follows it.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicU64, AtomicU8};
use std::sync::Arc;

use rxen_abi::xen::{shared_info_offsets as off, BITS_PER_EVTCHN_WORD, NR_EVENT_CHANNELS};

use crate::memory::GuestRam;

/// The event-channel words of one domain's `shared_info`.
#[derive(Debug, Clone)]
pub struct SharedInfoPage {
    /// Keeps the mapping that `host` points into alive.
    ram: Arc<GuestRam>,
    host: *mut u8,
    /// Guest-physical address of the page.
    base: u64,
    /// Guest-physical address of each vCPU's relocated `vcpu_info` (0: in
    /// `shared_info`). Set once per vCPU, checked to lie in RAM.
    relocated: Arc<[AtomicU64; rxen_abi::xen::LEGACY_MAX_VCPUS]>,
}

/// Size of `struct vcpu_info` (x86-64).
pub const VCPU_INFO_SIZE: u64 = 64;

/// Why a `vcpu_info` cannot move where the guest asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RelocateError {
    #[error("vcpu_info must be 8-aligned and lie within one page of RAM")]
    BadPlace,
    #[error("this vCPU's vcpu_info was already moved")]
    AlreadyMoved,
}

// SAFETY: `host` points into a shared mapping owned by `_ram` (which is Send + Sync), and
// it is only ever dereferenced as atomics.
unsafe impl Send for SharedInfoPage {}
// SAFETY: as above; all access through `host` is atomic.
unsafe impl Sync for SharedInfoPage {}

impl SharedInfoPage {
    /// Accesses the `shared_info` page at guest address `base`, which must be a
    /// page-aligned page inside RAM.
    pub fn new(ram: Arc<GuestRam>, base: u64) -> Result<Self, crate::memory::MemoryError> {
        if !base.is_multiple_of(rxen_abi::PAGE_SIZE) {
            return Err(crate::memory::MemoryError::Misaligned(base));
        }
        // Validates that the whole page lies in RAM and yields its host address.
        let first = ram.atomic_u64(base)? as *const _ as *mut u8;
        ram.atomic_u64(base + rxen_abi::PAGE_SIZE - 8)?;
        Ok(Self {
            ram,
            host: first,
            base,
            relocated: Arc::new(std::array::from_fn(|_| AtomicU64::new(0))),
        })
    }

    /// Moves `vcpu`'s `vcpu_info` to guest-physical `gpa` (Xen's
    /// `VCPUOP_register_vcpu_info`): the current contents are copied, every selector
    /// bit and `evtchn_upcall_pending` are set so the guest rescans its events, and all
    /// later accesses go there. Once per vCPU.
    pub fn relocate_vcpu_info(&self, vcpu: u32, gpa: u64) -> Result<(), RelocateError> {
        let slot = self
            .relocated
            .get(vcpu as usize)
            .ok_or(RelocateError::BadPlace)?;
        self.check_place(gpa)?;
        if slot.load(SeqCst) != 0 {
            return Err(RelocateError::AlreadyMoved);
        }
        let old = self.vcpu_info_gpa(vcpu);
        let mut info = [0u8; VCPU_INFO_SIZE as usize];
        self.ram
            .read(old, &mut info)
            .map_err(|_| RelocateError::BadPlace)?;
        self.ram
            .write(gpa, &info)
            .map_err(|_| RelocateError::BadPlace)?;
        slot.store(gpa, SeqCst);
        self.vcpu_word(vcpu, off::PENDING_SEL).store(!0, SeqCst);
        self.vcpu_byte(vcpu, off::UPCALL_PENDING).store(1, SeqCst);
        Ok(())
    }

    /// A `vcpu_info` may lie at `gpa`: 8-aligned, within one page of RAM.
    fn check_place(&self, gpa: u64) -> Result<(), RelocateError> {
        if !gpa.is_multiple_of(8)
            || gpa % rxen_abi::PAGE_SIZE > rxen_abi::PAGE_SIZE - VCPU_INFO_SIZE
            || gpa == 0
        {
            return Err(RelocateError::BadPlace);
        }
        self.ram
            .atomic_u64(gpa)
            .and_then(|_| self.ram.atomic_u64(gpa + VCPU_INFO_SIZE - 8))
            .map_err(|_| RelocateError::BadPlace)?;
        Ok(())
    }

    /// Where `vcpu`'s `vcpu_info` was moved (`None`: still in `shared_info`).
    pub fn relocated_vcpu_info(&self, vcpu: u32) -> Option<u64> {
        let gpa = self.relocated.get(vcpu as usize)?.load(SeqCst);
        (gpa != 0).then_some(gpa)
    }

    /// Puts `vcpu`'s `vcpu_info` back at `gpa`, where a saved domain had moved it
    /// (restore: the contents are in the restored memory already). The same checks as
    /// [`Self::relocate_vcpu_info`].
    pub fn restore_vcpu_info(&self, vcpu: u32, gpa: u64) -> Result<(), RelocateError> {
        let slot = self
            .relocated
            .get(vcpu as usize)
            .ok_or(RelocateError::BadPlace)?;
        self.check_place(gpa)?;
        if slot.load(SeqCst) != 0 {
            return Err(RelocateError::AlreadyMoved);
        }
        slot.store(gpa, SeqCst);
        Ok(())
    }

    /// Guest-physical address of `vcpu`'s `vcpu_info`.
    pub fn vcpu_info_gpa(&self, vcpu: u32) -> u64 {
        let v = vcpu as usize % rxen_abi::xen::LEGACY_MAX_VCPUS;
        match self.relocated[v].load(SeqCst) {
            0 => self.base + off::vcpu_info(v) as u64,
            gpa => gpa,
        }
    }

    /// A field of `vcpu`'s `vcpu_info` (8-aligned offset `field`) as an atomic word.
    fn vcpu_word(&self, vcpu: u32, field: usize) -> &AtomicU64 {
        let v = vcpu as usize % rxen_abi::xen::LEGACY_MAX_VCPUS;
        match self.relocated[v].load(SeqCst) {
            0 => self.word(off::vcpu_info(v) + field),
            gpa => match self.ram.atomic_u64(gpa + field as u64) {
                Ok(w) => w,
                // Checked at relocation: the whole vcpu_info lies in RAM.
                Err(_) => self.word(off::vcpu_info(v) + field),
            },
        }
    }

    /// A byte of `vcpu`'s `vcpu_info` as an atomic.
    fn vcpu_byte(&self, vcpu: u32, field: usize) -> &AtomicU8 {
        let word = self.vcpu_word(vcpu, field & !7);
        // SAFETY: `word` is an 8-aligned atomic word of mapped guest RAM that lives as
        // long as `self.ram`; byte `field % 8` of it is inside that word.
        unsafe { &*((word as *const AtomicU64 as *const u8).add(field % 8) as *const AtomicU8) }
    }

    fn word(&self, offset: usize) -> &AtomicU64 {
        assert!(offset.is_multiple_of(8) && offset + 8 <= rxen_abi::PAGE_SIZE as usize);
        // SAFETY: `new` checked that the page [host, host+4096) is mapped guest RAM that
        // lives as long as `_ram`; the offset is 8-aligned and inside the page (asserted;
        // callers derive it from ports reduced modulo NR_EVENT_CHANNELS and vCPU ids < 32,
        // so it always holds).
        unsafe { &*(self.host.add(offset) as *const AtomicU64) }
    }

    fn split(port: u32) -> (usize, u64) {
        let p = port as usize % NR_EVENT_CHANNELS;
        (p / BITS_PER_EVTCHN_WORD, 1u64 << (p % BITS_PER_EVTCHN_WORD))
    }

    /// Sets the pending bit of `port`; true if it was clear before.
    pub fn set_pending(&self, port: u32) -> bool {
        let (w, bit) = Self::split(port);
        self.word(off::evtchn_pending(w)).fetch_or(bit, SeqCst) & bit == 0
    }

    /// Clears the pending bit of `port`.
    pub fn clear_pending(&self, port: u32) {
        let (w, bit) = Self::split(port);
        self.word(off::evtchn_pending(w)).fetch_and(!bit, SeqCst);
    }

    /// Is `port` pending?
    pub fn is_pending(&self, port: u32) -> bool {
        let (w, bit) = Self::split(port);
        self.word(off::evtchn_pending(w)).load(SeqCst) & bit != 0
    }

    /// Is `port` masked?
    pub fn is_masked(&self, port: u32) -> bool {
        let (w, bit) = Self::split(port);
        self.word(off::evtchn_mask(w)).load(SeqCst) & bit != 0
    }

    /// Sets or clears the mask bit of `port`.
    pub fn set_masked(&self, port: u32, masked: bool) {
        let (w, bit) = Self::split(port);
        let word = self.word(off::evtchn_mask(w));
        if masked {
            word.fetch_or(bit, SeqCst);
        } else {
            word.fetch_and(!bit, SeqCst);
        }
    }

    /// Marks the selector word of `port` pending for `vcpu` and raises its
    /// `evtchn_upcall_pending`; true if that flag went from 0 to 1 (the moment to kick
    /// a running vCPU for an upcall: a burst of events costs one kick).
    pub fn mark_vcpu_pending(&self, vcpu: u32, port: u32) -> bool {
        let (w, _) = Self::split(port);
        let sel = self.vcpu_word(vcpu, off::PENDING_SEL);
        sel.fetch_or(1u64 << w, SeqCst);
        self.vcpu_byte(vcpu, off::UPCALL_PENDING).swap(1, SeqCst) == 0
    }

    /// What Xen's restore of a PV domain does to `shared_info` for the new domain
    /// (libxc's handling of the `SHARED_INFO` record): every event channel's pending
    /// bit cleared, every mask bit **set**, each legacy `vcpu_info`'s
    /// `evtchn_pending_sel` cleared. The guest unmasks what it binds again; a port
    /// number reused for a binding the guest keeps masked (Linux's spinlock-kick IPI)
    /// must not inherit the old port's clear mask bit. The ports in `keep` (the
    /// xenstore and console ports, which stay bound) keep their mask bits: Linux
    /// unmasks them itself when it rebinds them, the SDK's guests never mask them.
    pub fn reset_events_for_new_domain(&self, keep: &[u32]) {
        let kept: Vec<(u32, bool)> = keep.iter().map(|&p| (p, self.is_masked(p))).collect();
        for w in 0..NR_EVENT_CHANNELS / BITS_PER_EVTCHN_WORD {
            self.word(off::evtchn_pending(w)).store(0, SeqCst);
            self.word(off::evtchn_mask(w)).store(u64::MAX, SeqCst);
        }
        for (p, masked) in kept {
            self.set_masked(p, masked);
        }
        for v in 0..rxen_abi::xen::LEGACY_MAX_VCPUS {
            self.word(off::vcpu_info(v) + off::PENDING_SEL)
                .store(0, SeqCst);
        }
    }

    /// The `evtchn_upcall_pending` flag of `vcpu`.
    pub fn upcall_pending(&self, vcpu: u32) -> bool {
        self.vcpu_byte(vcpu, off::UPCALL_PENDING).load(SeqCst) != 0
    }

    /// Sets `evtchn_upcall_mask` of `vcpu`.
    pub fn set_upcall_mask(&self, vcpu: u32, masked: bool) {
        self.vcpu_byte(vcpu, off::UPCALL_MASK)
            .store(masked as u8, SeqCst);
    }

    /// `evtchn_upcall_mask` of `vcpu`.
    pub fn upcall_mask(&self, vcpu: u32) -> bool {
        self.vcpu_byte(vcpu, off::UPCALL_MASK).load(SeqCst) != 0
    }

    /// Writes `vcpu_info.arch.cr2` of `vcpu` (Xen's place for a #PF address).
    pub fn set_cr2(&self, vcpu: u32, cr2: u64) {
        self.vcpu_word(vcpu, off::ARCH_CR2).store(cr2, SeqCst);
    }

    /// `vcpu_info.arch.cr2` of `vcpu`: the last page-fault address delivered.
    pub fn cr2(&self, vcpu: u32) -> u64 {
        self.vcpu_word(vcpu, off::ARCH_CR2).load(SeqCst)
    }

    /// Clears `evtchn_upcall_pending` of `vcpu` (what a guest does when it handles its
    /// events; for tests).
    #[cfg(test)]
    pub fn clear_upcall_pending(&self, vcpu: u32) {
        self.vcpu_byte(vcpu, off::UPCALL_PENDING).store(0, SeqCst);
    }
}
