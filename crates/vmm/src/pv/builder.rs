//! The PV domain builder: writes what Xen's domain builder writes into a fresh
//! domain's memory for a 64-bit PV kernel (`xc_dom_build_image`, xg_dom_x86.c), from
//! the layout [`PvLayout::compute`] gives:
//!
//! * each `PT_LOAD` segment at its pfns, zero-filled to `p_memsz`; the initrd;
//! * the P2M list (`mfn == pfn`: entry i holds i; the rest of its last page `!0`);
//! * `start_info` (magic `xen-3.0-x86_64`, the layout's values, `shared_info` as the
//!   machine address the caller gives, the store and console event channels,
//!   `cmd_line`); the xenstore and console pages and the boot stack zeroed;
//! * the bootstrap page tables: L4 -> L3 -> L2 -> L1 frames in the layout's order,
//!   L1 entries mapping `VIRT_BASE + i * 4096` to pfn i for every pfn below
//!   `mapped_pages` with Xen's flags (`L1_PROT`, and `L1_PROT_RO` for the page-table
//!   frames; `L2_PROT`.. with U and D for the upper levels);
//! * the hypercall page in Xen's layout when the kernel has `HYPERCALL_PAGE`.
//!
//! It then pins the L4 in a fresh direct-paging [`Mmu`] and makes it vCPU 0's base
//! pointer: validation gives every table frame its type and references and stores the
//! L1 entries with U (and Xen's guest-kernel marker), since the kernel runs at CPL 3.
//! The returned `Mmu` is the domain's MMU state from then on.
//!
//! With `INIT_P2M` (Linux) the P2M list lies after the bootstrap mapping and gets a
//! mapping of its own at the note's address: its L3/L2/L1 frames follow the list and
//! hang off the same L4 (`setup_pgtables_pv` over the second `map`). Not done here: the `shared_info` page's contents
//! (events masked in every `vcpu_info`) and vCPU registers — the caller owns both.

use rxen_abi::layout::START_INFO_MAGIC;
use rxen_abi::xen::{StartInfo, MAX_GUEST_CMDLINE};
use zerocopy::{FromZeros, IntoBytes};

use super::hypercall_page::xen_pv64_hypercall_page;
use super::layout::{InitialRegs, LayoutRequest, PvLayout, PAGE_SIZE};
use super::mmu::entry::{Level, PAGE_ACCESSED, PAGE_DIRTY, PAGE_PRESENT, PAGE_RW, PAGE_USER};
use super::mmu::{Mmu, MmuError, Owner};
use super::ram_frames::PhysMemory;
use super::{LayoutError, PvImageError, PvKernel};
use crate::memory::MemoryError;

/// Xen's `L1_PROT` for x86-64 PV (xg_dom_x86.c).
pub const L1_PROT: u64 = PAGE_PRESENT | PAGE_RW | PAGE_ACCESSED;
/// `L1_PROT_RO`: how the page-table frames are mapped.
pub const L1_PROT_RO: u64 = PAGE_PRESENT | PAGE_ACCESSED;
/// `L2_PROT` = `L3_PROT` = `L4_PROT`.
pub const UPPER_PROT: u64 = PAGE_PRESENT | PAGE_RW | PAGE_ACCESSED | PAGE_DIRTY | PAGE_USER;
/// `INVALID_P2M_ENTRY`.
const INVALID_P2M: u64 = !0;
/// Canonical virtual address bits.
const VADDR_MASK: u64 = (1 << 48) - 1;

/// What the domain is built with besides its kernel and memory.
#[derive(Debug, Clone, Copy)]
pub struct PvBuildConfig<'a> {
    /// RAM pages of the domain (`start_info.nr_pages`). Frames of the memory from here
    /// up are rxen's ([`Owner::Rxen`] in the MMU), except the `shared_info` frame.
    pub nr_pages: u64,
    pub ramdisk: Option<&'a [u8]>,
    pub cmdline: &'a str,
    pub vcpus: u32,
    /// Machine address of the domain's `shared_info` page (`start_info.shared_info`).
    pub shared_info_maddr: u64,
    pub store_evtchn: u32,
    pub console_evtchn: u32,
}

