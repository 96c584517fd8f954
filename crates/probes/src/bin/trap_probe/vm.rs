//! A one-vCPU KVM VM for the trap probe, set up as `mmu_probe`'s is (RAM in a memfd,
//! hand-built 4-level tables, a TSS whose I/O bitmap lets ports 0x10..0x13 exit, the
//! guest at CPL 3), plus a GDT (with Xen's flat selectors), an IDT whose gates the cases
//! point at exit stubs or at guest handlers, and stacks.

use std::time::{Duration, Instant};

use kvm_bindings::{kvm_dtable, kvm_segment};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

use crate::guest_code::GUEST_CODE;

pub const RAM_SIZE: u64 = 8 << 20;
pub const TSS: u64 = 0x10000;
pub const TSS_IOMAP: u64 = 0x68;
pub const PML4: u64 = 0x20000;
pub const PDPT: u64 = 0x21000;
pub const PD: u64 = 0x22000;
pub const PT0: u64 = 0x23000;
pub const CODE: u64 = 0x30000;
pub const IDT: u64 = 0x31000;
/// Exit stubs, 16 bytes per vector: `out 0x11, al; iretq`.
pub const STUBS: u64 = 0x32000;
pub const MAILBOX: u64 = 0x40000;
/// A read-only data page and an unmapped one.
pub const RO_PAGE: u64 = 0x45000;
pub const UNMAPPED: u64 = 0x46000;
pub const USER_STACK_TOP: u64 = 0x78000;
/// `TSS.rsp0`: the stack a gate to CPL 0 switches to.
pub const KERNEL_STACK_TOP: u64 = 0x7c000;
/// `TSS.ist1`.
pub const IST_TOP: u64 = 0x7f000;
pub const GDT: u64 = 0x80000;
pub const GDT_LIMIT: u16 = 0xffff;

/// Xen's flat 64-bit PV selectors (`FLAT_RING3_CS64`, `FLAT_RING3_DS64`): the guest runs
/// with these.
pub const USER_CS: u16 = 0xe033;
pub const USER_SS: u16 = 0xe02b;
/// A DPL-0 code segment for gates that ask for a privilege change.
pub const KERNEL_CS: u16 = 0x08;

/// Guest code entry points (offsets fixed by `.org` in `guest.s`).
pub const FAST_IRET: u64 = CODE + 0x200;
pub const FAST_UD: u64 = CODE + 0x210;
pub const FAST_PF: u64 = CODE + 0x220;
pub const H_NOERR: u64 = CODE + 0x300;
pub const H_ERR: u64 = CODE + 0x310;
pub const CB_EVENT: u64 = CODE + 0x400;

/// Ports.
pub const PORT_DONE: u16 = 0x10;
pub const PORT_STUB: u16 = 0x11;
pub const PORT_IRET: u16 = 0x12;

pub const P: u64 = 1;
pub const RW: u64 = 2;
pub const US: u64 = 4;

/// Commands of the guest loop (mailbox word 0).
pub mod cmd {
    pub const NOP: u64 = 0;
    pub const READ: u64 = 1;
    pub const WRITE: u64 = 2;
    pub const UD: u64 = 3;
    pub const INT3: u64 = 4;
    pub const DIV0: u64 = 5;
    pub const SPIN: u64 = 6;
    pub const FLAGS: u64 = 7;
    pub const CLI: u64 = 8;
    pub const STI: u64 = 9;
    pub const SEGS: u64 = 10;
    pub const LOOP_INT3: u64 = 11;
    pub const LOOP_UD: u64 = 12;
    pub const LOOP_PF: u64 = 13;
}

/// Mailbox word offsets.
pub mod mb {
    pub const CMD: u64 = 0x00;
    pub const ARG: u64 = 0x08;
    pub const RESULT: u64 = 0x10;
    pub const VALUE: u64 = 0x18;
    pub const SPIN_COUNT: u64 = 0x28;
    pub const SPIN_STOP: u64 = 0x38;
    pub const CALLBACK_COUNT: u64 = 0x60;
    /// The handler's copy of the first 8 words of its bounce frame.
    pub const FRAME_COPY: u64 = 0x100;
}

/// Guest RAM: a memfd mapped shared into this process.
pub struct Ram {
    base: *mut u8,
    fd: i32,
}

// SAFETY: the mapping is process-wide and only accessed with volatile word accesses.
unsafe impl Send for Ram {}
// SAFETY: as above; the event case reads it while the vCPU thread runs.
unsafe impl Sync for Ram {}

