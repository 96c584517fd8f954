//! Builds minimal static ELF images from raw machine code: the bare guests of the
//! benchmarks (the raw exit-cost baseline) and of the loader's tests.

/// Builds a minimal ELF64 executable with the given segments `(vaddr, filesz, memsz, flags)`.
pub fn build_elf(entry: u64, segs: &[(u64, u64, u64, u32)], machine: u16, etype: u16) -> Vec<u8> {
    let phoff = 64u64;
    let data_off = phoff + 56 * segs.len() as u64;
    let mut out = vec![0u8; 64];
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = 2; // 64-bit
    out[5] = 1; // little endian
    out[6] = 1; // version
    out[16..18].copy_from_slice(&etype.to_le_bytes());
    out[18..20].copy_from_slice(&machine.to_le_bytes());
    out[20..24].copy_from_slice(&1u32.to_le_bytes());
    out[24..32].copy_from_slice(&entry.to_le_bytes());
    out[32..40].copy_from_slice(&phoff.to_le_bytes());
    out[52..54].copy_from_slice(&64u16.to_le_bytes());
    out[54..56].copy_from_slice(&56u16.to_le_bytes());
    out[56..58].copy_from_slice(&(segs.len() as u16).to_le_bytes());
    let mut off = data_off;
    let mut body = Vec::new();
    for &(vaddr, filesz, memsz, flags) in segs {
        let mut ph = vec![0u8; 56];
        ph[0..4].copy_from_slice(&1u32.to_le_bytes());
        ph[4..8].copy_from_slice(&flags.to_le_bytes());
        ph[8..16].copy_from_slice(&off.to_le_bytes());
        ph[16..24].copy_from_slice(&vaddr.to_le_bytes());
        ph[24..32].copy_from_slice(&vaddr.to_le_bytes());
        ph[32..40].copy_from_slice(&filesz.to_le_bytes());
        ph[40..48].copy_from_slice(&memsz.to_le_bytes());
        ph[48..56].copy_from_slice(&4096u64.to_le_bytes());
        out.extend_from_slice(&ph);
        body.extend(std::iter::repeat_n(0xC3u8, filesz as usize));
        off += filesz;
    }
    out.extend_from_slice(&body);
    out
}

/// A single executable segment at `0x400000` holding `code`, entered at its start.
pub fn code_image(code: &[u8]) -> Vec<u8> {
    let mut img = build_elf(
        0x400000,
        &[(0x400000, code.len() as u64, code.len() as u64, 5)],
        62,
        2,
    );
    let at = img.len() - code.len();
    img[at..].copy_from_slice(code);
    img
}
