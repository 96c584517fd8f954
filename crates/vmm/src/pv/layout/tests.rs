use super::*;
use crate::pv::elfnotes::*;
use crate::pv::testelf::{pv_grub, shared_guest, xen, ElfBuilder};

const MIB: u64 = 1 << 20;

fn request(mib: u64, ramdisk: Option<u64>) -> LayoutRequest {
    LayoutRequest {
        nr_pages: mib * MIB / PAGE_SIZE,
        ramdisk_bytes: ramdisk,
        vcpus: 1,
    }
}

/// An image with Mini-OS's real notes and segments (from `readelf -n -l mini-os-blk`).
fn mini_os_model() -> PvKernel {
    let mut notes = xen(XEN_ELFNOTE_GUEST_OS, b"Mini-OS\0");
    notes.extend(xen(XEN_ELFNOTE_LOADER, b"generic\0"));
    notes.extend(xen(XEN_ELFNOTE_HYPERCALL_PAGE, &0x2000u64.to_le_bytes()));
    notes.extend(xen(XEN_ELFNOTE_XEN_VERSION, b"xen-3.0\0"));
    let image = ElfBuilder::new(0)
        .load(0, 0, 0x166c3, 0x166c3)
        .load(0x17060, 0x17060, 0x580, 0x4dfa8)
        .section(".note", 7, &notes)
        .build();
    PvKernel::parse(&image).unwrap()
}

fn check_mini_os(l: &PvLayout) {
    assert_eq!(l.virt_base, 0);
    assert_eq!(l.kernel_padding_pages, 0);
    assert_eq!(
        (l.kernel.pfn, l.kernel.pages, l.kernel.vstart),
        (0, 0x66, 0)
    );
    assert_eq!(l.segments[0].guest_phys, 0);
    assert_eq!(l.segments[1].guest_phys, 0x17060);
    assert_eq!(l.segments[1].vaddr, 0x17060);
    assert_eq!(l.ramdisk, None);
    assert_eq!((l.p2m.pfn, l.p2m.pages, l.p2m.vstart), (0x66, 16, 0x66000));
    assert_eq!(l.p2m_tables, None);
    assert_eq!(
        (l.start_info_pfn, l.xenstore_pfn, l.console_pfn),
        (0x76, 0x77, 0x78)
    );
    assert_eq!((l.page_tables.pfn, l.page_tables.pages), (0x79, 5));
    assert_eq!(
        l.tables,
        TableFrames {
            l4: Some(0x79),
            l3: (0x7a, 1),
            l2: (0x7b, 1),
            l1: (0x7c, 2),
        }
    );
    assert_eq!(l.boot_stack_pfn, 0x7e);
    assert_eq!(l.hypercall_page_pfn, Some(2));
    assert_eq!(
        (l.mapping_end, l.mapped_pages, l.first_free_pfn),
        (0x40_0000, 0x400, 0x400)
    );
    assert_eq!(
        l.start_info,
        StartInfoValues {
            nr_pages: 8192,
            pt_base: 0x79000,
            nr_pt_frames: 5,
            mfn_list: 0x66000,
            mod_start: 0,
            mod_len: 0,
            first_p2m_pfn: 0,
            nr_p2m_frames: 0,
            flags: SIF_VIRT_P2M_4TOOLS,
            store_mfn: 0x77,
            console_mfn: 0x78,
        }
    );
    assert_eq!(
        l.regs,
        InitialRegs {
            rip: 0,
            rsp: 0x7f000,
            rsi: 0x76000,
            rflags: 0x200,
            cr3_pfn: 0x79,
            cs: 0xe033,
            ds: 0xe02b,
        }
    );
}

#[test]
fn mini_os_layout_in_32_mib() {
    let l = PvLayout::compute(&mini_os_model(), &request(32, None)).unwrap();
    check_mini_os(&l);
}

