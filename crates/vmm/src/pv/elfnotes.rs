//! Xen ELF notes of a PV guest kernel (`xen/include/public/elfnote.h`).
//!
//! Where they are found follows `elf_xen_parse` in Xen's
//! `xen/common/libelf/libelf-dominfo.c`: first every `PT_NOTE` program header (those
//! with `p_offset` 0 are skipped, as some binutils wrote them wrong); only if they hold
//! no note named "Xen", every `SHT_NOTE` section; only if those hold none either, the
//! legacy `__xen_guest` section ([`crate::pv::xen_guest`]). Notes are walked with
//! 4-byte alignment of name and descriptor (libelf's `elf_note_next`), whatever the
//! segment's `p_align`. Numeric notes are 1, 2, 4 or 8 bytes little-endian
//! (`elf_note_numeric`), string notes NUL-terminated. A later note of a type overrides
//! an earlier one; feature notes accumulate.
//!
//! Everything here is hostile input: each length and offset is checked, errors are
//! typed, nothing panics. Differences from libelf, all stricter: a numeric note of
//! another size, a string without its NUL, a note running past the end of its segment
//! or section, and a non-UTF-8 string are errors (libelf reads 0 or marks the image
//! broken).

use object::elf::{self, FileHeader64};
use object::read::elf::{FileHeader, ProgramHeader, SectionHeader};
use object::Endianness;

use super::features::FeatureError;
pub use super::notes::{NoteSource, XenNotes};
use super::xen_guest;

/// `XEN_ELFNOTE_INFO` (legacy NAME=VALUE; ignored, as libelf does).
pub const XEN_ELFNOTE_INFO: u32 = 0;
/// Virtual address of the entry point.
pub const XEN_ELFNOTE_ENTRY: u32 = 1;
/// Virtual address of the hypercall transfer page.
pub const XEN_ELFNOTE_HYPERCALL_PAGE: u32 = 2;
/// Virtual address where the kernel image is mapped (default 0).
pub const XEN_ELFNOTE_VIRT_BASE: u32 = 3;
/// Offset of the ELF `p_paddr` fields from the pseudo-physical address (default 0).
pub const XEN_ELFNOTE_PADDR_OFFSET: u32 = 4;
/// Xen version the kernel works with (string, "xen-3.0").
pub const XEN_ELFNOTE_XEN_VERSION: u32 = 5;
/// Guest OS name (string).
pub const XEN_ELFNOTE_GUEST_OS: u32 = 6;
/// Guest OS version (string).
pub const XEN_ELFNOTE_GUEST_VERSION: u32 = 7;
/// Loader type (string, "generic").
pub const XEN_ELFNOTE_LOADER: u32 = 8;
/// PAE support of 32-bit kernels (string).
pub const XEN_ELFNOTE_PAE_MODE: u32 = 9;
/// Supported (`name`) and required (`!name`) features, `|`-separated (string).
pub const XEN_ELFNOTE_FEATURES: u32 = 10;
/// Whether the symbol table must be loaded (string "yes"/"no").
pub const XEN_ELFNOTE_BSD_SYMTAB: u32 = 11;
/// Lowest address the hypervisor hole may start at (32-bit guests).
pub const XEN_ELFNOTE_HV_START_LOW: u32 = 12;
/// Mask/value pairs telling which L1 entries hold valid MFNs.
pub const XEN_ELFNOTE_L1_MFN_VALID: u32 = 13;
/// Whether the kernel supports `SCHEDOP_shutdown` suspend cancellation.
pub const XEN_ELFNOTE_SUSPEND_CANCEL: u32 = 14;
/// Virtual address where the initial P2M list is to be mapped.
pub const XEN_ELFNOTE_INIT_P2M: u32 = 15;
/// Non-zero: the initrd may be left unmapped and passed by its first pfn.
pub const XEN_ELFNOTE_MOD_START_PFN: u32 = 16;
/// Bitmap of supported features (`XENFEAT_*` submaps, 32-bit words).
pub const XEN_ELFNOTE_SUPPORTED_FEATURES: u32 = 17;
/// 32-bit physical entry point (PVH).
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// Most notes walked in one image (libelf's `ELF_MAX_TOTAL_NOTE_COUNT`).
pub const MAX_NOTES: usize = 1024;
/// Longest string note accepted, NUL included.
pub const MAX_STRING_NOTE: usize = 1024;

