//! A minimal Xen PV kernel image for the KVM tests (an ELF64 with Xen's notes).
#![allow(dead_code)]

fn note(kind: u32, desc: &[u8]) -> Vec<u8> {
    let mut n = Vec::new();
    n.extend_from_slice(&4u32.to_le_bytes());
    n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    n.extend_from_slice(&kind.to_le_bytes());
    n.extend_from_slice(b"Xen\0");
    n.extend_from_slice(desc);
    while n.len() % 4 != 0 {
        n.push(0);
    }
    n
}

/// A minimal Xen PV kernel: `code` loaded and entered at virtual address 0 (in a
/// 2-page segment), with Xen's notes (XEN_VERSION, GUEST_OS, LOADER) and no
/// hypercall page.
pub fn pv_kernel(code: &[u8]) -> Vec<u8> {
    let mut notes = note(5, b"xen-3.0\0");
    notes.extend(note(6, b"rxen-test\0"));
    notes.extend(note(8, b"generic\0"));
    let code_off = 0x1000u64;
    let notes_off = code_off + code.len() as u64;
    let mut elf = vec![0u8; 0x1000];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2; // 64-bit
    elf[5] = 1; // little-endian
    elf[6] = 1;
    let put = |elf: &mut Vec<u8>, at: usize, v: &[u8]| elf[at..at + v.len()].copy_from_slice(v);
    put(&mut elf, 16, &2u16.to_le_bytes()); // ET_EXEC
    put(&mut elf, 18, &62u16.to_le_bytes()); // x86-64
    put(&mut elf, 20, &1u32.to_le_bytes());
    put(&mut elf, 24, &0u64.to_le_bytes()); // entry
    put(&mut elf, 32, &64u64.to_le_bytes()); // phoff
    put(&mut elf, 52, &64u16.to_le_bytes()); // ehsize
    put(&mut elf, 54, &56u16.to_le_bytes()); // phentsize
    put(&mut elf, 56, &2u16.to_le_bytes()); // phnum
    let phdr =
        |elf: &mut Vec<u8>, i: usize, ty: u32, flags: u32, off: u64, filesz: u64, memsz: u64| {
            let at = 64 + 56 * i;
            put(elf, at, &ty.to_le_bytes());
            put(elf, at + 4, &flags.to_le_bytes());
            put(elf, at + 8, &off.to_le_bytes());
            put(elf, at + 16, &0u64.to_le_bytes());
            put(elf, at + 24, &0u64.to_le_bytes());
            put(elf, at + 32, &filesz.to_le_bytes());
            put(elf, at + 40, &memsz.to_le_bytes());
            put(elf, at + 48, &0x1000u64.to_le_bytes());
        };
    phdr(&mut elf, 0, 1, 7, code_off, code.len() as u64, 0x2000);
    elf.extend_from_slice(code);
    elf.extend_from_slice(&notes);
    let len = notes.len() as u64;
    // PT_NOTE: the notes follow the code in the file (not loaded separately).
    let at = 64 + 56;
    put(&mut elf, at, &4u32.to_le_bytes());
    put(&mut elf, at + 4, &4u32.to_le_bytes());
    put(&mut elf, at + 8, &notes_off.to_le_bytes());
    put(&mut elf, at + 32, &len.to_le_bytes());
    put(&mut elf, at + 40, &len.to_le_bytes());
    put(&mut elf, at + 48, &4u64.to_le_bytes());
    elf
}
