//! The VM both probes run their guest in: RAM in a memfd mapped shared into this
//! process (slot 0 at guest-physical 0), 64-bit long mode with the guest at CPL 3 on
//! hand-built 4-level tables (identity map of the low 2 MiB through `PT0`), and a TSS
//! whose I/O bitmap lets only the probe's ports exit. What differs between the probes
//! (ports, guest code, extra mappings, descriptor tables, initial registers) comes in a
//! [`Setup`] and a layout callback; the run loop and the mailbox stay in each probe.

use std::ffi::CStr;
use std::ops::Range;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_dtable, kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

/// Guest RAM size (one slot).
pub const RAM_SIZE: u64 = 8 << 20;
/// The TSS and the offset of its I/O bitmap.
pub const TSS: u64 = 0x10000;
pub const TSS_IOMAP: u64 = 0x68;
/// Bytes of the TSS I/O bitmap (65536 ports, plus the trailing all-ones byte).
const IOMAP_LEN: usize = 8193;
/// Page tables: one chain mapping the low 2 MiB through `PT0`.
pub const PML4: u64 = 0x20000;
pub const PDPT: u64 = 0x21000;
pub const PD: u64 = 0x22000;
/// The L1 table mapping 0..2 MiB.
pub const PT0: u64 = 0x23000;
/// Where the guest code is loaded and starts.
pub const CODE: u64 = 0x30000;
/// The command mailbox shared with the guest (layout per probe).
pub const MAILBOX: u64 = 0x40000;

/// Page-table entry bits.
pub const P: u64 = 1;
pub const RW: u64 = 2;
pub const US: u64 = 4;

/// What differs between the probes' VMs.
#[derive(Debug, Clone)]
pub struct Setup<'a> {
    /// Name of the memfd (shows in `/proc/<pid>/maps`).
    pub memfd_name: &'a CStr,
    /// Machine code loaded at `CODE`.
    pub guest_code: &'a [u8],
    /// Ports the TSS I/O bitmap lets the CPL-3 guest use (each exits to the VMM).
    pub allowed_ports: Range<u16>,
    /// `TSS.rsp0` and `TSS.ist1`, if the probe takes gates to CPL 0 or IST stacks.
    pub rsp0: Option<u64>,
    pub ist1: Option<u64>,
    /// The guest's flat 64-bit code and data selectors (DPL 3).
    pub user_cs: u16,
    pub user_ss: u16,
    /// GDT and IDT, if the probe builds them (in its layout callback).
    pub gdt: Option<kvm_dtable>,
    pub idt: Option<kvm_dtable>,
    /// Initial `rsp` and `rflags`.
    pub rsp: u64,
    pub rflags: u64,
}

/// Guest RAM: a memfd mapped shared into this process.
pub struct Ram {
    base: *mut u8,
    fd: i32,
}

// SAFETY: the mapping is process-wide and only accessed with volatile word accesses.
unsafe impl Send for Ram {}
// SAFETY: as above; concurrent access from the vCPU thread is the point of the probes.
unsafe impl Sync for Ram {}

