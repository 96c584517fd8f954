use super::*;
use crate::pv::testelf::{note, pv_grub, shared_guest, xen, ElfBuilder, Phdr};
use proptest::prelude::*;

fn mini_os_like_notes() -> Vec<u8> {
    let mut n = Vec::new();
    n.extend(xen(XEN_ELFNOTE_GUEST_OS, b"Mini-OS\0"));
    n.extend(xen(XEN_ELFNOTE_LOADER, b"generic\0"));
    n.extend(xen(XEN_ELFNOTE_HYPERCALL_PAGE, &0x2000u64.to_le_bytes()));
    n.extend(xen(XEN_ELFNOTE_XEN_VERSION, b"xen-3.0\0"));
    n
}

#[test]
fn notes_in_a_pt_note_segment_are_read() {
    let mut notes = mini_os_like_notes();
    notes.extend(note(b"GNU\0", 3, &[1, 2, 3, 4]));
    notes.extend(xen(
        XEN_ELFNOTE_VIRT_BASE,
        &0xffff_ffff_8000_0000u64.to_le_bytes(),
    ));
    notes.extend(xen(XEN_ELFNOTE_ENTRY, &0x1234u32.to_le_bytes()));
    notes.extend(xen(XEN_ELFNOTE_PADDR_OFFSET, &[7u8]));
    notes.extend(xen(XEN_ELFNOTE_INIT_P2M, &0x80_0000_0000u64.to_le_bytes()));
    notes.extend(xen(XEN_ELFNOTE_MOD_START_PFN, &1u32.to_le_bytes()));
    notes.extend(xen(XEN_ELFNOTE_SUSPEND_CANCEL, &1u32.to_le_bytes()));
    notes.extend(xen(XEN_ELFNOTE_HV_START_LOW, &0xf580_0000u32.to_le_bytes()));
    notes.extend(xen(XEN_ELFNOTE_PAE_MODE, b"yes\0"));
    notes.extend(xen(XEN_ELFNOTE_GUEST_VERSION, b"2.6\0"));
    notes.extend(xen(XEN_ELFNOTE_PHYS32_ENTRY, &0x100_0000u32.to_le_bytes()));
    notes.extend(xen(XEN_ELFNOTE_BSD_SYMTAB, b"no\0"));
    notes.extend(xen(XEN_ELFNOTE_FEATURES, b"writable_page_tables|!dom0\0"));
    notes.extend(xen(XEN_ELFNOTE_SUPPORTED_FEATURES, &0b100u32.to_le_bytes()));
    let mut l1 = 0xffu64.to_le_bytes().to_vec();
    l1.extend(0x1u64.to_le_bytes());
    notes.extend(xen(XEN_ELFNOTE_L1_MFN_VALID, &l1));
    notes.extend(xen(XEN_ELFNOTE_INFO, b"ignored\0"));
    notes.extend(xen(99, b"unknown type"));
    let image = ElfBuilder::new(0).note_segment(&notes).build();

    let n = XenNotes::parse_elf(&image).unwrap();
    assert_eq!(n.source, Some(NoteSource::ProgramHeaders));
    assert_eq!(n.guest_os.as_deref(), Some("Mini-OS"));
    assert_eq!(n.loader.as_deref(), Some("generic"));
    assert_eq!(n.xen_version.as_deref(), Some("xen-3.0"));
    assert_eq!(n.hypercall_page, Some(0x2000));
    assert_eq!(n.virt_base, Some(0xffff_ffff_8000_0000));
    assert_eq!(n.entry, Some(0x1234));
    assert_eq!(n.paddr_offset, Some(7));
    assert_eq!(n.init_p2m, Some(0x80_0000_0000));
    assert!(n.unmapped_initrd());
    assert_eq!(n.suspend_cancel, Some(1));
    assert_eq!(n.hv_start_low, Some(0xf580_0000));
    assert_eq!(n.pae_mode.as_deref(), Some("yes"));
    assert_eq!(n.guest_version.as_deref(), Some("2.6"));
    assert_eq!(n.phys32_entry, Some(0x100_0000));
    assert!(!n.bsd_symtab);
    assert_eq!(n.l1_mfn_valid, Some(0xff));
    assert!(n.features.supports(0) && n.features.supports(2));
    assert!(n.features.requires(rxen_abi::features::XENFEAT_DOM0));
    assert_eq!(n.count, 18);
}

#[test]
fn later_notes_override_earlier_ones() {
    let mut notes = xen(XEN_ELFNOTE_VIRT_BASE, &1u64.to_le_bytes());
    notes.extend(xen(XEN_ELFNOTE_VIRT_BASE, &2u64.to_le_bytes()));
    let image = ElfBuilder::new(0).note_segment(&notes).build();
    assert_eq!(XenNotes::parse_elf(&image).unwrap().virt_base, Some(2));
}

