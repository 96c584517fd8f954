//! Privileged instructions a PV kernel executes natively and Xen emulates for it
//! (`emulate_privileged_op`, xen/arch/x86/pv/emul-priv-op.c): they raise #GP at CPL 3,
//! rxen decodes the bytes at the faulting `rip` and, for the ones below, applies them
//! and moves `rip` past; everything else goes to the guest's #GP handler as before.
//!
//! * `mov %crN, reg` (0f 20): CR0 the fixed value a 64-bit PV kernel sees, CR2 the
//!   last #PF address rxen delivered (`vcpu_info.arch.cr2`), CR3 the kernel base
//!   pointer (`xen_pfn_to_cr3`), CR4 the guest's shadow.
//! * `mov reg, %crN` (0f 22): CR0 only if nothing but TS changes (Xen's rule; TS is
//!   ignored: the FPU is never lazily switched here), CR4 stored in the shadow and
//!   otherwise ignored (Xen masks the guest's CR4 the same way). CR3 and others fault.
//! * `cli`/`sti` (fa/fb): no-ops once the kernel raised its virtual IOPL to 1 or more
//!   with `PHYSDEVOP_set_iopl` (Xen's `iopl_ok`; Linux does it first thing, because
//!   code that runs before its paravirt patching executes them natively). Events stay
//!   as the guest's `evtchn_upcall_mask` says, as in Xen.
//! * `wbinvd` (0f 09) and `invd` (0f 08): no-ops, as Xen without cache-flush permission.
//! * port I/O (`in`/`out` with an immediate port or `dx`, 8/16/32 bits; not the string
//!   forms), byte by byte as Xen's `guest_io_read`/`guest_io_write`: ports 0x42, 0x43
//!   and 0x61 go to the domain's PIT channel 2 ([`crate::pit`], Xen's
//!   `pv_pit_handler`); a domU has no other I/O ports, so other reads give all ones and
//!   writes are dropped, as Xen answers a PV guest for ports it was not granted (Linux's
//!   early AMD code reads PCI config space through 0xcf8/0xcfc after
//!   `PHYSDEVOP_set_iopl`).
//! * `xsetbv` (0f 01 d1) of XCR0 (ECX 0), checked as Xen's `set_xcr0` and the hardware
//!   check it ([`crate::vcpu::xstate::valid_xcr0`]): loaded into the vCPU's XCR0,
//!   which KVM switches to on entry (the vCPU's CR4 has OSXSAVE); anything else is the
//!   guest's #GP. `xgetbv` runs natively.
//! * `rdmsr`/`wrmsr` of a few MSRs Linux reads without `_safe` (after [`super::msr`]'s
//!   segment bases): EFER, PAT (Xen's PV PAT), MISC_ENABLE, and writes of PAT that
//!   keep Xen's value.
//!
//! [`emulate`] is pure decoding over [`kvm_regs`] and a [`CpuState`] snapshot;
//! [`emulate_exit`] is the vCPU thread's glue (reads the bytes, applies the result).

use kvm_bindings::kvm_regs;

/// `X86_CR0_PE | MP | ET | NE | WP | AM | PG`: what a 64-bit PV kernel reads.
pub const PV_CR0: u64 = 0x8005_0033;
/// CR0.TS.
const CR0_TS: u64 = 1 << 3;
/// The CR4 a PV vCPU starts with: PAE, OSFXSR, OSXMMEXCPT (the vCPU's real CR4).
pub const PV_CR4: u64 = (1 << 5) | (1 << 9) | (1 << 10);
/// `MSR_EFER` and what a 64-bit PV kernel reads: SCE, LME, LMA, NXE.
const MSR_EFER: u32 = 0xc000_0080;
const PV_EFER: u64 = 1 | (1 << 8) | (1 << 10) | (1 << 11);
/// `MSR_IA32_CR_PAT` and Xen's PAT for PV guests (`XEN_MSR_PAT`).
const MSR_PAT: u32 = 0x277;
pub const XEN_PV_PAT: u64 = 0x0005_0100_0704_0406;
/// `MSR_IA32_MISC_ENABLE`: fast strings only (Xen hides the rest from PV guests).
const MSR_MISC_ENABLE: u32 = 0x1a0;
const PV_MISC_ENABLE: u64 = 1;

