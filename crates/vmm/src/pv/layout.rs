//! Xen's start-of-day layout of a 64-bit PV domain, computed as plain data.
//!
//! `xen/include/public/xen.h` (comment above `struct start_info`) promises the guest
//! one contiguous virtual region starting at `VIRT_BASE`, mapped to pfns from 0 up:
//! kernel, initrd, P2M list, start_info, xenstore and console pages, bootstrap page
//! tables, boot stack, then padding, with at least 512 KiB free after the tables and
//! the whole mapping ending on a 4 MiB boundary. The exact order and sizes come from
//! the domain builder, in this order (`xc_dom_build_image`, tools/libs/guest/
//! xg_dom_core.c):
//!
//! 1. Allocation starts at pfn 0 and virtual address `VIRT_BASE`; every allocation
//!    takes whole pages from both cursors (`xc_dom_alloc_segment`,
//!    `xc_dom_alloc_page`), and fails when it would pass the domain's page count
//!    (`xc_dom_chk_alloc_pages`).
//! 2. Kernel: if `virt_kstart` is non-zero, pages up to it are padding (it must then
//!    be page-aligned and not below `VIRT_BASE`, `xc_dom_alloc_pad`); the kernel takes
//!    `ceil((kend - kstart) / 4096)` pages.
//! 3. Initrd, unless the kernel has `MOD_START_PFN` set: its pages, mapped;
//!    `mod_start` is its virtual address and `mod_len` its page-rounded length.
//! 4. `INIT_P2M` is ignored unless below `VIRT_BASE` and page-aligned. Without it the
//!    P2M list (`nr_pages` 8-byte entries, page-rounded) comes here
//!    (`alloc_p2m_list_x86_64`, xg_dom_x86.c).
//! 5. start_info, xenstore and console pages, one each (`alloc_magic_pages_pv`).
//! 6. Page tables (`alloc_pgtables_pv` and `count_pgtables`): starting with
//!    `extra` = 1 boot-stack page + 128 pages (512 KiB) of padding, the mapping
//!    must reach `end` = `(alloc_end + (tables + extra) * 4096) | (4 MiB - 1)`; tables
//!    for `[VIRT_BASE, end]` are one L4, then per level the number of 512 GiB / 1 GiB /
//!    2 MiB slots the range touches (L3, L2, L1 frames), recomputed until the tables
//!    fit. Frames are ordered L4, L3s, L2s, L1s. The mapping's last pfn must be below
//!    the domain's page count. Page-table frames are mapped read-only
//!    (`get_pg_prot`); `pt_base` is the L4's virtual address, `nr_pt_frames` the count.
//! 7. Boot stack: one page; `rsp` = its end.
//! 8. Padding up to the end of the bootstrap mapping.
//! 9. Initrd, if `MOD_START_PFN`: its pages, unmapped; `mod_start` is its first pfn,
//!    `SIF_MOD_START_PFN` is set.
//! 10. With `INIT_P2M`: the P2M list followed by the page tables of its own mapping at
//!     `INIT_P2M` (a second `count_pgtables` that shares the L4 and skips table ranges
//!     the first mapping has); `first_p2m_pfn`/`nr_p2m_frames` describe both.
//!
//! Start state (`start_info_x86_64`, `vcpu_x86_64`, xg_dom_x86.c): `rip` = entry,
//! `rsi` = start_info's virtual address, `rsp` = boot stack end, `rflags` = IF, CR3 =
//! the L4, flat selectors `FLAT_KERNEL_CS` 0xe033 and `FLAT_KERNEL_DS/SS` 0xe02b
//! (xen/include/public/arch-x86/xen-x86_64.h); `start_info.flags` always has
//! `SIF_VIRT_P2M_4TOOLS` (`xc_dom_allocate`). Machine frame numbers equal pfns here.
//! The vCPU count does not change Xen's PV layout; it is only validated.

use super::image::PvKernel;