impl Ram {
    fn new() -> std::io::Result<Self> {
        // SAFETY: valid NUL-terminated name; result checked.
        let fd = unsafe { libc::memfd_create(c"trap-probe".as_ptr(), libc::MFD_CLOEXEC) };
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

    fn host_addr(&self) -> u64 {
        self.base as u64
    }
}

impl Drop for Ram {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping once; the VM using it is dropped first
        // (field order in `Vm`).
        unsafe {
            libc::munmap(self.base.cast(), RAM_SIZE as usize);
            libc::close(self.fd);
        }
    }
}

/// How a run of the vCPU ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Back at the loop's `out 0x10` (the command completed).
    Done,
    /// An exit stub ran for this vector.
    Stub(u8),
    /// The guest's iret hypercall (`out 0x12`).
    Iret,
    /// Triple fault.
    Shutdown,
    /// `KVM_EXIT_DEBUG` (guest debugging).
    Debug,
    /// `KVM_RUN` returned `EINTR` (a kick).
    Interrupted,
}

/// How an IDT gate is set.
#[derive(Debug, Clone, Copy)]
pub struct Gate {
    pub target: u64,
    pub selector: u16,
    pub dpl: u8,
    pub ist: u8,
}

pub struct Vm {
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

/// Vectors for which the CPU pushes an error code.
pub fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

impl Vm {
    pub fn new() -> Result<Self, Box<dyn std::error::Error>> {
        let ram = Ram::new()?;
        let kvm = Kvm::new()?;
        let vm = kvm.create_vm()?;
        Self::layout(&ram);
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: RAM_SIZE,
            userspace_addr: ram.host_addr(),
        };
        // SAFETY: the region is `ram`'s mapping, which outlives the VM (field order).
        unsafe { vm.set_user_memory_region(region)? };
        let vcpu = vm.create_vcpu(0)?;
        let mut sregs = vcpu.get_sregs()?;
        sregs.cs = seg(USER_CS, 11, 1, 0);
        sregs.ss = seg(USER_SS, 3, 0, 1);
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
        sregs.gdt = kvm_dtable {
            base: GDT,
            limit: GDT_LIMIT,
            ..Default::default()
        };
        sregs.idt = kvm_dtable {
            base: IDT,
            limit: 0xfff,
            ..Default::default()
        };
        sregs.cr0 = 1 | 2 | (1 << 4) | (1 << 5) | (1 << 16) | (1 << 31);
        sregs.cr3 = PML4;
        sregs.cr4 = (1 << 5) | (1 << 9) | (1 << 10);
        sregs.efer = 1 | (1 << 8) | (1 << 10) | (1 << 11);
        vcpu.set_sregs(&sregs)?;
        let regs = kvm_bindings::kvm_regs {
            rip: CODE,
            rsp: USER_STACK_TOP,
            rflags: 0x202,
            ..Default::default()
        };
        vcpu.set_regs(&regs)?;
        let mut vm = Self {
            vcpu,
            vm,
            _kvm: kvm,
            ram,
        };
        match vm.run()? {
            Exit::Done => Ok(vm),
            other => Err(format!("guest did not reach its loop: {other:?}").into()),
        }
    }

    fn layout(ram: &Ram) {
        // TSS: rsp0, ist1, and an I/O bitmap allowing ports 0x10..0x13 only.
        ram.write_bytes(TSS + 4, &KERNEL_STACK_TOP.to_le_bytes());
        ram.write_bytes(TSS + 0x24, &IST_TOP.to_le_bytes());
        ram.write_bytes(TSS + 0x66, &(TSS_IOMAP as u16).to_le_bytes());
        let mut bitmap = vec![0xffu8; 8193];
        bitmap[2] = 0xf0;
        ram.write_bytes(TSS + TSS_IOMAP, &bitmap);
        // GDT: kernel CS/DS (DPL 0) and user CS64/DS (DPL 3) at the low selectors and at
        // Xen's flat selectors.
        let kernel_cs = 0x00af_9a00_0000_ffff;
        let kernel_ds = 0x00cf_9200_0000_ffff;
        let user_cs = 0x00af_fa00_0000_ffff;
        let user_ds = 0x00cf_f200_0000_ffff;
        ram.write(GDT + 0x08, kernel_cs);
        ram.write(GDT + 0x10, kernel_ds);
        ram.write(GDT + 0x28, user_ds);
        ram.write(GDT + 0x30, user_cs);
        ram.write(GDT + u64::from(USER_SS & !7), user_ds);
        ram.write(GDT + u64::from(USER_CS & !7), user_cs);
        // Stubs: `out 0x11, al; iretq` (0x48 0xcf) then `ud2`.
        for v in 0..256u64 {
            ram.write_bytes(STUBS + v * 16, &[0xe6, 0x11, 0x48, 0xcf, 0x0f, 0x0b]);
        }
        let table = P | RW | US;
        ram.write(PML4, PDPT | table);
        ram.write(PDPT, PD | table);
        ram.write(PD, PT0 | table);
        let map = |va: u64, flags: u64| ram.write(PT0 + (va >> 12) * 8, va | flags);
        for page in (TSS..TSS + 0x3000).step_by(4096) {
            map(page, P | US);
        }
        for page in [PML4, PDPT, PD, PT0, CODE, IDT, STUBS, RO_PAGE] {
            map(page, P | US);
        }
        map(MAILBOX, P | RW | US);
        for page in (0x70000..0x80000).step_by(4096) {
            map(page, P | RW | US);
        }
        for page in (GDT..GDT + 0x10000).step_by(4096) {
            map(page, P | US);
        }
        ram.write_bytes(CODE, GUEST_CODE);
    }

