//! Which pages of guest RAM changed, for live migration's pre-copy rounds.
//!
//! Two sources, merged by [`crate::memory::GuestRam::take_dirty`]:
//! * the guest's own writes: KVM's dirty log of the RAM's memory slot
//!   (`KVM_MEM_LOG_DIRTY_PAGES`, read and cleared with `KVM_GET_DIRTY_LOG`), through
//!   [`KvmDirtyLog`];
//! * the VMM's writes (hypercall results, grant copies, backends' ring updates, event
//!   bits): KVM does not see them, so every checked writer of `GuestRam` marks the
//!   page in a [`VmmDirtyBitmap`] while tracking is on.
//!
//! This module owns the bitmaps and the two ioctls; it must not decide what to send
//! (that is [`crate::snapshot::live`]).

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use kvm_bindings::{kvm_dirty_log, kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};

/// `_IOW(KVMIO, 0x46, struct kvm_userspace_memory_region)`.
const KVM_SET_USER_MEMORY_REGION: libc::c_ulong = 0x4020_ae46;
/// `_IOW(KVMIO, 0x42, struct kvm_dirty_log)`.
const KVM_GET_DIRTY_LOG: libc::c_ulong = 0x4010_ae42;

/// Pages the VMM wrote while tracking was on, one bit per 4 KiB page.
///
/// A checked write marks its page after the bytes are in ([`VmmDirtyBitmap::mark`]),
/// so a round that takes the mark before the write finished sends the page again
/// next round. An atomic accessor cannot mark after its caller's write, so its pages
/// are also kept in a *sticky* set that only the stop-and-copy takes
/// ([`VmmDirtyBitmap::take_sticky_into`]): ring indices and event words are few pages.
#[derive(Debug)]
pub struct VmmDirtyBitmap {
    on: AtomicBool,
    words: Box<[AtomicU64]>,
    sticky: Box<[AtomicU64]>,
}

