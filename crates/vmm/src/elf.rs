//! Static ELF loader for guest kernels.
//!
//! Parses an x86-64 `ET_EXEC` image with the `object` crate and validates it before
//! anything touches guest memory: class, endianness, machine, segment bounds (inside
//! RAM, at or above [`layout::KERNEL_MIN`], not overlapping each other), entry point
//! inside an executable loaded segment, and size limits. Dynamic or interpreted images
//! are rejected. [`ElfImage::load`] then copies the segments and zeroes their BSS.

use object::elf::{self, FileHeader64};
use object::read::elf::{FileHeader, ProgramHeader};
use object::Endianness;
use rxen_abi::layout;

use crate::memory::GuestRam;

/// Largest accepted image file (64 MiB).
pub const MAX_IMAGE_BYTES: usize = 64 << 20;
/// Most program headers accepted.
pub const MAX_PROGRAM_HEADERS: usize = 64;

/// Why an image was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ElfError {
    #[error("image is {0} bytes, more than the {max} allowed", max = MAX_IMAGE_BYTES)]
    TooLarge(usize),
    #[error("not a valid ELF file: {0}")]
    Malformed(String),
    #[error("not a 64-bit little-endian ELF file")]
    WrongClass,
    #[error("ELF machine is {0}, expected x86-64 (62)")]
    WrongMachine(u16),
    #[error("ELF type is {0}, expected a static executable (ET_EXEC = 2)")]
    WrongType(u16),
    #[error(
        "image needs a dynamic linker or interpreter (segment type {0:#x}); link it statically"
    )]
    Dynamic(u32),
    #[error("{0} program headers, at most {max} allowed", max = MAX_PROGRAM_HEADERS)]
    TooManySegments(usize),
    #[error("no loadable segment")]
    NoSegments,
    #[error(
        "segment {index}: file range {offset:#x}+{filesz:#x} lies outside the {file_len}-byte file"
    )]
    SegmentOutsideFile {
        index: usize,
        offset: u64,
        filesz: u64,
        file_len: usize,
    },
    #[error("segment {index}: file size {filesz:#x} exceeds memory size {memsz:#x}")]
    FileSizeExceedsMemSize {
        index: usize,
        filesz: u64,
        memsz: u64,
    },
    #[error("segment {index}: {vaddr:#x}+{memsz:#x} is outside guest RAM [{min:#x}, {ram:#x}) (guests must be linked at or above {min:#x})", min = layout::KERNEL_MIN)]
    SegmentOutsideRam {
        index: usize,
        vaddr: u64,
        memsz: u64,
        ram: u64,
    },
    #[error("segments {0} and {1} overlap")]
    Overlap(usize, usize),
    #[error("entry point {0:#x} is not inside an executable loaded segment")]
    BadEntry(u64),
    #[error("loading segment into guest memory: {0}")]
    Memory(String),
}

/// One loadable segment, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub vaddr: u64,
    pub memsz: u64,
    pub file_offset: u64,
    pub filesz: u64,
    pub executable: bool,
}

/// A validated guest image.
#[derive(Debug, Clone)]
pub struct ElfImage<'a> {
    data: &'a [u8],
    pub entry: u64,
    pub segments: Vec<Segment>,
}