/// Page size of x86 PV guests.
pub const PAGE_SIZE: u64 = 4096;
/// `SIF_MOD_START_PFN`: `mod_start` is a pfn, not a virtual address (xen.h).
pub const SIF_MOD_START_PFN: u32 = 1 << 3;
/// `SIF_VIRT_P2M_4TOOLS`: the P2M is virtually mapped for the tools (xen.h).
pub const SIF_VIRT_P2M_4TOOLS: u32 = 1 << 4;
/// `FLAT_KERNEL_CS` of 64-bit PV guests (arch-x86/xen-x86_64.h).
pub const FLAT_KERNEL_CS: u16 = 0xe033;
/// `FLAT_KERNEL_DS` = `FLAT_KERNEL_SS` of 64-bit PV guests.
pub const FLAT_KERNEL_DS: u16 = 0xe02b;
/// Padding the builder leaves after the page tables (512 KiB, in pages).
pub const PADDING_PAGES: u64 = (512 * 1024) / PAGE_SIZE;
/// The bootstrap mapping ends on this alignment minus one (4 MiB).
const MAPPING_ALIGN_MASK: u64 = (1 << 22) - 1;
/// Canonical virtual address bits of x86-64 (`VIRT_BITS_X86_64`).
const VADDR_MASK: u64 = (1 << 48) - 1;
/// Most pages a layout is computed for (256 TiB), so that every pfn times 4096 fits.
pub const MAX_PAGES: u64 = 1 << 36;
/// Page-table levels of x86-64.
const LEVELS: usize = 4;

/// Why a layout cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("a domain needs at least one vCPU")]
    NoVcpus,
    #[error("{what} needs {pages} pages at pfn {at:#x}, beyond the domain's {total} pages")]
    OutOfMemory {
        what: &'static str,
        pages: u64,
        at: u64,
        total: u64,
    },
    #[error("{0} pages is more than the {max} a layout supports", max = MAX_PAGES)]
    TooManyPages(u64),
    #[error("the kernel starts at {0:#x}, which is not page-aligned")]
    NotPageAligned(u64),
    #[error("the kernel starts at {boundary:#x}, below the allocation cursor {cursor:#x}")]
    BelowCursor { boundary: u64, cursor: u64 },
    #[error("the initial mapping needs pfns up to {last:#x}, the domain has {total} pages")]
    MappingTooLarge { last: u64, total: u64 },
    #[error("the P2M mapping at {0:#x} overlaps the kernel's initial mapping")]
    OverlappingMappings(u64),
    #[error("hypercall page {0:#x} is outside the kernel")]
    HypercallPageOutsideKernel(u64),
    #[error("address arithmetic overflowed")]
    Overflow,
}

/// What the domain is built with besides its kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayoutRequest {
    /// RAM pages of the domain (`nr_pages`; also the P2M's length).
    pub nr_pages: u64,
    /// Bytes of the initrd as it will be placed, if any.
    pub ramdisk_bytes: Option<u64>,
    pub vcpus: u32,
}

/// Consecutive pfns, and the virtual address the bootstrap mapping gives the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub pfn: u64,
    pub pages: u64,
    /// Virtual address of `pfn` (for regions outside the main mapping: see the field).
    pub vstart: u64,
}

impl Region {
    /// One past the last pfn.
    pub fn pfn_end(&self) -> u64 {
        self.pfn + self.pages
    }
    /// Virtual address one past the region.
    pub fn vend(&self) -> u64 {
        self.vstart.wrapping_add(self.pages * PAGE_SIZE)
    }
}

/// The page-table frames of one mapping, by level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableFrames {
    /// The L4 (absent for the P2M mapping, which shares the first mapping's L4).
    pub l4: Option<u64>,
    /// First pfn and count of the L3, L2 and L1 frames.
    pub l3: (u64, u64),
    pub l2: (u64, u64),
    pub l1: (u64, u64),
}

impl TableFrames {
    /// Total frames.
    pub fn count(&self) -> u64 {
        u64::from(self.l4.is_some()) + self.l3.1 + self.l2.1 + self.l1.1
    }
}

/// Where one kernel segment goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentPlacement {
    pub file_offset: u64,
    pub filesz: u64,
    pub memsz: u64,
    /// Guest-physical byte address (pfn * 4096 + offset) of its first byte.
    pub guest_phys: u64,
    pub vaddr: u64,
}

/// The `start_info` fields the layout decides (the rest — `shared_info`, event
/// channels, command line — come from the domain's configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartInfoValues {
    pub nr_pages: u64,
    pub pt_base: u64,
    pub nr_pt_frames: u64,
    pub mfn_list: u64,
    pub mod_start: u64,
    pub mod_len: u64,
    pub first_p2m_pfn: u64,
    pub nr_p2m_frames: u64,
    pub flags: u32,
    pub store_mfn: u64,
    pub console_mfn: u64,
}

/// vCPU 0's initial state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitialRegs {
    pub rip: u64,
    pub rsp: u64,
    pub rsi: u64,
    pub rflags: u64,
    /// Pfn of the L4 (CR3 = this * 4096).
    pub cr3_pfn: u64,
    pub cs: u16,
    /// ss, ds, es, fs and gs.
    pub ds: u16,
}

