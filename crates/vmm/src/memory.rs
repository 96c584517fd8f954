//! Guest RAM: a memfd mapped into the VMM, with checked accessors.
//!
//! All guest memory access in the VMM goes through [`GuestRam`]: every access is
//! bounds- and overflow-checked against the RAM size, and accesses on behalf of a
//! guest pointer are additionally checked against the guest's view of its memory
//! ([`GuestRam::check_guest_range`]): page 0 and the holes of the layout are unmapped,
//! and the page tables and hypercall page are read-only to the guest.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicU8};
use std::sync::OnceLock;

use rxen_abi::layout;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Errors of guest memory access.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest range {addr:#x}+{len:#x} is outside guest RAM ({size:#x} bytes)")]
    OutOfRange { addr: u64, len: u64, size: u64 },
    #[error("guest range {addr:#x}+{len:#x} is not {access} for the guest")]
    Forbidden {
        addr: u64,
        len: u64,
        access: &'static str,
    },
    #[error("guest RAM size {0:#x} is invalid (must be a multiple of 2 MiB between {min} and {max} bytes)", min = layout::MIN_MEMORY_BYTES, max = layout::MAX_MEMORY_BYTES)]
    BadSize(u64),
    #[error("creating guest RAM: {0}")]
    Create(std::io::Error),
    #[error("mapping guest RAM: {0}")]
    Map(String),
    #[error("atomic access at {0:#x} is misaligned or outside the page")]
    Misaligned(u64),
    #[error("dirty-page log: {0}")]
    DirtyLog(String),
}

/// How a guest pointer is used by the VMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The VMM reads what the guest points at.
    Read,
    /// The VMM writes to where the guest points.
    Write,
}

/// A domain's RAM: one memfd-backed region starting at guest-physical address 0.
///
/// While dirty tracking is on ([`GuestRam::start_dirty_tracking`]), every write
/// through the checked accessors (and every atomic accessor handed out) marks its
/// page, and KVM logs the guest's own writes; [`GuestRam::take_dirty`] returns both.
pub struct GuestRam {
    /// KVM's dirty log of the slot (set by `register`); declared first so that the
    /// duplicate VM descriptor is closed before the mapping goes.
    kvm_log: OnceLock<crate::dirty::KvmDirtyLog>,
    dirty: crate::dirty::VmmDirtyBitmap,
    mem: GuestMemoryMmap,
    memfd: File,
    size: u64,
}

impl std::fmt::Debug for GuestRam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestRam")
            .field("size", &self.size)
            .finish()
    }
}