/// What the emulator needs to know about the vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuState {
    pub cr2: u64,
    /// The kernel L4's frame, if any.
    pub kernel_base: Option<u64>,
    pub cr4: u64,
    /// The virtual IOPL (`PHYSDEVOP_set_iopl`).
    pub iopl: u32,
    /// The XCR0 bits `xsetbv` may set (0: no XSAVE).
    pub xcr0_allowed: u64,
}

/// The I/O ports a PV guest reaches through `in`/`out`, one byte at a time.
pub trait IoPorts {
    /// An 8-bit read of `port`.
    fn read(&mut self, port: u16) -> u8;
    /// An 8-bit write of `value` to `port`.
    fn write(&mut self, port: u16, value: u8);
}

/// No ports at all: reads give all ones, writes are dropped.
pub struct NoPorts;

impl IoPorts for NoPorts {
    fn read(&mut self, _port: u16) -> u8 {
        0xff
    }
    fn write(&mut self, _port: u16, _value: u8) {}
}

/// A domain's emulated ports ([`crate::pit`]) at one instant of its clock.
pub struct PitPorts<'a> {
    pub pit: &'a mut crate::pit::Pit,
    pub now_ns: u64,
}

impl IoPorts for PitPorts<'_> {
    fn read(&mut self, port: u16) -> u8 {
        if crate::pit::handles(port) {
            self.pit.read(port, self.now_ns)
        } else {
            0xff
        }
    }
    fn write(&mut self, port: u16, value: u8) {
        if crate::pit::handles(port) {
            self.pit.write(port, value, self.now_ns);
        }
    }
}

/// What an emulated instruction changed besides the registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Only the general registers (and `rip`).
    Regs,
    /// The guest's CR4 shadow is now this.
    Cr4(u64),
    /// XCR0 is now this (already checked).
    Xcr0(u64),
}

/// Emulates the instruction at the faulting `rip` (its first bytes in `code`) if it is
/// one of this module's: updates `regs` (destination, `rip`) and says what else changed.
/// `ports` answers `in`/`out`.
pub fn emulate(
    code: &[u8],
    regs: &mut kvm_regs,
    cpu: &CpuState,
    ports: &mut dyn IoPorts,
) -> Option<Effect> {
    if let Some(len) = port_io(code, regs, ports) {
        regs.rip = regs.rip.wrapping_add(len);
        return Some(Effect::Regs);
    }
    // An optional REX prefix (mov to/from CR uses REX.R for CR8+ and REX.B for r8+).
    let (rex, rest, prefix_len) = match code {
        [r @ 0x40..=0x4f, rest @ ..] => (*r, rest, 1u64),
        rest => (0, rest, 0),
    };
    let (effect, len) = match rest {
        [0xfa | 0xfb, ..] if rex == 0 && cpu.iopl >= 1 => (Effect::Regs, 1),
        [0x0f, op @ (0x20 | 0x22), modrm, ..] => {
            let cr = ((modrm >> 3) & 7) | if rex & 0x4 != 0 { 8 } else { 0 };
            let gpr = (modrm & 7) | if rex & 0x1 != 0 { 8 } else { 0 };
            let effect = if *op == 0x20 {
                let value = match cr {
                    0 => PV_CR0,
                    2 => cpu.cr2,
                    3 => cpu.kernel_base? << 12,
                    4 => cpu.cr4,
                    _ => return None,
                };
                *gpr_mut(regs, gpr)? = value;
                Effect::Regs
            } else {
                let value = *gpr_mut(regs, gpr)?;
                match cr {
                    0 if (value ^ PV_CR0) & !CR0_TS == 0 => Effect::Regs,
                    4 => Effect::Cr4(value),
                    _ => return None,
                }
            };
            (effect, 3)
        }
        [0x0f, 0x08 | 0x09, ..] if rex == 0 => (Effect::Regs, 2),
        [0x0f, 0x01, 0xd1, ..] if rex == 0 => {
            let value = (regs.rdx << 32) | (regs.rax & 0xffff_ffff);
            if regs.rcx as u32 != 0 || !crate::vcpu::xstate::valid_xcr0(value, cpu.xcr0_allowed) {
                return None;
            }
            (Effect::Xcr0(value), 3)
        }
        [0x0f, 0x32, ..] if rex == 0 => {
            let value = match regs.rcx as u32 {
                MSR_EFER => PV_EFER,
                MSR_PAT => XEN_PV_PAT,
                MSR_MISC_ENABLE => PV_MISC_ENABLE,
                _ => return None,
            };
            regs.rax = value & 0xffff_ffff;
            regs.rdx = value >> 32;
            (Effect::Regs, 2)
        }
        [0x0f, 0x30, ..] if rex == 0 => {
            let value = (regs.rdx << 32) | (regs.rax & 0xffff_ffff);
            match regs.rcx as u32 {
                MSR_PAT if value == XEN_PV_PAT => {}
                MSR_EFER if value == PV_EFER => {}
                _ => return None,
            }
            (Effect::Regs, 2)
        }
        _ => return None,
    };
    regs.rip = regs.rip.wrapping_add(prefix_len + len);
    Some(effect)
}