impl<'a> ElfImage<'a> {
    /// Parses and validates `data` for a guest with `ram_size` bytes of RAM.
    pub fn parse(data: &'a [u8], ram_size: u64) -> Result<Self, ElfError> {
        if data.len() > MAX_IMAGE_BYTES {
            return Err(ElfError::TooLarge(data.len()));
        }
        if data.len() < 5 || &data[..4] != b"\x7fELF" {
            return Err(ElfError::Malformed("missing ELF magic".into()));
        }
        if data[4] != elf::ELFCLASS64.0 || data.get(5) != Some(&elf::ELFDATA2LSB.0) {
            return Err(ElfError::WrongClass);
        }
        let header = FileHeader64::<Endianness>::parse(data)
            .map_err(|e| ElfError::Malformed(e.to_string()))?;
        let endian = header
            .endian()
            .map_err(|e| ElfError::Malformed(e.to_string()))?;
        if endian != Endianness::Little {
            return Err(ElfError::WrongClass);
        }
        let machine = header.e_machine(endian);
        if machine != elf::EM_X86_64 {
            return Err(ElfError::WrongMachine(machine.0));
        }
        let kind = header.e_type(endian);
        if kind != elf::ET_EXEC {
            return Err(ElfError::WrongType(kind.0));
        }
        let phdrs = header
            .program_headers(endian, data)
            .map_err(|e| ElfError::Malformed(e.to_string()))?;
        if phdrs.len() > MAX_PROGRAM_HEADERS {
            return Err(ElfError::TooManySegments(phdrs.len()));
        }
        let mut segments = Vec::new();
        for (index, ph) in phdrs.iter().enumerate() {
            let ptype = ph.p_type(endian);
            if ptype == elf::PT_DYNAMIC || ptype == elf::PT_INTERP {
                return Err(ElfError::Dynamic(ptype.0));
            }
            if ptype != elf::PT_LOAD {
                continue;
            }
            let (vaddr, memsz) = (ph.p_vaddr(endian), ph.p_memsz(endian));
            let (file_offset, filesz) = (ph.p_offset(endian), ph.p_filesz(endian));
            if memsz == 0 {
                continue;
            }
            if filesz > memsz {
                return Err(ElfError::FileSizeExceedsMemSize {
                    index,
                    filesz,
                    memsz,
                });
            }
            match file_offset.checked_add(filesz) {
                Some(end) if end <= data.len() as u64 => {}
                _ => {
                    return Err(ElfError::SegmentOutsideFile {
                        index,
                        offset: file_offset,
                        filesz,
                        file_len: data.len(),
                    })
                }
            }
            match vaddr.checked_add(memsz) {
                Some(end) if vaddr >= layout::KERNEL_MIN && end <= ram_size => {}
                _ => {
                    return Err(ElfError::SegmentOutsideRam {
                        index,
                        vaddr,
                        memsz,
                        ram: ram_size,
                    })
                }
            }
            let executable = ph.p_flags(endian).0 & elf::PF_X.0 != 0;
            segments.push((
                index,
                Segment {
                    vaddr,
                    memsz,
                    file_offset,
                    filesz,
                    executable,
                },
            ));
        }
        if segments.is_empty() {
            return Err(ElfError::NoSegments);
        }
        for (i, (ia, a)) in segments.iter().enumerate() {
            for (ib, b) in &segments[i + 1..] {
                if a.vaddr < b.vaddr + b.memsz && b.vaddr < a.vaddr + a.memsz {
                    return Err(ElfError::Overlap(*ia, *ib));
                }
            }
        }
        let entry = header.e_entry(endian);
        let entry_ok = segments
            .iter()
            .any(|(_, s)| s.executable && entry >= s.vaddr && entry < s.vaddr + s.memsz);
        if !entry_ok {
            return Err(ElfError::BadEntry(entry));
        }
        Ok(Self {
            data,
            entry,
            segments: segments.into_iter().map(|(_, s)| s).collect(),
        })
    }

