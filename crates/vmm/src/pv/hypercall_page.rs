//! The hypercall page of a 64-bit PV kernel, in Xen's layout (facts from Xen's
//! `hypercall_page_initialise` and `pv_ring3_init_hypercall_page`,
//! xen/arch/x86/pv/hypercall.c): the page is first filled with `int3` (0xcc); entry
//! `n` of the 128 32-byte entries is
//! `push %rcx; push %r11; mov $n,%eax; syscall; pop %r11; pop %rcx; ret`
//! (the guest kernel runs in ring 3, `syscall` clobbers `rcx`/`r11`). Entry
//! `__HYPERVISOR_iret` (23) differs: it does not return and expects the guest's iret
//! frame on the stack, so it is `push %rcx; push %r11; push %rax; mov $23,%eax;
//! syscall`.
//!
//! On this host `syscall` lands at `MSR_LSTAR` without a privilege change (see
//! `vcpu/syscall.rs`); rxen's stub there performs the hypercall and returns to `rcx`,
//! i.e. to the `pop %r11` of the entry, exactly as Xen's `sysret` would.

use rxen_abi::hypercall::IRET;
use rxen_abi::layout::HYPERCALL_ENTRY_SIZE;

use super::layout::PAGE_SIZE;

const PUSH_RCX: u8 = 0x51;
const PUSH_R11: [u8; 2] = [0x41, 0x53];
const PUSH_RAX: u8 = 0x50;
const MOV_EAX_IMM32: u8 = 0xb8;
const SYSCALL: [u8; 2] = [0x0f, 0x05];
const POP_R11: [u8; 2] = [0x41, 0x5b];
const POP_RCX: u8 = 0x59;
const RET: u8 = 0xc3;
const INT3: u8 = 0xcc;

/// The bytes of Xen's 64-bit PV hypercall page.
pub fn xen_pv64_hypercall_page() -> [u8; PAGE_SIZE as usize] {
    let mut page = [INT3; PAGE_SIZE as usize];
    let size = HYPERCALL_ENTRY_SIZE as usize;
    for (nr, entry) in page.chunks_exact_mut(size).enumerate() {
        let nr = nr as u32;
        let mut code = Vec::with_capacity(16);
        code.push(PUSH_RCX);
        code.extend_from_slice(&PUSH_R11);
        if nr == IRET {
            code.push(PUSH_RAX);
        }
        code.push(MOV_EAX_IMM32);
        code.extend_from_slice(&nr.to_le_bytes());
        code.extend_from_slice(&SYSCALL);
        if nr != IRET {
            code.extend_from_slice(&POP_R11);
            code.push(POP_RCX);
            code.push(RET);
        }
        entry[..code.len()].copy_from_slice(&code);
    }
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_entries_push_call_and_pop() {
        let p = xen_pv64_hypercall_page();
        // Entry 0 (set_trap_table) and entry 18 (console_io).
        let e0 = [
            0x51, 0x41, 0x53, 0xb8, 0, 0, 0, 0, 0x0f, 0x05, 0x41, 0x5b, 0x59, 0xc3,
        ];
        assert_eq!(&p[..14], &e0);
        assert!(p[14..32].iter().all(|&b| b == 0xcc));
        let e18 = &p[18 * 32..18 * 32 + 14];
        assert_eq!(&e18[3..8], &[0xb8, 18, 0, 0, 0]);
        // The last entry.
        let e127 = &p[127 * 32..127 * 32 + 14];
        assert_eq!(&e127[3..8], &[0xb8, 127, 0, 0, 0]);
        assert_eq!(e127[13], 0xc3);
    }

    #[test]
    fn iret_entry_pushes_rax_and_does_not_return() {
        let p = xen_pv64_hypercall_page();
        let e = &p[23 * 32..24 * 32];
        assert_eq!(
            &e[..11],
            &[0x51, 0x41, 0x53, 0x50, 0xb8, 23, 0, 0, 0, 0x0f, 0x05]
        );
        assert!(e[11..].iter().all(|&b| b == 0xcc));
    }
}