#[test]
fn sht_note_sections_are_the_fallback() {
    let image = ElfBuilder::new(0)
        .load(0, 0, 0x100, 0x100)
        .section(".note", 7, &mini_os_like_notes())
        .build();
    let n = XenNotes::parse_elf(&image).unwrap();
    assert_eq!(n.source, Some(NoteSource::Sections));
    assert_eq!(n.guest_os.as_deref(), Some("Mini-OS"));
}

#[test]
fn pt_note_wins_over_sections_and_offset_zero_segments_are_skipped() {
    let mut b = ElfBuilder::new(0);
    b.note_segment(&xen(XEN_ELFNOTE_GUEST_OS, b"segment\0"));
    b.section(".note", 7, &xen(XEN_ELFNOTE_GUEST_OS, b"section\0"));
    let n = XenNotes::parse_elf(&b.build()).unwrap();
    assert_eq!(n.guest_os.as_deref(), Some("segment"));

    let mut b = ElfBuilder::new(0);
    b.phdr(Phdr {
        p_type: 4,
        flags: 4,
        offset: 0,
        vaddr: 0,
        paddr: 0,
        filesz: 64,
        memsz: 0,
        align: 4,
    });
    b.section(".note", 7, &xen(XEN_ELFNOTE_GUEST_OS, b"section\0"));
    let n = XenNotes::parse_elf(&b.build()).unwrap();
    assert_eq!(n.source, Some(NoteSource::Sections));
    assert_eq!(n.guest_os.as_deref(), Some("section"));
}

#[test]
fn non_xen_notes_only_mean_no_notes() {
    let image = ElfBuilder::new(0)
        .note_segment(&note(b"GNU\0", 3, &[0; 20]))
        .build();
    let n = XenNotes::parse_elf(&image).unwrap();
    assert_eq!(n.source, None);
    assert_eq!(n.count, 0);
}

#[test]
fn legacy_xen_guest_section_is_the_last_fallback() {
    let image = ElfBuilder::new(0)
        .section(
            "__xen_guest",
            1,
            b"GUEST_OS=linux,XEN_VER=xen-3.0,VIRT_BASE=0xC0000000,\
ELF_PADDR_OFFSET=0xC0000000,HYPERCALL_PAGE=0x2,LOADER=generic\0",
        )
        .build();
    let n = XenNotes::parse_elf(&image).unwrap();
    assert_eq!(n.source, Some(NoteSource::LegacyXenGuest));
    assert_eq!(n.hypercall_page, Some(0xC000_2000));
    assert_eq!(n.paddr_offset, Some(0xC000_0000));
}

/// Linux's `xen-head.S` declares `XEN_ELFNOTE_FEATURES` with `.ascii` (21 bytes, no
/// NUL): libelf finds the terminator in the note's zero padding, and so must we.
/// Failed before: `UnterminatedString { kind: 10 }` for Debian's kernel.
#[test]
fn a_string_note_may_end_in_its_padding() {
    let parse = |notes: &[u8]| XenNotes::parse_elf(&ElfBuilder::new(0).note_segment(notes).build());
    let mut notes = xen(XEN_ELFNOTE_FEATURES, b"!writable_page_tables");
    notes.extend(xen(XEN_ELFNOTE_GUEST_OS, b"linux"));
    let n = parse(&notes).unwrap();
    assert_eq!(n.guest_os.as_deref(), Some("linux"));
    // A note whose text fills its 4-byte words exactly has no padding to end in.
    assert_eq!(
        parse(&xen(XEN_ELFNOTE_GUEST_OS, b"linuxabc")),
        Err(ElfNotesError::UnterminatedString { kind: 6 })
    );
}

#[test]
fn hostile_notes_are_typed_errors() {
    let parse = |notes: &[u8]| XenNotes::parse_elf(&ElfBuilder::new(0).note_segment(notes).build());
    assert_eq!(
        parse(&xen(XEN_ELFNOTE_ENTRY, &[1, 2, 3])),
        Err(ElfNotesError::BadNumericSize { kind: 1, size: 3 })
    );
    assert_eq!(
        parse(&xen(XEN_ELFNOTE_GUEST_OS, b"no nul!!")),
        Err(ElfNotesError::UnterminatedString { kind: 6 })
    );
    assert_eq!(
        parse(&xen(XEN_ELFNOTE_GUEST_OS, b"\xff\xfe\0")),
        Err(ElfNotesError::NotUtf8 { kind: 6 })
    );
    assert_eq!(
        parse(&xen(XEN_ELFNOTE_GUEST_OS, &[b'a'; 2000])),
        Err(ElfNotesError::StringTooLong { kind: 6 })
    );
    assert_eq!(
        parse(&xen(XEN_ELFNOTE_SUPPORTED_FEATURES, &[1, 2])),
        Err(ElfNotesError::BadFeatureBitmap(2))
    );
    assert!(matches!(
        parse(&xen(XEN_ELFNOTE_FEATURES, b"!warp_drive\0")),
        Err(ElfNotesError::Feature(_))
    ));
    // A descriptor size running past the segment.
    let mut bad = xen(XEN_ELFNOTE_ENTRY, &[0; 8]);
    bad[4..8].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
    assert!(matches!(
        parse(&bad),
        Err(ElfNotesError::NoteTruncated { .. })
    ));
    // A header cut short.
    assert!(matches!(
        parse(&[4, 0, 0, 0, 8]),
        Err(ElfNotesError::NoteTruncated { .. })
    ));
    // Too many (empty-named) notes.
    let many: Vec<u8> = (0..=MAX_NOTES).flat_map(|_| note(b"", 0, b"")).collect();
    assert_eq!(parse(&many), Err(ElfNotesError::TooManyNotes));
}

