//! The domain builder: lays out a new domain's memory the way `docs/guest-abi.md`
//! describes (page tables, `start_info`, `shared_info`, hypercall page, boot stack)
//! and loads the guest image.

use rxen_abi::layout::*;
use rxen_abi::xen::{StartInfo, MAX_GUEST_CMDLINE};
use rxen_abi::PAGE_SIZE;
use zerocopy::FromZeros;

use rxen_vmm_api::BootReport;

use crate::elf::{ElfError, ElfImage};
use crate::memory::{GuestRam, MemoryError};

const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITE: u64 = 1 << 1;
const PTE_USER: u64 = 1 << 2;
const PTE_LARGE: u64 = 1 << 7;
const PTE_NX: u64 = 1 << 63;

/// Errors of building a domain.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("guest image rejected: {0}")]
    Elf(#[from] ElfError),
    #[error("guest memory: {0}")]
    Memory(#[from] MemoryError),
    #[error("command line is {0} bytes; at most {max} allowed", max = MAX_GUEST_CMDLINE - 1)]
    CmdlineTooLong(usize),
}

/// What the builder produced: where the guest starts.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct BootInfo {
    pub entry: u64,
    pub stack_top: u64,
    pub start_info: u64,
    pub cr3: u64,
    pub nr_pt_frames: u64,
    /// End of the loaded image.
    pub image_end: u64,
    /// The xenstore and console rings as written into `start_info`.
    pub report: BootReport,
    /// Virtual address of the `syscall` stub (`MSR_LSTAR`).
    pub syscall_stub: u64,
    /// Virtual address of the TSS (the TR base) of vCPU 0; [`BootInfo::tss_base_of`]
    /// gives each vCPU's.
    pub tss_base: u64,
    /// Code and data selectors vCPU 0 starts with (Xen's flat selectors for PV
    /// kernels; rxen's `0x33`/`0x2b` otherwise).
    pub selectors: (u16, u16),
    /// rxen's GDT, IDT and trap stubs (loaded into every vCPU's sregs).
    pub traps: crate::traps::pages::TrapLayout,
    /// The read-only M2P whose guest reads are emulated (Xen PV domains only).
    pub m2p: Option<crate::pv::rxen_area::M2pWindow>,
}

impl BootInfo {
    /// The TR base of vCPU `vcpu`: in a Xen PV domain each vCPU has its own TSS (and so
    /// its own `IST1` exception stack, `crate::pv::rxen_area`); rxen's own layout has
    /// one TSS without stacks for all.
    pub fn tss_base_of(&self, vcpu: u32) -> u64 {
        if self.m2p.is_some() {
            crate::pv::rxen_area::tss_va(vcpu)
        } else {
            self.tss_base
        }
    }
}

/// Event channels the builder wires into `start_info`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct BootChannels {
    pub store_evtchn: u32,
    pub console_evtchn: u32,
}

/// Access rights of a 4 KiB page in the small-page region, or `None` if unmapped.
fn small_page_flags(addr: u64) -> Option<u64> {
    let rw_data = PTE_PRESENT | PTE_WRITE | PTE_USER | PTE_NX;
    match addr {
        START_INFO | SHARED_INFO | XENSTORE_PAGE | CONSOLE_PAGE => Some(rw_data),
        HYPERCALL_PAGE => Some(PTE_PRESENT | PTE_USER),
        // Read-only and executable: `syscall` jumps here without leaving CPL 3 on this
        // host (see `vcpu::syscall`).
        SYSCALL_STUB => Some(PTE_PRESENT | PTE_USER),
        // rxen's exception delivery (`crate::traps`): read-only; only the stubs execute.
        GDT | IDT => Some(PTE_PRESENT | PTE_USER | PTE_NX),
        TRAP_STUBS => Some(PTE_PRESENT | PTE_USER),
        a if (PAGE_TABLES..PAGE_TABLES_END).contains(&a) || (TSS..TSS_END).contains(&a) => {
            Some(PTE_PRESENT | PTE_USER | PTE_NX)
        }
        a if (BOOT_STACK_BOTTOM..BOOT_STACK_TOP).contains(&a) => Some(rw_data),
        _ => None,
    }
}