    /// Highest address used by the image (end of its last segment).
    pub fn end(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| s.vaddr + s.memsz)
            .max()
            .unwrap_or(layout::KERNEL_MIN)
    }

    /// Copies the segments into guest RAM and zeroes their BSS parts.
    pub fn load(&self, ram: &GuestRam) -> Result<(), ElfError> {
        for s in &self.segments {
            let start = s.file_offset as usize;
            let bytes = &self.data[start..start + s.filesz as usize];
            ram.write(s.vaddr, bytes)
                .map_err(|e| ElfError::Memory(e.to_string()))?;
            // Fresh guest RAM is zero, so the BSS only needs clearing on reuse; clear it
            // anyway in bounded chunks so a reused RAM never leaks old contents.
            let mut at = s.vaddr + s.filesz;
            let end = s.vaddr + s.memsz;
            let zeros = [0u8; 4096];
            while at < end {
                let n = (end - at).min(zeros.len() as u64) as usize;
                ram.write(at, &zeros[..n])
                    .map_err(|e| ElfError::Memory(e.to_string()))?;
                at += n as u64;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) use crate::rawimage::build_elf;

    const RAM: u64 = 32 << 20;
    const RX: u32 = 5;
    const RW: u32 = 6;

    #[test]
    fn accepts_valid_image() {
        let e = build_elf(
            0x400000,
            &[(0x400000, 16, 16, RX), (0x401000, 8, 0x2000, RW)],
            62,
            2,
        );
        let img = ElfImage::parse(&e, RAM).unwrap();
        assert_eq!(img.entry, 0x400000);
        assert_eq!(img.segments.len(), 2);
        assert_eq!(img.end(), 0x403000);
        let ram = GuestRam::new("elf", RAM).unwrap();
        img.load(&ram).unwrap();
        assert_eq!(ram.read_obj::<u8>(0x400000).unwrap(), 0xC3);
        assert_eq!(ram.read_obj::<u8>(0x401008).unwrap(), 0);
    }

    #[test]
    fn malformed_corpus_is_rejected() {
        let good = build_elf(0x400000, &[(0x400000, 16, 16, RX)], 62, 2);
        type Case = (&'static str, Vec<u8>, fn(&ElfError) -> bool);
        let cases: Vec<Case> = vec![
            ("empty", vec![], |e| matches!(e, ElfError::Malformed(_))),
            ("no magic", b"MZ\0\0\0\0\0\0".to_vec(), |e| {
                matches!(e, ElfError::Malformed(_))
            }),
            ("truncated header", good[..20].to_vec(), |e| {
                matches!(e, ElfError::Malformed(_))
            }),
            (
                "32-bit",
                {
                    let mut v = good.clone();
                    v[4] = 1;
                    v
                },
                |e| *e == ElfError::WrongClass,
            ),
            (
                "big endian",
                {
                    let mut v = good.clone();
                    v[5] = 2;
                    v
                },
                |e| *e == ElfError::WrongClass,
            ),
            (
                "aarch64",
                build_elf(0x400000, &[(0x400000, 16, 16, RX)], 183, 2),
                |e| *e == ElfError::WrongMachine(183),
            ),
            (
                "shared object",
                build_elf(0x400000, &[(0x400000, 16, 16, RX)], 62, 3),
                |e| *e == ElfError::WrongType(3),
            ),
            ("no segments", build_elf(0x400000, &[], 62, 2), |e| {
                *e == ElfError::NoSegments
            }),
            (
                "below kernel min",
                build_elf(0x1000, &[(0x1000, 16, 16, RX)], 62, 2),
                |e| matches!(e, ElfError::SegmentOutsideRam { .. }),
            ),
            (
                "beyond ram",
                build_elf(0x400000, &[(RAM - 8, 16, 16, RX)], 62, 2),
                |e| matches!(e, ElfError::SegmentOutsideRam { .. }),
            ),
            (
                "vaddr overflow",
                build_elf(0x400000, &[(u64::MAX - 4, 1, 16, RX)], 62, 2),
                |e| matches!(e, ElfError::SegmentOutsideRam { .. }),
            ),
            (
                "overlap",
                build_elf(
                    0x400000,
                    &[(0x400000, 16, 0x2000, RX), (0x401000, 16, 16, RW)],
                    62,
                    2,
                ),
                |e| *e == ElfError::Overlap(0, 1),
            ),
            (
                "entry outside",
                build_elf(0x900000, &[(0x400000, 16, 16, RX)], 62, 2),
                |e| *e == ElfError::BadEntry(0x900000),
            ),
            (
                "entry in data",
                build_elf(0x400000, &[(0x400000, 16, 16, RW)], 62, 2),
                |e| *e == ElfError::BadEntry(0x400000),
            ),
            (
                "filesz > memsz",
                build_elf(0x400000, &[(0x400000, 32, 16, RX)], 62, 2),
                |e| matches!(e, ElfError::FileSizeExceedsMemSize { .. }),
            ),
            (
                "file truncated",
                {
                    let v = good.clone();
                    v[..v.len() - 8].to_vec()
                },
                |e| matches!(e, ElfError::SegmentOutsideFile { .. }),
            ),
            (
                "phdrs outside file",
                {
                    let mut v = good.clone();
                    v[32..40].copy_from_slice(&0xffff_ffffu64.to_le_bytes());
                    v
                },
                |e| matches!(e, ElfError::Malformed(_)),
            ),
        ];
        for (name, bytes, check) in cases {
            match ElfImage::parse(&bytes, RAM) {
                Ok(_) => panic!("{name}: accepted"),
                Err(e) => assert!(check(&e), "{name}: unexpected error {e}"),
            }
        }
    }

    #[test]
    fn interpreter_is_rejected() {
        let mut e = build_elf(0x400000, &[(0x400000, 16, 16, RX)], 62, 2);
        e[64..68].copy_from_slice(&3u32.to_le_bytes()); // PT_INTERP
        assert_eq!(ElfImage::parse(&e, RAM).unwrap_err(), ElfError::Dynamic(3));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_mutations(pos in 0usize..400, byte in 0u8..=255, len in 0usize..500) {
            let mut e = build_elf(0x400000, &[(0x400000, 64, 64, RX), (0x402000, 8, 0x100, RW)], 62, 2);
            if pos < e.len() { e[pos] = byte; }
            e.truncate(len.max(1).min(e.len()));
            let _ = ElfImage::parse(&e, RAM);
        }

        #[test]
        fn never_panics_on_garbage(bytes in proptest::collection::vec(0u8..=255, 0..600)) {
            let mut v = b"\x7fELF\x02\x01\x01".to_vec();
            v.extend(bytes);
            let _ = ElfImage::parse(&v, RAM);
        }
    }
}
