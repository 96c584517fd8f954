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
    /// Guest-physical address and entry count of the M2P, if the domain has one.
    m2p: Option<(u64, u64)>,
}

impl<'a> RamFrames<'a> {
    /// Frames of `ram`, without an M2P ([`GuestFrames::set_m2p`] does nothing).
    pub fn new(ram: &'a GuestRam) -> Self {
        RamFrames { ram, m2p: None }
    }

    /// Frames of `ram` whose M2P (`entries` eight-byte entries) is at guest-physical
    /// `base`.
    pub fn with_m2p(ram: &'a GuestRam, base: u64, entries: u64) -> Self {
        RamFrames {
            ram,
            m2p: Some((base, entries)),
        }
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

    /// Writes the M2P entry, if there is an M2P and `mfn` is inside it.
    fn set_m2p(&mut self, mfn: u64, pfn: u64) {
        let Some((base, entries)) = self.m2p else {
            return;
        };
        if mfn >= entries {
            return;
        }
        if let Ok(word) = self.ram.atomic_u64(base + mfn * 8) {
            word.store(pfn, Ordering::Release);
        }
    }
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
