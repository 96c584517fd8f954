//! rxen's pages for exception delivery: the GDT (the flat 64-bit selectors at the
//! indices the guest runs with), the IDT (a DPL-3 interrupt gate per exception vector,
//! through the guest's code selector, no IST) and the exit stubs. All three are mapped
//! read-only to the guest, where it can never map them itself: in a hole of rxen's own
//! layout for SDK guests, in rxen's L4 slot 257 for Xen PV guests
//! ([`crate::pv::rxen_area`]). [`TrapLayout`] says where they are.

use rxen_abi::layout::{GDT, IDT, TRAP_STUBS, TRAP_STUB_PORT, TRAP_STUB_SIZE, TRAP_VECTORS};
use rxen_abi::PAGE_SIZE;

use rxen_abi::layout::{FLAT_CS as USER_CS, FLAT_SS as USER_DS};

/// 64-bit code segment, DPL 3 (present, L, G; accessed, so that loading it never
/// writes to the read-only GDT).
const CODE64_DPL3: u64 = 0x00af_fb00_0000_ffff;
/// 32-bit code segment, DPL 3 (present, D, G, accessed): Xen's `FLAT_RING3_CS32`.
const CODE32_DPL3: u64 = 0x00cf_fb00_0000_ffff;
/// Data segment, DPL 3 (present, writable, D/B, G, accessed).
const DATA_DPL3: u64 = 0x00cf_f300_0000_ffff;

/// Xen's `FLAT_RING3_CS32` (xen-x86_64.h).
pub const XEN_FLAT_CS32: u16 = 0xe023;
/// Xen's `FLAT_RING3_CS64` = `FLAT_KERNEL_CS64`.
pub const XEN_FLAT_CS64: u16 = 0xe033;
/// Xen's `FLAT_RING3_DS32` = `FLAT_RING3_SS64` = `FLAT_KERNEL_SS64`.
pub const XEN_FLAT_DS: u16 = 0xe02b;
/// Xen's `FIRST_RESERVED_GDT_PAGE`: the GDT page holding the flat selectors.
pub const XEN_GDT_PAGE: u64 = 14;

/// Inclusive limit of a one-page GDT (rxen's layout).
pub const GDT_LIMIT: u16 = (PAGE_SIZE - 1) as u16;
/// Inclusive limit of a Xen-layout GDT: pages 0..=14, the flat selectors in page 14.
pub const XEN_GDT_LIMIT: u16 = ((XEN_GDT_PAGE + 1) * PAGE_SIZE - 1) as u16;
/// Inclusive limit of the IDT: [`TRAP_VECTORS`] gates of 16 bytes.
pub const IDT_LIMIT: u16 = (TRAP_VECTORS * 16 - 1) as u16;

/// Where a domain's GDT, IDT and trap stubs are (guest virtual addresses) and the
/// code selector its gates use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TrapLayout {
    pub gdt: u64,
    pub gdt_limit: u16,
    pub idt: u64,
    pub stubs: u64,
    /// The selector of every IDT gate (the guest's own 64-bit code segment).
    pub code_selector: u16,
    /// The interrupt stack table slot every gate uses (0: none, the CPU pushes its
    /// frame on the interrupted stack).
    pub ist: u8,
}

impl TrapLayout {
    /// rxen's own layout (SDK guests): one GDT page, selectors 0x33/0x2b.
    pub const fn rxen() -> Self {
        TrapLayout {
            gdt: GDT,
            gdt_limit: GDT_LIMIT,
            idt: IDT,
            stubs: TRAP_STUBS,
            code_selector: USER_CS,
            ist: 0,
        }
    }

    /// Address of vector `v`'s stub.
    pub fn stub_address(&self, vector: u8) -> u64 {
        self.stubs + u64::from(vector) * TRAP_STUB_SIZE
    }

    /// The IDT page: gate `v` (v < [`TRAP_VECTORS`]) is a 64-bit interrupt gate, DPL 3,
    /// selector [`TrapLayout::code_selector`], to [`TrapLayout::stub_address`]`(v)`.
    pub fn idt_page(&self) -> [u8; PAGE_SIZE as usize] {
        let mut page = [0u8; PAGE_SIZE as usize];
        for v in 0..TRAP_VECTORS as u8 {
            let target = self.stub_address(v);
            let lo = (target & 0xffff)
                | (u64::from(self.code_selector) << 16)
                | (u64::from(self.ist & 7) << 32)
                | ((0x8e_u64 | (3 << 5)) << 40)
                | ((target >> 16 & 0xffff) << 48);
            let at = usize::from(v) * 16;
            page[at..at + 8].copy_from_slice(&lo.to_le_bytes());
            page[at + 8..at + 16].copy_from_slice(&(target >> 32).to_le_bytes());
        }
        page
    }

