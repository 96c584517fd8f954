//! Initial register state of a vCPU: 64-bit mode at CPL 3 (see HOST.md and
//! `docs/guest-abi.md`).

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use rxen_abi::vcpu::VcpuGuestContext;

const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_SCE: u64 = 1 << 0;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;

/// User code selector (GDT index 6, RPL 3), as in Xen's `FLAT_RING3_CS64`.
pub const USER_CS: u16 = rxen_abi::layout::FLAT_CS;
/// User data selector (GDT index 5, RPL 3), as in Xen's `FLAT_RING3_DS64`.
pub const USER_DS: u16 = rxen_abi::layout::FLAT_SS;
/// RFLAGS at start: IOPL 3 and the always-one bit.
pub const START_RFLAGS: u64 = 0x3002;
/// Arithmetic flags a guest may choose in a `vcpu_guest_context`.
const GUEST_SETTABLE_FLAGS: u64 = 0x8d5; // CF PF AF ZF SF DF OF

/// The guest's 64-bit code segment (CPL 3).
pub fn code_segment() -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: USER_CS,
        type_: 11,
        present: 1,
        dpl: 3,
        db: 0,
        s: 1,
        l: 1,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// The guest's data and stack segment (DPL 3).
pub fn data_segment() -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: USER_DS,
        type_: 3,
        present: 1,
        dpl: 3,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Special registers for long mode at CPL 3 with page tables at `cr3` and rxen's
/// GDT/IDT where `traps` says.
pub fn long_mode_sregs(
    mut sregs: kvm_sregs,
    cr3: u64,
    traps: &crate::traps::pages::TrapLayout,
) -> kvm_sregs {
    sregs.cs = code_segment();
    sregs.ss = data_segment();
    sregs.ds = data_segment();
    sregs.es = data_segment();
    sregs.fs = data_segment();
    sregs.gs = data_segment();
    sregs.tr = kvm_segment {
        base: rxen_abi::layout::TSS,
        limit: rxen_abi::layout::TSS_LIMIT,
        selector: 0x40,
        type_: 11,
        present: 1,
        dpl: 0,
        db: 0,
        s: 0,
        l: 0,
        g: 0,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    sregs.gdt = kvm_bindings::kvm_dtable {
        base: traps.gdt,
        limit: traps.gdt_limit,
        ..Default::default()
    };
    sregs.idt = kvm_bindings::kvm_dtable {
        base: traps.idt,
        limit: crate::traps::pages::IDT_LIMIT,
        ..Default::default()
    };
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    sregs.cr3 = cr3;
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    sregs.efer = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE;
    sregs
}

/// General registers of the boot vCPU: entry, stack, `rsi` = `start_info`.
pub fn boot_regs(entry: u64, stack_top: u64, start_info: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rsp: stack_top,
        rsi: start_info,
        rflags: START_RFLAGS,
        ..Default::default()
    }
}

/// General registers from a guest-supplied `vcpu_guest_context` (`VCPUOP_initialise`).
/// Segment selectors, control registers and privileged flags of the context are
/// ignored: every vCPU runs at CPL 3 on the domain's page tables.
pub fn context_regs(ctx: &VcpuGuestContext) -> kvm_regs {
    let r = &ctx.user_regs;
    kvm_regs {
        rax: r.rax,
        rbx: r.rbx,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        rsp: r.rsp,
        rbp: r.rbp,
        r8: r.r8,
        r9: r.r9,
        r10: r.r10,
        r11: r.r11,
        r12: r.r12,
        r13: r.r13,
        r14: r.r14,
        r15: r.r15,
        rip: r.rip,
        rflags: START_RFLAGS | (r.rflags & GUEST_SETTABLE_FLAGS),
    }
}

/// Is `addr` a canonical 48-bit user-half address (valid as a segment base)?
pub fn is_canonical_user(addr: u64) -> bool {
    addr < 0x0000_8000_0000_0000
}

/// Where a domain's code and stacks may be: the addresses rxen accepts for hypercall
/// returns, trap and event handlers and `iret` targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressRange {
    /// rxen's own layout: the guest lives in the lower half.
    UserHalf,
    /// Xen PV domains: the kernel is linked in the upper half (Linux at
    /// 0xffffffff80000000) and runs at CPL 3, so any canonical address will do; its
    /// page tables decide what is there.
    Canonical,
}

impl AddressRange {
    /// Whether `addr` lies in the range.
    pub fn contains(self, addr: u64) -> bool {
        match self {
            AddressRange::UserHalf => is_canonical_user(addr),
            AddressRange::Canonical => crate::guest_view::is_canonical(addr),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::FromZeros;

    #[test]
    fn context_cannot_raise_privilege() {
        let mut ctx = VcpuGuestContext::new_zeroed();
        ctx.user_regs.rflags = u64::MAX;
        ctx.user_regs.rip = 0x400000;
        ctx.user_regs.cs = 0x8;
        let r = context_regs(&ctx);
        assert_eq!(r.rflags & 0x200, 0, "IF");
        assert_eq!(r.rflags & 0x3000, 0x3000, "IOPL stays 3");
        assert_eq!(r.rflags & (1 << 8), 0, "TF");
        assert_eq!(r.rip, 0x400000);
    }
}
