//! A one-vCPU KVM VM for the probe: RAM in a memfd mapped shared into this process,
//! hand-built 4-level page tables, a TSS whose I/O bitmap lets port 0x10 exit, and the
//! command-loop guest of `guest.s` running at CPL 3.

use std::time::{Duration, Instant};

use kvm_bindings::{kvm_segment, kvm_sregs, kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

pub const RAM_SIZE: u64 = 8 << 20;
pub const TSS: u64 = 0x10000;
pub const TSS_IOMAP: u64 = 0x68;
pub const PML4: u64 = 0x20000;
pub const PDPT: u64 = 0x21000;
pub const PD: u64 = 0x22000;
/// The L1 table mapping 0..2 MiB.
pub const PT0: u64 = 0x23000;
/// A second L4 (a copy of `PML4`) to switch CR3 to.
pub const ALT_PML4: u64 = 0x24000;
pub const CODE: u64 = 0x30000;
/// The command mailbox shared with the guest (see `guest.s`).
pub const MAILBOX: u64 = 0x40000;
/// Two 4 KiB frames the probed virtual address is switched between.
pub const FRAME_A: u64 = 0x50000;
pub const FRAME_B: u64 = 0x51000;
/// Virtual address whose L1 entry the cases rewrite.
pub const PROBE_VA: u64 = 0x100000;
/// Virtual address of a writable alias of `PT0` (only when asked for).
pub const PT0_ALIAS_VA: u64 = 0x60000;
/// Two 2 MiB frames and the virtual address whose L2 (large) entry the cases rewrite.
pub const LARGE_A: u64 = 0x200000;
pub const LARGE_B: u64 = 0x400000;
pub const LARGE_VA: u64 = 0x600000;
/// Virtual address under an L2 entry the cases switch between two L1 tables.
pub const NONLEAF_VA: u64 = 0x200000;
/// Two L1 tables: the first maps `NONLEAF_VA` to `FRAME_A`, the second to `FRAME_B`.
pub const L1_A: u64 = 0x25000;
pub const L1_B: u64 = 0x26000;
/// Virtual address of a writable alias of `PD` (only when asked for).
pub const PD_ALIAS_VA: u64 = 0x61000;
/// Offset inside the large page of a second probed word (another 4 KiB page).
pub const LARGE_SECOND: u64 = 0x1000;
/// A 4 KiB page of ordinary data the guest can write (the write-cost baseline).
pub const DATA_VA: u64 = 0x45000;

pub const MAGIC_A: u64 = 0xaaaa_0000_0000_0001;
pub const MAGIC_B: u64 = 0xbbbb_0000_0000_0002;
pub const MAGIC_LARGE_A: u64 = 0xaaaa_2222_0000_0003;
pub const MAGIC_LARGE_B: u64 = 0xbbbb_2222_0000_0004;

pub const P: u64 = 1;
pub const RW: u64 = 2;
pub const US: u64 = 4;
pub const PS: u64 = 1 << 7;

/// Commands of the guest loop (mailbox word 0).
pub mod cmd {
    pub const NOP: u64 = 0;
    pub const READ: u64 = 1;
    pub const WRITE: u64 = 2;
    pub const SPIN_READ: u64 = 3;
    pub const WRITE_LOOP: u64 = 4;
    pub const WRITE_THEN_READ: u64 = 5;
}

/// Mailbox word offsets.
pub mod mb {
    pub const CMD: u64 = 0x00;
    pub const ADDR: u64 = 0x08;
    pub const RESULT: u64 = 0x10;
    pub const VALUE: u64 = 0x18;
    pub const SPIN_COUNT: u64 = 0x20;
    pub const SPIN_STOP: u64 = 0x28;
    pub const LOOP_N: u64 = 0x30;
    pub const VALUE2: u64 = 0x38;
    pub const READ_ADDR: u64 = 0x40;
}

/// Machine code of `guest.s` (regenerate with
/// `as guest.s -o g.o && objcopy -O binary g.o g.bin && xxd -i g.bin`).
const GUEST_CODE: &[u8] = &[
    0xe6, 0x10, 0x48, 0x8b, 0x04, 0x25, 0x00, 0x00, 0x04, 0x00, 0x48, 0x8b, 0x1c, 0x25, 0x08, 0x00,
    0x04, 0x00, 0x48, 0x83, 0xf8, 0x01, 0x74, 0x1a, 0x48, 0x83, 0xf8, 0x02, 0x74, 0x21, 0x48, 0x83,
    0xf8, 0x03, 0x74, 0x28, 0x48, 0x83, 0xf8, 0x04, 0x74, 0x42, 0x48, 0x83, 0xf8, 0x05, 0x74, 0x64,
    0xeb, 0xce, 0x48, 0x8b, 0x0b, 0x48, 0x89, 0x0c, 0x25, 0x10, 0x00, 0x04, 0x00, 0xeb, 0xc1, 0x48,
    0x8b, 0x0c, 0x25, 0x18, 0x00, 0x04, 0x00, 0x48, 0x89, 0x0b, 0xeb, 0xb4, 0x48, 0x8b, 0x0b, 0x48,
    0x89, 0x0c, 0x25, 0x10, 0x00, 0x04, 0x00, 0x48, 0xff, 0x04, 0x25, 0x20, 0x00, 0x04, 0x00, 0x48,
    0x83, 0x3c, 0x25, 0x28, 0x00, 0x04, 0x00, 0x00, 0x74, 0xe2, 0xeb, 0x94, 0x48, 0x8b, 0x14, 0x25,
    0x30, 0x00, 0x04, 0x00, 0x48, 0x8b, 0x0c, 0x25, 0x18, 0x00, 0x04, 0x00, 0x48, 0x8b, 0x34, 0x25,
    0x38, 0x00, 0x04, 0x00, 0x48, 0x89, 0x0b, 0x48, 0x87, 0xf1, 0x48, 0xff, 0xca, 0x75, 0xf5, 0xe9,
    0x6c, 0xff, 0xff, 0xff, 0x48, 0x8b, 0x0c, 0x25, 0x18, 0x00, 0x04, 0x00, 0x48, 0x89, 0x0b, 0x48,
    0x8b, 0x3c, 0x25, 0x40, 0x00, 0x04, 0x00, 0x48, 0x8b, 0x0f, 0x48, 0x89, 0x0c, 0x25, 0x10, 0x00,
    0x04, 0x00, 0xe9, 0x49, 0xff, 0xff, 0xff,
];

/// Guest RAM: a memfd mapped shared into this process.
pub struct Ram {
    base: *mut u8,
    fd: i32,
}

// SAFETY: the mapping is process-wide and only accessed with volatile word accesses.
unsafe impl Send for Ram {}
// SAFETY: as above; concurrent access from the vCPU thread is the point of the probe.
unsafe impl Sync for Ram {}

impl Ram {
    fn new() -> std::io::Result<Self> {
        // SAFETY: valid NUL-terminated name; result checked.
        let fd = unsafe { libc::memfd_create(c"mmu-probe".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is ours.
        if unsafe { libc::ftruncate(fd, RAM_SIZE as i64) } != 0 {
            return Err(std::io::Error::last_os_error());
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
            return Err(std::io::Error::last_os_error());
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

    pub fn read(&self, addr: u64) -> u64 {
        // SAFETY: `word` returns an aligned pointer into the live mapping.
        unsafe { self.word(addr).read_volatile() }
    }

    pub fn write(&self, addr: u64, v: u64) {
        // SAFETY: as for `read`.
        unsafe { self.word(addr).write_volatile(v) }
    }

    fn write_bytes(&self, addr: u64, bytes: &[u8]) {
        assert!(addr + bytes.len() as u64 <= RAM_SIZE);
        // SAFETY: bounds checked above; the mapping is live.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.add(addr as usize), bytes.len())
        }
    }

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
        // (field order in `Probe`).
        unsafe {
            libc::munmap(self.base.cast(), RAM_SIZE as usize);
            libc::close(self.fd);
        }
    }
}

/// How one guest command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Back at the loop's `out` (the command completed).
    Done,
    /// Triple fault: the guest faulted (no IDT).
    Fault,
}

/// Options for building the VM.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// The probed page starts read-only.
    pub probe_read_only: bool,
    /// Map `PT0` writable at `PT0_ALIAS_VA`.
    pub writable_pt_alias: bool,
    /// Map `PD` writable at `PD_ALIAS_VA`.
    pub writable_pd_alias: bool,
}

pub struct Probe {
    pub vcpu: VcpuFd,
    pub vm: VmFd,
    _kvm: Kvm,
    pub ram: Ram,
}

fn seg(selector: u16, type_: u8, l: u8, db: u8) -> kvm_segment {
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

/// L1 entry of the probed page in `PT0`.
pub fn probe_pte_addr() -> u64 {
    PT0 + (PROBE_VA >> 12) * 8
}

/// L2 entry in `PD` of `NONLEAF_VA`.
pub fn nonleaf_pde_addr() -> u64 {
    PD + (NONLEAF_VA >> 21) * 8
}

/// L2 entry of the large probed page in `PD`.
pub fn large_pde_addr() -> u64 {
    PD + (LARGE_VA >> 21) * 8
}

impl Probe {
    pub fn new(opts: Options) -> Result<Self, Box<dyn std::error::Error>> {
        let ram = Ram::new()?;
        let kvm = Kvm::new()?;
        let vm = kvm.create_vm()?;
        Self::layout(&ram, opts);
        let region = Self::region(&ram, 0);
        // SAFETY: the region is `ram`'s mapping, which outlives the VM (field order).
        unsafe { vm.set_user_memory_region(region)? };
        let vcpu = vm.create_vcpu(0)?;
        let mut sregs = vcpu.get_sregs()?;
        sregs.cs = seg(0x33, 11, 1, 0);
        sregs.ss = seg(0x2b, 3, 0, 1);
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
        sregs.cr0 = 1 | 2 | (1 << 4) | (1 << 5) | (1 << 16) | (1 << 31);
        sregs.cr3 = PML4;
        sregs.cr4 = (1 << 5) | (1 << 9) | (1 << 10);
        sregs.efer = 1 | (1 << 8) | (1 << 10) | (1 << 11);
        vcpu.set_sregs(&sregs)?;
        let regs = kvm_bindings::kvm_regs {
            rip: CODE,
            rflags: 2,
            ..Default::default()
        };
        vcpu.set_regs(&regs)?;
        let mut probe = Self {
            vcpu,
            vm,
            _kvm: kvm,
            ram,
        };
        // Run to the loop's first `out`.
        match probe.run_to_exit()? {
            Outcome::Done => Ok(probe),
            Outcome::Fault => Err("guest faulted at start".into()),
        }
    }

    pub fn region(ram: &Ram, flags: u32) -> kvm_userspace_memory_region {
        kvm_userspace_memory_region {
            slot: 0,
            flags,
            guest_phys_addr: 0,
            memory_size: RAM_SIZE,
            userspace_addr: ram.host_addr(0),
        }
    }

    fn layout(ram: &Ram, opts: Options) {
        // TSS with an I/O bitmap allowing ports 0x10..0x13 only.
        ram.write_bytes(TSS + 0x66, &(TSS_IOMAP as u16).to_le_bytes());
        let mut bitmap = vec![0xffu8; 8193];
        bitmap[2] = 0xf0;
        ram.write_bytes(TSS + TSS_IOMAP, &bitmap);
        let table = P | RW | US;
        ram.write(PML4, PDPT | table);
        ram.write(ALT_PML4, PDPT | table);
        ram.write(PDPT, PD | table);
        ram.write(PD, PT0 | table);
        ram.write(large_pde_addr(), LARGE_A | P | RW | US | PS);
        ram.write(nonleaf_pde_addr(), L1_A | table);
        ram.write(L1_A, FRAME_A | P | RW | US);
        ram.write(L1_B, FRAME_B | P | RW | US);
        let map = |va: u64, pa: u64, flags: u64| ram.write(PT0 + (va >> 12) * 8, pa | flags);
        for page in (TSS..TSS + 0x3000).step_by(4096) {
            map(page, page, P | US);
        }
        for page in [PML4, PDPT, PD, PT0, ALT_PML4] {
            map(page, page, P | US);
        }
        map(CODE, CODE, P | US);
        map(MAILBOX, MAILBOX, P | RW | US);
        map(DATA_VA, DATA_VA, P | RW | US);
        let probe_flags = if opts.probe_read_only {
            P | US
        } else {
            P | RW | US
        };
        map(PROBE_VA, FRAME_A, probe_flags);
        if opts.writable_pt_alias {
            map(PT0_ALIAS_VA, PT0, P | RW | US);
        }
        if opts.writable_pd_alias {
            map(PD_ALIAS_VA, PD, P | RW | US);
        }
        ram.write_bytes(CODE, GUEST_CODE);
        ram.write(FRAME_A, MAGIC_A);
        ram.write(FRAME_B, MAGIC_B);
        ram.write(LARGE_A, MAGIC_LARGE_A);
        ram.write(LARGE_B, MAGIC_LARGE_B);
        ram.write(LARGE_A + LARGE_SECOND, MAGIC_LARGE_A + 0x10);
        ram.write(LARGE_B + LARGE_SECOND, MAGIC_LARGE_B + 0x10);
    }

    /// Runs the vCPU until it is back at the loop's `out` or has faulted.
    pub fn run_to_exit(&mut self) -> Result<Outcome, Box<dyn std::error::Error>> {
        Ok(run_vcpu(&mut self.vcpu)?)
    }

    /// Runs one command of the guest loop.
    pub fn command(&mut self, c: u64, addr: u64) -> Result<Outcome, Box<dyn std::error::Error>> {
        self.ram.write(MAILBOX + mb::CMD, c);
        self.ram.write(MAILBOX + mb::ADDR, addr);
        self.run_to_exit()
    }

    /// The guest reads `addr`; returns what it saw.
    pub fn guest_read(&mut self, addr: u64) -> Result<u64, Box<dyn std::error::Error>> {
        match self.command(cmd::READ, addr)? {
            Outcome::Done => Ok(self.ram.read(MAILBOX + mb::RESULT)),
            Outcome::Fault => Err("guest read faulted".into()),
        }
    }

    /// The guest writes `value` to `addr`.
    pub fn guest_write(
        &mut self,
        addr: u64,
        value: u64,
    ) -> Result<Outcome, Box<dyn std::error::Error>> {
        self.ram.write(MAILBOX + mb::VALUE, value);
        self.command(cmd::WRITE, addr)
    }

    /// Reloads CR3 with `cr3` through `KVM_SET_SREGS`.
    pub fn set_cr3(&self, cr3: u64) -> Result<(), Box<dyn std::error::Error>> {
        let mut sregs: kvm_sregs = self.vcpu.get_sregs()?;
        sregs.cr3 = cr3;
        self.vcpu.set_sregs(&sregs)?;
        Ok(())
    }

    /// Re-registers slot 0 with `flags`.
    pub fn set_slot_flags(&self, flags: u32) -> Result<(), Box<dyn std::error::Error>> {
        let region = Self::region(&self.ram, flags);
        // SAFETY: same mapping as at creation; it outlives the VM.
        unsafe { self.vm.set_user_memory_region(region)? };
        Ok(())
    }

    /// Deletes slot 0 and adds it back.
    pub fn readd_slot(&self) -> Result<(), Box<dyn std::error::Error>> {
        let mut region = Self::region(&self.ram, 0);
        region.memory_size = 0;
        // SAFETY: deleting the slot; no mapping is handed to KVM.
        unsafe { self.vm.set_user_memory_region(region)? };
        self.set_slot_flags(0)
    }

    /// Toggles dirty logging on and off.
    pub fn toggle_dirty_log(&self) -> Result<(), Box<dyn std::error::Error>> {
        self.set_slot_flags(KVM_MEM_LOG_DIRTY_PAGES)?;
        self.set_slot_flags(0)
    }

    /// `KVM_SET_NR_MMU_PAGES` (shrinking it zaps shadow pages).
    pub fn set_nr_mmu_pages(&self, n: u64) -> Result<(), Box<dyn std::error::Error>> {
        use std::os::fd::AsRawFd;
        const KVM_SET_NR_MMU_PAGES: u64 = 0xAE44; // _IO(KVMIO, 0x44)
                                                  // SAFETY: a value-argument ioctl on our own VM fd.
        let r = unsafe { libc::ioctl(self.vm.as_raw_fd(), KVM_SET_NR_MMU_PAGES as _, n) };
        if r != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }
}

/// Runs `vcpu` until it is back at the guest loop's `out` or has faulted.
pub fn run_vcpu(vcpu: &mut VcpuFd) -> Result<Outcome, String> {
    loop {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(0x10, _)) => return Ok(Outcome::Done),
            Ok(VcpuExit::Shutdown) => return Ok(Outcome::Fault),
            Ok(VcpuExit::Intr) => continue,
            Ok(other) => return Err(format!("unexpected exit {other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Median of `samples`, in µs.
pub fn median_us(samples: &mut [Duration]) -> f64 {
    samples.sort();
    samples
        .get(samples.len() / 2)
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1e6)
}

/// Times `f` once.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}
