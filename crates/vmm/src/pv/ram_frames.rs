//! The direct-paging MMU's and the PV builder's view of a domain's [`GuestRam`]:
//! frame `n` is guest-physical page `n` (rxen builds PV domains with mfn == pfn).
//! Page-table entries are read and written as aligned 8-byte atomic accesses, since
//! the guest (or KVM's page walker) may look at them concurrently.

use std::sync::atomic::Ordering;

use super::layout::PAGE_SIZE;
use super::mmu::entry::ENTRIES;
use super::mmu::GuestFrames;
use crate::memory::{GuestRam, MemoryError};

/// [`GuestFrames`] plus byte writes over a domain's RAM.
#[derive(Debug, Clone, Copy)]
pub struct RamFrames<'a> {
    ram: &'a GuestRam,
}

impl<'a> RamFrames<'a> {
    pub fn new(ram: &'a GuestRam) -> Self {
        RamFrames { ram }
    }

    /// The RAM behind the frames.
    pub fn ram(&self) -> &'a GuestRam {
        self.ram
    }

    fn entry_addr(frame: u64, index: usize) -> Option<u64> {
        if index >= ENTRIES {
            return None;
        }
        frame.checked_mul(PAGE_SIZE)?.checked_add(index as u64 * 8)
    }
}

impl GuestFrames for RamFrames<'_> {
    fn read_entry(&self, frame: u64, index: usize) -> u64 {
        Self::entry_addr(frame, index)
            .and_then(|addr| self.ram.atomic_u64(addr).ok())
            .map_or(0, |word| word.load(Ordering::Acquire))
    }

    fn write_entry(&mut self, frame: u64, index: usize, value: u64) {
        if let Some(word) =
            Self::entry_addr(frame, index).and_then(|addr| self.ram.atomic_u64(addr).ok())
        {
            word.store(value, Ordering::Release);
        }
    }

    fn nr_frames(&self) -> u64 {
        self.ram.nr_pages()
    }

    /// No M2P table exists yet in guest memory (see docs/architecture.md, "Direct-paging
    /// MMU core": the M2P lives in rxen frames still to be placed); at build time
    /// mfn == pfn, which is what the guest assumes until it is told otherwise.
    fn set_m2p(&mut self, _mfn: u64, _pfn: u64) {}
}

/// Byte access the PV builder needs besides [`GuestFrames`].
pub trait PhysMemory: GuestFrames {
    /// Writes `data` at guest-physical address `addr`.
    fn write_phys(&mut self, addr: u64, data: &[u8]) -> Result<(), MemoryError>;
}

impl PhysMemory for RamFrames<'_> {
    fn write_phys(&mut self, addr: u64, data: &[u8]) -> Result<(), MemoryError> {
        self.ram.write(addr, data)
    }
}