/// Writes the identity-mapping page tables for `ram_size` bytes; returns the number of
/// page-table frames used.
fn build_page_tables(ram: &GuestRam) -> Result<u64, MemoryError> {
    let gib = ram.size().div_ceil(1 << 30);
    let pml4 = PAGE_TABLES;
    let pdpt = pml4 + PAGE_SIZE;
    let pd_base = pdpt + PAGE_SIZE;
    let pt_base = pd_base + gib * PAGE_SIZE;
    let small_pts = SMALL_PAGE_REGION / (2 << 20);
    let frames = 2 + gib + small_pts;
    assert!(
        PAGE_TABLES + frames * PAGE_SIZE <= PAGE_TABLES_END,
        "layout holds 16 GiB of tables"
    );
    let table = PTE_PRESENT | PTE_WRITE | PTE_USER;
    ram.write_obj(pml4, &(pdpt | table))?;
    for g in 0..gib {
        ram.write_obj(pdpt + g * 8, &((pd_base + g * PAGE_SIZE) | table))?;
    }
    // 2 MiB mappings for everything above the small-page region.
    let mut entries = vec![0u64; (gib * 512) as usize];
    for (i, e) in entries.iter_mut().enumerate() {
        let addr = i as u64 * (2 << 20);
        if addr < SMALL_PAGE_REGION {
            *e = (pt_base + (addr / (2 << 20)) * PAGE_SIZE) | table;
        } else if addr < ram.size() {
            *e = addr | PTE_PRESENT | PTE_WRITE | PTE_USER | PTE_LARGE;
        }
    }
    ram.write(pd_base, zerocopy::IntoBytes::as_bytes(entries.as_slice()))?;
    let mut ptes = vec![0u64; (small_pts * 512) as usize];
    for (i, e) in ptes.iter_mut().enumerate() {
        let addr = i as u64 * PAGE_SIZE;
        if let Some(flags) = small_page_flags(addr) {
            *e = addr | flags;
        }
    }
    ram.write(pt_base, zerocopy::IntoBytes::as_bytes(ptes.as_slice()))?;
    Ok(frames)
}

/// Fills the hypercall page: entry `nr` loads `nr` into `eax`, traps to the VMM with
/// `out HYPERCALL_PORT, eax`, and returns; the VMM leaves the result in `rax`.
fn build_hypercall_page(ram: &GuestRam) -> Result<(), MemoryError> {
    let mut page = [0xCCu8; PAGE_SIZE as usize];
    for nr in 0..HYPERCALL_ENTRIES {
        let at = (nr * HYPERCALL_ENTRY_SIZE) as usize;
        page[at] = 0xB8; // mov eax, imm32
        page[at + 1..at + 5].copy_from_slice(&(nr as u32).to_le_bytes());
        page[at + 5] = 0xE7; // out imm8, eax
        page[at + 6] = HYPERCALL_PORT as u8;
        page[at + 7] = 0xC3; // ret
    }
    ram.write(HYPERCALL_PAGE, &page)
}