impl GuestRam {
    /// Creates `size` bytes of zeroed guest RAM in a new memfd named after the domain.
    pub fn new(name: &str, size: u64) -> Result<Self, MemoryError> {
        if !(layout::MIN_MEMORY_BYTES..=layout::MAX_MEMORY_BYTES).contains(&size)
            || !size.is_multiple_of(2 << 20)
        {
            return Err(MemoryError::BadSize(size));
        }
        let cname = std::ffi::CString::new(format!("rxen-ram-{}", name.replace('\0', "")))
            .map_err(|e| MemoryError::Create(std::io::Error::other(e)))?;
        // SAFETY: memfd_create with a valid NUL-terminated name; the result is checked.
        let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(MemoryError::Create(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
        let memfd = unsafe { File::from_raw_fd(fd) };
        memfd.set_len(size).map_err(MemoryError::Create)?;
        let file_for_map = memfd.try_clone().map_err(MemoryError::Create)?;
        let mem = GuestMemoryMmap::from_ranges_with_files([(
            GuestAddress(0),
            size as usize,
            Some(FileOffset::new(file_for_map, 0)),
        )])
        .map_err(|e| MemoryError::Map(e.to_string()))?;
        Ok(Self {
            kvm_log: OnceLock::new(),
            dirty: crate::dirty::VmmDirtyBitmap::new(size / rxen_abi::PAGE_SIZE),
            mem,
            memfd,
            size,
        })
    }

    /// Size of RAM in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Number of 4 KiB pages.
    pub fn nr_pages(&self) -> u64 {
        self.size / rxen_abi::PAGE_SIZE
    }

    /// The memfd holding the RAM (for sharing with backends, save and migration).
    pub fn memfd(&self) -> &File {
        &self.memfd
    }

    /// Host address of the start of RAM, for registering the KVM memory slot.
    pub fn host_base(&self) -> u64 {
        self.mem
            .get_host_address(GuestAddress(0))
            .map(|p| p as u64)
            .unwrap_or(0)
    }

    fn check_range(&self, addr: u64, len: u64) -> Result<(), MemoryError> {
        match addr.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(MemoryError::OutOfRange {
                addr,
                len,
                size: self.size,
            }),
        }
    }

    /// Checks that the guest may hand the VMM `[addr, addr+len)` for `access`.
    ///
    /// The guest's address space is its identity-mapped RAM minus the unmapped holes of
    /// the layout; the page tables and the hypercall page are read-only.
    pub fn check_guest_range(
        &self,
        addr: u64,
        len: u64,
        access: Access,
    ) -> Result<(), MemoryError> {
        self.check_range(addr, len)?;
        if len == 0 {
            return Ok(());
        }
        let end = addr + len;
        let overlaps = |lo: u64, hi: u64| addr < hi && end > lo;
        let unmapped = [
            (0, layout::START_INFO),
            (layout::CONSOLE_PAGE + rxen_abi::PAGE_SIZE, layout::TSS),
            (layout::TSS_END, layout::PAGE_TABLES),
            (layout::PAGE_TABLES_END, layout::BOOT_STACK_BOTTOM),
        ];
        if unmapped.iter().any(|&(lo, hi)| overlaps(lo, hi)) {
            return Err(MemoryError::Forbidden {
                addr,
                len,
                access: "mapped",
            });
        }
        if access == Access::Write {
            let read_only = [
                (
                    layout::HYPERCALL_PAGE,
                    layout::HYPERCALL_PAGE + rxen_abi::PAGE_SIZE,
                ),
                (layout::PAGE_TABLES, layout::PAGE_TABLES_END),
                (layout::TSS, layout::TSS_END),
            ];
            if read_only.iter().any(|&(lo, hi)| overlaps(lo, hi)) {
                return Err(MemoryError::Forbidden {
                    addr,
                    len,
                    access: "writable",
                });
            }
        }
        Ok(())
    }

    /// Registers this RAM as memory slot 0 of `vm`, at guest-physical address 0.
    ///
    /// # Safety
    /// `self` must outlive `vm`: KVM keeps using the mapping until the VM is closed.
    pub unsafe fn register(&self, vm: &kvm_ioctls::VmFd) -> Result<(), kvm_ioctls::Error> {
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: self.size,
            userspace_addr: self.host_base(),
        };
        // SAFETY: the region is this whole RAM mapping, and the caller guarantees that
        // it outlives the VM.
        unsafe { vm.set_user_memory_region(region) }?;
        // A duplicate of the VM's descriptor for the dirty log; without one (no
        // descriptors left) live migration reports it, nothing else changes.
        // SAFETY: F_DUPFD_CLOEXEC on the VM's open descriptor; the result is checked
        // and owned by nothing else.
        let dup = unsafe { libc::fcntl(vm.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if dup >= 0 {
            // SAFETY: `dup` is a new descriptor this function owns.
            let fd = unsafe { OwnedFd::from_raw_fd(dup) };
            let _ = self.kvm_log.set(crate::dirty::KvmDirtyLog::new(fd, region));
        }
        Ok(())
    }

    /// Starts tracking which pages change: KVM's dirty log of the slot and the VMM's
    /// own bitmap, both cleared.
    pub fn start_dirty_tracking(&self) -> Result<(), MemoryError> {
        let log = self
            .kvm_log
            .get()
            .ok_or_else(|| MemoryError::DirtyLog("the RAM is not registered with KVM".into()))?;
        self.dirty.set_tracking(true);
        log.set_logging(true).map_err(|e| {
            self.dirty.set_tracking(false);
            MemoryError::DirtyLog(format!("enabling KVM_MEM_LOG_DIRTY_PAGES: {e}"))
        })
    }

    /// Stops tracking (the slot goes back to unlogged).
    pub fn stop_dirty_tracking(&self) {
        self.dirty.set_tracking(false);
        if let Some(log) = self.kvm_log.get() {
            if let Err(e) = log.set_logging(false) {
                tracing::warn!("disabling the dirty log: {e}");
            }
        }
    }

    /// The pages written (by the guest or the VMM) since tracking started or since the
    /// last call, one bit per page, and clears them. With `stop_and_copy` (the domain
    /// is paused: the last call), also every page handed out for atomic access while
    /// tracking was on.
    pub fn take_dirty(&self, stop_and_copy: bool) -> Result<Vec<u64>, MemoryError> {
        let mut bitmap = vec![0u64; self.nr_pages().div_ceil(64) as usize];
        self.dirty.take_into(&mut bitmap);
        if stop_and_copy {
            self.dirty.take_sticky_into(&mut bitmap);
        }
        if let Some(log) = self.kvm_log.get() {
            log.take_into(&mut bitmap)
                .map_err(|e| MemoryError::DirtyLog(format!("KVM_GET_DIRTY_LOG: {e}")))?;
        }
        Ok(bitmap)
    }

    /// Reads bytes from guest RAM (VMM-internal addresses: only bounds-checked).
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.check_range(addr, buf.len() as u64)?;
        self.mem
            .read_slice(buf, GuestAddress(addr))
            .map_err(|_| MemoryError::OutOfRange {
                addr,
                len: buf.len() as u64,
                size: self.size,
            })
    }

    /// Writes bytes to guest RAM (VMM-internal addresses: only bounds-checked).
    pub fn write(&self, addr: u64, buf: &[u8]) -> Result<(), MemoryError> {
        self.check_range(addr, buf.len() as u64)?;
        let written =
            self.mem
                .write_slice(buf, GuestAddress(addr))
                .map_err(|_| MemoryError::OutOfRange {
                    addr,
                    len: buf.len() as u64,
                    size: self.size,
                });
        // After the bytes are in: a round that took the page before sends it again.
        self.dirty.mark(addr, buf.len() as u64);
        written
    }

    /// Reads a plain-old-data value at a VMM-internal address.
    pub fn read_obj<T: FromBytes + IntoBytes>(&self, addr: u64) -> Result<T, MemoryError> {
        let mut v = T::new_zeroed();
        self.read(addr, v.as_mut_bytes())?;
        Ok(v)
    }

    /// Writes a plain-old-data value at a VMM-internal address.
    pub fn write_obj<T: IntoBytes + Immutable>(&self, addr: u64, v: &T) -> Result<(), MemoryError> {
        self.write(addr, v.as_bytes())
    }

    /// Reads a value from a guest pointer (checked against the guest's view).
    pub fn read_guest<T: FromBytes + IntoBytes>(&self, ptr: u64) -> Result<T, MemoryError> {
        self.check_guest_range(ptr, size_of::<T>() as u64, Access::Read)?;
        self.read_obj(ptr)
    }

    /// Writes a value to a guest pointer (checked against the guest's view).
    pub fn write_guest<T: IntoBytes + Immutable>(
        &self,
        ptr: u64,
        v: &T,
    ) -> Result<(), MemoryError> {
        self.check_guest_range(ptr, size_of::<T>() as u64, Access::Write)?;
        self.write_obj(ptr, v)
    }

    /// Reads guest bytes from a guest pointer (checked against the guest's view).
    pub fn read_guest_bytes(&self, ptr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.check_guest_range(ptr, buf.len() as u64, Access::Read)?;
        self.read(ptr, buf)
    }

    /// Writes bytes to a guest pointer (checked against the guest's view).
    pub fn write_guest_bytes(&self, ptr: u64, buf: &[u8]) -> Result<(), MemoryError> {
        self.check_guest_range(ptr, buf.len() as u64, Access::Write)?;
        self.write(ptr, buf)
    }

    /// A host pointer for atomic access: the page counts as written (the caller may,
    /// at any time after this: see `VmmDirtyBitmap::mark_sticky`).
    fn host_ptr(&self, addr: u64, len: u64, align: u64) -> Result<*mut u8, MemoryError> {
        self.check_range(addr, len)?;
        if !addr.is_multiple_of(align) {
            return Err(MemoryError::Misaligned(addr));
        }
        self.dirty.mark_sticky(addr, len);
        self.mem
            .get_host_address(GuestAddress(addr))
            .map_err(|_| MemoryError::OutOfRange {
                addr,
                len,
                size: self.size,
            })
    }

    /// A 64-bit word of guest RAM shared with the guest, for atomic read-modify-write.
    pub fn atomic_u64(&self, addr: u64) -> Result<&AtomicU64, MemoryError> {
        let p = self.host_ptr(addr, 8, 8)?;
        // SAFETY: `p` is 8-byte aligned and the 8 bytes lie inside the RAM mapping, which
        // lives as long as `self` (the returned reference borrows `self`). The guest
        // shares the word, so it is only ever accessed atomically through this reference.
        Ok(unsafe { &*(p as *const AtomicU64) })
    }

    /// A 32-bit word of guest RAM shared with the guest (ring indices).
    pub fn atomic_u32(&self, addr: u64) -> Result<&std::sync::atomic::AtomicU32, MemoryError> {
        let p = self.host_ptr(addr, 4, 4)?;
        // SAFETY: as for `atomic_u64`, with 4-byte alignment checked.
        Ok(unsafe { &*(p as *const std::sync::atomic::AtomicU32) })
    }

    /// A byte of guest RAM shared with the guest, for atomic access.
    pub fn atomic_u8(&self, addr: u64) -> Result<&AtomicU8, MemoryError> {
        let p = self.host_ptr(addr, 1, 1)?;
        // SAFETY: as for `atomic_u64`; bytes have no alignment requirement.
        Ok(unsafe { &*(p as *const AtomicU8) })
    }

    /// Drops the VMM's own mapping of frames `first..first+count` with
    /// `madvise(MADV_DONTNEED)`. The data stays (the RAM is a shared memfd mapping); the
    /// point is KVM's MMU notifier, which zaps every shadow entry of the guest that maps
    /// these frames, so the guest's next access walks its page tables again (how the
    /// direct-paging MMU makes an entry change that takes access away visible).
    pub fn discard_frames(&self, first: u64, count: u64) -> Result<(), MemoryError> {
        let page = rxen_abi::PAGE_SIZE;
        let addr = first
            .checked_mul(page)
            .ok_or(MemoryError::Misaligned(first))?;
        let len = count
            .checked_mul(page)
            .ok_or(MemoryError::Misaligned(first))?;
        if len == 0 {
            return Ok(());
        }
        let p = self.host_ptr(addr, len, page)?;
        // SAFETY: `[p, p+len)` is a page-aligned part of this RAM's mapping (checked by
        // `host_ptr`); MADV_DONTNEED on a shared file mapping only drops page-table
        // entries of this process and keeps the memfd's contents, so no memory that
        // Rust references observe changes.
        let rc = unsafe { libc::madvise(p.cast(), len as usize, libc::MADV_DONTNEED) };
        if rc != 0 {
            return Err(MemoryError::Map(format!(
                "madvise: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(())
    }

    /// Gives the host memory of frames `first..first+count` back: punches a hole in the
    /// memfd (the pages are freed and read as zeros again) and drops the VMM's mapping
    /// of them ([`GuestRam::discard_frames`]), whose MMU notifier makes KVM forget
    /// every guest mapping of these frames. For frames a guest gave up
    /// (`XENMEM_decrease_reservation`).
    pub fn release_frames(&self, first: u64, count: u64) -> Result<(), MemoryError> {
        let page = rxen_abi::PAGE_SIZE;
        let (Some(offset), Some(len)) = (first.checked_mul(page), count.checked_mul(page)) else {
            return Err(MemoryError::Misaligned(first));
        };
        if len == 0 {
            return Ok(());
        }
        self.host_ptr(offset, len, page)?;
        let (Ok(off), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(MemoryError::Misaligned(first));
        };
        // SAFETY: fallocate on the memfd this RAM owns, inside its size (checked by
        // `host_ptr`); punching a hole only changes the contents to zeros, which guest
        // memory may do at any time (Rust code reads it through raw copies and atomics).
        let rc = unsafe {
            libc::fallocate(
                self.memfd.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                l,
            )
        };
        if rc != 0 {
            return Err(MemoryError::Map(format!(
                "fallocate(PUNCH_HOLE): {}",
                std::io::Error::last_os_error()
            )));
        }
        self.discard_frames(first, count)
    }

    /// Maps `len` bytes of `file` at `offset` privately (copy-on-write) over guest RAM
    /// at `addr`, in place of the memfd there: the guest sees the file's content,
    /// read from the file when first touched, and its writes stay its own. For a
    /// restore from an image file before the RAM is registered with KVM; the memfd
    /// keeps zeros for these pages, so it no longer holds the whole RAM.
    pub fn map_file_private(
        &self,
        file: &File,
        offset: u64,
        addr: u64,
        len: u64,
    ) -> Result<(), MemoryError> {
        let page = rxen_abi::PAGE_SIZE;
        if len == 0 {
            return Ok(());
        }
        if !offset.is_multiple_of(page) || !len.is_multiple_of(page) {
            return Err(MemoryError::Misaligned(offset));
        }
        let p = self.host_ptr(addr, len, page)?;
        let off = libc::off_t::try_from(offset).map_err(|_| MemoryError::Misaligned(offset))?;
        // SAFETY: `[p, p+len)` is a page-aligned part of this RAM's own mapping
        // (checked by `host_ptr`), which MAP_FIXED replaces in place: the addresses
        // stay valid for the RAM's lifetime. It runs before the RAM is registered
        // with KVM or shared with any thread, so no reference into the range is
        // alive while its content changes.
        let rc = unsafe {
            libc::mmap(
                p.cast(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED,
                file.as_raw_fd(),
                off,
            )
        };
        if rc == libc::MAP_FAILED {
            return Err(MemoryError::Map(format!(
                "mapping the image: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(())
    }

    /// The raw fd of the memfd.
    pub fn memfd_raw(&self) -> i32 {
        self.memfd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram() -> GuestRam {
        GuestRam::new("test", 8 << 20).unwrap()
    }

    #[test]
    fn rejects_bad_sizes() {
        assert!(matches!(
            GuestRam::new("t", 1 << 20),
            Err(MemoryError::BadSize(_))
        ));
        assert!(matches!(
            GuestRam::new("t", (8 << 20) + 4096),
            Err(MemoryError::BadSize(_))
        ));
        assert!(matches!(
            GuestRam::new("t", 64 << 30),
            Err(MemoryError::BadSize(_))
        ));
    }

    #[test]
    fn bounds_and_overflow_checked() {
        let r = ram();
        let mut b = [0u8; 16];
        assert!(r.read((8 << 20) - 8, &mut b).is_err());
        assert!(r.read(u64::MAX - 4, &mut b).is_err());
        r.write(0x500000, b"hello").unwrap();
        r.read(0x500000, &mut b[..5]).unwrap();
        assert_eq!(&b[..5], b"hello");
        assert_eq!(r.read_obj::<u64>(0x500000).unwrap() & 0xff, b'h' as u64);
    }

    #[test]
    fn guest_view_rules() {
        let r = ram();
        assert!(
            r.check_guest_range(0, 8, Access::Read).is_err(),
            "null page"
        );
        assert!(r
            .check_guest_range(layout::START_INFO, 8, Access::Write)
            .is_ok());
        assert!(r
            .check_guest_range(layout::HYPERCALL_PAGE, 8, Access::Read)
            .is_ok());
        assert!(r
            .check_guest_range(layout::HYPERCALL_PAGE, 8, Access::Write)
            .is_err());
        assert!(r
            .check_guest_range(layout::PAGE_TABLES + 8, 8, Access::Write)
            .is_err());
        assert!(
            r.check_guest_range(0x9000, 8, Access::Read).is_err(),
            "hole"
        );
        assert!(
            r.check_guest_range(layout::TSS, 8, Access::Write).is_err(),
            "TSS read-only"
        );
        assert!(
            r.check_guest_range(layout::BOOT_STACK_BOTTOM - 4, 8, Access::Read)
                .is_err(),
            "guard"
        );
        assert!(r.check_guest_range(0x500000, 4096, Access::Write).is_ok());
        assert!(r.check_guest_range(0x500000, 0, Access::Write).is_ok());
        assert!(r
            .check_guest_range(0xffff_8000_0000_0000, 8, Access::Read)
            .is_err());
    }

    #[test]
    fn vmm_writes_are_tracked_while_tracking_is_on() {
        let r = ram();
        assert!(
            r.start_dirty_tracking().is_err(),
            "no KVM slot: no dirty log"
        );
        r.write(0x3000, b"before").unwrap();
        assert!(r.take_dirty(true).unwrap().iter().all(|&w| w == 0));
        // As start_dirty_tracking does, without a VM.
        r.dirty.set_tracking(true);
        r.write(0x5ff8, &[1u8; 16]).unwrap(); // pages 5 and 6
        r.write_obj(0x9000, &7u64).unwrap();
        r.atomic_u32(0x20004).unwrap();
        let pages: Vec<u64> = crate::dirty::pages(&r.take_dirty(false).unwrap()).collect();
        assert_eq!(pages, vec![5, 6, 9, 0x20]);
        // The atomic page again at the stop-and-copy, nothing else.
        let pages: Vec<u64> = crate::dirty::pages(&r.take_dirty(true).unwrap()).collect();
        assert_eq!(pages, vec![0x20]);
        r.stop_dirty_tracking();
        r.write(0x3000, b"after").unwrap();
        assert!(r.take_dirty(true).unwrap().iter().all(|&w| w == 0));
    }

    #[test]
    fn atomics_are_checked() {
        let r = ram();
        assert!(r.atomic_u64(3).is_err());
        assert!(r.atomic_u64((8 << 20) - 4).is_err());
        let a = r.atomic_u64(0x2000).unwrap();
        a.fetch_or(5, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(r.read_obj::<u64>(0x2000).unwrap(), 5);
    }
}