/// A #GP from one of this module's instructions, emulated: `Some(keep running)` when
/// it was one, `None` to deliver the exception as usual. PV domains only.
pub(super) fn emulate_exit(
    fd: &mut kvm_ioctls::VcpuFd,
    dom: &crate::domain::DomainShared,
    id: u32,
    sync_regs: bool,
    regs: &kvm_regs,
    sregs: &kvm_bindings::kvm_sregs,
) -> Option<bool> {
    let mmu = dom.pv_mmu.as_ref()?;
    let frame = super::exit::hardware_frame(dom, id, regs, sregs, super::msr::VECTOR_GP)?;
    let mut code = [0u8; 4];
    let n = (0..=code.len())
        .rev()
        .find(|&n| super::guest_mem::read(dom, id, frame.rip, &mut code[..n]).is_ok())?;
    let ctl = dom.vcpus.get(id as usize)?;
    // One lock: the guard of a temporary lives to the end of the statement.
    let (cr4, iopl) = {
        let sched = ctl.lock();
        (sched.guest_cr4, sched.virtual_iopl)
    };
    let cpu = CpuState {
        cr2: dom.shared_info.cr2(id),
        kernel_base: mmu
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .vcpu(id as usize)
            .and_then(|b| b.kernel),
        cr4,
        iopl,
        xcr0_allowed: crate::vcpu::xstate::allowed_xcr0(&super::cpuid::host_cpuid),
    };
    let mut next = *regs;
    next.rip = frame.rip;
    next.rsp = frame.rsp;
    next.rflags = crate::vcpu::syscall::user_rflags(frame.rflags);
    let effect = {
        let mut pit = dom.pit.lock().unwrap_or_else(|e| e.into_inner());
        let mut ports = PitPorts {
            pit: &mut pit,
            now_ns: dom.clock.now_ns(),
        };
        emulate(&code[..n], &mut next, &cpu, &mut ports)?
    };
    dom.stats
        .emulated(crate::stats::Emulated::of_privileged(&code[..n]));
    match effect {
        Effect::Cr4(value) => ctl.lock().guest_cr4 = value,
        Effect::Xcr0(value) => {
            if let Err(e) = crate::vcpu::xstate::set_xcr0(fd, value) {
                dom.request_exit(crate::exit::DomainExit::Internal(format!(
                    "vCPU {id}: xsetbv {value:#x}: {e}"
                )));
                return Some(false);
            }
        }
        Effect::Regs => {}
    }
    tracing::trace!(
        vcpu = id,
        rip = frame.rip,
        ?effect,
        "privileged instruction emulated"
    );
    Some(match super::exit::write_regs(fd, sync_regs, &next) {
        Ok(()) => true,
        Err(e) => {
            dom.request_exit(crate::exit::DomainExit::Internal(format!("vCPU {id}: {e}")));
            false
        }
    })
}