/// Builds the domain: loads `image`, writes page tables, hypercall page and
/// `start_info`. `shared_info` is left zeroed (the clock code fills its time fields).
pub fn build(
    ram: &GuestRam,
    image: &[u8],
    cmdline: &str,
    channels: BootChannels,
) -> Result<BootInfo, BuildError> {
    if cmdline.len() >= MAX_GUEST_CMDLINE {
        return Err(BuildError::CmdlineTooLong(cmdline.len()));
    }
    let elf = ElfImage::parse(image, ram.size())?;
    elf.load(ram)?;
    let nr_pt_frames = build_page_tables(ram)?;
    build_hypercall_page(ram)?;
    ram.write(SYSCALL_STUB, &crate::vcpu::syscall::stub_page())?;
    crate::tss::write_tss(ram, TSS)?;
    ram.write(GDT, &crate::traps::pages::gdt_page())?;
    ram.write(IDT, &crate::traps::pages::idt_page())?;
    ram.write(TRAP_STUBS, &crate::traps::pages::stub_page())?;

    let mut si = StartInfo::new_zeroed();
    si.magic[..START_INFO_MAGIC.len()].copy_from_slice(START_INFO_MAGIC);
    si.nr_pages = ram.nr_pages();
    si.shared_info = SHARED_INFO;
    si.store_mfn = XENSTORE_PAGE / PAGE_SIZE;
    si.store_evtchn = channels.store_evtchn;
    si.console_mfn = CONSOLE_PAGE / PAGE_SIZE;
    si.console_evtchn = channels.console_evtchn;
    si.pt_base = PAGE_TABLES;
    si.nr_pt_frames = nr_pt_frames;
    si.cmd_line[..cmdline.len()].copy_from_slice(cmdline.as_bytes());
    ram.write_obj(START_INFO, &si)?;
    let report = BootReport {
        store_mfn: si.store_mfn,
        store_evtchn: si.store_evtchn,
        console_mfn: si.console_mfn,
        console_evtchn: si.console_evtchn,
    };

    Ok(BootInfo {
        entry: elf.entry,
        stack_top: BOOT_STACK_TOP,
        start_info: START_INFO,
        cr3: PAGE_TABLES,
        nr_pt_frames,
        image_end: elf.end(),
        report,
        syscall_stub: SYSCALL_STUB,
        tss_base: TSS,
        selectors: (crate::vcpu::regs::USER_CS, crate::vcpu::regs::USER_DS),
        traps: crate::traps::pages::TrapLayout::rxen(),
        m2p: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::tests::build_elf;

    #[test]
    fn builds_layout() {
        let ram = GuestRam::new("b", 32 << 20).unwrap();
        let img = build_elf(0x400000, &[(0x400000, 16, 16, 5)], 62, 2);
        let boot = build(
            &ram,
            &img,
            "hello=1",
            BootChannels {
                store_evtchn: 1,
                console_evtchn: 2,
            },
        )
        .unwrap();
        assert_eq!(boot.entry, 0x400000);
        assert_eq!(boot.nr_pt_frames, 5);
        let si: StartInfo = ram.read_obj(START_INFO).unwrap();
        assert_eq!(&si.magic[..14], b"xen-3.0-x86_64");
        assert_eq!(si.nr_pages, 8192);
        assert_eq!(si.console_evtchn, 2);
        assert_eq!(
            boot.report,
            BootReport {
                store_mfn: si.store_mfn,
                store_evtchn: 1,
                console_mfn: si.console_mfn,
                console_evtchn: 2,
            }
        );
        assert_eq!(&si.cmd_line[..8], b"hello=1\0");
        // PML4[0] -> PDPT, user + present.
        let pml4e: u64 = ram.read_obj(PAGE_TABLES).unwrap();
        assert_eq!(pml4e & !0xfff, PAGE_TABLES + PAGE_SIZE);
        assert_eq!(pml4e & 7, 7);
        // Page 0 unmapped, hypercall page read-only.
        let pt0 = PAGE_TABLES + 3 * PAGE_SIZE;
        assert_eq!(ram.read_obj::<u64>(pt0).unwrap(), 0);
        let hc: u64 = ram.read_obj(pt0 + 3 * 8).unwrap();
        assert_eq!(hc & PTE_WRITE, 0);
        assert_eq!(hc & PTE_PRESENT, 1);
        // Hypercall entry 29 = mov eax, 29; out 0xCA, eax; ret.
        let mut e = [0u8; 8];
        ram.read(HYPERCALL_PAGE + 29 * 32, &mut e).unwrap();
        assert_eq!(e, [0xB8, 29, 0, 0, 0, 0xE7, 0xCA, 0xC3]);
        // The syscall stub: present, read-only, executable.
        let stub: u64 = ram.read_obj(pt0 + (SYSCALL_STUB / PAGE_SIZE) * 8).unwrap();
        assert_eq!(stub, SYSCALL_STUB | PTE_PRESENT | PTE_USER);
        let mut first = [0u8; 2];
        ram.read(SYSCALL_STUB, &mut first).unwrap();
        assert_eq!(first, [0xE6, SYSCALL_STUB_PORT as u8]);
        // rxen's IDT, GDT and trap stubs: read-only; only the stubs executable.
        for (page, nx) in [(GDT, PTE_NX), (IDT, PTE_NX), (TRAP_STUBS, 0)] {
            let pte: u64 = ram.read_obj(pt0 + (page / PAGE_SIZE) * 8).unwrap();
            assert_eq!(pte, page | PTE_PRESENT | PTE_USER | nx);
        }
        let mut stub = [0u8; 2];
        ram.read(TRAP_STUBS + 14 * 16, &mut stub).unwrap();
        assert_eq!(stub, [0xE6, TRAP_STUB_PORT as u8]);
        let tss_bitmap: u8 = ram
            .read_obj(TSS + TSS_IOMAP_OFFSET + u64::from(TRAP_STUB_PORT) / 8)
            .unwrap();
        assert_eq!(
            tss_bitmap & (1 << (TRAP_STUB_PORT % 8)),
            0,
            "trap port allowed"
        );
    }

    #[test]
    fn rejects_long_cmdline() {
        let ram = GuestRam::new("b", 8 << 20).unwrap();
        let img = build_elf(0x400000, &[(0x400000, 16, 16, 5)], 62, 2);
        let long = "x".repeat(1024);
        assert!(matches!(
            build(&ram, &img, &long, BootChannels::default()),
            Err(BuildError::CmdlineTooLong(1024))
        ));
    }
}