    /// The vector whose stub exited, from the `rip` after its `out`; `None` if `rip`
    /// is not just past a stub's `out` (guest code wrote the port itself).
    pub fn vector_of_exit(&self, rip: u64) -> Option<u8> {
        let off = rip.checked_sub(self.stubs + 2)?;
        if off % TRAP_STUB_SIZE != 0 || off / TRAP_STUB_SIZE >= TRAP_VECTORS {
            return None;
        }
        u8::try_from(off / TRAP_STUB_SIZE).ok()
    }
}

/// The page of segment descriptors: rxen's 0x33/0x2b at indices 6/5, and Xen's
/// `FLAT_RING3_CS32` at index 4. In rxen's layout it is the whole GDT; in a Xen
/// layout it is GDT page [`XEN_GDT_PAGE`], where the same offsets are Xen's
/// 0xe033/0xe02b/0xe023.
pub fn gdt_page() -> [u8; PAGE_SIZE as usize] {
    let mut page = [0u8; PAGE_SIZE as usize];
    for (selector, desc) in [
        (USER_CS, CODE64_DPL3),
        (USER_DS, DATA_DPL3),
        (XEN_FLAT_CS32, CODE32_DPL3),
    ] {
        let at = usize::from(selector & 0xff8);
        page[at..at + 8].copy_from_slice(&desc.to_le_bytes());
    }
    page
}

/// Address of vector `v`'s stub in rxen's layout.
pub fn stub_address(vector: u8) -> u64 {
    TrapLayout::rxen().stub_address(vector)
}

/// The IDT page of rxen's layout.
pub fn idt_page() -> [u8; PAGE_SIZE as usize] {
    TrapLayout::rxen().idt_page()
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
    fn xen_layout_gates_use_xen_selector_and_high_stubs() {
        let l = TrapLayout {
            gdt: 0xffff_8080_0001_0000,
            gdt_limit: XEN_GDT_LIMIT,
            idt: 0xffff_8080_0000_6000,
            stubs: 0xffff_8080_0000_5000,
            code_selector: XEN_FLAT_CS64,
            ist: 1,
        };
        let idt = l.idt_page();
        let at = 14 * 16;
        let lo = u64::from_le_bytes(idt[at..at + 8].try_into().unwrap());
        let hi = u64::from_le_bytes(idt[at + 8..at + 16].try_into().unwrap());
        let target = (lo & 0xffff) | ((lo >> 48) << 16) | (hi << 32);
        assert_eq!(target, l.stub_address(14));
        assert_eq!((lo >> 16) & 0xffff, 0xe033);
        assert_eq!((lo >> 32) & 7, 1, "IST 1");
        assert_eq!(l.vector_of_exit(l.stub_address(14) + 2), Some(14));
        assert_eq!(l.vector_of_exit(stub_address(14) + 2), None);
        assert_eq!(XEN_GDT_LIMIT, 0xefff);
        assert!(u64::from(XEN_FLAT_CS64) < u64::from(XEN_GDT_LIMIT));
    }

    #[test]
    fn stubs_and_exit_addresses() {
        let p = stub_page();
        let l = TrapLayout::rxen();
        assert_eq!(&p[16 * 14..16 * 14 + 4], &[0xE6, 0xE1, 0x0F, 0x0B]);
        assert_eq!(l.vector_of_exit(stub_address(14) + 2), Some(14));
        assert_eq!(l.vector_of_exit(stub_address(0) + 2), Some(0));
        assert_eq!(l.vector_of_exit(stub_address(14) + 3), None);
        assert_eq!(l.vector_of_exit(stub_address(31) + 2 + 16), None);
        assert_eq!(l.vector_of_exit(0x40_0000), None);
        assert_eq!(l.vector_of_exit(1), None);
    }

    #[test]
    fn gdt_has_the_guest_selectors() {
        let g = gdt_page();
        assert_eq!(g[0x30..0x38], CODE64_DPL3.to_le_bytes());
        assert_eq!(g[0x28..0x30], DATA_DPL3.to_le_bytes());
        // Xen's selectors land on the same offsets of GDT page 14.
        for (sel, desc) in [
            (XEN_FLAT_CS64, CODE64_DPL3),
            (XEN_FLAT_DS, DATA_DPL3),
            (XEN_FLAT_CS32, CODE32_DPL3),
        ] {
            let off = u64::from(sel & !7);
            assert_eq!(off / PAGE_SIZE, XEN_GDT_PAGE);
            let at = (off % PAGE_SIZE) as usize;
            assert_eq!(g[at..at + 8], desc.to_le_bytes());
        }
    }
}
