//! Reads of the read-only M2P, emulated. Xen maps the machine-to-phys table at
//! `RO_MPT_VIRT_START` (L4 slot 256) and PV kernels read it directly (Mini-OS's
//! `machine_to_phys_mapping` is that address), but this host's PVM backend keeps slot
//! 256 for itself: every guest access there faults, whatever rxen maps. So a #PF whose
//! `cr2` lies in the M2P is decoded here (iced-x86): a load of 1, 2, 4 or 8 bytes
//! (`MOV r, m`, `MOVZX`, `MOVSX`, `MOVSXD`) gets its value from the M2P's frames, the
//! destination register is written as the CPU would, `rip` moves past the instruction
//! and the guest resumes. Anything else (a write, another instruction, an access
//! leaving the M2P, a 32-bit code segment) is not emulated and the caller delivers the
//! #PF to the guest as Xen would.
//!
//! Pure logic over registers, instruction bytes and a reader of the M2P: no KVM, no
//! guest memory access of its own.

use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind, Register};
use kvm_bindings::kvm_regs;

use crate::pv::rxen_area::M2pWindow;

/// L4 slot 256: the whole range this host keeps for itself.
pub const SLOT_256: core::ops::Range<u64> = 0xffff_8000_0000_0000..0xffff_8080_0000_0000;

/// Why a fault in slot 256 was not emulated (the guest gets the #PF).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotEmulated {
    #[error("the address is not in the M2P")]
    OutsideM2p,
    #[error("the code segment is not 64-bit")]
    Not64Bit,
    #[error("the instruction at the fault does not decode")]
    Undecodable,
    #[error("{0:?} is not an emulated load (MOV/MOVZX/MOVSX/MOVSXD r, m)")]
    NotALoad(Mnemonic),
    #[error("the load's address {ea:#x}+{len} is not the faulting access or leaves the M2P")]
    BadAccess { ea: u64, len: usize },
    #[error("the M2P could not be read")]
    Unreadable,
}

/// The interrupted context of the fault.
#[derive(Debug, Clone, Copy)]
pub struct Fault<'a> {
    /// General registers, with `rip`/`rsp`/`rflags` of the faulting instruction.
    pub regs: &'a kvm_regs,
    pub fs_base: u64,
    pub gs_base: u64,
    pub cr2: u64,
    /// Whether the code segment is a 64-bit one.
    pub long_mode: bool,
}

/// Emulates the load at `f.regs.rip` (whose bytes start `code`) from the M2P;
/// `read(gpa, len)` reads `len` bytes of the M2P's frames. Returns the registers
/// after the instruction.
pub fn emulate_load(
    code: &[u8],
    f: &Fault<'_>,
    m2p: &M2pWindow,
    read: impl FnOnce(u64, usize) -> Option<u64>,
) -> Result<kvm_regs, NotEmulated> {
    if !f.long_mode {
        return Err(NotEmulated::Not64Bit);
    }
    m2p.gpa_of(f.cr2, 1).ok_or(NotEmulated::OutsideM2p)?;
    let r = f.regs;
    let mut decoder = Decoder::with_ip(64, code, r.rip, DecoderOptions::NONE);
    let ins = decoder.decode();
    if ins.is_invalid() {
        return Err(NotEmulated::Undecodable);
    }
    let mnemonic = ins.mnemonic();
    let is_load = matches!(
        mnemonic,
        Mnemonic::Mov | Mnemonic::Movzx | Mnemonic::Movsx | Mnemonic::Movsxd
    ) && ins.op_count() == 2
        && ins.op0_kind() == OpKind::Register
        && ins.op1_kind() == OpKind::Memory
        && ins.op0_register().is_gpr();
    if !is_load {
        return Err(NotEmulated::NotALoad(mnemonic));
    }
    let len = ins.memory_size().size();
    if !matches!(len, 1 | 2 | 4 | 8) {
        return Err(NotEmulated::NotALoad(mnemonic));
    }
    let ea = ins
        .virtual_address(1, 0, |reg, _, _| register_value(r, f, reg))
        .ok_or(NotEmulated::Undecodable)?;
    let bad = NotEmulated::BadAccess { ea, len };
    let end = ea.checked_add(len as u64).ok_or(bad.clone())?;
    if !(ea..end).contains(&f.cr2) {
        return Err(bad);
    }
    let gpa = m2p.gpa_of(ea, len as u64).ok_or(bad)?;
    let raw = read(gpa, len).ok_or(NotEmulated::Unreadable)?;
    let value = if matches!(mnemonic, Mnemonic::Movsx | Mnemonic::Movsxd) {
        sign_extend(raw, len)
    } else {
        raw
    };
    let mut next = *r;
    write_register(&mut next, ins.op0_register(), value);
    next.rip = ins.next_ip();
    Ok(next)
}

