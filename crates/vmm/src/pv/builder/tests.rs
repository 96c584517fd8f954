use super::*;
use crate::memory::GuestRam;
use crate::pv::elfnotes::*;
use crate::pv::mmu::entry::{PAGE_GUEST_KERNEL, PAGE_USER};
use crate::pv::mmu::FrameType;
use crate::pv::ram_frames::RamFrames;
use crate::pv::testelf::{pv_grub, shared_guest, xen, ElfBuilder};
use zerocopy::FromBytes;

const MIB: u64 = 1 << 20;
const SHARED_INFO_MADDR: u64 = 0xfee0_0000;

fn config(cmdline: &str, ramdisk: Option<&'static [u8]>) -> PvBuildConfig<'static> {
    let cmdline: &'static str = Box::leak(cmdline.to_owned().into_boxed_str());
    PvBuildConfig {
        nr_pages: u64::MAX,
        ramdisk,
        cmdline,
        vcpus: 1,
        shared_info_maddr: SHARED_INFO_MADDR,
        store_evtchn: 1,
        console_evtchn: 2,
    }
}

fn read_u64(ram: &GuestRam, addr: u64) -> u64 {
    ram.read_obj::<u64>(addr).unwrap()
}

/// Walks the 4-level tables from `cr3_pfn`: the pfn `va` maps to and the flags of
/// every level ANDed for P/RW/U (what the CPU checks), the L1 entry's flags otherwise.
fn translate(ram: &GuestRam, cr3_pfn: u64, va: u64) -> Option<(u64, u64)> {
    let mut table = cr3_pfn;
    let mut rights = PAGE_PRESENT | PAGE_RW | PAGE_USER;
    for shift in [39u32, 30, 21, 12] {
        let index = (va >> shift) & 511;
        let e = read_u64(ram, table * PAGE_SIZE + index * 8);
        if e & PAGE_PRESENT == 0 {
            return None;
        }
        rights &= e;
        table = (e & 0x000f_ffff_ffff_f000) >> 12;
        if shift == 12 {
            return Some((
                table,
                (e & !0x000f_ffff_ffff_f000 & !rights_mask()) | rights,
            ));
        }
    }
    None
}

fn rights_mask() -> u64 {
    PAGE_PRESENT | PAGE_RW | PAGE_USER
}

/// Every pfn below `mapped_pages` is mapped at `VIRT_BASE + pfn * 4096`, user-
/// accessible, writable unless a page table; nothing maps just past the mapping.
fn check_mapping(ram: &GuestRam, built: &BuiltPvDomain) {
    let l = &built.layout;
    let pt = l.page_tables.pfn..l.page_tables.pfn_end();
    for pfn in 0..l.mapped_pages {
        let va = l.virt_base.wrapping_add(pfn * PAGE_SIZE);
        let (got, flags) = translate(ram, built.regs.cr3_pfn, va)
            .unwrap_or_else(|| panic!("va {va:#x} (pfn {pfn:#x}) unmapped"));
        assert_eq!(got, pfn, "va {va:#x}");
        assert_ne!(flags & PAGE_USER, 0, "va {va:#x} not user-accessible");
        assert_ne!(
            flags & PAGE_GUEST_KERNEL,
            0,
            "va {va:#x} lacks Xen's marker"
        );
        assert_eq!(
            flags & PAGE_RW != 0,
            !pt.contains(&pfn),
            "va {va:#x}: page tables read-only, the rest writable"
        );
    }
    let past = l.virt_base.wrapping_add(l.mapped_pages * PAGE_SIZE);
    assert_eq!(translate(ram, built.regs.cr3_pfn, past), None);
}

fn check_mmu_state(built: &BuiltPvDomain) {
    let l = &built.layout;
    let t = &l.tables;
    let l4 = t.l4.unwrap();
    let info = built.mmu.frame(l4).unwrap();
    assert!(info.pinned);
    assert_eq!(info.ty, FrameType::Table(Level::L4));
    assert_eq!(built.mmu.vcpu(0).unwrap().kernel, Some(l4));
    for (range, level) in [(t.l3, Level::L3), (t.l2, Level::L2), (t.l1, Level::L1)] {
        for f in range.0..range.0 + range.1 {
            assert_eq!(built.mmu.frame(f).unwrap().table_level(), Some(level));
        }
    }
    // Data pages mapped writable hold the writable type.
    let stack = built.mmu.frame(l.boot_stack_pfn).unwrap();
    assert_eq!(stack.ty, FrameType::Writable);
}

fn start_info_of(ram: &GuestRam, built: &BuiltPvDomain) -> StartInfo {
    let mut page = vec![0u8; PAGE_SIZE as usize];
    ram.read(built.layout.start_info_pfn * PAGE_SIZE, &mut page)
        .unwrap();
    StartInfo::read_from_prefix(&page).unwrap().0
}

#[test]
fn real_mini_os_is_built_like_xen_builds_it() {
    let Some(image) = shared_guest("mini-os-blk") else {
        eprintln!("SKIPPED real_mini_os_is_built_like_xen_builds_it: ../shared/guests/mini-os-blk not found (set RXEN_GUESTS_DIR)");
        return;
    };
    let ram = GuestRam::new("pvb-minios", 32 * MIB).unwrap();
    let mut mem = RamFrames::new(&ram);
    let built = build(&mut mem, &image, &config("console=hvc0 x", None)).unwrap();
    let l = &built.layout;
    // The layout docs/guest-abi.md lists for Mini-OS in 32 MiB.
    assert_eq!(l.start_info_pfn, 0x76);
    assert_eq!((l.page_tables.pfn, l.page_tables.pages), (0x79, 5));
    assert_eq!(l.hypercall_page_pfn, Some(2));
    assert_eq!(
        (built.regs.rip, built.regs.rsi, built.regs.rsp),
        (0, 0x76000, 0x7f000)
    );
    assert_eq!(built.regs.cr3_pfn, 0x79);

    let si = start_info_of(&ram, &built);
    assert_eq!(&si.magic[..14], b"xen-3.0-x86_64");
    assert!(si.magic[14..].iter().all(|&b| b == 0));
    assert_eq!(si.nr_pages, 32 * MIB / PAGE_SIZE);
    assert_eq!(si.shared_info, SHARED_INFO_MADDR);
    assert_eq!(si.flags, crate::pv::layout::SIF_VIRT_P2M_4TOOLS);
    assert_eq!((si.store_mfn, si.store_evtchn), (0x77, 1));
    assert_eq!((si.console_mfn, si.console_evtchn), (0x78, 2));
    assert_eq!((si.pt_base, si.nr_pt_frames), (0x79000, 5));
    assert_eq!(si.mfn_list, 0x66000);
    assert_eq!((si.mod_start, si.mod_len), (0, 0));
    assert_eq!(&si.cmd_line[..16], b"console=hvc0 x\0\0");
    assert_eq!((si.first_p2m_pfn, si.nr_p2m_frames), (0, 0));

    // P2M: mfn == pfn for all 8192 pages (16 pages of entries, all valid).
    for pfn in [0u64, 1, 0x76, 8191] {
        assert_eq!(read_u64(&ram, 0x66000 + pfn * 8), pfn);
    }
    // The hypercall page, Xen's layout, entry 18 (console_io) and iret.
    let mut hc = vec![0u8; 4096];
    ram.read(0x2000, &mut hc).unwrap();
    assert_eq!(hc, xen_pv64_hypercall_page().to_vec());
    // The kernel's first bytes are the ELF's first segment's.
    let kernel = PvKernel::parse(&image).unwrap();
    let seg = kernel.segments[0];
    let mut first = [0u8; 16];
    ram.read(seg.offset_in_kernel, &mut first).unwrap();
    let off = seg.file_offset as usize;
    assert_eq!(&first, &image[off..off + 16]);

    check_mapping(&ram, &built);
    check_mmu_state(&built);
    built.mmu.audit(&mem).unwrap();
}

#[test]
fn real_pv_grub_is_built() {
    let Some(image) = pv_grub() else {
        eprintln!(
            "SKIPPED real_pv_grub_is_built: PV-GRUB not found (RXEN_PVGRUB or grub-xen-host)"
        );
        return;
    };
    let ram = GuestRam::new("pvb-grub", 32 * MIB).unwrap();
    let mut mem = RamFrames::new(&ram);
    let built = build(&mut mem, &image, &config("", None)).unwrap();
    assert_eq!(built.layout.hypercall_page_pfn, None);
    assert_eq!(start_info_of(&ram, &built).pt_base, 0x627000);
    check_mapping(&ram, &built);
    check_mmu_state(&built);
    built.mmu.audit(&mem).unwrap();
}

const LINUX_BASE: u64 = 0xffff_ffff_8000_0000;

/// A Linux-like image high in the address space (L4 slot 511), with a hypercall page
/// and a segment starting inside a page.
fn linux_like() -> Vec<u8> {
    let mut notes = xen(XEN_ELFNOTE_GUEST_OS, b"linux\0");
    notes.extend(xen(XEN_ELFNOTE_XEN_VERSION, b"xen-3.0\0"));
    notes.extend(xen(XEN_ELFNOTE_VIRT_BASE, &LINUX_BASE.to_le_bytes()));
    notes.extend(xen(XEN_ELFNOTE_PADDR_OFFSET, &0u64.to_le_bytes()));
    notes.extend(xen(
        XEN_ELFNOTE_HYPERCALL_PAGE,
        &0xffff_ffff_8010_1000u64.to_le_bytes(),
    ));
    ElfBuilder::new(0xffff_ffff_8010_0000)
        .load(0xffff_ffff_8010_0000, 0x10_0000, 0x3000, 0x4000)
        .load(0xffff_ffff_8010_4100, 0x10_4100, 0x100, 0x2000)
        .note_segment(&notes)
        .build()
}

#[test]
fn high_kernel_with_initrd_is_mapped_and_loaded() {
    static RAMDISK: [u8; 5000] = [0xab; 5000];
    let image = linux_like();
    let ram = GuestRam::new("pvb-linux", 16 * MIB).unwrap();
    // Dirty memory that the builder must zero (BSS, the gap between segments).
    ram.write(0x10_3000, &[0xee; 0x1000]).unwrap();
    ram.write(0x10_6000, &[0xee; 0x10]).unwrap();
    let mut mem = RamFrames::new(&ram);
    let built = build(&mut mem, &image, &config("root=/dev/xvda1", Some(&RAMDISK))).unwrap();
    let l = &built.layout;
    assert_eq!(l.kernel.pfn, 0x100);
    let mut b = [0u8; 16];
    ram.read(0x10_0000, &mut b).unwrap();
    assert_eq!(b, [0x90; 16]);
    ram.read(0x10_3000, &mut b).unwrap();
    assert_eq!(b, [0; 16], "BSS of the first segment zeroed");
    ram.read(0x10_40f8, &mut b).unwrap();
    assert_eq!(&b[..8], &[0; 8], "gap before the second segment zeroed");
    assert_eq!(&b[8..], &[0x90; 8], "second segment starts at 0x104100");
    ram.read(0x10_6000, &mut b).unwrap();
    assert_eq!(b, [0; 16], "BSS of the second segment zeroed");
    // Hypercall page at pfn 0x101 overwrote the kernel bytes there.
    ram.read(0x10_1000, &mut b).unwrap();
    assert_eq!(&b[..4], &[0x51, 0x41, 0x53, 0xb8]);
    // Initrd, mapped, page-rounded length.
    let rd = l.ramdisk.unwrap();
    let si = start_info_of(&ram, &built);
    assert_eq!((si.mod_start, si.mod_len), (rd.vstart, 2 * PAGE_SIZE));
    let mut r = vec![0u8; 8192];
    ram.read(rd.pfn * PAGE_SIZE, &mut r).unwrap();
    assert!(r[..5000].iter().all(|&x| x == 0xab) && r[5000..].iter().all(|&x| x == 0));
    // P2M: valid entries then !0 to the end of its last page.
    let nr = 16 * MIB / PAGE_SIZE;
    assert_eq!(read_u64(&ram, l.p2m.pfn * PAGE_SIZE + (nr - 1) * 8), nr - 1);
    assert_eq!(l.p2m.pages, 8);
    assert_eq!(&si.cmd_line[..16], b"root=/dev/xvda1\0");
    check_mapping(&ram, &built);
    check_mmu_state(&built);
    built.mmu.audit(&mem).unwrap();
}

#[test]
fn bad_input_is_a_typed_error() {
    let ram = GuestRam::new("pvb-bad", 8 * MIB).unwrap();
    let mut mem = RamFrames::new(&ram);
    let image = linux_like();
    let long = "x".repeat(MAX_GUEST_CMDLINE);
    assert!(matches!(
        build(&mut mem, &image, &config(&long, None)),
        Err(PvBuildError::CmdlineTooLong(1024))
    ));
    assert!(matches!(
        build(&mut mem, &image, &config("a\0b", None)),
        Err(PvBuildError::CmdlineNul)
    ));
    assert!(matches!(
        build(&mut mem, b"not an elf", &config("", None)),
        Err(PvBuildError::Image(_))
    ));
    let mut cfg = config("", None);
    cfg.vcpus = 0;
    assert!(matches!(
        build(&mut mem, &image, &cfg),
        Err(PvBuildError::Layout(_))
    ));
}

/// Linux's `XEN_ELFNOTE_INIT_P2M` (512 GiB, L4 slot 1): the P2M list lies after the
/// bootstrap mapping with tables of its own under the same L4. Failed before:
/// `InitP2mUnsupported`.
#[test]
fn init_p2m_gets_its_own_mapping() {
    const P2M_VA: u64 = 0x80_0000_0000;
    let mut notes = xen(XEN_ELFNOTE_GUEST_OS, b"linux\0");
    notes.extend(xen(XEN_ELFNOTE_XEN_VERSION, b"xen-3.0\0"));
    notes.extend(xen(XEN_ELFNOTE_VIRT_BASE, &LINUX_BASE.to_le_bytes()));
    notes.extend(xen(XEN_ELFNOTE_PADDR_OFFSET, &0u64.to_le_bytes()));
    notes.extend(xen(XEN_ELFNOTE_INIT_P2M, &P2M_VA.to_le_bytes()));
    let image = ElfBuilder::new(0xffff_ffff_8010_0000)
        .load(0xffff_ffff_8010_0000, 0x10_0000, 0x100, 0x1000)
        .note_segment(&notes)
        .build();
    let ram = GuestRam::new("pvb-p2m", 16 * MIB).unwrap();
    let mut mem = RamFrames::new(&ram);
    let built = build(&mut mem, &image, &config("", None)).unwrap();
    let l = &built.layout;
    let si = start_info_of(&ram, &built);
    assert_eq!(si.mfn_list, P2M_VA);
    assert_eq!(
        (si.first_p2m_pfn, si.nr_p2m_frames),
        (l.p2m.pfn, l.p2m.pages)
    );
    assert!(
        l.p2m.pfn >= l.mapped_pages,
        "the list lies after the bootstrap mapping"
    );
    let tables = l.p2m_tables.unwrap();
    assert_eq!(tables.l4, None);
    let list_pages = l.p2m.pages - tables.count();
    let nr = 16 * MIB / PAGE_SIZE;
    assert_eq!(list_pages, nr * 8 / PAGE_SIZE);
    for i in 0..list_pages {
        let va = P2M_VA + i * PAGE_SIZE;
        let (pfn, flags) = translate(&ram, built.regs.cr3_pfn, va).unwrap();
        assert_eq!(pfn, l.p2m.pfn + i, "va {va:#x}");
        assert_ne!(flags & PAGE_RW, 0);
    }
    assert_eq!(
        translate(&ram, built.regs.cr3_pfn, P2M_VA + list_pages * PAGE_SIZE),
        None
    );
    // Read through the mapping: entry i holds i.
    for pfn in [0u64, 1, nr - 1] {
        let (frame, _) = translate(&ram, built.regs.cr3_pfn, P2M_VA + pfn * 8).unwrap();
        assert_eq!(
            read_u64(&ram, frame * PAGE_SIZE + (pfn * 8) % PAGE_SIZE),
            pfn
        );
    }
    for (range, level) in [
        (tables.l3, Level::L3),
        (tables.l2, Level::L2),
        (tables.l1, Level::L1),
    ] {
        for f in range.0..range.0 + range.1 {
            assert_eq!(built.mmu.frame(f).unwrap().table_level(), Some(level));
        }
    }
    check_mapping(&ram, &built);
    check_mmu_state(&built);
    built.mmu.audit(&mem).unwrap();
}
