//! Writable page tables (Xen's `ptwr`, `VMASST_TYPE_writable_pagetables`): a PV kernel
//! writes an entry of one of its L1 page tables directly, although the page is mapped
//! read-only (it is a validated table). The write faults (#PF, present + write); rxen
//! decodes the instruction at the fault (iced-x86), and for an 8-byte, 8-aligned
//! `MOV m64, r64/imm32`, `XCHG m64, r64` or `CMPXCHG m64, r64` whose address is the
//! faulting one, or a read-modify-write of part of one entry (`AND`/`OR` with an
//! immediate or register, `BTR`/`BTS`, 1 to 8 bytes: Linux's `clear_bit` and
//! `test_and_clear_bit` on PTEs), applies it as an `mmu_update` of that entry (validated like any other:
//! a refused entry leaves the fault to the guest, as Xen does) and resumes after the
//! instruction. Linux relies on it: `ptep_get_and_clear` is a native `xchg` on the PTE.
//!
//! Only L1 tables, as in Xen; writes to higher-level tables are never emulated. The
//! decoding ([`decode`]) is pure; [`emulate`] is the vCPU thread's glue.

use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind};
use kvm_bindings::{kvm_regs, kvm_sregs};

use super::bounce::CpuFrame;
use super::m2p::{register_value, write_register, Fault};
use crate::domain::DomainShared;
use crate::pv::mmu::Level;

/// Page-fault error code bits: present, write.
const PF_PRESENT: u64 = 1;
const PF_WRITE: u64 = 2;
/// RFLAGS.ZF.
const RFLAGS_ZF: u64 = 1 << 6;

/// A decoded write of one page-table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PteWrite {
    /// `MOV`: store `value`.
    Store { value: u64 },
    /// `XCHG`: store `value`, the old entry goes to `reg`.
    Exchange { value: u64, reg: iced_x86::Register },
    /// `CMPXCHG`: store `value` if the entry equals `expected` (RAX); else RAX gets it.
    CompareExchange { value: u64, expected: u64 },
    /// `AND`/`OR`/`BTR`/`BTS` of `size` bytes at byte `offset` of the entry.
    Modify {
        op: Modify,
        operand: u64,
        offset: u32,
        size: u32,
    },
}

/// A read-modify-write on part of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modify {
    And,
    Or,
    /// Bit test and reset; CF = the old bit.
    Btr,
    /// Bit test and set; CF = the old bit.
    Bts,
}

const RFLAGS_CF: u64 = 1;
const RFLAGS_SF: u64 = 1 << 7;
const RFLAGS_OF: u64 = 1 << 11;

impl PteWrite {
    /// The new entry for `old`, and the flags to merge into RFLAGS (mask, value) for
    /// the read-modify-write forms.
    pub fn apply_modify(
        op: Modify,
        old: u64,
        operand: u64,
        offset: u32,
        size: u32,
    ) -> (u64, u64, u64) {
        let bits = size * 8;
        let mask = if bits == 64 { !0 } else { (1u64 << bits) - 1 };
        let shift = offset * 8;
        let part = (old >> shift) & mask;
        let (new_part, flags_mask, flags) = match op {
            Modify::And | Modify::Or => {
                let r = if op == Modify::And {
                    part & operand
                } else {
                    part | operand
                } & mask;
                let mut f = 0;
                if r == 0 {
                    f |= RFLAGS_ZF;
                }
                if r >> (bits - 1) & 1 == 1 {
                    f |= RFLAGS_SF;
                }
                (r, RFLAGS_ZF | RFLAGS_SF | RFLAGS_CF | RFLAGS_OF, f)
            }
            Modify::Btr | Modify::Bts => {
                let bit = operand % u64::from(bits);
                let was = (part >> bit) & 1;
                let r = if op == Modify::Btr {
                    part & !(1 << bit)
                } else {
                    part | (1 << bit)
                };
                (r, RFLAGS_CF, was * RFLAGS_CF)
            }
        };
        (
            (old & !(mask << shift)) | (new_part << shift),
            flags_mask,
            flags,
        )
    }
}

/// What [`decode`] found: the write, its 8-aligned address and the next `rip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    pub write: PteWrite,
    pub address: u64,
    pub next_rip: u64,
}