impl Ram {
    fn new(name: &CStr) -> std::io::Result<Self> {
        // SAFETY: valid NUL-terminated name; result checked.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is ours.
        if unsafe { libc::ftruncate(fd, RAM_SIZE as i64) } != 0 {
            let e = std::io::Error::last_os_error();
            // SAFETY: closing our own fd once.
            unsafe { libc::close(fd) };
            return Err(e);
        }
        // SAFETY: a fresh shared mapping of the whole memfd; result checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                RAM_SIZE as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            let e = std::io::Error::last_os_error();
            // SAFETY: closing our own fd once.
            unsafe { libc::close(fd) };
            return Err(e);
        }
        Ok(Self {
            base: base.cast(),
            fd,
        })
    }

    fn word(&self, addr: u64) -> *mut u64 {
        assert!(
            addr.is_multiple_of(8) && addr + 8 <= RAM_SIZE,
            "bad probe address {addr:#x}"
        );
        // SAFETY: checked to lie inside the mapping, 8-byte aligned.
        unsafe { self.base.add(addr as usize).cast() }
    }

    /// Reads the guest-physical word at `addr` (8-byte aligned).
    pub fn read(&self, addr: u64) -> u64 {
        // SAFETY: `word` returns an aligned pointer into the live mapping.
        unsafe { self.word(addr).read_volatile() }
    }

    /// Writes the guest-physical word at `addr` (8-byte aligned).
    pub fn write(&self, addr: u64, v: u64) {
        // SAFETY: as for `read`.
        unsafe { self.word(addr).write_volatile(v) }
    }

    /// Copies `bytes` to guest-physical `addr`.
    pub fn write_bytes(&self, addr: u64, bytes: &[u8]) {
        assert!(addr + bytes.len() as u64 <= RAM_SIZE);
        // SAFETY: bounds checked above; the mapping is live.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.add(addr as usize), bytes.len())
        }
    }

    /// This process's address of guest-physical `addr`.
    pub fn host_addr(&self, addr: u64) -> u64 {
        self.base as u64 + addr
    }

    /// Drops this process's mapping of one page (`MADV_DONTNEED`); the memfd keeps the
    /// data. Fires KVM's MMU notifier for the page.
    pub fn madvise_dontneed(&self, addr: u64, len: u64) -> std::io::Result<()> {
        assert!(addr + len <= RAM_SIZE);
        // SAFETY: a page-aligned range inside our shared mapping; the data stays in the
        // memfd (a shared mapping only loses its page-table entries).
        let r = unsafe {
            libc::madvise(
                self.base.add(addr as usize).cast(),
                len as usize,
                libc::MADV_DONTNEED,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Makes one range read-only and writable again (`mprotect`): also fires KVM's MMU
    /// notifier, without dropping the mapping.
    pub fn mprotect_toggle(&self, addr: u64, len: u64) -> std::io::Result<()> {
        assert!(addr + len <= RAM_SIZE);
        for prot in [libc::PROT_READ, libc::PROT_READ | libc::PROT_WRITE] {
            // SAFETY: a page-aligned range inside our mapping; nothing else in this
            // process writes guest RAM while the probe does this.
            let r =
                unsafe { libc::mprotect(self.base.add(addr as usize).cast(), len as usize, prot) };
            if r != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

impl Drop for Ram {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping once; the VM using it is dropped first
        // (field order in `Machine`).
        unsafe {
            libc::munmap(self.base.cast(), RAM_SIZE as usize);
            libc::close(self.fd);
        }
    }
}

/// Slot 0 covering all of `ram`, with `flags`.
pub fn ram_region(ram: &Ram, flags: u32) -> kvm_userspace_memory_region {
    kvm_userspace_memory_region {
        slot: 0,
        flags,
        guest_phys_addr: 0,
        memory_size: RAM_SIZE,
        userspace_addr: ram.host_addr(0),
    }
}

/// Maps the 4 KiB page at `va` (below 2 MiB) to `pa` with `flags` in `PT0`.
pub fn map_page(ram: &Ram, va: u64, pa: u64, flags: u64) {
    assert!(va < 2 << 20, "{va:#x} is not under PT0");
    ram.write(PT0 + (va >> 12) * 8, pa | flags);
}

/// The TSS I/O bitmap with only `ports` allowed.
fn io_bitmap(ports: Range<u16>) -> Vec<u8> {
    let mut bitmap = vec![0xffu8; IOMAP_LEN];
    for port in ports {
        bitmap[usize::from(port / 8)] &= !(1 << (port % 8));
    }
    bitmap
}

/// A flat DPL-3 segment.
fn user_seg(selector: u16, type_: u8, l: u8, db: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 3,
        db,
        s: 1,
        l,
        g: 1,
        ..Default::default()
    }
}

/// A one-vCPU VM with the guest loaded, not yet run.
pub struct Machine {
    pub vcpu: VcpuFd,
    pub vm: VmFd,
    _kvm: Kvm,
    /// Dropped after the VM (field order): KVM may use the mapping until then.
    pub ram: Ram,
}

impl Machine {
    /// Builds the VM of `setup`; `layout` then writes the probe's own tables and data
    /// into RAM (extra mappings with [`map_page`], GDT, IDT, ...) before the vCPU exists.
    pub fn new(
        setup: &Setup<'_>,
        layout: impl FnOnce(&Ram),
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let ram = Ram::new(setup.memfd_name)?;
        let kvm = Kvm::new()?;
        let vm = kvm.create_vm()?;
        common_layout(&ram, setup);
        layout(&ram);
        // SAFETY: the region is `ram`'s mapping, which outlives the VM (field order).
        unsafe { vm.set_user_memory_region(ram_region(&ram, 0))? };
        let vcpu = vm.create_vcpu(0)?;
        let mut sregs = vcpu.get_sregs()?;
        sregs.cs = user_seg(setup.user_cs, 11, 1, 0);
        sregs.ss = user_seg(setup.user_ss, 3, 0, 1);
        sregs.ds = sregs.ss;
        sregs.es = sregs.ss;
        sregs.fs = sregs.ss;
        sregs.gs = sregs.ss;
        sregs.tr = kvm_segment {
            base: TSS,
            limit: (TSS_IOMAP + 8192) as u32,
            selector: 0x40,
            type_: 11,
            present: 1,
            ..Default::default()
        };
        if let Some(gdt) = setup.gdt {
            sregs.gdt = gdt;
        }
        if let Some(idt) = setup.idt {
            sregs.idt = idt;
        }
        // CR0: PE MP ET NE WP PG; CR4: PAE OSFXSR OSXMMEXCPT; EFER: SCE LME LMA NXE.
        sregs.cr0 = 1 | 2 | (1 << 4) | (1 << 5) | (1 << 16) | (1 << 31);
        sregs.cr3 = PML4;
        sregs.cr4 = (1 << 5) | (1 << 9) | (1 << 10);
        sregs.efer = 1 | (1 << 8) | (1 << 10) | (1 << 11);
        vcpu.set_sregs(&sregs)?;
        let regs = kvm_bindings::kvm_regs {
            rip: CODE,
            rsp: setup.rsp,
            rflags: setup.rflags,
            ..Default::default()
        };
        vcpu.set_regs(&regs)?;
        Ok(Self {
            vcpu,
            vm,
            _kvm: kvm,
            ram,
        })
    }
}

/// The TSS, the table chain down to `PT0`, the mappings every probe needs (TSS, tables,
/// code read-only; mailbox writable) and the guest code.
fn common_layout(ram: &Ram, setup: &Setup<'_>) {
    if let Some(rsp0) = setup.rsp0 {
        ram.write_bytes(TSS + 4, &rsp0.to_le_bytes());
    }
    if let Some(ist1) = setup.ist1 {
        ram.write_bytes(TSS + 0x24, &ist1.to_le_bytes());
    }
    ram.write_bytes(TSS + 0x66, &(TSS_IOMAP as u16).to_le_bytes());
    ram.write_bytes(TSS + TSS_IOMAP, &io_bitmap(setup.allowed_ports.clone()));
    let table = P | RW | US;
    ram.write(PML4, PDPT | table);
    ram.write(PDPT, PD | table);
    ram.write(PD, PT0 | table);
    for page in (TSS..TSS + 0x3000).step_by(4096) {
        map_page(ram, page, page, P | US);
    }
    for page in [PML4, PDPT, PD, PT0, CODE] {
        map_page(ram, page, page, P | US);
    }
    map_page(ram, MAILBOX, MAILBOX, P | RW | US);
    ram.write_bytes(CODE, setup.guest_code);
}

/// Median of `samples`, in µs.
pub fn median_us(samples: &mut [Duration]) -> f64 {
    samples.sort();
    samples
        .get(samples.len() / 2)
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1e6)
}

/// Median of `samples` (already in µs).
pub fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Times `f` once.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_bitmap_allows_exactly_the_given_ports() {
        let bitmap = io_bitmap(0x10..0x14);
        assert_eq!(bitmap.len(), IOMAP_LEN);
        assert_eq!(bitmap[2], 0xf0);
        assert!(bitmap.iter().enumerate().all(|(i, b)| i == 2 || *b == 0xff));
    }
}