#[test]
fn real_mini_os_gives_the_same_layout() {
    let Some(image) = shared_guest("mini-os-blk") else {
        eprintln!("SKIPPED real_mini_os_gives_the_same_layout: ../shared/guests/mini-os-blk not found (set RXEN_GUESTS_DIR)");
        return;
    };
    let kernel = PvKernel::parse(&image).unwrap();
    let l = PvLayout::compute(&kernel, &request(32, None)).unwrap();
    check_mini_os(&l);
    assert_eq!(l.segments[0].file_offset, 0x1000);
    assert_eq!(l.segments[1].file_offset, 0x18060);
}

#[test]
fn mini_os_needs_memory_for_its_whole_mapping() {
    // The bootstrap mapping reaches pfn 0x3ff, so 1023 pages are too few.
    let r = LayoutRequest {
        nr_pages: 1023,
        ramdisk_bytes: None,
        vcpus: 1,
    };
    assert_eq!(
        PvLayout::compute(&mini_os_model(), &r),
        Err(LayoutError::MappingTooLarge {
            last: 0x3ff,
            total: 1023
        })
    );
    let r = LayoutRequest {
        nr_pages: 1024,
        ..r
    };
    assert!(PvLayout::compute(&mini_os_model(), &r).is_ok());
    let r = LayoutRequest { nr_pages: 100, ..r };
    assert!(matches!(
        PvLayout::compute(&mini_os_model(), &r),
        Err(LayoutError::OutOfMemory {
            what: "the kernel",
            ..
        })
    ));
}

#[test]
fn real_pv_grub_layout() {
    let Some(image) = pv_grub() else {
        eprintln!(
            "SKIPPED real_pv_grub_layout: PV-GRUB not found; set RXEN_PVGRUB to grub-x86_64-xen.bin \
(apt-get download grub-xen-host; dpkg-deb -x) or install grub-xen-host"
        );
        return;
    };
    let kernel = PvKernel::parse(&image).unwrap();
    assert_eq!((kernel.virt_kstart, kernel.virt_kend), (0, 0x613dc8));
    let l = PvLayout::compute(&kernel, &request(32, None)).unwrap();
    assert_eq!((l.kernel.pfn, l.kernel.pages), (0, 0x614));
    // The second segment starts inside a page (0x41e1f0).
    assert_eq!(l.segments[1].guest_phys, 0x41e1f0);
    assert_eq!((l.p2m.pfn, l.p2m.pages), (0x614, 16));
    assert_eq!(
        (l.start_info_pfn, l.xenstore_pfn, l.console_pfn),
        (0x624, 0x625, 0x626)
    );
    assert_eq!(
        l.tables,
        TableFrames {
            l4: Some(0x627),
            l3: (0x628, 1),
            l2: (0x629, 1),
            l1: (0x62a, 4),
        }
    );
    assert_eq!(l.boot_stack_pfn, 0x62e);
    assert_eq!(l.hypercall_page_pfn, None);
    assert_eq!((l.mapping_end, l.first_free_pfn), (0x80_0000, 0x800));
    assert_eq!(
        (l.regs.rip, l.regs.rsp, l.regs.rsi, l.regs.cr3_pfn),
        (0, 0x62f000, 0x624000, 0x627)
    );
    assert_eq!(
        (
            l.start_info.pt_base,
            l.start_info.nr_pt_frames,
            l.start_info.mfn_list
        ),
        (0x627000, 7, 0x614000)
    );
}

const LINUX_BASE: u64 = 0xffff_ffff_8000_0000;

/// A made-up Linux-like kernel: VIRT_BASE 0xffffffff80000000, PADDR_OFFSET 0,
/// p_paddr 16 MiB, a second segment starting inside a page, the hypercall page in it.
fn linux_like(extra_notes: &[u8]) -> PvKernel {
    let mut notes = xen(XEN_ELFNOTE_GUEST_OS, b"linux\0");
    notes.extend(xen(XEN_ELFNOTE_XEN_VERSION, b"xen-3.0\0"));
    notes.extend(xen(XEN_ELFNOTE_VIRT_BASE, &LINUX_BASE.to_le_bytes()));
    notes.extend(xen(XEN_ELFNOTE_PADDR_OFFSET, &0u64.to_le_bytes()));
    notes.extend(xen(
        XEN_ELFNOTE_ENTRY,
        &0xffff_ffff_8100_0200u64.to_le_bytes(),
    ));
    notes.extend(xen(
        XEN_ELFNOTE_HYPERCALL_PAGE,
        &0xffff_ffff_8100_1000u64.to_le_bytes(),
    ));
    notes.extend(xen(
        XEN_ELFNOTE_FEATURES,
        b"!writable_page_tables|pae_pgdir_above_4gb\0",
    ));
    notes.extend_from_slice(extra_notes);
    let image = ElfBuilder::new(0xffff_ffff_8100_0000)
        .load(0xffff_ffff_8100_0000, 0x100_0000, 0x3000, 0x7f_f000)
        .load(0xffff_ffff_817f_f100, 0x17f_f100, 0x100, 0x20_0f00)
        .note_segment(&notes)
        .build();
    PvKernel::parse(&image).unwrap()
}

