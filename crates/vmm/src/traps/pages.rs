//! rxen's pages for exception delivery: the GDT (Xen's flat 64-bit selectors at the
//! indices the guest runs with), the IDT (a DPL-3 interrupt gate per exception vector,
//! through the guest's code selector, no IST) and the exit stubs. All three are mapped
//! read-only to the guest and lie in a hole that hypercall pointers cannot reach.

use rxen_abi::layout::{TRAP_STUBS, TRAP_STUB_PORT, TRAP_STUB_SIZE, TRAP_VECTORS};
use rxen_abi::PAGE_SIZE;

use crate::vcpu::regs::{USER_CS, USER_DS};

/// 64-bit code segment, DPL 3 (present, L, G).
const CODE64_DPL3: u64 = 0x00af_fa00_0000_ffff;
/// Data segment, DPL 3 (present, writable, D/B, G).
const DATA_DPL3: u64 = 0x00cf_f200_0000_ffff;

/// Inclusive limit of the GDT (one page).
pub const GDT_LIMIT: u16 = (PAGE_SIZE - 1) as u16;
/// Inclusive limit of the IDT: [`TRAP_VECTORS`] gates of 16 bytes.
pub const IDT_LIMIT: u16 = (TRAP_VECTORS * 16 - 1) as u16;

/// The GDT page.
pub fn gdt_page() -> [u8; PAGE_SIZE as usize] {
    let mut page = [0u8; PAGE_SIZE as usize];
    for (selector, desc) in [(USER_CS, CODE64_DPL3), (USER_DS, DATA_DPL3)] {
        let at = usize::from(selector & !7);
        page[at..at + 8].copy_from_slice(&desc.to_le_bytes());
    }
    page
}

/// Address of vector `v`'s stub.
pub fn stub_address(vector: u8) -> u64 {
    TRAP_STUBS + u64::from(vector) * TRAP_STUB_SIZE
}

/// The IDT page: gate `v` (v < [`TRAP_VECTORS`]) is a 64-bit interrupt gate, DPL 3,
/// selector [`USER_CS`], to [`stub_address`]`(v)`.
pub fn idt_page() -> [u8; PAGE_SIZE as usize] {
    let mut page = [0u8; PAGE_SIZE as usize];
    for v in 0..TRAP_VECTORS as u8 {
        let target = stub_address(v);
        let lo = (target & 0xffff)
            | (u64::from(USER_CS) << 16)
            | ((0x8e_u64 | (3 << 5)) << 40)
            | ((target >> 16 & 0xffff) << 48);
        let at = usize::from(v) * 16;
        page[at..at + 8].copy_from_slice(&lo.to_le_bytes());
        page[at + 8..at + 16].copy_from_slice(&(target >> 32).to_le_bytes());
    }
    page
}

/// The stub page: `out TRAP_STUB_PORT, al; ud2` per vector, `int3` elsewhere.
pub fn stub_page() -> [u8; PAGE_SIZE as usize] {
    let mut page = [0xCCu8; PAGE_SIZE as usize];
    for v in 0..TRAP_VECTORS {
        let at = (v * TRAP_STUB_SIZE) as usize;
        page[at..at + 4].copy_from_slice(&[0xE6, TRAP_STUB_PORT as u8, 0x0F, 0x0B]);
    }
    page
}

/// The vector whose stub exited, from the `rip` after its `out`; `None` if `rip` is not
/// just past a stub's `out` (guest code wrote the port itself).
pub fn vector_of_exit(rip: u64) -> Option<u8> {
    let off = rip.checked_sub(TRAP_STUBS + 2)?;
    if off % TRAP_STUB_SIZE != 0 || off / TRAP_STUB_SIZE >= TRAP_VECTORS {
        return None;
    }
    u8::try_from(off / TRAP_STUB_SIZE).ok()
}

/// Vectors for which the CPU pushes an error code.
pub fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_point_at_their_stubs() {
        let idt = idt_page();
        for v in [0u8, 3, 14, 31] {
            let at = usize::from(v) * 16;
            let lo = u64::from_le_bytes(idt[at..at + 8].try_into().unwrap());
            let target = (lo & 0xffff) | ((lo >> 48) << 16);
            assert_eq!(target, stub_address(v));
            assert_eq!((lo >> 16) & 0xffff, u64::from(USER_CS));
            assert_eq!((lo >> 40) & 0xff, 0xee, "present, DPL 3, interrupt gate");
            assert_eq!((lo >> 32) & 7, 0, "no IST");
        }
        assert!(idt[32 * 16..].iter().all(|&b| b == 0));
    }

    #[test]
    fn stubs_and_exit_addresses() {
        let p = stub_page();
        assert_eq!(&p[16 * 14..16 * 14 + 4], &[0xE6, 0xE1, 0x0F, 0x0B]);
        assert_eq!(vector_of_exit(stub_address(14) + 2), Some(14));
        assert_eq!(vector_of_exit(stub_address(0) + 2), Some(0));
        assert_eq!(vector_of_exit(stub_address(14) + 3), None);
        assert_eq!(vector_of_exit(stub_address(31) + 2 + 16), None);
        assert_eq!(vector_of_exit(0x40_0000), None);
        assert_eq!(vector_of_exit(1), None);
    }

    #[test]
    fn gdt_has_the_guest_selectors() {
        let g = gdt_page();
        assert_eq!(g[0x30..0x38], CODE64_DPL3.to_le_bytes());
        assert_eq!(g[0x28..0x30], DATA_DPL3.to_le_bytes());
    }
}
