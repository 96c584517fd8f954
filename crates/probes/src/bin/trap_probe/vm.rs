//! The probe's VM: the shared one-vCPU VM of `rxen_probes::vm` (memfd RAM, CPL-3 guest
//! on hand-built tables, TSS letting ports 0x10..0x13 exit) with a TSS `rsp0` and
//! `ist1`, plus a GDT (with Xen's flat selectors), an IDT whose gates the cases point at
//! exit stubs or at guest handlers, and stacks.

use std::ops::{Deref, DerefMut};

use kvm_bindings::kvm_dtable;
use kvm_ioctls::{VcpuExit, VcpuFd};
use rxen_probes::vm::map_page;
pub use rxen_probes::vm::{
    median, median_us, timed, Machine, Ram, Setup, CODE, MAILBOX, P, RW, US,
};

use crate::guest_code::GUEST_CODE;

pub const IDT: u64 = 0x31000;
/// Exit stubs, 16 bytes per vector: `out 0x11, al; iretq`.
pub const STUBS: u64 = 0x32000;
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

/// The probe's VM (derefs to the shared [`Machine`]).
pub struct Vm(pub Machine);

impl Deref for Vm {
    type Target = Machine;
    fn deref(&self) -> &Machine {
        &self.0
    }
}

impl DerefMut for Vm {
    fn deref_mut(&mut self) -> &mut Machine {
        &mut self.0
    }
}

/// Vectors for which the CPU pushes an error code.
pub fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

impl Vm {
    pub fn new() -> Result<Self, Box<dyn std::error::Error>> {
        let setup = Setup {
            memfd_name: c"trap-probe",
            guest_code: GUEST_CODE,
            allowed_ports: 0x10..0x14,
            rsp0: Some(KERNEL_STACK_TOP),
            ist1: Some(IST_TOP),
            user_cs: USER_CS,
            user_ss: USER_SS,
            gdt: Some(kvm_dtable {
                base: GDT,
                limit: GDT_LIMIT,
                ..Default::default()
            }),
            idt: Some(kvm_dtable {
                base: IDT,
                limit: 0xfff,
                ..Default::default()
            }),
            rsp: USER_STACK_TOP,
            rflags: 0x202,
        };
        let mut vm = Self(Machine::new(&setup, Self::layout)?);
        match vm.run()? {
            Exit::Done => Ok(vm),
            other => Err(format!("guest did not reach its loop: {other:?}").into()),
        }
    }

    /// This probe's tables, stubs and mappings on top of the shared layout.
    fn layout(ram: &Ram) {
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
        let map = |va: u64, flags: u64| map_page(ram, va, va, flags);
        for page in [IDT, STUBS, RO_PAGE] {
            map(page, P | US);
        }
        for page in (0x70000..0x80000).step_by(4096) {
            map(page, P | RW | US);
        }
        for page in (GDT..GDT + 0x10000).step_by(4096) {
            map(page, P | US);
        }
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