fn sign_extend(v: u64, len: usize) -> u64 {
    let shift = 64 - 8 * len as u32;
    (((v << shift) as i64) >> shift) as u64
}

/// The 64-bit register `reg` is part of, and a mutable reference to it.
fn slot(r: &mut kvm_regs, full: Register) -> Option<&mut u64> {
    Some(match full {
        Register::RAX => &mut r.rax,
        Register::RBX => &mut r.rbx,
        Register::RCX => &mut r.rcx,
        Register::RDX => &mut r.rdx,
        Register::RSI => &mut r.rsi,
        Register::RDI => &mut r.rdi,
        Register::RSP => &mut r.rsp,
        Register::RBP => &mut r.rbp,
        Register::R8 => &mut r.r8,
        Register::R9 => &mut r.r9,
        Register::R10 => &mut r.r10,
        Register::R11 => &mut r.r11,
        Register::R12 => &mut r.r12,
        Register::R13 => &mut r.r13,
        Register::R14 => &mut r.r14,
        Register::R15 => &mut r.r15,
        _ => return None,
    })
}

fn is_high_byte(reg: Register) -> bool {
    matches!(
        reg,
        Register::AH | Register::BH | Register::CH | Register::DH
    )
}

/// Writes `value` to `reg` as a load does: 64 bits whole, 32 bits zero-extended,
/// 16 and 8 bits merged into the register.
pub(super) fn write_register(r: &mut kvm_regs, reg: Register, value: u64) {
    let size = reg.size();
    let Some(dst) = slot(r, reg.full_register()) else {
        return;
    };
    *dst = match size {
        8 => value,
        4 => value & 0xffff_ffff,
        2 => (*dst & !0xffff) | (value & 0xffff),
        _ if is_high_byte(reg) => (*dst & !0xff00) | ((value & 0xff) << 8),
        _ => (*dst & !0xff) | (value & 0xff),
    };
}

