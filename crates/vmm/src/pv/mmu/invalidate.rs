//! Frames whose old mappings the VMM must drop after a batch of MMU updates.
//!
//! On this host KVM does not notice page-table writes the VMM makes through its memfd
//! mapping when they take access away (docs/architecture.md, "Probe"). The MMU records
//! the frames the old entries reached; the VMM calls `madvise(MADV_DONTNEED)` on its
//! mapping of each range once per batch, before the guest runs again, which makes
//! KVM's MMU notifier zap every shadow entry for them.

use std::collections::BTreeSet;

/// More frames than this in one batch (or a subtree with more tables than
/// [`MAX_TABLES_WALKED`]): the caller should drop the whole shadow (delete and re-add
/// the memslot) instead of zapping frame by frame.
pub const MAX_FRAMES: usize = 4096;
/// Tables a subtree walk may visit before it gives up and asks for everything.
pub const MAX_TABLES_WALKED: usize = 64;

/// The result of one batch: frames to zap, or everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Invalidations {
    frames: BTreeSet<u64>,
    everything: bool,
    tables_walked: usize,
}

impl Invalidations {
    /// Whether nothing needs invalidating.
    pub fn is_empty(&self) -> bool {
        !self.everything && self.frames.is_empty()
    }

    /// Whether the caller must throw away every shadow mapping (too much to zap one by
    /// one). [`Self::frames`] is then incomplete.
    pub fn everything(&self) -> bool {
        self.everything
    }

    /// The frames to zap, in ascending order.
    pub fn frames(&self) -> impl Iterator<Item = u64> + '_ {
        self.frames.iter().copied()
    }

    /// The frames coalesced into `(first, count)` runs, one `madvise` each.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for &f in &self.frames {
            match out.last_mut() {
                Some((start, len)) if start.checked_add(*len) == Some(f) => *len += 1,
                _ => out.push((f, 1)),
            }
        }
        out
    }

    /// Whether `frame` is listed (or everything is to go).
    pub fn covers(&self, frame: u64) -> bool {
        self.everything || self.frames.contains(&frame)
    }

    pub(super) fn add(&mut self, frame: u64) {
        if self.everything {
            return;
        }
        self.frames.insert(frame);
        if self.frames.len() > MAX_FRAMES {
            self.set_everything();
        }
    }

    /// Counts one table visited by a subtree walk; false once the walk must stop.
    pub(super) fn walk_table(&mut self) -> bool {
        if self.everything {
            return false;
        }
        self.tables_walked += 1;
        if self.tables_walked > MAX_TABLES_WALKED {
            self.set_everything();
            return false;
        }
        true
    }

    pub(super) fn set_everything(&mut self) {
        self.everything = true;
        self.frames.clear();
    }

    /// Adds another batch's invalidations (a `multicall` is one batch for the caller).
    pub fn merge(&mut self, other: Invalidations) {
        if other.everything {
            self.set_everything();
        }
        for f in other.frames {
            self.add(f);
        }
    }
}