    /// Sets IDT gate `vector` (a 64-bit interrupt gate).
    pub fn set_gate(&self, vector: u8, g: Gate) {
        let addr = IDT + u64::from(vector) * 16;
        let lo = (g.target & 0xffff)
            | (u64::from(g.selector) << 16)
            | (u64::from(g.ist & 7) << 32)
            | ((0x8e | (u64::from(g.dpl & 3) << 5)) << 40)
            | ((g.target >> 16 & 0xffff) << 48);
        self.ram.write(addr, lo);
        self.ram.write(addr + 8, g.target >> 32);
    }

    /// Points every gate at its exit stub.
    pub fn gates_to_stubs(&self, selector: u16, dpl: u8, ist: u8) {
        for v in 0..=255u8 {
            self.set_gate(
                v,
                Gate {
                    target: STUBS + u64::from(v) * 16,
                    selector,
                    dpl,
                    ist,
                },
            );
        }
    }

    /// Runs the vCPU until an exit the probe knows.
    pub fn run(&mut self) -> Result<Exit, Box<dyn std::error::Error>> {
        Ok(run_vcpu(&mut self.vcpu)?)
    }

    /// Starts guest command `c` with argument `arg` and runs to the next exit.
    pub fn command(&mut self, c: u64, arg: u64) -> Result<Exit, Box<dyn std::error::Error>> {
        self.ram.write(MAILBOX + mb::CMD, c);
        self.ram.write(MAILBOX + mb::ARG, arg);
        self.run()
    }

    /// Reads `n` words of guest memory at `addr` (identity-mapped).
    pub fn words(&self, addr: u64, n: usize) -> Vec<u64> {
        (0..n as u64).map(|i| self.ram.read(addr + i * 8)).collect()
    }
}

/// Runs `vcpu` until an exit the probe knows; `EINTR` is reported, not retried.
pub fn run_vcpu(vcpu: &mut VcpuFd) -> Result<Exit, String> {
    loop {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(PORT_DONE, _)) => return Ok(Exit::Done),
            Ok(VcpuExit::IoOut(PORT_IRET, _)) => return Ok(Exit::Iret),
            Ok(VcpuExit::IoOut(PORT_STUB, _)) => {
                // The stub's address tells the vector (sync regs when the caller enabled them).
                let rip = if vcpu.get_kvm_run().kvm_valid_regs
                    & u64::from(kvm_bindings::KVM_SYNC_X86_REGS)
                    != 0
                {
                    vcpu.sync_regs().regs.rip
                } else {
                    vcpu.get_regs().map_err(|e| e.to_string())?.rip
                };
                let off = rip.wrapping_sub(STUBS + 2);
                if off % 16 != 0 || off >= 256 * 16 {
                    return Err(format!("stub port from rip {rip:#x}"));
                }
                return Ok(Exit::Stub((off / 16) as u8));
            }
            Ok(VcpuExit::Shutdown) => return Ok(Exit::Shutdown),
            Ok(VcpuExit::Debug(_)) => return Ok(Exit::Debug),
            Ok(VcpuExit::Intr) => return Ok(Exit::Interrupted),
            Ok(other) => return Err(format!("unexpected exit {other:?}")),
            Err(e) if e.errno() == libc::EINTR => {
                vcpu.set_kvm_immediate_exit(0);
                return Ok(Exit::Interrupted);
            }
            Err(e) if e.errno() == libc::EAGAIN => continue,
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