/// A register's value for address computation (segment registers: their base).
pub(super) fn register_value(r: &kvm_regs, f: &Fault<'_>, reg: Register) -> Option<u64> {
    match reg {
        Register::ES | Register::CS | Register::SS | Register::DS => return Some(0),
        Register::FS => return Some(f.fs_base),
        Register::GS => return Some(f.gs_base),
        Register::RIP => return Some(r.rip),
        _ => {}
    }
    let mut copy = *r;
    let full = *slot(&mut copy, reg.full_register())?;
    Some(match reg.size() {
        8 => full,
        4 => full & 0xffff_ffff,
        2 => full & 0xffff,
        _ if is_high_byte(reg) => (full >> 8) & 0xff,
        _ => full & 0xff,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const M2P: M2pWindow = M2pWindow {
        va: 0xffff_8000_0000_0000,
        gpa: 0x80_0000,
        bytes: 0x1000,
    };

    /// The M2P's bytes: byte i is i as u8 (so every load's value is predictable).
    fn read(gpa: u64, len: usize) -> Option<u64> {
        let off = gpa.checked_sub(M2P.gpa)?;
        let mut v = 0u64;
        for i in 0..len as u64 {
            v |= ((off + i) & 0xff) << (8 * i);
        }
        Some(v)
    }

    fn regs() -> kvm_regs {
        kvm_regs {
            rax: M2P.va + 0x3c0,
            rbx: 0x1111_2222_3333_4444,
            rcx: 0x10,
            rdx: 0xaaaa_bbbb_cccc_dddd,
            r12: M2P.va,
            rip: 0x1_0000,
            ..Default::default()
        }
    }

    fn run(code: &[u8], r: &kvm_regs, cr2: u64) -> Result<kvm_regs, NotEmulated> {
        let f = Fault {
            regs: r,
            fs_base: 0,
            gs_base: M2P.va + 0x100,
            cr2,
            long_mode: true,
        };
        emulate_load(code, &f, &M2P, read)
    }

    #[test]
    fn mini_os_mov_rax_from_rax() {
        // mov rax, [rax] (Mini-OS's machine_to_phys_mapping[mfn]).
        let r = regs();
        let n = run(&[0x48, 0x8b, 0x00, 0x90], &r, r.rax).unwrap();
        assert_eq!(n.rax, read(M2P.gpa + 0x3c0, 8).unwrap());
        assert_eq!(n.rip, r.rip + 3);
        assert_eq!((n.rbx, n.rsp, n.rflags), (r.rbx, r.rsp, r.rflags));
    }

    #[test]
    fn addressing_modes_and_sizes() {
        let r = regs();
        // mov ebx, [r12 + rcx*8 + 8]: 32 bits, zero-extended.
        let n = run(&[0x41, 0x8b, 0x5c, 0xcc, 0x08], &r, M2P.va + 0x88).unwrap();
        assert_eq!(n.rbx, read(M2P.gpa + 0x88, 4).unwrap());
        assert_eq!(n.rip, r.rip + 5);
        // mov dx, [rax + 2]: 16 bits merged.
        let n = run(&[0x66, 0x8b, 0x50, 0x02], &r, M2P.va + 0x3c2).unwrap();
        assert_eq!(
            n.rdx,
            0xaaaa_bbbb_cccc_0000 | read(M2P.gpa + 0x3c2, 2).unwrap()
        );
        // mov bh, [rax]: the high byte.
        let n = run(&[0x8a, 0x38], &r, r.rax).unwrap();
        assert_eq!(n.rbx, 0x1111_2222_3333_c044);
        // movzx ecx, byte [rax + 1]
        let n = run(&[0x0f, 0xb6, 0x48, 0x01], &r, r.rax + 1).unwrap();
        assert_eq!(n.rcx, 0xc1);
        // movsx rcx, word [rax + 0x3e] -> 0xfffe: sign-extended.
        let n = run(&[0x48, 0x0f, 0xbf, 0x48, 0x3e], &r, r.rax + 0x3e).unwrap();
        assert_eq!(n.rcx, 0xffff_ffff_ffff_fffe);
        // movsxd r9, dword [gs:0x10]: a segment base.
        let n = run(
            &[0x65, 0x4c, 0x63, 0x0c, 0x25, 0x10, 0, 0, 0],
            &r,
            M2P.va + 0x110,
        )
        .unwrap();
        assert_eq!(n.r9, read(M2P.gpa + 0x110, 4).unwrap());
        // mov r15, [rip + disp]: RIP-relative, from code placed right below the M2P.
        let mut low = r;
        low.rip = M2P.va - 0x100;
        let n = run(&[0x4c, 0x8b, 0x3d, 0x00, 0x02, 0, 0], &low, M2P.va + 0x107).unwrap();
        assert_eq!(n.r15, read(M2P.gpa + 0x107, 8).unwrap());
        assert_eq!(n.rip, low.rip + 7);
    }

    #[test]
    fn writes_and_other_instructions_are_refused() {
        let r = regs();
        // mov [rax], rbx: a write.
        assert_eq!(
            run(&[0x48, 0x89, 0x18], &r, r.rax),
            Err(NotEmulated::NotALoad(Mnemonic::Mov))
        );
        // add rbx, [rax]: not a load we emulate.
        assert_eq!(
            run(&[0x48, 0x03, 0x18], &r, r.rax),
            Err(NotEmulated::NotALoad(Mnemonic::Add))
        );
        // movaps xmm0, [rax]: not a GPR destination.
        assert!(matches!(
            run(&[0x0f, 0x28, 0x00], &r, r.rax),
            Err(NotEmulated::NotALoad(_))
        ));
        // Garbage, and a truncated instruction.
        assert_eq!(run(&[0x0f, 0xff], &r, r.rax), Err(NotEmulated::Undecodable));
        assert_eq!(run(&[0x48, 0x8b], &r, r.rax), Err(NotEmulated::Undecodable));
    }

    #[test]
    fn accesses_outside_the_m2p_are_refused() {
        let mut r = regs();
        // Past the M2P's last byte, and straddling its end.
        r.rax = M2P.va + M2P.bytes;
        assert_eq!(
            run(&[0x48, 0x8b, 0x00], &r, r.rax),
            Err(NotEmulated::OutsideM2p)
        );
        r.rax = M2P.va + M2P.bytes - 4;
        assert!(matches!(
            run(&[0x48, 0x8b, 0x00], &r, r.rax),
            Err(NotEmulated::BadAccess { .. })
        ));
        // A load whose address is not the fault's.
        let r = regs();
        assert!(matches!(
            run(&[0x48, 0x8b, 0x00], &r, M2P.va + 0x800),
            Err(NotEmulated::BadAccess { .. })
        ));
        // 32-bit code.
        let f = Fault {
            regs: &r,
            fs_base: 0,
            gs_base: 0,
            cr2: r.rax,
            long_mode: false,
        };
        assert_eq!(
            emulate_load(&[0x8b, 0x00], &f, &M2P, read),
            Err(NotEmulated::Not64Bit)
        );
    }
}