#[test]
fn note_areas_outside_the_file_are_rejected() {
    let mut b = ElfBuilder::new(0);
    b.phdr(Phdr {
        p_type: 4,
        flags: 4,
        offset: 0x10_0000,
        vaddr: 0,
        paddr: 0,
        filesz: 16,
        memsz: 0,
        align: 4,
    });
    assert!(matches!(
        XenNotes::parse_elf(&b.build()),
        Err(ElfNotesError::AreaOutsideFile { .. })
    ));
    let mut b = ElfBuilder::new(0);
    b.phdr(Phdr {
        p_type: 4,
        flags: 4,
        offset: 0x100,
        vaddr: 0,
        paddr: 0,
        filesz: u64::MAX,
        memsz: 0,
        align: 4,
    });
    assert!(matches!(
        XenNotes::parse_elf(&b.build()),
        Err(ElfNotesError::AreaOutsideFile { .. })
    ));
}

#[test]
fn non_elf_and_wrong_class_are_rejected() {
    assert!(matches!(
        XenNotes::parse_elf(b"hello"),
        Err(ElfNotesError::Malformed(_))
    ));
    let mut image = ElfBuilder::new(0).build();
    image[4] = 1;
    assert_eq!(XenNotes::parse_elf(&image), Err(ElfNotesError::NotElf64));
}

#[test]
fn real_mini_os_notes() {
    let Some(image) = shared_guest("mini-os-blk") else {
        eprintln!("SKIPPED real_mini_os_notes: ../shared/guests/mini-os-blk not found (set RXEN_GUESTS_DIR)");
        return;
    };
    let n = XenNotes::parse_elf(&image).unwrap();
    // Mini-OS has no PT_NOTE; its notes are in the `.note` section.
    assert_eq!(n.source, Some(NoteSource::Sections));
    assert_eq!(n.guest_os.as_deref(), Some("Mini-OS"));
    assert_eq!(n.loader.as_deref(), Some("generic"));
    assert_eq!(n.xen_version.as_deref(), Some("xen-3.0"));
    assert_eq!(n.hypercall_page, Some(0x2000));
    assert_eq!(n.virt_base, None);
    assert_eq!(n.entry, None);
    assert_eq!(n.count, 4);
}

#[test]
fn real_pv_grub_notes() {
    let Some(image) = pv_grub() else {
        eprintln!(
            "SKIPPED real_pv_grub_notes: PV-GRUB not found; set RXEN_PVGRUB to grub-x86_64-xen.bin \
(apt-get download grub-xen-host; dpkg-deb -x) or install grub-xen-host"
        );
        return;
    };
    let n = XenNotes::parse_elf(&image).unwrap();
    assert_eq!(n.source, Some(NoteSource::ProgramHeaders));
    assert_eq!(n.guest_os.as_deref(), Some("GRUB"));
    assert_eq!(n.loader.as_deref(), Some("generic"));
    assert_eq!(n.xen_version.as_deref(), Some("xen-3.0"));
    assert_eq!(n.entry, Some(0));
    assert_eq!(n.virt_base, Some(0));
    assert_eq!(n.hypercall_page, None);
    assert_eq!(n.count, 5);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = XenNotes::parse_elf(&data);
        let _ = crate::pv::PvKernel::parse(&data);
    }

    #[test]
    fn corrupted_images_never_panic(
        flips in proptest::collection::vec((0usize..0x1200, any::<u8>()), 1..16)
    ) {
        let mut notes = mini_os_like_notes();
        notes.extend(xen(XEN_ELFNOTE_FEATURES, b"dom0\0"));
        let mut image = ElfBuilder::new(0)
            .load(0, 0, 0x40, 0x2000)
            .note_segment(&notes)
            .section(".note", 7, &notes)
            .section("__xen_guest", 1, b"LOADER=generic,XEN_VER=xen-3.0\0")
            .build();
        for (at, byte) in flips {
            let len = image.len();
            image[at % len] = byte;
        }
        let _ = XenNotes::parse_elf(&image);
        if let Ok(kernel) = crate::pv::PvKernel::parse(&image) {
            let request = crate::pv::LayoutRequest { nr_pages: 4096, ramdisk_bytes: Some(5000), vcpus: 1 };
            let _ = crate::pv::PvLayout::compute(&kernel, &request);
        }
    }
}
