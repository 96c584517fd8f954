use super::*;
use crate::pv::elfnotes::*;
use crate::pv::testelf::{xen, ElfBuilder};

fn generic_notes() -> Vec<u8> {
    let mut n = xen(XEN_ELFNOTE_LOADER, b"generic\0");
    n.extend(xen(XEN_ELFNOTE_XEN_VERSION, b"xen-3.0\0"));
    n
}

#[test]
fn defaults_follow_libelf() {
    let image = ElfBuilder::new(0x110)
        .load(0x100, 0x100, 0x20, 0x1000)
        .note_segment(&generic_notes())
        .build();
    let k = PvKernel::parse(&image).unwrap();
    assert_eq!((k.virt_base, k.paddr_offset), (0, 0));
    assert_eq!(
        (k.virt_kstart, k.virt_kend, k.virt_entry),
        (0x100, 0x1100, 0x110)
    );
}

#[test]
fn legacy_paddr_offset_defaults_to_virt_base() {
    let image = ElfBuilder::new(0xC010_0000)
        .load(0xC010_0000, 0xC010_0000, 0x20, 0x1000)
        .section(
            "__xen_guest",
            1,
            b"LOADER=generic,XEN_VER=xen-3.0,VIRT_BASE=0xC0000000\0",
        )
        .build();
    let k = PvKernel::parse(&image).unwrap();
    assert_eq!(k.paddr_offset, 0xC000_0000);
    assert_eq!(k.virt_kstart, 0xC010_0000);
}

#[test]
fn checks_of_elf_xen_note_check_and_addr_calc_check() {
    let base = |notes: Vec<u8>, entry: u64| {
        PvKernel::parse(
            &ElfBuilder::new(entry)
                .load(0x1000, 0x1000, 0x20, 0x1000)
                .note_segment(&notes)
                .build(),
        )
    };
    assert_eq!(
        PvKernel::parse(&ElfBuilder::new(0).load(0, 0, 1, 1).build()),
        Err(PvImageError::NotXenImage)
    );
    let mut linux = xen(XEN_ELFNOTE_GUEST_OS, b"linux\0");
    linux.extend(xen(XEN_ELFNOTE_XEN_VERSION, b"xen-3.0\0"));
    assert!(base(linux, 0x1000).is_ok());
    assert!(matches!(
        base(xen(XEN_ELFNOTE_XEN_VERSION, b"xen-3.0\0"), 0x1000),
        Err(PvImageError::UnsupportedLoader { .. })
    ));
    assert_eq!(
        base(xen(XEN_ELFNOTE_LOADER, b"generic\0"), 0x1000),
        Err(PvImageError::UnsupportedXenVersion(None))
    );
    let mut n = generic_notes();
    n.extend(xen(XEN_ELFNOTE_PADDR_OFFSET, &0u64.to_le_bytes()));
    assert_eq!(
        base(n, 0x1000),
        Err(PvImageError::PaddrOffsetWithoutVirtBase)
    );
    assert!(matches!(
        base(generic_notes(), 0x3000),
        Err(PvImageError::AddressesOutOfBounds { .. })
    ));
    let mut n = generic_notes();
    n.extend(xen(XEN_ELFNOTE_VIRT_BASE, &0x2000u64.to_le_bytes()));
    n.extend(xen(XEN_ELFNOTE_PADDR_OFFSET, &0x2000u64.to_le_bytes()));
    assert!(matches!(
        base(n, 0x1000),
        Err(PvImageError::AddressesOutOfBounds { .. })
    ));
    let mut n = generic_notes();
    n.extend(xen(XEN_ELFNOTE_INIT_P2M, &0x1800u64.to_le_bytes()));
    assert_eq!(base(n, 0x1000), Err(PvImageError::P2mInsideKernel(0x1800)));
    let mut n = generic_notes();
    n.extend(xen(XEN_ELFNOTE_BSD_SYMTAB, b"yes\0"));
    assert_eq!(base(n, 0x1000), Err(PvImageError::BsdSymtab));
}

#[test]
fn bad_segments_are_rejected() {
    let notes = generic_notes();
    let mut b = ElfBuilder::new(0);
    b.load(0, 0, 0x20, 0x10).note_segment(&notes);
    assert!(matches!(
        PvKernel::parse(&b.build()),
        Err(PvImageError::FileSizeExceedsMemSize { .. })
    ));
    let mut b = ElfBuilder::new(0);
    b.load(0, u64::MAX - 4, 0x20, 0x20).note_segment(&notes);
    assert!(matches!(
        PvKernel::parse(&b.build()),
        Err(PvImageError::SegmentOverflow { .. })
    ));
    let mut b = ElfBuilder::new(0);
    b.note_segment(&notes);
    assert_eq!(PvKernel::parse(&b.build()), Err(PvImageError::NoSegments));
    let mut b = ElfBuilder::new(0);
    b.machine = 3;
    b.load(0, 0, 1, 1).note_segment(&notes);
    assert_eq!(
        PvKernel::parse(&b.build()),
        Err(PvImageError::WrongMachine(3))
    );
}
