//! A PV kernel image checked like Xen's libelf checks it, with its virtual placement.
//!
//! Rules, all from Xen's `xen/common/libelf/`:
//! - Loadable segments are `PT_LOAD` headers with any of `PF_R`/`PF_W`/`PF_X`
//!   (`elf_phdr_is_loadable`, libelf-tools.c). `pstart`/`pend` are the lowest
//!   `p_paddr` and highest `p_paddr + p_memsz` over them (`elf_parse_binary`,
//!   libelf-loader.c). Segments need not be page-aligned.
//! - The image must carry Xen notes or a `__xen_guest` section; `LOADER` must start
//!   with "generic" or `GUEST_OS` with "linux"; `XEN_VERSION` must start with
//!   "xen-3.0" (`elf_xen_note_check`, libelf-dominfo.c).
//! - `PADDR_OFFSET` without `VIRT_BASE` is an error; `VIRT_BASE` defaults to 0;
//!   `PADDR_OFFSET` defaults to 0 for notes and to `VIRT_BASE` for `__xen_guest`;
//!   `virt_kstart = pstart + VIRT_BASE - PADDR_OFFSET` and likewise `virt_kend`; the
//!   entry defaults to `e_entry`; then `kstart <= kend`, `kstart <= entry <= kend`,
//!   `VIRT_BASE <= kstart`, and `INIT_P2M` not inside `[kstart, kend)`
//!   (`elf_xen_addr_calc_check`). The sums wrap like libelf's `uint64_t` arithmetic.
//! - Each segment is copied to `virt_kstart + (p_paddr - pstart)` (`elf_load_binary`
//!   with `dest_base` = the kernel segment, xg_dom_elfloader.c), BSS zeroed.
//!
//! `BSD_SYMTAB` (which loads the symbol table behind the kernel) is not supported and
//! rejected. Only 64-bit x86 kernels are accepted.

use object::elf::{self, FileHeader64};
use object::read::elf::{FileHeader, ProgramHeader};
use object::Endianness;

use super::elfnotes::{ElfNotesError, NoteSource, XenNotes};

/// Most loadable segments accepted.
pub const MAX_SEGMENTS: usize = 64;

/// Why a PV kernel was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PvImageError {
    #[error(transparent)]
    Notes(#[from] ElfNotesError),
    #[error("malformed ELF headers: {0}")]
    Malformed(String),
    #[error("ELF machine is {0}, expected x86-64 (62)")]
    WrongMachine(u16),
    #[error("not a Xen PV kernel: no Xen ELF notes and no __xen_guest section")]
    NotXenImage,
    #[error(
        "Xen loads only kernels for the generic loader or Linux (LOADER {loader:?}, GUEST_OS {guest_os:?})"
    )]
    UnsupportedLoader {
        loader: Option<String>,
        guest_os: Option<String>,
    },
    #[error("the kernel is built for Xen {0:?}, not xen-3.0")]
    UnsupportedXenVersion(Option<String>),
    #[error("BSD_SYMTAB (symbol table loading) is not supported")]
    BsdSymtab,
    #[error("more than {max} loadable segments", max = MAX_SEGMENTS)]
    TooManySegments,
    #[error("no loadable segment")]
    NoSegments,
    #[error("segment {index}: file range {offset:#x}+{filesz:#x} lies outside the file")]
    SegmentOutsideFile {
        index: usize,
        offset: u64,
        filesz: u64,
    },
    #[error("segment {index}: file size {filesz:#x} exceeds memory size {memsz:#x}")]
    FileSizeExceedsMemSize {
        index: usize,
        filesz: u64,
        memsz: u64,
    },
    #[error("segment {index}: p_paddr {paddr:#x} + p_memsz {memsz:#x} overflows")]
    SegmentOverflow {
        index: usize,
        paddr: u64,
        memsz: u64,
    },
    #[error("PADDR_OFFSET is set but VIRT_BASE is not")]
    PaddrOffsetWithoutVirtBase,
    #[error(
        "kernel addresses out of bounds: VIRT_BASE {virt_base:#x}, start {kstart:#x}, end {kend:#x}, entry {entry:#x}"
    )]
    AddressesOutOfBounds {
        virt_base: u64,
        kstart: u64,
        kend: u64,
        entry: u64,
    },
    #[error("INIT_P2M {0:#x} lies inside the kernel")]
    P2mInsideKernel(u64),
}

/// One loadable segment, placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSegment {
    pub file_offset: u64,
    pub filesz: u64,
    pub memsz: u64,
    pub paddr: u64,
    /// Byte offset of the segment from the start of the kernel's memory
    /// (`p_paddr - pstart`); its virtual address is `virt_kstart` plus this.
    pub offset_in_kernel: u64,
}

/// A checked PV kernel: its notes, with libelf's defaults applied, and its placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvKernel {
    pub notes: XenNotes,
    pub virt_base: u64,
    pub paddr_offset: u64,
    /// Virtual address of the first byte of the kernel (`virt_kstart`).
    pub virt_kstart: u64,
    /// Virtual address one past the kernel's last byte (`virt_kend`).
    pub virt_kend: u64,
    pub virt_entry: u64,
    pub hypercall_page: Option<u64>,
    pub segments: Vec<KernelSegment>,
}