/// Decodes the instruction at `f.regs.rip` (bytes `code`) as an entry write covering
/// `f.cr2`; `None` if it is anything else.
pub fn decode(code: &[u8], f: &Fault<'_>) -> Option<Decoded> {
    if !f.long_mode {
        return None;
    }
    let r = f.regs;
    let mut decoder = Decoder::with_ip(64, code, r.rip, DecoderOptions::NONE);
    let ins = decoder.decode();
    if ins.is_invalid() || ins.op_count() != 2 {
        return None;
    }
    if let Some(d) = decode_modify(&ins, f) {
        return Some(d);
    }
    if ins.memory_size().size() != 8 {
        return None;
    }
    let (mem_op, other) = match (ins.op0_kind(), ins.op1_kind()) {
        (OpKind::Memory, k) => (0, k),
        // XCHG r64, m64 is the same instruction.
        (k, OpKind::Memory) if ins.mnemonic() == Mnemonic::Xchg => (1, k),
        _ => return None,
    };
    let value = match other {
        OpKind::Register => {
            let reg = if mem_op == 0 {
                ins.op1_register()
            } else {
                ins.op0_register()
            };
            if !reg.is_gpr64() {
                return None;
            }
            register_value(r, f, reg)?
        }
        OpKind::Immediate32to64 if ins.mnemonic() == Mnemonic::Mov => ins.immediate32to64() as u64,
        _ => return None,
    };
    let write = match ins.mnemonic() {
        Mnemonic::Mov => PteWrite::Store { value },
        Mnemonic::Xchg => PteWrite::Exchange {
            value,
            reg: if mem_op == 0 {
                ins.op1_register()
            } else {
                ins.op0_register()
            },
        },
        Mnemonic::Cmpxchg => PteWrite::CompareExchange {
            value,
            expected: r.rax,
        },
        _ => return None,
    };
    let address = ins.virtual_address(mem_op, 0, |reg, _, _| register_value(r, f, reg))?;
    if !address.is_multiple_of(8) || !(address..address + 8).contains(&f.cr2) {
        return None;
    }
    Some(Decoded {
        write,
        address,
        next_rip: ins.next_ip(),
    })
}

/// `AND`/`OR`/`BTR`/`BTS` with a memory destination inside one 8-byte entry.
fn decode_modify(ins: &iced_x86::Instruction, f: &Fault<'_>) -> Option<Decoded> {
    let op = match ins.mnemonic() {
        Mnemonic::And => Modify::And,
        Mnemonic::Or => Modify::Or,
        Mnemonic::Btr => Modify::Btr,
        Mnemonic::Bts => Modify::Bts,
        _ => return None,
    };
    if ins.op0_kind() != OpKind::Memory {
        return None;
    }
    let r = f.regs;
    let operand = match ins.op1_kind() {
        OpKind::Register => register_value(r, f, ins.op1_register())?,
        OpKind::Immediate8 => u64::from(ins.immediate8()),
        OpKind::Immediate16 => u64::from(ins.immediate16()),
        OpKind::Immediate32 => u64::from(ins.immediate32()),
        OpKind::Immediate8to16 | OpKind::Immediate8to32 | OpKind::Immediate8to64 => {
            ins.immediate8to64() as u64
        }
        OpKind::Immediate32to64 => ins.immediate32to64() as u64,
        _ => return None,
    };
    // A register bit offset may reach outside the operand (BT with a register): only
    // offsets inside it are emulated.
    let size = ins.memory_size().size() as u32;
    if !matches!(size, 1 | 2 | 4 | 8) {
        return None;
    }
    if matches!(op, Modify::Btr | Modify::Bts)
        && ins.op1_kind() == OpKind::Register
        && operand >= u64::from(size * 8)
    {
        return None;
    }
    let address = ins.virtual_address(0, 0, |reg, _, _| register_value(r, f, reg))?;
    let entry = address & !7;
    let offset = (address - entry) as u32;
    if offset + size > 8 || !(address..address + u64::from(size)).contains(&f.cr2) {
        return None;
    }
    Some(Decoded {
        write: PteWrite::Modify {
            op,
            operand,
            offset,
            size,
        },
        address: entry,
        next_rip: ins.next_ip(),
    })
}

