//! Hand-built ELF64 images for the tests of this module.

/// One program header.
#[derive(Clone, Copy)]
pub struct Phdr {
    pub p_type: u32,
    pub flags: u32,
    pub offset: u64,
    pub vaddr: u64,
    pub paddr: u64,
    pub filesz: u64,
    pub memsz: u64,
    pub align: u64,
}

/// Builds an x86-64 `ET_EXEC` image: headers, then data from file offset 0x1000,
/// then a section name table and section headers when sections were added.
pub struct ElfBuilder {
    pub entry: u64,
    pub machine: u16,
    phdrs: Vec<Phdr>,
    sections: Vec<(String, u32, u64, u64)>,
    body: Vec<u8>,
}

pub const BODY_START: u64 = 0x1000;

impl ElfBuilder {
    pub fn new(entry: u64) -> Self {
        ElfBuilder {
            entry,
            machine: 62,
            phdrs: Vec::new(),
            sections: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Appends bytes to the body, 8-aligned; returns their file offset.
    pub fn data(&mut self, bytes: &[u8]) -> u64 {
        while self.body.len() & 7 != 0 {
            self.body.push(0);
        }
        let offset = BODY_START + self.body.len() as u64;
        self.body.extend_from_slice(bytes);
        offset
    }

    pub fn phdr(&mut self, phdr: Phdr) -> &mut Self {
        self.phdrs.push(phdr);
        self
    }

    /// A `PT_LOAD` of `filesz` bytes of filler (flags R|X) at `vaddr`/`paddr`.
    pub fn load(&mut self, vaddr: u64, paddr: u64, filesz: u64, memsz: u64) -> &mut Self {
        let offset = self.data(&vec![0x90; filesz as usize]);
        self.phdr(Phdr {
            p_type: 1,
            flags: 5,
            offset,
            vaddr,
            paddr,
            filesz,
            memsz,
            align: 0x1000,
        })
    }

    /// A `PT_NOTE` holding `notes`.
    pub fn note_segment(&mut self, notes: &[u8]) -> &mut Self {
        let offset = self.data(notes);
        self.phdr(Phdr {
            p_type: 4,
            flags: 4,
            offset,
            vaddr: 0,
            paddr: 0,
            filesz: notes.len() as u64,
            memsz: 0,
            align: 8,
        })
    }

    /// A section of type `sh_type` holding `bytes`.
    pub fn section(&mut self, name: &str, sh_type: u32, bytes: &[u8]) -> &mut Self {
        let offset = self.data(bytes);
        self.sections
            .push((name.into(), sh_type, offset, bytes.len() as u64));
        self
    }

    pub fn build(&self) -> Vec<u8> {
        assert!(64 + 56 * self.phdrs.len() <= BODY_START as usize);
        let mut out = vec![0u8; BODY_START as usize];
        out.extend_from_slice(&self.body);
        while out.len() & 7 != 0 {
            out.push(0);
        }
        let (mut shoff, mut shnum, mut shstrndx) = (0u64, 0u16, 0u16);
        if !self.sections.is_empty() {
            let mut names = vec![0u8];
            let mut name_at = Vec::new();
            for (name, ..) in &self.sections {
                name_at.push(names.len() as u32);
                names.extend_from_slice(name.as_bytes());
                names.push(0);
            }
            let shstrtab_name = names.len() as u32;
            names.extend_from_slice(b".shstrtab\0");
            let names_off = out.len() as u64;
            out.extend_from_slice(&names);
            while out.len() & 7 != 0 {
                out.push(0);
            }
            shoff = out.len() as u64;
            out.extend_from_slice(&[0u8; 64]);
            let mut shdr = |name: u32, ty: u32, off: u64, size: u64| {
                let mut h = Vec::with_capacity(64);
                h.extend_from_slice(&name.to_le_bytes());
                h.extend_from_slice(&ty.to_le_bytes());
                h.extend_from_slice(&0u64.to_le_bytes()); // flags
                h.extend_from_slice(&0u64.to_le_bytes()); // addr
                h.extend_from_slice(&off.to_le_bytes());
                h.extend_from_slice(&size.to_le_bytes());
                h.extend_from_slice(&0u32.to_le_bytes()); // link
                h.extend_from_slice(&0u32.to_le_bytes()); // info
                h.extend_from_slice(&4u64.to_le_bytes()); // addralign
                h.extend_from_slice(&0u64.to_le_bytes()); // entsize
                out.extend_from_slice(&h);
            };
            for (i, (_, ty, off, size)) in self.sections.iter().enumerate() {
                shdr(name_at[i], *ty, *off, *size);
            }
            shdr(shstrtab_name, 3, names_off, names.len() as u64);
            shnum = self.sections.len() as u16 + 2;
            shstrndx = shnum - 1;
        }
        let mut eh = Vec::with_capacity(64);
        eh.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
        eh.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        eh.extend_from_slice(&self.machine.to_le_bytes());
        eh.extend_from_slice(&1u32.to_le_bytes());
        eh.extend_from_slice(&self.entry.to_le_bytes());
        eh.extend_from_slice(&64u64.to_le_bytes()); // phoff
        eh.extend_from_slice(&shoff.to_le_bytes());
        eh.extend_from_slice(&0u32.to_le_bytes()); // flags
        eh.extend_from_slice(&64u16.to_le_bytes());
        eh.extend_from_slice(&56u16.to_le_bytes());
        eh.extend_from_slice(&(self.phdrs.len() as u16).to_le_bytes());
        eh.extend_from_slice(&64u16.to_le_bytes());
        eh.extend_from_slice(&shnum.to_le_bytes());
        eh.extend_from_slice(&shstrndx.to_le_bytes());
        out[..64].copy_from_slice(&eh);
        for (i, p) in self.phdrs.iter().enumerate() {
            let at = 64 + 56 * i;
            let mut h = Vec::with_capacity(56);
            h.extend_from_slice(&p.p_type.to_le_bytes());
            h.extend_from_slice(&p.flags.to_le_bytes());
            h.extend_from_slice(&p.offset.to_le_bytes());
            h.extend_from_slice(&p.vaddr.to_le_bytes());
            h.extend_from_slice(&p.paddr.to_le_bytes());
            h.extend_from_slice(&p.filesz.to_le_bytes());
            h.extend_from_slice(&p.memsz.to_le_bytes());
            h.extend_from_slice(&p.align.to_le_bytes());
            out[at..at + 56].copy_from_slice(&h);
        }
        out
    }
}

/// One ELF note with 4-byte alignment of name and descriptor.
pub fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(name.len() as u32).to_le_bytes());
    out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(name);
    while out.len() % 4 != 0 {
        out.push(0);
    }
    out.extend_from_slice(desc);
    while out.len() % 4 != 0 {
        out.push(0);
    }
    out
}

/// A note named "Xen".
pub fn xen(kind: u32, desc: &[u8]) -> Vec<u8> {
    note(b"Xen\0", kind, desc)
}

/// Where the real guests are: `RXEN_GUESTS_DIR` or `../shared/guests` next to the
/// worktree (`CARGO_MANIFEST_DIR/../../../shared/guests`).
pub fn shared_guest(name: &str) -> Option<Vec<u8>> {
    let dir = std::env::var_os("RXEN_GUESTS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/guests")
        });
    std::fs::read(dir.join(name)).ok()
}

/// Debian's PV-GRUB: `RXEN_PVGRUB` (the file), else `/usr/lib/grub-xen/...`.
pub fn pv_grub() -> Option<Vec<u8>> {
    let path = std::env::var_os("RXEN_PVGRUB")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/usr/lib/grub-xen/grub-x86_64-xen.bin".into());
    std::fs::read(path).ok()
}