impl PvKernel {
    /// Parses and checks ELF image `data`.
    pub fn parse(data: &[u8]) -> Result<Self, PvImageError> {
        let notes = XenNotes::parse_elf(data)?;
        let header = FileHeader64::<Endianness>::parse(data)
            .map_err(|e| PvImageError::Malformed(e.to_string()))?;
        let endian = header
            .endian()
            .map_err(|e| PvImageError::Malformed(e.to_string()))?;
        let machine = header.e_machine(endian);
        if machine != elf::EM_X86_64 {
            return Err(PvImageError::WrongMachine(machine.0));
        }
        let phdrs = header
            .program_headers(endian, data)
            .map_err(|e| PvImageError::Malformed(e.to_string()))?;
        let mut raw = Vec::new();
        for (index, ph) in phdrs.iter().enumerate() {
            let loadable = ph.p_type(endian) == elf::PT_LOAD
                && ph.p_flags(endian).0 & (elf::PF_R.0 | elf::PF_W.0 | elf::PF_X.0) != 0;
            if !loadable {
                continue;
            }
            if raw.len() == MAX_SEGMENTS {
                return Err(PvImageError::TooManySegments);
            }
            let (offset, filesz) = (ph.p_offset(endian), ph.p_filesz(endian));
            let (paddr, memsz) = (ph.p_paddr(endian), ph.p_memsz(endian));
            if filesz > memsz {
                return Err(PvImageError::FileSizeExceedsMemSize {
                    index,
                    filesz,
                    memsz,
                });
            }
            match offset.checked_add(filesz) {
                Some(end) if end <= data.len() as u64 => {}
                _ => {
                    return Err(PvImageError::SegmentOutsideFile {
                        index,
                        offset,
                        filesz,
                    })
                }
            }
            if paddr.checked_add(memsz).is_none() {
                return Err(PvImageError::SegmentOverflow {
                    index,
                    paddr,
                    memsz,
                });
            }
            raw.push((offset, filesz, paddr, memsz));
        }
        let e_entry = header.e_entry(endian);
        Self::from_parts(notes, e_entry, &raw)
    }

    /// Applies libelf's checks and defaults to `notes` and loadable segments given as
    /// `(p_offset, p_filesz, p_paddr, p_memsz)` (already checked against the file).
    pub fn from_parts(
        notes: XenNotes,
        e_entry: u64,
        segments: &[(u64, u64, u64, u64)],
    ) -> Result<Self, PvImageError> {
        if notes.source.is_none() {
            return Err(PvImageError::NotXenImage);
        }
        let loader_ok = notes
            .loader
            .as_deref()
            .is_some_and(|l| l.starts_with("generic"));
        let linux = notes
            .guest_os
            .as_deref()
            .is_some_and(|g| g.starts_with("linux"));
        if !loader_ok && !linux {
            return Err(PvImageError::UnsupportedLoader {
                loader: notes.loader.clone(),
                guest_os: notes.guest_os.clone(),
            });
        }
        if !notes
            .xen_version
            .as_deref()
            .is_some_and(|v| v.starts_with("xen-3.0"))
        {
            return Err(PvImageError::UnsupportedXenVersion(
                notes.xen_version.clone(),
            ));
        }
        if notes.bsd_symtab {
            return Err(PvImageError::BsdSymtab);
        }
        let pstart = segments
            .iter()
            .map(|s| s.2)
            .min()
            .ok_or(PvImageError::NoSegments)?;
        let pend = segments
            .iter()
            .map(|s| s.2.saturating_add(s.3))
            .max()
            .ok_or(PvImageError::NoSegments)?;

        if notes.paddr_offset.is_some() && notes.virt_base.is_none() {
            return Err(PvImageError::PaddrOffsetWithoutVirtBase);
        }
        let virt_base = notes.virt_base.unwrap_or(0);
        let paddr_offset = match (notes.paddr_offset, notes.source) {
            (Some(offset), _) => offset,
            (None, Some(NoteSource::LegacyXenGuest)) => virt_base,
            (None, _) => 0,
        };
        let virt_offset = virt_base.wrapping_sub(paddr_offset);
        let virt_kstart = pstart.wrapping_add(virt_offset);
        let virt_kend = pend.wrapping_add(virt_offset);
        let virt_entry = notes.entry.unwrap_or(e_entry);
        if virt_kstart > virt_kend
            || virt_entry < virt_kstart
            || virt_entry > virt_kend
            || virt_base > virt_kstart
        {
            return Err(PvImageError::AddressesOutOfBounds {
                virt_base,
                kstart: virt_kstart,
                kend: virt_kend,
                entry: virt_entry,
            });
        }
        if let Some(p2m) = notes.init_p2m {
            if p2m >= virt_kstart && p2m < virt_kend {
                return Err(PvImageError::P2mInsideKernel(p2m));
            }
        }
        let segments = segments
            .iter()
            .map(|&(file_offset, filesz, paddr, memsz)| KernelSegment {
                file_offset,
                filesz,
                memsz,
                paddr,
                offset_in_kernel: paddr - pstart,
            })
            .collect();
        Ok(PvKernel {
            hypercall_page: notes.hypercall_page,
            notes,
            virt_base,
            paddr_offset,
            virt_kstart,
            virt_kend,
            virt_entry,
            segments,
        })
    }
}

#[cfg(test)]
mod tests;