/// `in`/`out` (not the string forms) through `ports`, byte by byte from the first
/// port as Xen does: the instruction's length, after setting the destination of an
/// `in`.
fn port_io(code: &[u8], regs: &mut kvm_regs, ports: &mut dyn IoPorts) -> Option<u64> {
    let (operand16, rest, prefix) = match code {
        [0x66, rest @ ..] => (true, rest, 1u64),
        rest => (false, rest, 0),
    };
    let (opcode, port, len) = match rest {
        [op @ (0xe4..=0xe7), imm, ..] => (*op, u16::from(*imm), 2),
        [op @ (0xec..=0xef), ..] => (*op, regs.rdx as u16, 1),
        _ => return None,
    };
    let is_in = matches!(opcode, 0xe4 | 0xe5 | 0xec | 0xed);
    let size: u16 = match (matches!(opcode, 0xe4 | 0xe6 | 0xec | 0xee), operand16) {
        (true, _) => 1,
        (false, true) => 2,
        (false, false) => 4,
    };
    if is_in {
        let mut value = 0u64;
        for i in 0..size {
            value |= u64::from(ports.read(port.wrapping_add(i))) << (8 * i);
        }
        regs.rax = match size {
            1 => (regs.rax & !0xff) | value,
            2 => (regs.rax & !0xffff) | value,
            // A 32-bit destination zero-extends into rax.
            _ => value,
        };
    } else {
        for i in 0..size {
            ports.write(port.wrapping_add(i), (regs.rax >> (8 * i)) as u8);
        }
    }
    Some(prefix + len)
}

