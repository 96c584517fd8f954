//! The probe's VM: the shared one-vCPU VM of `rxen_probes::vm` (memfd RAM, CPL-3 guest
//! on hand-built tables, TSS letting ports 0x10..0x13 exit) running the command-loop
//! guest of `guest.s`, plus what only this probe maps: a second L4, the probed 4 KiB
//! and 2 MiB pages, two L1 tables to switch between, and writable page-table aliases.

use std::ops::{Deref, DerefMut};

use kvm_bindings::{kvm_sregs, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::{VcpuExit, VcpuFd};
use rxen_probes::vm::map_page;
pub use rxen_probes::vm::{
    median_us, ram_region, timed, Machine, Ram, Setup, MAILBOX, P, PD, PDPT, PML4, PT0, RW, US,
};
/// A second L4 (a copy of `PML4`) to switch CR3 to.
pub const ALT_PML4: u64 = 0x24000;
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

/// The probe's VM (derefs to the shared [`Machine`]).
pub struct Probe(Machine);

impl Deref for Probe {
    type Target = Machine;
    fn deref(&self) -> &Machine {
        &self.0
    }
}

impl DerefMut for Probe {
    fn deref_mut(&mut self) -> &mut Machine {
        &mut self.0
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
        let setup = Setup {
            memfd_name: c"mmu-probe",
            guest_code: GUEST_CODE,
            allowed_ports: 0x10..0x14,
            rsp0: None,
            ist1: None,
            user_cs: 0x33,
            user_ss: 0x2b,
            gdt: None,
            idt: None,
            rsp: 0,
            rflags: 2,
        };
        let mut probe = Self(Machine::new(&setup, |ram| Self::layout(ram, opts))?);
        // Run to the loop's first `out`.
        match probe.run_to_exit()? {
            Outcome::Done => Ok(probe),
            Outcome::Fault => Err("guest faulted at start".into()),
        }
    }

    /// This probe's mappings and data on top of the shared layout.
    fn layout(ram: &Ram, opts: Options) {
        let table = P | RW | US;
        ram.write(ALT_PML4, PDPT | table);
        ram.write(large_pde_addr(), LARGE_A | P | RW | US | PS);
        ram.write(nonleaf_pde_addr(), L1_A | table);
        ram.write(L1_A, FRAME_A | P | RW | US);
        ram.write(L1_B, FRAME_B | P | RW | US);
        let map = |va: u64, pa: u64, flags: u64| map_page(ram, va, pa, flags);
        map(ALT_PML4, ALT_PML4, P | US);
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
        let region = ram_region(&self.ram, flags);
        // SAFETY: same mapping as at creation; it outlives the VM.
        unsafe { self.vm.set_user_memory_region(region)? };
        Ok(())
    }

    /// Deletes slot 0 and adds it back.
    pub fn readd_slot(&self) -> Result<(), Box<dyn std::error::Error>> {
        let mut region = ram_region(&self.ram, 0);
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