/// A write fault on a read-only page, emulated if it is a write of an L1 entry:
/// returns the registers to resume with, or `None` to deliver the #PF.
pub(super) fn emulate(
    dom: &DomainShared,
    id: u32,
    regs: &kvm_regs,
    sregs: &kvm_sregs,
    frame: &CpuFrame,
) -> Option<kvm_regs> {
    let mmu = dom.pv_mmu.as_ref()?;
    let err = frame.error_code?;
    if err & (PF_PRESENT | PF_WRITE) != PF_PRESENT | PF_WRITE {
        return None;
    }
    let view = dom.guest_view(id);
    let gpa = view
        .translate(
            crate::guest_view::Gva(sregs.cr2),
            crate::memory::Access::Read,
        )
        .ok()?
        .0;
    let table = gpa / rxen_abi::PAGE_SIZE;
    let mut interrupted = *regs;
    interrupted.rip = frame.rip;
    interrupted.rsp = frame.rsp;
    interrupted.rflags = crate::vcpu::syscall::user_rflags(frame.rflags);
    let mut code = [0u8; 15];
    let n = (1..=code.len())
        .rev()
        .find(|&n| super::guest_mem::read(dom, id, frame.rip, &mut code[..n]).is_ok())?;
    let fault = Fault {
        regs: &interrupted,
        fs_base: sregs.fs.base,
        gs_base: sregs.gs.base,
        cr2: sregs.cr2,
        long_mode: frame.cs & 0xffff == u64::from(sregs.cs.selector),
    };
    let d = decode(&code[..n], &fault)?;
    let entry_gpa = gpa & !7;
    let index = ((entry_gpa % rxen_abi::PAGE_SIZE) / 8) as usize;
    let (base, entries) = dom.pv_m2p;
    let mut frames = crate::pv::ram_frames::RamFrames::with_m2p(&dom.ram, base, entries);
    let mut next = interrupted;
    next.rip = d.next_rip;
    let outcome = {
        let mut mmu = mmu.lock().unwrap_or_else(|e| e.into_inner());
        if mmu.frame(table).and_then(|f| f.table_level()) != Some(Level::L1) {
            return None;
        }
        let old = crate::pv::mmu::GuestFrames::read_entry(&frames, table, index);
        let value = match d.write {
            PteWrite::Store { value } => value,
            PteWrite::Exchange { value, reg } => {
                write_register(&mut next, reg, old);
                value
            }
            PteWrite::Modify {
                op,
                operand,
                offset,
                size,
            } => {
                let (value, mask, flags) = PteWrite::apply_modify(op, old, operand, offset, size);
                next.rflags = (next.rflags & !mask) | flags;
                value
            }
            PteWrite::CompareExchange { value, expected } => {
                if old != expected {
                    next.rax = old;
                    next.rflags &= !RFLAGS_ZF;
                    return Some(next);
                }
                next.rflags |= RFLAGS_ZF;
                value
            }
        };
        let req = rxen_abi::mmu::MmuUpdate {
            ptr: entry_gpa | rxen_abi::mmu::MMU_NORMAL_PT_UPDATE,
            val: value,
        };
        mmu.mmu_update(&mut frames, &[req])
    };
    crate::pv::hypercall::apply(dom, &outcome.invalidate);
    if let Err(e) = outcome.result {
        tracing::debug!(vcpu = id, cr2 = sregs.cr2, "page-table write refused: {e}");
        return None;
    }
    tracing::trace!(
        vcpu = id,
        cr2 = sregs.cr2,
        rip = frame.rip,
        "page-table write emulated"
    );
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(regs: &kvm_regs, cr2: u64) -> Fault<'_> {
        Fault {
            regs,
            fs_base: 0,
            gs_base: 0,
            cr2,
            long_mode: true,
        }
    }

    /// Linux's `ptep_get_and_clear`: `xchg %rdx,(%rax)` (48 87 10). Debian's kernel
    /// oopsed in `__vunmap_range_noflush` on this write before.
    #[test]
    fn xchg_of_an_entry() {
        let r = kvm_regs {
            rax: 0xffff_8880_0631_2fe8,
            rdx: 0,
            rip: 0x1000,
            ..Default::default()
        };
        let d = decode(&[0x48, 0x87, 0x10], &fault(&r, r.rax)).unwrap();
        assert_eq!(d.address, r.rax);
        assert_eq!(d.next_rip, 0x1003);
        assert_eq!(
            d.write,
            PteWrite::Exchange {
                value: 0,
                reg: iced_x86::Register::RDX
            }
        );
    }

    #[test]
    fn mov_and_cmpxchg() {
        let r = kvm_regs {
            rax: 0x1111,
            rbx: 0x5000,
            rcx: 0x8000_0000_0001_2067,
            rip: 0x1000,
            ..Default::default()
        };
        // mov %rcx,(%rbx)
        let d = decode(&[0x48, 0x89, 0x0b], &fault(&r, 0x5000)).unwrap();
        assert_eq!(d.write, PteWrite::Store { value: r.rcx });
        // movq $0,(%rbx)
        let d = decode(&[0x48, 0xc7, 0x03, 0, 0, 0, 0], &fault(&r, 0x5000)).unwrap();
        assert_eq!(d.write, PteWrite::Store { value: 0 });
        // lock cmpxchg %rcx,(%rbx)
        let d = decode(&[0xf0, 0x48, 0x0f, 0xb1, 0x0b], &fault(&r, 0x5000)).unwrap();
        assert_eq!(
            d.write,
            PteWrite::CompareExchange {
                value: r.rcx,
                expected: 0x1111
            }
        );
    }

    /// Linux's `ptep_set_wrprotect` is `lock andb $0xfd,(%r12)` on the PTE (fork's
    /// `copy_page_range`); Debian's init died there before.
    #[test]
    fn byte_and_on_an_entry() {
        let r = kvm_regs {
            r12: 0xffff_8880_069a_5f10,
            rip: 0x1000,
            ..Default::default()
        };
        let d = decode(&[0xf0, 0x41, 0x80, 0x24, 0x24, 0xfd], &fault(&r, r.r12)).unwrap();
        assert_eq!(d.address, r.r12);
        assert_eq!(d.next_rip, 0x1006);
        let PteWrite::Modify {
            op,
            operand,
            offset,
            size,
        } = d.write
        else {
            panic!("{d:?}");
        };
        assert_eq!((op, operand as u8, offset, size), (Modify::And, 0xfd, 0, 1));
        let (new, _, _) = PteWrite::apply_modify(op, 0x8000_0000_029f_7867, operand, offset, size);
        assert_eq!(new, 0x8000_0000_029f_7865, "RW cleared, the rest kept");
        // lock btrq $5,(%rax): test_and_clear_bit(_PAGE_BIT_ACCESSED).
        let r = kvm_regs {
            rax: 0x5008,
            rip: 0x1000,
            ..Default::default()
        };
        let d = decode(&[0xf0, 0x48, 0x0f, 0xba, 0x30, 0x05], &fault(&r, 0x5008)).unwrap();
        let PteWrite::Modify {
            op,
            operand,
            offset,
            size,
        } = d.write
        else {
            panic!("{d:?}");
        };
        let (new, mask, flags) = PteWrite::apply_modify(op, 0x67, operand, offset, size);
        assert_eq!((new, mask, flags), (0x47, RFLAGS_CF, RFLAGS_CF));
        // orb to byte 1 of an entry.
        let (new, _, _) = PteWrite::apply_modify(Modify::Or, 0x67, 0x08, 1, 1);
        assert_eq!(new, 0x867);
    }

    #[test]
    fn other_writes_are_not_emulated() {
        let r = kvm_regs {
            rbx: 0x5000,
            rcx: 7,
            rip: 0x1000,
            ..Default::default()
        };
        // mov %ecx,(%rbx): 4 bytes.
        assert_eq!(decode(&[0x89, 0x0b], &fault(&r, 0x5000)), None);
        // mov %rcx,(%rbx) at a fault elsewhere.
        assert_eq!(decode(&[0x48, 0x89, 0x0b], &fault(&r, 0x6000)), None);
        // add %rcx,(%rbx).
        assert_eq!(decode(&[0x48, 0x01, 0x0b], &fault(&r, 0x5000)), None);
        // misaligned.
        let r2 = kvm_regs { rbx: 0x5004, ..r };
        assert_eq!(decode(&[0x48, 0x89, 0x0b], &fault(&r2, 0x5004)), None);
        assert_eq!(decode(&[0x0f], &fault(&r, 0x5000)), None);
    }
}