/// The general register numbered `n` in ModRM order (0 = rax .. 15 = r15).
fn gpr_mut(r: &mut kvm_regs, n: u8) -> Option<&mut u64> {
    Some(match n {
        0 => &mut r.rax,
        1 => &mut r.rcx,
        2 => &mut r.rdx,
        3 => &mut r.rbx,
        4 => &mut r.rsp,
        5 => &mut r.rbp,
        6 => &mut r.rsi,
        7 => &mut r.rdi,
        8 => &mut r.r8,
        9 => &mut r.r9,
        10 => &mut r.r10,
        11 => &mut r.r11,
        12 => &mut r.r12,
        13 => &mut r.r13,
        14 => &mut r.r14,
        15 => &mut r.r15,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPU: CpuState = CpuState {
        cr2: 0xdead_b000,
        kernel_base: Some(0x4a03),
        cr4: PV_CR4,
        xcr0_allowed: 0xe7,
        iopl: 1,
    };

    /// `this_cpu_cmpxchg16b_emu` (`pushf; cli`) runs before Linux patches its
    /// alternatives; Debian's kernel died there with a #GP before.
    #[test]
    fn cli_and_sti_need_the_virtual_iopl() {
        let mut r = regs();
        assert_eq!(
            emulate(&[0xfa], &mut r, &CPU, &mut NoPorts),
            Some(Effect::Regs)
        );
        assert_eq!(r.rip, 0x1001);
        let no_iopl = CpuState { iopl: 0, ..CPU };
        assert_eq!(emulate(&[0xfb], &mut regs(), &no_iopl, &mut NoPorts), None);
    }

    fn regs() -> kvm_regs {
        kvm_regs {
            rip: 0x1000,
            ..Default::default()
        }
    }

    /// Debian's kernel reads CR4 in `cr4_init_shadow` (0f 20 e0); it crashed there
    /// with "vector 13 ... no handler" before.
    #[test]
    fn control_register_reads() {
        let mut r = regs();
        assert_eq!(
            emulate(&[0x0f, 0x20, 0xe0], &mut r, &CPU, &mut NoPorts),
            Some(Effect::Regs)
        );
        assert_eq!((r.rax, r.rip), (PV_CR4, 0x1003));
        let mut r = regs();
        emulate(&[0x41, 0x0f, 0x20, 0xd8], &mut r, &CPU, &mut NoPorts).unwrap();
        assert_eq!((r.r8, r.rip), (0x4a03000, 0x1004), "mov %cr3,%r8");
        let mut r = regs();
        emulate(&[0x0f, 0x20, 0xd3], &mut r, &CPU, &mut NoPorts).unwrap();
        assert_eq!(r.rbx, 0xdead_b000, "mov %cr2,%rbx");
        let mut r = regs();
        emulate(&[0x0f, 0x20, 0xc1], &mut r, &CPU, &mut NoPorts).unwrap();
        assert_eq!(r.rcx, PV_CR0);
        assert_eq!(
            emulate(&[0x44, 0x0f, 0x20, 0xc0], &mut regs(), &CPU, &mut NoPorts),
            None,
            "CR8"
        );
        let none = CpuState {
            kernel_base: None,
            ..CPU
        };
        assert_eq!(
            emulate(&[0x0f, 0x20, 0xd8], &mut regs(), &none, &mut NoPorts),
            None
        );
    }

    #[test]
    fn control_register_writes() {
        let mut r = regs();
        r.rdi = PV_CR4 | (1 << 7);
        assert_eq!(
            emulate(&[0x0f, 0x22, 0xe7], &mut r, &CPU, &mut NoPorts),
            Some(Effect::Cr4(PV_CR4 | (1 << 7)))
        );
        let mut r = regs();
        r.rax = PV_CR0 | CR0_TS;
        assert_eq!(
            emulate(&[0x0f, 0x22, 0xc0], &mut r, &CPU, &mut NoPorts),
            Some(Effect::Regs)
        );
        let mut r = regs();
        r.rax = PV_CR0 & !1;
        assert_eq!(
            emulate(&[0x0f, 0x22, 0xc0], &mut r, &CPU, &mut NoPorts),
            None,
            "clearing PE"
        );
        assert_eq!(
            emulate(&[0x0f, 0x22, 0xd8], &mut regs(), &CPU, &mut NoPorts),
            None,
            "CR3"
        );
    }

    /// Debian's kernel probes PCI config space (`out %eax,(%dx)` to 0xcf8) early;
    /// the #GP went to its handler and the boot halted before.
    #[test]
    fn port_io_reads_all_ones_and_drops_writes() {
        let mut r = regs();
        r.rax = 0x1234_5678_9abc_def0;
        assert_eq!(
            emulate(&[0xef], &mut r, &CPU, &mut NoPorts),
            Some(Effect::Regs)
        );
        assert_eq!((r.rax, r.rip), (0x1234_5678_9abc_def0, 0x1001));
        let mut r = regs();
        r.rax = 0x1234_5678_9abc_0000;
        emulate(&[0x66, 0xed], &mut r, &CPU, &mut NoPorts).unwrap();
        assert_eq!((r.rax, r.rip), (0x1234_5678_9abc_ffff, 0x1002));
        let mut r = regs();
        r.rax = 0x1234_5678_9abc_0000;
        emulate(&[0xed], &mut r, &CPU, &mut NoPorts).unwrap();
        assert_eq!(r.rax, 0xffff_ffff);
        let mut r = regs();
        emulate(&[0xe4, 0x61], &mut r, &CPU, &mut NoPorts).unwrap();
        assert_eq!((r.rax, r.rip), (0xff, 0x1002));
        assert_eq!(
            emulate(&[0x6c], &mut regs(), &CPU, &mut NoPorts),
            None,
            "string forms fault"
        );
    }

    /// Linux's `quick_pit_calibrate` (`outb 0xb0,0x43`, two `outb 0xff,0x42`, then
    /// `inb 0x42` pairs) read all ones before and spun its 50 000 iterations.
    #[test]
    fn ports_0x42_0x43_0x61_reach_the_pit() {
        let mut pit = crate::pit::Pit::new();
        let mut ports = PitPorts {
            pit: &mut pit,
            now_ns: 0,
        };
        let out = |ports: &mut PitPorts, port: u8, value: u64| {
            let mut r = regs();
            r.rax = value;
            emulate(&[0xe6, port], &mut r, &CPU, ports).unwrap();
        };
        out(&mut ports, 0x61, 1);
        out(&mut ports, 0x43, 0xb0);
        out(&mut ports, 0x42, 0xff);
        out(&mut ports, 0x42, 0xff);
        ports.now_ns = 1_000_000; // 1193 ticks: 0xffff - 0x4a9 = 0xfb56
        let mut r = regs();
        r.rdx = 0x42;
        emulate(&[0xec], &mut r, &CPU, &mut ports).unwrap();
        emulate(&[0xe4, 0x42], &mut r, &CPU, &mut ports).unwrap();
        assert_eq!(r.rax & 0xff, 0xfb, "the MSB after the LSB");
        let mut r = regs();
        r.rdx = 0x61;
        emulate(&[0xec], &mut r, &CPU, &mut ports).unwrap();
        assert_eq!(r.rax & 0x21, 0x01, "gate on, OUT2 low");
    }

    #[test]
    fn msrs_and_cache_flushes() {
        let mut r = regs();
        r.rcx = u64::from(MSR_PAT);
        emulate(&[0x0f, 0x32], &mut r, &CPU, &mut NoPorts).unwrap();
        assert_eq!((r.rdx << 32) | r.rax, XEN_PV_PAT);
        let mut w = r;
        assert_eq!(
            emulate(&[0x0f, 0x30], &mut w, &CPU, &mut NoPorts),
            Some(Effect::Regs)
        );
        w.rax ^= 1;
        assert_eq!(emulate(&[0x0f, 0x30], &mut w, &CPU, &mut NoPorts), None);
        let mut r = regs();
        r.rcx = 0x1b;
        assert_eq!(
            emulate(&[0x0f, 0x32], &mut r, &CPU, &mut NoPorts),
            None,
            "APIC base"
        );
        let mut r = regs();
        assert_eq!(
            emulate(&[0x0f, 0x09], &mut r, &CPU, &mut NoPorts),
            Some(Effect::Regs)
        );
        assert_eq!(r.rip, 0x1002);
        assert_eq!(emulate(&[0x0f], &mut regs(), &CPU, &mut NoPorts), None);
        assert_eq!(emulate(&[], &mut regs(), &CPU, &mut NoPorts), None);
    }

    /// Linux's `fpu__init_cpu_xstate` loads XCR0 with `xsetbv`; before, rxen hid XSAVE
    /// and user code ran with the host's XCR0 while Linux saved only FXSAVE state.
    #[test]
    fn xsetbv_loads_checked_xcr0_values() {
        let xsetbv = [0x0f, 0x01, 0xd1];
        let mut r = regs();
        r.rax = 0xe7;
        r.rdx = 0;
        r.rcx = 0;
        assert_eq!(
            emulate(&xsetbv, &mut r, &CPU, &mut NoPorts),
            Some(Effect::Xcr0(0xe7))
        );
        assert_eq!(r.rip, 0x1003);
        for (rcx, rax, rdx) in [
            (1, 0xe7, 0),
            (0, 0x2e7, 0),
            (0, 0x67, 0),
            (0, 3, 1),
            (0, 0, 0),
        ] {
            let mut r = regs();
            (r.rcx, r.rax, r.rdx) = (rcx, rax, rdx);
            assert_eq!(
                emulate(&xsetbv, &mut r, &CPU, &mut NoPorts),
                None,
                "ecx {rcx} edx:eax {rdx:#x}:{rax:#x}"
            );
        }
        let no_xsave = CpuState {
            xcr0_allowed: 0,
            ..CPU
        };
        let mut r = regs();
        r.rax = 3;
        assert_eq!(emulate(&xsetbv, &mut r, &no_xsave, &mut NoPorts), None);
    }
}