impl VmmDirtyBitmap {
    /// A bitmap for `pages` pages, tracking off.
    pub fn new(pages: u64) -> Self {
        let words = (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        let sticky = (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        Self {
            on: AtomicBool::new(false),
            words,
            sticky,
        }
    }

    /// Marks the pages of `[addr, addr+len)` handed out for atomic access: marked
    /// now and again at the stop-and-copy.
    #[inline]
    pub fn mark_sticky(&self, addr: u64, len: u64) {
        if !self.on.load(Ordering::Relaxed) || len == 0 {
            return;
        }
        self.mark(addr, len);
        for page in (addr >> 12)..=((addr + len - 1) >> 12) {
            if let Some(w) = self.sticky.get((page / 64) as usize) {
                w.fetch_or(1 << (page % 64), Ordering::Relaxed);
            }
        }
    }

    /// ORs the pages ever handed out for atomic access while tracking was on into
    /// `into`, and clears them.
    pub fn take_sticky_into(&self, into: &mut [u64]) {
        for (dst, w) in into.iter_mut().zip(self.sticky.iter()) {
            *dst |= w.swap(0, Ordering::AcqRel);
        }
    }

    /// Marks the pages of `[addr, addr+len)` (already bounds-checked) if tracking is on.
    #[inline]
    pub fn mark(&self, addr: u64, len: u64) {
        if !self.on.load(Ordering::Relaxed) || len == 0 {
            return;
        }
        let first = addr >> 12;
        let last = (addr + len - 1) >> 12;
        for page in first..=last {
            if let Some(w) = self.words.get((page / 64) as usize) {
                w.fetch_or(1 << (page % 64), Ordering::Relaxed);
            }
        }
    }

    /// Starts (clearing what was marked) or stops tracking.
    pub fn set_tracking(&self, on: bool) {
        for w in self.words.iter().chain(self.sticky.iter()) {
            w.store(0, Ordering::Relaxed);
        }
        self.on.store(on, Ordering::SeqCst);
    }

    /// ORs the marked pages into `into` (one bit per page) and clears them.
    pub fn take_into(&self, into: &mut [u64]) {
        for (dst, w) in into.iter_mut().zip(self.words.iter()) {
            *dst |= w.swap(0, Ordering::AcqRel);
        }
    }
}

/// KVM's dirty log of one memory slot, on a duplicate of the VM's descriptor.
#[derive(Debug)]
pub struct KvmDirtyLog {
    vm: OwnedFd,
    region: kvm_userspace_memory_region,
}

impl KvmDirtyLog {
    /// The dirty log of slot `region` of the VM `vm` (which the caller duplicated).
    pub fn new(vm: OwnedFd, region: kvm_userspace_memory_region) -> Self {
        Self { vm, region }
    }

    /// Turns logging of the slot on or off (KVM clears the log when it is turned on).
    pub fn set_logging(&self, on: bool) -> std::io::Result<()> {
        let mut region = self.region;
        region.flags = if on { KVM_MEM_LOG_DIRTY_PAGES } else { 0 };
        // SAFETY: `vm` is a KVM VM descriptor and `region` describes the same slot, host
        // mapping and size it was registered with; only the flags change. KVM reads the
        // struct and keeps no pointer to it.
        let rc = unsafe { libc::ioctl(self.vm.as_raw_fd(), KVM_SET_USER_MEMORY_REGION, &region) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// ORs the pages the guest wrote since the last call into `into` (one bit per
    /// page; at least one bit per page of the slot) and clears KVM's log.
    pub fn take_into(&self, into: &mut [u64]) -> std::io::Result<()> {
        let pages = self.region.memory_size / rxen_abi::PAGE_SIZE;
        let mut bitmap = vec![0u64; pages.div_ceil(64) as usize];
        let mut log = kvm_dirty_log {
            slot: self.region.slot,
            ..Default::default()
        };
        log.__bindgen_anon_1.dirty_bitmap = bitmap.as_mut_ptr().cast();
        // SAFETY: `vm` is a KVM VM descriptor; `bitmap` has one bit per page of the
        // slot (rounded up to 64) and outlives the call; KVM writes only into it.
        let rc = unsafe { libc::ioctl(self.vm.as_raw_fd(), KVM_GET_DIRTY_LOG, &log) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        for (dst, src) in into.iter_mut().zip(bitmap) {
            *dst |= src;
        }
        Ok(())
    }
}

/// The pages whose bits are set in `bitmap`, in order.
pub fn pages(bitmap: &[u64]) -> impl Iterator<Item = u64> + '_ {
    bitmap.iter().enumerate().flat_map(|(i, &w)| {
        let mut w = w;
        std::iter::from_fn(move || {
            if w == 0 {
                return None;
            }
            let bit = w.trailing_zeros() as u64;
            w &= w - 1;
            Some(i as u64 * 64 + bit)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_only_while_tracking() {
        let b = VmmDirtyBitmap::new(200);
        b.mark(0x1000, 8);
        let mut out = vec![0u64; 4];
        b.take_into(&mut out);
        assert!(out.iter().all(|&w| w == 0));
        b.set_tracking(true);
        b.mark(0x1ff8, 16); // pages 1 and 2
        b.mark(199 << 12, 1);
        b.take_into(&mut out);
        assert_eq!(pages(&out).collect::<Vec<_>>(), vec![1, 2, 199]);
        let mut again = vec![0u64; 4];
        b.take_into(&mut again);
        assert!(again.iter().all(|&w| w == 0), "taking clears");
        // Atomic pages come back at the stop-and-copy even after a round took them.
        b.mark_sticky(5 << 12, 4);
        b.take_into(&mut again);
        assert_eq!(pages(&again).collect::<Vec<_>>(), vec![5]);
        let mut last = vec![0u64; 4];
        b.take_sticky_into(&mut last);
        assert_eq!(pages(&last).collect::<Vec<_>>(), vec![5]);
    }

    #[test]
    fn pages_lists_set_bits() {
        assert_eq!(
            pages(&[0b101, 1 << 63]).collect::<Vec<_>>(),
            vec![0, 2, 127]
        );
    }
}