#[test]
fn linux_like_layout_with_mapped_initrd() {
    let k = linux_like(&[]);
    assert_eq!(
        (k.virt_kstart, k.virt_kend),
        (0xffff_ffff_8100_0000, 0xffff_ffff_81a0_0000)
    );
    let l = PvLayout::compute(&k, &request(256, Some(MIB + 5))).unwrap();
    assert_eq!(l.kernel_padding_pages, 0x1000);
    assert_eq!((l.kernel.pfn, l.kernel.pages), (0x1000, 0xa00));
    assert_eq!(l.segments[1].guest_phys, 0x17f_f100);
    assert_eq!(l.segments[1].vaddr, 0xffff_ffff_817f_f100);
    let rd = l.ramdisk.unwrap();
    assert!(l.ramdisk_mapped);
    assert_eq!(
        (rd.pfn, rd.pages, rd.vstart),
        (0x1a00, 0x101, 0xffff_ffff_81a0_0000)
    );
    assert_eq!((l.p2m.pfn, l.p2m.pages), (0x1b01, 0x80));
    assert_eq!(
        (l.start_info_pfn, l.xenstore_pfn, l.console_pfn),
        (0x1b81, 0x1b82, 0x1b83)
    );
    assert_eq!(
        l.tables,
        TableFrames {
            l4: Some(0x1b84),
            l3: (0x1b85, 1),
            l2: (0x1b86, 1),
            l1: (0x1b87, 16),
        }
    );
    assert_eq!(l.boot_stack_pfn, 0x1b97);
    assert_eq!(l.hypercall_page_pfn, Some(0x1001));
    assert_eq!(
        (l.mapping_end, l.mapped_pages),
        (0xffff_ffff_8200_0000, 0x2000)
    );
    assert_eq!(
        l.start_info,
        StartInfoValues {
            nr_pages: 65536,
            pt_base: 0xffff_ffff_81b8_4000,
            nr_pt_frames: 19,
            mfn_list: 0xffff_ffff_81b0_1000,
            mod_start: 0xffff_ffff_81a0_0000,
            mod_len: 0x10_1000,
            first_p2m_pfn: 0,
            nr_p2m_frames: 0,
            flags: SIF_VIRT_P2M_4TOOLS,
            store_mfn: 0x1b82,
            console_mfn: 0x1b83,
        }
    );
    assert_eq!(
        (l.regs.rip, l.regs.rsp, l.regs.rsi, l.regs.cr3_pfn),
        (
            0xffff_ffff_8100_0200,
            0xffff_ffff_81b9_8000,
            0xffff_ffff_81b8_1000,
            0x1b84
        )
    );
}