/// The computed start-of-day layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvLayout {
    pub virt_base: u64,
    pub vcpus: u32,
    /// Pages of padding before the kernel (pfn 0 up).
    pub kernel_padding_pages: u64,
    pub kernel: Region,
    pub segments: Vec<SegmentPlacement>,
    /// The initrd; `ramdisk_mapped` says whether it lies in the bootstrap mapping.
    pub ramdisk: Option<Region>,
    pub ramdisk_mapped: bool,
    /// P2M list frames (and, with `INIT_P2M`, its page tables after them);
    /// `vstart` is `INIT_P2M` in that case.
    pub p2m: Region,
    /// Page tables of the P2M's own mapping (with `INIT_P2M`).
    pub p2m_tables: Option<TableFrames>,
    pub start_info_pfn: u64,
    pub xenstore_pfn: u64,
    pub console_pfn: u64,
    /// The bootstrap page tables (all mapped read-only).
    pub page_tables: Region,
    pub tables: TableFrames,
    pub boot_stack_pfn: u64,
    /// Pfn of the hypercall page, if the kernel asked for one.
    pub hypercall_page_pfn: Option<u64>,
    /// Virtual end of the bootstrap mapping (exclusive); it maps `VIRT_BASE..` to
    /// pfns `0..mapped_pages`.
    pub mapping_end: u64,
    pub mapped_pages: u64,
    /// First pfn nothing was allocated at.
    pub first_free_pfn: u64,
    pub start_info: StartInfoValues,
    pub regs: InitialRegs,
}

/// The builder's two cursors (`pfn_alloc_end`, `virt_alloc_end`).
struct Cursor {
    pfn: u64,
    virt: u64,
    total: u64,
}

impl Cursor {
    fn take(&mut self, what: &'static str, pages: u64) -> Result<Region, LayoutError> {
        let out = || LayoutError::OutOfMemory {
            what,
            pages,
            at: self.pfn,
            total: self.total,
        };
        let end = self.pfn.checked_add(pages).ok_or_else(out)?;
        if end > self.total {
            return Err(out());
        }
        let region = Region {
            pfn: self.pfn,
            pages,
            vstart: self.virt,
        };
        self.pfn = end;
        self.virt = self
            .virt
            .wrapping_add(pages.checked_mul(PAGE_SIZE).ok_or(LayoutError::Overflow)?);
        Ok(region)
    }

    fn pad_to(&mut self, boundary: u64) -> Result<u64, LayoutError> {
        if boundary & (PAGE_SIZE - 1) != 0 {
            return Err(LayoutError::NotPageAligned(boundary));
        }
        if boundary < self.virt {
            return Err(LayoutError::BelowCursor {
                boundary,
                cursor: self.virt,
            });
        }
        let pages = (boundary - self.virt) / PAGE_SIZE;
        self.take("padding", pages)?;
        Ok(pages)
    }
}

fn pages_for(bytes: u64) -> Result<u64, LayoutError> {
    bytes
        .checked_add(PAGE_SIZE - 1)
        .map(|b| b / PAGE_SIZE)
        .ok_or(LayoutError::Overflow)
}

/// One level of one mapping: the inclusive virtual span its tables cover.
#[derive(Debug, Clone, Copy, Default)]
struct LevelSpan {
    from: u64,
    to: u64,
    tables: u64,
    first_pfn: u64,
}

/// One mapping as `count_pgtables` records it.
#[derive(Debug, Clone, Copy, Default)]
struct Mapping {
    from: u64,
    to: u64,
    tables: u64,
    levels: [LevelSpan; LEVELS],
}

