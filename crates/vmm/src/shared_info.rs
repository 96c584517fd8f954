//! Atomic access to the event bits of the guest's `shared_info` page.
//!
//! The guest changes these words concurrently (it clears pending bits and selector
//! bits, sets masks), so the VMM only ever uses atomic read-modify-write on them,
//! through [`GuestRam`]'s checked atomic accessors.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicU64, AtomicU8};
use std::sync::Arc;

use rxen_abi::xen::{shared_info_offsets as off, BITS_PER_EVTCHN_WORD, NR_EVENT_CHANNELS};

use crate::memory::GuestRam;

/// The event-channel words of one domain's `shared_info`.
#[derive(Debug, Clone)]
pub struct SharedInfoPage {
    /// Keeps the mapping that `host` points into alive.
    _ram: Arc<GuestRam>,
    host: *mut u8,
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
            _ram: ram,
            host: first,
        })
    }

    fn word(&self, offset: usize) -> &AtomicU64 {
        assert!(offset.is_multiple_of(8) && offset + 8 <= rxen_abi::PAGE_SIZE as usize);
        // SAFETY: `new` checked that the page [host, host+4096) is mapped guest RAM that
        // lives as long as `_ram`; the offset is 8-aligned and inside the page (asserted;
        // callers derive it from ports reduced modulo NR_EVENT_CHANNELS and vCPU ids < 32,
        // so it always holds).
        unsafe { &*(self.host.add(offset) as *const AtomicU64) }
    }

    fn byte(&self, offset: usize) -> &AtomicU8 {
        assert!(offset < rxen_abi::PAGE_SIZE as usize);
        // SAFETY: as in `word`; bytes need no alignment.
        unsafe { &*(self.host.add(offset) as *const AtomicU8) }
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
        let vcpu = vcpu as usize % rxen_abi::xen::LEGACY_MAX_VCPUS;
        let sel = self.word(off::vcpu_info(vcpu) + off::PENDING_SEL);
        sel.fetch_or(1u64 << w, SeqCst);
        self.byte(off::vcpu_info(vcpu) + off::UPCALL_PENDING)
            .swap(1, SeqCst)
            == 0
    }

    /// The `evtchn_upcall_pending` flag of `vcpu`.
    pub fn upcall_pending(&self, vcpu: u32) -> bool {
        self.byte(
            off::vcpu_info(vcpu as usize % rxen_abi::xen::LEGACY_MAX_VCPUS) + off::UPCALL_PENDING,
        )
        .load(SeqCst)
            != 0
    }

    /// Sets `evtchn_upcall_mask` of `vcpu`.
    pub fn set_upcall_mask(&self, vcpu: u32, masked: bool) {
        self.byte(
            off::vcpu_info(vcpu as usize % rxen_abi::xen::LEGACY_MAX_VCPUS) + off::UPCALL_MASK,
        )
        .store(masked as u8, SeqCst);
    }

    /// `evtchn_upcall_mask` of `vcpu`.
    pub fn upcall_mask(&self, vcpu: u32) -> bool {
        self.byte(
            off::vcpu_info(vcpu as usize % rxen_abi::xen::LEGACY_MAX_VCPUS) + off::UPCALL_MASK,
        )
        .load(SeqCst)
            != 0
    }

    /// Writes `vcpu_info.arch.cr2` of `vcpu` (Xen's place for a #PF address).
    pub fn set_cr2(&self, vcpu: u32, cr2: u64) {
        self.word(off::vcpu_info(vcpu as usize % rxen_abi::xen::LEGACY_MAX_VCPUS) + off::ARCH_CR2)
            .store(cr2, SeqCst);
    }

    /// `vcpu_info.arch.cr2` of `vcpu`: the last page-fault address delivered.
    pub fn cr2(&self, vcpu: u32) -> u64 {
        self.word(off::vcpu_info(vcpu as usize % rxen_abi::xen::LEGACY_MAX_VCPUS) + off::ARCH_CR2)
            .load(SeqCst)
    }

    /// Clears `evtchn_upcall_pending` of `vcpu` (what a guest does when it handles its
    /// events; for tests).
    #[cfg(test)]
    pub fn clear_upcall_pending(&self, vcpu: u32) {
        self.byte(
            off::vcpu_info(vcpu as usize % rxen_abi::xen::LEGACY_MAX_VCPUS) + off::UPCALL_PENDING,
        )
        .store(0, SeqCst);
    }
}