/// Why the Xen notes of an image could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfNotesError {
    #[error("not a 64-bit little-endian ELF file")]
    NotElf64,
    #[error("malformed ELF headers: {0}")]
    Malformed(String),
    #[error("note area {offset:#x}+{size:#x} lies outside the {file_len}-byte file")]
    AreaOutsideFile {
        offset: u64,
        size: u64,
        file_len: usize,
    },
    #[error("note at {offset:#x} runs past the end of its note area")]
    NoteTruncated { offset: u64 },
    #[error("more than {max} ELF notes", max = MAX_NOTES)]
    TooManyNotes,
    #[error("Xen note {kind} is numeric but {size} bytes long (1, 2, 4 or 8 expected)")]
    BadNumericSize { kind: u32, size: u32 },
    #[error("Xen note {kind} is a string without a terminating NUL")]
    UnterminatedString { kind: u32 },
    #[error("Xen note {kind} is a string longer than {max} bytes", max = MAX_STRING_NOTE)]
    StringTooLong { kind: u32 },
    #[error("Xen note {kind} is not valid UTF-8")]
    NotUtf8 { kind: u32 },
    #[error("SUPPORTED_FEATURES note is {0} bytes, not a non-empty multiple of 4")]
    BadFeatureBitmap(u32),
    #[error(transparent)]
    Feature(#[from] FeatureError),
    #[error("__xen_guest section: {0}")]
    Legacy(#[from] xen_guest::XenGuestError),
}

impl XenNotes {
    /// Reads the Xen notes of ELF image `data` (see the module doc for where).
    pub fn parse_elf(data: &[u8]) -> Result<Self, ElfNotesError> {
        if data.len() < 6 || data[..4] != *b"\x7fELF" {
            return Err(ElfNotesError::Malformed("missing ELF magic".into()));
        }
        if data[4] != elf::ELFCLASS64.0 || data[5] != elf::ELFDATA2LSB.0 {
            return Err(ElfNotesError::NotElf64);
        }
        let header = FileHeader64::<Endianness>::parse(data).map_err(malformed)?;
        let endian = header.endian().map_err(malformed)?;
        let mut notes = XenNotes::default();
        let mut walked = 0usize;

        let phdrs = header.program_headers(endian, data).map_err(malformed)?;
        for ph in phdrs {
            if ph.p_type(endian) != elf::PT_NOTE || ph.p_offset(endian) == 0 {
                continue;
            }
            let area = area(data, ph.p_offset(endian), ph.p_filesz(endian))?;
            notes.walk_area(area, ph.p_offset(endian), &mut walked)?;
        }
        if notes.count > 0 {
            notes.source = Some(NoteSource::ProgramHeaders);
            return Ok(notes);
        }

        let sections = header.sections(endian, data).map_err(malformed)?;
        for sh in sections.iter().skip(1) {
            if sh.sh_type(endian) != elf::SHT_NOTE {
                continue;
            }
            let area = area(data, sh.sh_offset(endian), sh.sh_size(endian))?;
            notes.walk_area(area, sh.sh_offset(endian), &mut walked)?;
        }
        if notes.count > 0 {
            notes.source = Some(NoteSource::Sections);
            return Ok(notes);
        }

        if let Some((_, sh)) = sections.section_by_name(endian, b"__xen_guest") {
            if sh.sh_type(endian) != elf::SHT_NOBITS {
                let bytes = area(data, sh.sh_offset(endian), sh.sh_size(endian))?;
                let legacy = xen_guest::parse(bytes)?;
                return Ok(legacy);
            }
        }
        Ok(notes)
    }

    /// Walks one note area; `base` is its file offset (for error messages).
    fn walk_area(
        &mut self,
        area: &[u8],
        base: u64,
        walked: &mut usize,
    ) -> Result<(), ElfNotesError> {
        let mut pos = 0usize;
        while pos < area.len() {
            let offset = base.saturating_add(pos as u64);
            *walked += 1;
            if *walked > MAX_NOTES {
                return Err(ElfNotesError::TooManyNotes);
            }
            let truncated = || ElfNotesError::NoteTruncated { offset };
            let header = area.get(pos..pos.checked_add(12).ok_or_else(truncated)?);
            let header = header.ok_or_else(truncated)?;
            let namesz = le_u32(&header[0..4]);
            let descsz = le_u32(&header[4..8]);
            let kind = le_u32(&header[8..12]);
            let name_start = pos + 12;
            let desc_start = name_start
                .checked_add(align4(namesz).ok_or_else(truncated)?)
                .ok_or_else(truncated)?;
            let next = desc_start
                .checked_add(align4(descsz).ok_or_else(truncated)?)
                .ok_or_else(truncated)?;
            let name = area
                .get(name_start..name_start + namesz as usize)
                .ok_or_else(truncated)?;
            let desc_end = desc_start
                .checked_add(descsz as usize)
                .ok_or_else(truncated)?;
            let desc = area.get(desc_start..desc_end).ok_or_else(truncated)?;
            if next > area.len() && desc_end != area.len() {
                return Err(truncated());
            }
            if name == b"Xen\0" || name == b"Xen" {
                // libelf reads a string note up to its NUL wherever that is (its
                // `elf_strval`), so a `.ascii` note such as Linux's
                // XEN_ELFNOTE_FEATURES ends in the zero padding after `descsz`.
                let padded = area.get(desc_start..next.min(area.len())).unwrap_or(desc);
                self.apply_note(kind, desc, padded)?;
            }
            pos = next;
        }
        Ok(())
    }

    /// Records one note named "Xen" of type `kind`, as `elf_xen_parse_note` does.
    pub fn apply(&mut self, kind: u32, desc: &[u8]) -> Result<(), ElfNotesError> {
        self.apply_note(kind, desc, desc)
    }

    /// [`Self::apply`] for a note whose descriptor is followed by its alignment
    /// padding (`padded` starts with `desc`): string notes may end their text there.
    fn apply_note(&mut self, kind: u32, desc: &[u8], padded: &[u8]) -> Result<(), ElfNotesError> {
        let text = |kind| string(kind, padded);
        let num = |slot: &mut Option<u64>| -> Result<(), ElfNotesError> {
            *slot = Some(numeric(kind, desc)?);
            Ok(())
        };
        match kind {
            XEN_ELFNOTE_ENTRY => num(&mut self.entry)?,
            XEN_ELFNOTE_HYPERCALL_PAGE => num(&mut self.hypercall_page)?,
            XEN_ELFNOTE_VIRT_BASE => num(&mut self.virt_base)?,
            XEN_ELFNOTE_PADDR_OFFSET => num(&mut self.paddr_offset)?,
            XEN_ELFNOTE_HV_START_LOW => num(&mut self.hv_start_low)?,
            XEN_ELFNOTE_L1_MFN_VALID => {
                // libelf reads it as one number; kernels declare mask/value pairs of
                // 8-byte words, so take the first word rather than rejecting it.
                let first = desc.get(..8).unwrap_or(desc);
                self.l1_mfn_valid = Some(numeric(kind, first)?);
            }
            XEN_ELFNOTE_SUSPEND_CANCEL => num(&mut self.suspend_cancel)?,
            XEN_ELFNOTE_INIT_P2M => num(&mut self.init_p2m)?,
            XEN_ELFNOTE_MOD_START_PFN => num(&mut self.mod_start_pfn)?,
            XEN_ELFNOTE_PHYS32_ENTRY => num(&mut self.phys32_entry)?,
            XEN_ELFNOTE_XEN_VERSION => self.xen_version = Some(text(kind)?),
            XEN_ELFNOTE_GUEST_OS => self.guest_os = Some(text(kind)?),
            XEN_ELFNOTE_GUEST_VERSION => self.guest_version = Some(text(kind)?),
            XEN_ELFNOTE_LOADER => self.loader = Some(text(kind)?),
            XEN_ELFNOTE_PAE_MODE => self.pae_mode = Some(text(kind)?),
            XEN_ELFNOTE_BSD_SYMTAB => self.bsd_symtab = text(kind)? == "yes",
            XEN_ELFNOTE_FEATURES => {
                let text = text(kind)?;
                self.features.add_feature_string(&text)?;
            }
            XEN_ELFNOTE_SUPPORTED_FEATURES => {
                if desc.is_empty() || desc.len() & 3 != 0 {
                    return Err(ElfNotesError::BadFeatureBitmap(desc.len() as u32));
                }
                self.features.add_supported_bitmap(le_u32(&desc[..4]));
            }
            // XEN_ELFNOTE_INFO and types libelf does not know are skipped, and not
            // counted, exactly like libelf's table lookup.
            _ => return Ok(()),
        }
        self.count += 1;
        Ok(())
    }
}

fn malformed(e: object::read::Error) -> ElfNotesError {
    ElfNotesError::Malformed(e.to_string())
}

/// The `size` bytes at file offset `offset`, checked against the file.
fn area(data: &[u8], offset: u64, size: u64) -> Result<&[u8], ElfNotesError> {
    let outside = || ElfNotesError::AreaOutsideFile {
        offset,
        size,
        file_len: data.len(),
    };
    let start = usize::try_from(offset).map_err(|_| outside())?;
    let len = usize::try_from(size).map_err(|_| outside())?;
    let end = start.checked_add(len).ok_or_else(outside)?;
    data.get(start..end).ok_or_else(outside)
}

fn align4(n: u32) -> Option<usize> {
    (n as usize).checked_add(3).map(|v| v & !3)
}

fn le_u32(b: &[u8]) -> u32 {
    let mut word = [0u8; 4];
    for (dst, src) in word.iter_mut().zip(b) {
        *dst = *src;
    }
    u32::from_le_bytes(word)
}

/// A numeric note: 1, 2, 4 or 8 bytes, little-endian.
fn numeric(kind: u32, desc: &[u8]) -> Result<u64, ElfNotesError> {
    if !matches!(desc.len(), 1 | 2 | 4 | 8) {
        return Err(ElfNotesError::BadNumericSize {
            kind,
            size: desc.len() as u32,
        });
    }
    let mut word = [0u8; 8];
    word[..desc.len()].copy_from_slice(desc);
    Ok(u64::from_le_bytes(word))
}

/// A string note: the bytes before the first NUL, which must be present.
fn string(kind: u32, desc: &[u8]) -> Result<String, ElfNotesError> {
    if desc.len() > MAX_STRING_NOTE {
        return Err(ElfNotesError::StringTooLong { kind });
    }
    let nul = desc
        .iter()
        .position(|&b| b == 0)
        .ok_or(ElfNotesError::UnterminatedString { kind })?;
    String::from_utf8(desc[..nul].to_vec()).map_err(|_| ElfNotesError::NotUtf8 { kind })
}

#[cfg(test)]
mod tests;