/// Xen's `count_pgtables`: the tables mapping `[from, to]` (inclusive) to pfns from
/// `pfn`, allocated from `table_pfn` on, given the mappings already made.
fn count_tables(
    existing: &[Mapping],
    from: u64,
    to: u64,
    pfn: u64,
    table_pfn: u64,
    nr_pages: u64,
) -> Result<Mapping, LayoutError> {
    let last = to
        .checked_sub(from)
        .map(|span| pfn.saturating_add(span >> 12))
        .ok_or(LayoutError::Overflow)?;
    if last >= nr_pages {
        return Err(LayoutError::MappingTooLarge {
            last,
            total: nr_pages,
        });
    }
    if existing.iter().any(|m| from < m.to && to > m.from) {
        return Err(LayoutError::OverlappingMappings(from));
    }
    let mut map = Mapping {
        from: from & VADDR_MASK,
        to: to & VADDR_MASK,
        ..Mapping::default()
    };
    for level in (0..LEVELS).rev() {
        let first_pfn = table_pfn + map.tables;
        if level == LEVELS - 1 {
            map.levels[level] = if existing.is_empty() {
                map.tables += 1;
                LevelSpan {
                    from: 0,
                    to: VADDR_MASK,
                    tables: 1,
                    first_pfn,
                }
            } else {
                LevelSpan {
                    first_pfn,
                    ..LevelSpan::default()
                }
            };
            continue;
        }
        let bits = 12 + (level as u32 + 1) * 9;
        let mask = (1u64 << bits) - 1;
        let mut span_from = map.from & !mask;
        let mut span_to = map.to | mask;
        for other in existing.iter().map(|m| m.levels[level]) {
            if other.from == other.to {
                continue;
            }
            if span_from >= other.from && span_to <= other.to {
                span_from = 0;
                span_to = 0;
                break;
            }
            if span_from >= other.from && span_from <= other.to {
                span_from = other.to.wrapping_add(1);
            }
            if span_to >= other.from && span_to <= other.to {
                span_to = other.from.wrapping_sub(1);
            }
        }
        let tables = if span_from < span_to {
            ((span_to - span_from) >> bits) + 1
        } else {
            0
        };
        map.levels[level] = LevelSpan {
            from: span_from,
            to: span_to,
            tables,
            first_pfn,
        };
        map.tables += tables;
    }
    Ok(map)
}

fn frames_of(map: &Mapping, shift: u64) -> TableFrames {
    let level = |l: usize| (map.levels[l].first_pfn + shift, map.levels[l].tables);
    TableFrames {
        l4: (map.levels[3].tables == 1).then_some(map.levels[3].first_pfn + shift),
        l3: level(2),
        l2: level(1),
        l1: level(0),
    }
}

