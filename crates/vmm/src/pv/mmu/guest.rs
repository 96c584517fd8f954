//! The MMU's view of memory: frames of 512 eight-byte entries, addressed by frame
//! number. The VMM implements it over the memfd; [`VecFrames`] backs tests and fuzzing.

use super::entry::ENTRIES;

/// Frame-granular access to the memory the MMU manages: guest RAM plus the special
/// frames (shared_info, grant frames, rxen's own) in one frame-number space. Reads of
/// frames out of range return 0 and writes to them are ignored: the MMU checks ranges
/// before it touches memory, so that only matters for a buggy caller.
pub trait GuestFrames {
    /// Entry `index` (0..512) of frame `frame`.
    fn read_entry(&self, frame: u64, index: usize) -> u64;
    /// Stores entry `index` of frame `frame`.
    fn write_entry(&mut self, frame: u64, index: usize, value: u64);
    /// Number of frames (valid frame numbers are `0..nr_frames()`).
    fn nr_frames(&self) -> u64;
    /// Records `mfn -> pfn` in the machine-to-phys table the guest reads at
    /// `RO_MPT_VIRT_START`.
    fn set_m2p(&mut self, mfn: u64, pfn: u64);
}

/// [`GuestFrames`] over a `Vec`, with its own M2P array.
#[derive(Clone, Debug)]
pub struct VecFrames {
    entries: Vec<u64>,
    m2p: Vec<u64>,
}

impl VecFrames {
    /// `nr_frames` zeroed frames; the M2P starts as the identity (mfn == pfn).
    pub fn new(nr_frames: u64) -> Self {
        let n = usize::try_from(nr_frames).unwrap_or(0);
        VecFrames {
            entries: vec![0; n.saturating_mul(ENTRIES)],
            m2p: (0..nr_frames).collect(),
        }
    }

    /// The M2P entry of `mfn` (`None` out of range).
    pub fn m2p(&self, mfn: u64) -> Option<u64> {
        self.m2p.get(usize::try_from(mfn).ok()?).copied()
    }

    fn slot(&self, frame: u64, index: usize) -> Option<usize> {
        if index >= ENTRIES {
            return None;
        }
        let i = usize::try_from(frame)
            .ok()?
            .checked_mul(ENTRIES)?
            .checked_add(index)?;
        (i < self.entries.len()).then_some(i)
    }
}

impl GuestFrames for VecFrames {
    fn read_entry(&self, frame: u64, index: usize) -> u64 {
        self.slot(frame, index).map_or(0, |i| self.entries[i])
    }

    fn write_entry(&mut self, frame: u64, index: usize, value: u64) {
        if let Some(i) = self.slot(frame, index) {
            self.entries[i] = value;
        }
    }

    fn nr_frames(&self) -> u64 {
        (self.entries.len() / ENTRIES) as u64
    }

    fn set_m2p(&mut self, mfn: u64, pfn: u64) {
        if let Some(slot) = usize::try_from(mfn).ok().and_then(|i| self.m2p.get_mut(i)) {
            *slot = pfn;
        }
    }
}