/// A built domain: where everything went, the MMU state and vCPU 0's registers.
#[derive(Debug, Clone)]
pub struct BuiltPvDomain {
    pub kernel: PvKernel,
    pub layout: PvLayout,
    pub mmu: Mmu,
    /// vCPU 0's initial registers (`cr3_pfn` is the pinned L4).
    pub regs: InitialRegs,
}

/// Why a PV domain could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PvBuildError {
    #[error("PV kernel: {0}")]
    Image(#[from] PvImageError),
    #[error("PV layout: {0}")]
    Layout(#[from] LayoutError),
    #[error("the command line is {0} bytes; at most {max} fit", max = MAX_GUEST_CMDLINE - 1)]
    CmdlineTooLong(usize),
    #[error("the command line contains a NUL byte")]
    CmdlineNul,
    #[error("writing guest memory: {0}")]
    Memory(#[from] MemoryError),
    #[error("kernel segment at file offset {offset:#x}+{len:#x} lies outside the image")]
    SegmentOutsideImage { offset: u64, len: u64 },
    #[error("page-table layout inconsistent at virtual address {0:#x}")]
    TableLayout(u64),
    #[error("validating the bootstrap page tables: {0}")]
    Mmu(#[from] MmuError),
}

/// Parses `image`, computes its layout for the memory's frames and builds the domain.
pub fn build<M: PhysMemory>(
    mem: &mut M,
    image: &[u8],
    config: &PvBuildConfig<'_>,
) -> Result<BuiltPvDomain, PvBuildError> {
    let kernel = PvKernel::parse(image)?;
    let request = LayoutRequest {
        nr_pages: config.nr_pages.min(mem.nr_frames()),
        ramdisk_bytes: config.ramdisk.map(|r| r.len() as u64),
        vcpus: config.vcpus,
    };
    let layout = PvLayout::compute(&kernel, &request)?;
    let cmdline = cmdline_bytes(config.cmdline)?;
    load_kernel(mem, image, &layout)?;
    if let (Some(data), Some(region)) = (config.ramdisk, layout.ramdisk) {
        write_zero_padded(mem, region.pfn * PAGE_SIZE, data, region.pages * PAGE_SIZE)?;
    }
    write_p2m(mem, &layout)?;
    for pfn in [
        layout.xenstore_pfn,
        layout.console_pfn,
        layout.boot_stack_pfn,
    ] {
        zero_pages(mem, pfn, 1)?;
    }
    let info = start_info(&layout, config, &cmdline);
    write_zero_padded(
        mem,
        layout.start_info_pfn * PAGE_SIZE,
        info.as_bytes(),
        PAGE_SIZE,
    )?;
    if let Some(pfn) = layout.hypercall_page_pfn {
        mem.write_phys(pfn * PAGE_SIZE, &xen_pv64_hypercall_page())?;
    }
    write_page_tables(mem, &layout)?;
    for pfn in 0..layout.first_free_pfn {
        mem.set_m2p(pfn, pfn);
    }
    let mut mmu = Mmu::new(mem.nr_frames(), config.vcpus as usize);
    let si_frame = config.shared_info_maddr / PAGE_SIZE;
    for frame in request.nr_pages..mmu.nr_frames() {
        let owner = if frame == si_frame {
            Owner::SharedInfo
        } else {
            Owner::Rxen
        };
        mmu.set_owner(frame, owner)?;
    }
    let l4 = layout.regs.cr3_pfn;
    mmu.pin(mem, l4, Level::L4)?;
    mmu.new_baseptr(mem, 0, l4)?;
    tracing::debug!(
        pfns = layout.first_free_pfn,
        mapped = layout.mapped_pages,
        l4,
        entry = format_args!("{:#x}", layout.regs.rip),
        "pv builder: domain built"
    );
    Ok(BuiltPvDomain {
        regs: layout.regs,
        kernel,
        layout,
        mmu,
    })
}

fn cmdline_bytes(cmdline: &str) -> Result<Vec<u8>, PvBuildError> {
    let bytes = cmdline.as_bytes();
    if bytes.contains(&0) {
        return Err(PvBuildError::CmdlineNul);
    }
    if bytes.len() >= MAX_GUEST_CMDLINE {
        return Err(PvBuildError::CmdlineTooLong(bytes.len()));
    }
    Ok(bytes.to_vec())
}

/// Writes `data` at `addr` and zeros up to `len` bytes in all.
fn write_zero_padded<M: PhysMemory>(
    mem: &mut M,
    addr: u64,
    data: &[u8],
    len: u64,
) -> Result<(), PvBuildError> {
    mem.write_phys(addr, data)?;
    let mut at = data.len() as u64;
    while at < len {
        let n = (len - at).min(PAGE_SIZE);
        let dest = addr
            .checked_add(at)
            .ok_or(MemoryError::OutOfRange { addr, len, size: 0 })?;
        mem.zero_phys(dest, n as usize)?;
        at += n;
    }
    Ok(())
}

fn zero_pages<M: PhysMemory>(mem: &mut M, pfn: u64, pages: u64) -> Result<(), PvBuildError> {
    write_zero_padded(mem, pfn * PAGE_SIZE, &[], pages * PAGE_SIZE)
}

/// Copies every segment to its pfns and zeros the rest of the kernel's pages (padding
/// between segments, BSS, the tail of the last page).
fn load_kernel<M: PhysMemory>(
    mem: &mut M,
    image: &[u8],
    layout: &PvLayout,
) -> Result<(), PvBuildError> {
    zero_pages(mem, 0, layout.kernel.pfn_end())?;
    for seg in &layout.segments {
        let outside = || PvBuildError::SegmentOutsideImage {
            offset: seg.file_offset,
            len: seg.filesz,
        };
        let start = usize::try_from(seg.file_offset).map_err(|_| outside())?;
        let len = usize::try_from(seg.filesz).map_err(|_| outside())?;
        let bytes = start
            .checked_add(len)
            .and_then(|end| image.get(start..end))
            .ok_or_else(outside)?;
        mem.write_phys(seg.guest_phys, bytes)?;
    }
    Ok(())
}

/// Pages of the P2M list itself (with `INIT_P2M` its region also holds the tables of
/// its mapping, after the list).
fn p2m_list_pages(layout: &PvLayout) -> u64 {
    let tables = layout.p2m_tables.as_ref().map_or(0, |t| t.count());
    layout.p2m.pages.saturating_sub(tables)
}

fn write_p2m<M: PhysMemory>(mem: &mut M, layout: &PvLayout) -> Result<(), PvBuildError> {
    let nr = layout.start_info.nr_pages;
    let mut page = vec![0u8; PAGE_SIZE as usize];
    for i in 0..p2m_list_pages(layout) {
        for (j, slot) in page.chunks_exact_mut(8).enumerate() {
            let pfn = i * (PAGE_SIZE / 8) + j as u64;
            let value = if pfn < nr { pfn } else { INVALID_P2M };
            slot.copy_from_slice(&value.to_le_bytes());
        }
        mem.write_phys((layout.p2m.pfn + i) * PAGE_SIZE, &page)?;
    }
    Ok(())
}

/// `start_info` as Xen's `start_info_x86_64` fills it.
pub fn start_info(layout: &PvLayout, config: &PvBuildConfig<'_>, cmdline: &[u8]) -> StartInfo {
    let v = &layout.start_info;
    let mut info = StartInfo::new_zeroed();
    info.magic[..START_INFO_MAGIC.len()].copy_from_slice(START_INFO_MAGIC);
    info.nr_pages = v.nr_pages;
    info.shared_info = config.shared_info_maddr;
    info.flags = v.flags;
    info.store_mfn = v.store_mfn;
    info.store_evtchn = config.store_evtchn;
    info.console_mfn = v.console_mfn;
    info.console_evtchn = config.console_evtchn;
    info.pt_base = v.pt_base;
    info.nr_pt_frames = v.nr_pt_frames;
    info.mfn_list = v.mfn_list;
    info.mod_start = v.mod_start;
    info.mod_len = v.mod_len;
    let n = cmdline.len().min(MAX_GUEST_CMDLINE - 1);
    info.cmd_line[..n].copy_from_slice(&cmdline[..n]);
    info.first_p2m_pfn = v.first_p2m_pfn;
    info.nr_p2m_frames = v.nr_p2m_frames;
    info
}

/// Index of the table covering `va` among a level's tables, which start with the one
/// covering `base` (each covers `1 << shift` bytes).
fn table_index(va: u64, base: u64, shift: u32) -> u64 {
    ((va & VADDR_MASK) >> shift) - ((base & VADDR_MASK) >> shift)
}

/// Fills the bootstrap page tables (`setup_pgtables_pv`): every pfn below
/// `mapped_pages` at `VIRT_BASE + pfn * 4096`, and with `INIT_P2M` the P2M list at
/// its own address through the same L4.
fn write_page_tables<M: PhysMemory>(mem: &mut M, layout: &PvLayout) -> Result<(), PvBuildError> {
    let t = &layout.tables;
    let l4 = t.l4.ok_or(PvBuildError::TableLayout(layout.virt_base))?;
    zero_pages(mem, layout.page_tables.pfn, layout.page_tables.pages)?;
    let read_only = layout.page_tables.pfn..layout.page_tables.pfn_end();
    let main = OneMapping {
        l4,
        tables: t,
        base: layout.virt_base,
        first_pfn: 0,
        pages: layout.mapped_pages,
        read_only: &read_only,
    };
    main.write(mem)?;
    if let Some(p2m_tables) = &layout.p2m_tables {
        let list_pages = p2m_list_pages(layout);
        let table_pfn = layout.p2m.pfn + list_pages;
        zero_pages(mem, table_pfn, p2m_tables.count())?;
        let p2m = OneMapping {
            l4,
            tables: p2m_tables,
            base: layout.p2m.vstart,
            first_pfn: layout.p2m.pfn,
            pages: list_pages,
            read_only: &read_only,
        };
        p2m.write(mem)?;
    }
    Ok(())
}

/// One contiguous mapping of `pages` frames from `first_pfn` at `base`, through
/// `tables` (whose first L3/L2/L1 cover `base`) under `l4`.
struct OneMapping<'a> {
    l4: u64,
    tables: &'a super::layout::TableFrames,
    base: u64,
    first_pfn: u64,
    pages: u64,
    /// Frames mapped without `_PAGE_RW` (the bootstrap page tables).
    read_only: &'a std::ops::Range<u64>,
}

impl OneMapping<'_> {
    fn write<M: PhysMemory>(&self, mem: &mut M) -> Result<(), PvBuildError> {
        let t = self.tables;
        for i in 0..self.pages {
            let pfn = self.first_pfn + i;
            let va = self.base.wrapping_add(i * PAGE_SIZE);
            let pick = |(first, count): (u64, u64), shift| {
                let i = table_index(va, self.base, shift);
                (i < count)
                    .then_some(first + i)
                    .ok_or(PvBuildError::TableLayout(va))
            };
            let l3 = pick(t.l3, 39)?;
            let l2 = pick(t.l2, 30)?;
            let l1 = pick(t.l1, 21)?;
            let slot = |shift: u32| ((va >> shift) & 511) as usize;
            mem.write_entry(self.l4, slot(39), (l3 << 12) | UPPER_PROT);
            mem.write_entry(l3, slot(30), (l2 << 12) | UPPER_PROT);
            mem.write_entry(l2, slot(21), (l1 << 12) | UPPER_PROT);
            let prot = if self.read_only.contains(&pfn) {
                L1_PROT_RO
            } else {
                L1_PROT
            };
            mem.write_entry(l1, slot(12), (pfn << 12) | prot);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