impl PvLayout {
    /// Computes the layout of `kernel` in a domain described by `request`.
    pub fn compute(kernel: &PvKernel, request: &LayoutRequest) -> Result<Self, LayoutError> {
        if request.vcpus == 0 {
            return Err(LayoutError::NoVcpus);
        }
        if request.nr_pages > MAX_PAGES {
            return Err(LayoutError::TooManyPages(request.nr_pages));
        }
        let virt_base = kernel.virt_base;
        let nr_pages = request.nr_pages;
        let mut cur = Cursor {
            pfn: 0,
            virt: virt_base,
            total: nr_pages,
        };

        // 2. Kernel.
        let kernel_padding_pages = if kernel.virt_kstart != 0 {
            cur.pad_to(kernel.virt_kstart)?
        } else {
            0
        };
        let kernel_bytes = kernel
            .virt_kend
            .checked_sub(kernel.virt_kstart)
            .ok_or(LayoutError::Overflow)?;
        let kernel_pages = pages_for(kernel_bytes)?;
        let kernel_region = cur.take("the kernel", kernel_pages)?;
        let kernel_phys = kernel_region.pfn * PAGE_SIZE;
        let segments = kernel
            .segments
            .iter()
            .map(|s| SegmentPlacement {
                file_offset: s.file_offset,
                filesz: s.filesz,
                memsz: s.memsz,
                guest_phys: kernel_phys + s.offset_in_kernel,
                vaddr: kernel_region.vstart.wrapping_add(s.offset_in_kernel),
            })
            .collect();

        // 3. Mapped initrd.
        let unmapped_initrd = kernel.notes.unmapped_initrd();
        let ramdisk_pages = request.ramdisk_bytes.map(pages_for).transpose()?;
        let mut ramdisk = None;
        if let (Some(pages), false) = (ramdisk_pages, unmapped_initrd) {
            ramdisk = Some(cur.take("the initrd", pages)?);
        }

        // 4. P2M inside the mapping, unless INIT_P2M is usable.
        let p2m_base = kernel
            .notes
            .init_p2m
            .filter(|&base| base < virt_base && base % PAGE_SIZE == 0);
        let p2m_pages = pages_for(nr_pages.checked_mul(8).ok_or(LayoutError::Overflow)?)?;
        let mut p2m = None;
        if p2m_base.is_none() {
            p2m = Some(cur.take("the P2M list", p2m_pages)?);
        }

        // 5. Magic pages.
        let start_info_pfn = cur.take("start_info", 1)?.pfn;
        let xenstore_pfn = cur.take("the xenstore page", 1)?.pfn;
        let console_pfn = cur.take("the console page", 1)?.pfn;

        // 6. Bootstrap page tables.
        let extra = 1 + PADDING_PAGES;
        let mut pages = extra;
        let (main_map, mapping_last) = loop {
            let want = cur
                .virt
                .checked_add(pages * PAGE_SIZE)
                .ok_or(LayoutError::Overflow)?;
            let try_end = want | MAPPING_ALIGN_MASK;
            let map = count_tables(&[], virt_base, try_end, 0, cur.pfn, nr_pages)?;
            pages = map.tables + extra;
            let need = cur
                .virt
                .checked_add(pages * PAGE_SIZE)
                .ok_or(LayoutError::Overflow)?;
            if need <= try_end.checked_add(1).ok_or(LayoutError::Overflow)? {
                break (map, try_end);
            }
        };
        let page_tables = cur.take("the page tables", main_map.tables)?;
        let tables = frames_of(&main_map, 0);

        // 7. Boot stack.
        let boot_stack_pfn = cur.take("the boot stack", 1)?.pfn;

        // 8. Padding to the end of the mapping.
        let mapping_end = mapping_last.checked_add(1).ok_or(LayoutError::Overflow)?;
        cur.pad_to(mapping_end)?;
        let mapped_pages = cur.pfn;

        // 9. Unmapped initrd.
        if let (Some(pages), true) = (ramdisk_pages, unmapped_initrd) {
            ramdisk = Some(cur.take("the initrd", pages)?);
        }

        // 10. P2M with its own mapping.
        let mut p2m_tables = None;
        let p2m = match (p2m, p2m_base) {
            (Some(region), _) => region,
            (None, Some(base)) => {
                let last = (p2m_pages * PAGE_SIZE)
                    .checked_sub(1)
                    .and_then(|size| base.checked_add(size))
                    .ok_or(LayoutError::Overflow)?;
                let map = count_tables(&[main_map], base, last, cur.pfn, cur.pfn, nr_pages)?;
                p2m_tables = Some(frames_of(&map, p2m_pages));
                let mut region = cur.take("the P2M list", p2m_pages + map.tables)?;
                region.vstart = base;
                region
            }
            (None, None) => return Err(LayoutError::Overflow),
        };

        let hypercall_page_pfn = match kernel.hypercall_page {
            None => None,
            Some(addr) => {
                let pfn = addr.wrapping_sub(virt_base) >> 12;
                if pfn < kernel_region.pfn || pfn >= kernel_region.pfn_end() {
                    return Err(LayoutError::HypercallPageOutsideKernel(addr));
                }
                Some(pfn)
            }
        };

        let (mod_start, mod_len, mod_flag) = match ramdisk {
            Some(r) if unmapped_initrd => (r.pfn, r.pages * PAGE_SIZE, SIF_MOD_START_PFN),
            Some(r) => (r.vstart, r.pages * PAGE_SIZE, 0),
            None => (0, 0, 0),
        };
        let (first_p2m_pfn, nr_p2m_frames) = match p2m_base {
            Some(_) => (p2m.pfn, p2m.pages),
            None => (0, 0),
        };
        let virt_of = |pfn: u64| virt_base.wrapping_add(pfn * PAGE_SIZE);
        let start_info = StartInfoValues {
            nr_pages,
            pt_base: page_tables.vstart,
            nr_pt_frames: main_map.tables,
            mfn_list: p2m.vstart,
            mod_start,
            mod_len,
            first_p2m_pfn,
            nr_p2m_frames,
            flags: SIF_VIRT_P2M_4TOOLS | mod_flag,
            store_mfn: xenstore_pfn,
            console_mfn: console_pfn,
        };
        let regs = InitialRegs {
            rip: kernel.virt_entry,
            rsp: virt_of(boot_stack_pfn + 1),
            rsi: virt_of(start_info_pfn),
            rflags: 1 << 9,
            cr3_pfn: page_tables.pfn,
            cs: FLAT_KERNEL_CS,
            ds: FLAT_KERNEL_DS,
        };
        Ok(PvLayout {
            virt_base,
            vcpus: request.vcpus,
            kernel_padding_pages,
            kernel: kernel_region,
            segments,
            ramdisk,
            ramdisk_mapped: !unmapped_initrd,
            p2m,
            p2m_tables,
            start_info_pfn,
            xenstore_pfn,
            console_pfn,
            page_tables,
            tables,
            boot_stack_pfn,
            hypercall_page_pfn,
            mapping_end,
            mapped_pages,
            first_free_pfn: cur.pfn,
            start_info,
            regs,
        })
    }
}

#[cfg(test)]
mod tests;