#[test]
fn linux_like_layout_with_init_p2m_and_unmapped_initrd() {
    let mut extra = xen(XEN_ELFNOTE_INIT_P2M, &0x80_0000_0000u64.to_le_bytes());
    extra.extend(xen(XEN_ELFNOTE_MOD_START_PFN, &1u32.to_le_bytes()));
    let k = linux_like(&extra);
    let l = PvLayout::compute(&k, &request(256, Some(MIB + 5))).unwrap();
    assert_eq!((l.kernel.pfn, l.kernel.pages), (0x1000, 0xa00));
    assert_eq!(
        (l.start_info_pfn, l.xenstore_pfn, l.console_pfn),
        (0x1a00, 0x1a01, 0x1a02)
    );
    assert_eq!(
        l.tables,
        TableFrames {
            l4: Some(0x1a03),
            l3: (0x1a04, 1),
            l2: (0x1a05, 1),
            l1: (0x1a06, 14),
        }
    );
    assert_eq!(l.boot_stack_pfn, 0x1a14);
    assert_eq!(
        (l.mapping_end, l.mapped_pages),
        (0xffff_ffff_81c0_0000, 0x1c00)
    );
    let rd = l.ramdisk.unwrap();
    assert!(!l.ramdisk_mapped);
    assert_eq!((rd.pfn, rd.pages), (0x1c00, 0x101));
    assert_eq!(
        (l.p2m.pfn, l.p2m.pages, l.p2m.vstart),
        (0x1d01, 0x83, 0x80_0000_0000)
    );
    assert_eq!(
        l.p2m_tables,
        Some(TableFrames {
            l4: None,
            l3: (0x1d81, 1),
            l2: (0x1d82, 1),
            l1: (0x1d83, 1),
        })
    );
    assert_eq!(l.first_free_pfn, 0x1d84);
    let si = l.start_info;
    assert_eq!((si.mod_start, si.mod_len), (0x1c00, 0x10_1000));
    assert_eq!(si.flags, SIF_VIRT_P2M_4TOOLS | SIF_MOD_START_PFN);
    assert_eq!(
        (si.mfn_list, si.first_p2m_pfn, si.nr_p2m_frames),
        (0x80_0000_0000, 0x1d01, 0x83)
    );
    assert_eq!((si.pt_base, si.nr_pt_frames), (0xffff_ffff_81a0_3000, 17));
    assert_eq!(l.regs.rsp, 0xffff_ffff_81a1_5000);
}

#[test]
fn init_p2m_above_virt_base_or_unaligned_is_ignored() {
    for base in [0xffff_ffff_c000_0000u64, 0x80_0000_0800] {
        let k = linux_like(&xen(XEN_ELFNOTE_INIT_P2M, &base.to_le_bytes()));
        let l = PvLayout::compute(&k, &request(256, None)).unwrap();
        assert_eq!(l.p2m_tables, None);
        assert_eq!(l.p2m.pfn, 0x1a00);
        assert_eq!(l.start_info.first_p2m_pfn, 0);
    }
}

#[test]
fn bad_requests_are_typed_errors() {
    let k = mini_os_model();
    let r = LayoutRequest {
        nr_pages: 8192,
        ramdisk_bytes: None,
        vcpus: 0,
    };
    assert_eq!(PvLayout::compute(&k, &r), Err(LayoutError::NoVcpus));
    let r = LayoutRequest {
        nr_pages: u64::MAX,
        vcpus: 1,
        ..r
    };
    assert_eq!(
        PvLayout::compute(&k, &r),
        Err(LayoutError::TooManyPages(u64::MAX))
    );
    let r = LayoutRequest {
        nr_pages: 8192,
        vcpus: 1,
        ramdisk_bytes: Some(u64::MAX),
    };
    assert_eq!(PvLayout::compute(&k, &r), Err(LayoutError::Overflow));
    let r = LayoutRequest {
        ramdisk_bytes: Some(64 * MIB),
        ..r
    };
    assert!(matches!(
        PvLayout::compute(&k, &r),
        Err(LayoutError::OutOfMemory {
            what: "the initrd",
            ..
        })
    ));
    let mut unaligned = k.clone();
    unaligned.virt_kstart = 0x1234;
    unaligned.virt_kend = 0x5000;
    let r = LayoutRequest {
        ramdisk_bytes: None,
        ..r
    };
    assert_eq!(
        PvLayout::compute(&unaligned, &r),
        Err(LayoutError::NotPageAligned(0x1234))
    );
    let mut outside = k.clone();
    outside.hypercall_page = Some(0x10_0000);
    assert_eq!(
        PvLayout::compute(&outside, &r),
        Err(LayoutError::HypercallPageOutsideKernel(0x10_0000))
    );
}
