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
    /// The guest's frames are known to be all zero (fresh RAM the builder is filling):
    /// zeroing them again is skipped, which spares the time and the host memory that
    /// touching every page would cost.
    fresh: bool,
}

impl<'a> RamFrames<'a> {
    /// Frames of `ram`, without an M2P ([`GuestFrames::set_m2p`] does nothing).
    pub fn new(ram: &'a GuestRam) -> Self {
        RamFrames {
            ram,
            m2p: None,
            fresh: false,
        }
    }

    /// Frames of `ram` whose M2P (`entries` eight-byte entries) is at guest-physical
    /// `base`.
    pub fn with_m2p(ram: &'a GuestRam, base: u64, entries: u64) -> Self {
        RamFrames {
            ram,
            m2p: Some((base, entries)),
            fresh: false,
        }
    }

    /// The same frames, declared all zero below rxen's area (RAM just created, nothing
    /// but the builder writes it yet): [`PhysMemory::zero_phys`] only checks bounds.
    pub fn fresh(self) -> Self {
        RamFrames {
            fresh: true,
            ..self
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

    /// Zeros `len` bytes at `addr` (a page at most per call).
    fn zero_phys(&mut self, addr: u64, len: usize) -> Result<(), MemoryError> {
        const ZEROS: [u8; 4096] = [0; 4096];
        let mut at = 0usize;
        while at < len {
            let n = (len - at).min(ZEROS.len());
            self.write_phys(addr + at as u64, &ZEROS[..n])?;
            at += n;
        }
        Ok(())
    }
}

impl PhysMemory for RamFrames<'_> {
    fn write_phys(&mut self, addr: u64, data: &[u8]) -> Result<(), MemoryError> {
        self.ram.write(addr, data)
    }

    fn zero_phys(&mut self, addr: u64, len: usize) -> Result<(), MemoryError> {
        if self.fresh {
            // Still refuse what lies outside RAM, as a write would.
            return self.ram.read(addr, &mut []).and_then(|()| {
                let end = addr
                    .checked_add(len as u64)
                    .ok_or(MemoryError::OutOfRange {
                        addr,
                        len: len as u64,
                        size: self.ram.size(),
                    })?;
                if end > self.ram.size() {
                    return Err(MemoryError::OutOfRange {
                        addr,
                        len: len as u64,
                        size: self.ram.size(),
                    });
                }
                Ok(())
            });
        }
        const ZEROS: [u8; 4096] = [0; 4096];
        let mut at = 0usize;
        while at < len {
            let n = (len - at).min(ZEROS.len());
            self.ram.write(addr + at as u64, &ZEROS[..n])?;
            at += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroing_fresh_ram_only_checks_bounds() {
        let ram = GuestRam::new("frames", 8 << 20).unwrap();
        let size = ram.size();
        ram.write(0x1000, &[7; 16]).unwrap();
        // Not fresh: zeros are written.
        RamFrames::new(&ram).zero_phys(0x1000, 8).unwrap();
        let mut b = [0u8; 16];
        ram.read(0x1000, &mut b).unwrap();
        assert_eq!(&b[..8], &[0; 8]);
        assert_eq!(&b[8..], &[7; 8]);
        // Fresh: nothing is touched (the builder relies on new RAM being zero)...
        let mut fresh = RamFrames::new(&ram).fresh();
        fresh.zero_phys(0x1008, 8).unwrap();
        ram.read(0x1000, &mut b).unwrap();
        assert_eq!(&b[8..], &[7; 8]);
        // ...but what lies outside RAM is refused either way.
        assert!(fresh.zero_phys(size - 4, 8).is_err());
        assert!(fresh.zero_phys(u64::MAX - 2, 8).is_err());
        assert!(RamFrames::new(&ram).zero_phys(size - 4, 8).is_err());
    }
}
