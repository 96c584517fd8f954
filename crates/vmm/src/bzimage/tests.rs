use super::*;
use std::io::Write;

/// The bytes `SAMPLE_XZ` holds: an ELF magic, a pattern and x86 `call rel32`
/// instructions (so the BCJ filter has work to undo).
fn sample() -> Vec<u8> {
    let mut v = b"\x7fELF".to_vec();
    for _ in 0..8 {
        v.extend(0u8..60);
    }
    for _ in 0..20 {
        v.extend_from_slice(b"\xe8\x10\x00\x00\x00");
    }
    v
}

/// `sample()` compressed as Linux's `xz_wrap.sh` does (x86 BCJ, then LZMA2, CRC32).
const SAMPLE_XZ: &str = "fd377a585a0000016922de3602010400210116000d86351fe0024700725d003f914584682b84a913565c0ed387cbd1a99dfd94334ec98cf0f0793cae584018dbd27f64716c9482b4df0a618120f185362520bc3481757339eefd613ccccb53e9160afb802d1148f3d94d881237558f5462f1979416b5caed0502e6e9675fe7c5ae869101bc2bcd450588cfb86213416c67000000ea3deae800018a01c8040000e6a4eef53e300d8b020000000001595a";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// A bzImage around `payload` as `arch/x86/boot` lays it out: `setup_sects` setup
/// sectors after the boot sector, then the protected-mode code with the payload at
/// `payload_offset` into it, followed by Linux's le32 size trailer.
fn bzimage(payload: &[u8], decompressed_len: u32) -> Vec<u8> {
    let setup_sects = 3u8;
    let payload_offset = 0x40u32;
    let mut with_size = payload.to_vec();
    with_size.extend_from_slice(&decompressed_len.to_le_bytes());
    let start = (usize::from(setup_sects) + 1) * 512 + payload_offset as usize;
    let mut img = vec![0u8; start];
    img[SETUP_SECTS] = setup_sects;
    img[HEADER_MAGIC..HEADER_MAGIC + 4].copy_from_slice(b"HdrS");
    img[PROTOCOL_VERSION..PROTOCOL_VERSION + 2].copy_from_slice(&0x020fu16.to_le_bytes());
    img[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4].copy_from_slice(&payload_offset.to_le_bytes());
    img[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4]
        .copy_from_slice(&(with_size.len() as u32).to_le_bytes());
    img.extend_from_slice(&with_size);
    img.extend_from_slice(&[0xcc; 100]);
    img
}

#[test]
fn an_elf_image_passes_unchanged() {
    let elf = sample();
    assert_eq!(unwrap_kernel(elf.clone()), Ok(elf));
}

#[test]
fn xz_payload_with_the_x86_bcj_filter_is_decompressed() {
    let img = bzimage(&unhex(SAMPLE_XZ), sample().len() as u32);
    assert!(is_bzimage(&img));
    assert_eq!(unwrap_kernel(img), Ok(sample()));
}

#[test]
fn gzip_payload_is_decompressed() {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&sample()).expect("compress");
    let gz = enc.finish().expect("finish");
    assert_eq!(
        unwrap_kernel(bzimage(&gz, sample().len() as u32)),
        Ok(sample())
    );
}

#[test]
fn a_payload_that_is_not_elf_is_refused() {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(b"MZ not an ELF").expect("compress");
    let gz = enc.finish().expect("finish");
    assert_eq!(unwrap_kernel(bzimage(&gz, 13)), Err(BzImageError::NotElf));
}

#[test]
fn other_compressions_are_named() {
    let img = bzimage(b"\x28\xb5\x2f\xfd\x00\x00\x00\x00", 0);
    assert_eq!(
        unwrap_kernel(img),
        Err(BzImageError::UnsupportedCompression("zstd"))
    );
    let img = bzimage(b"what is this", 0);
    assert!(matches!(
        unwrap_kernel(img),
        Err(BzImageError::UnknownPayload(_))
    ));
}

#[test]
fn corrupt_xz_is_an_error() {
    let mut xz = unhex(SAMPLE_XZ);
    let mid = xz.len() / 2;
    xz[mid] ^= 0x55;
    xz.truncate(xz.len() - 20);
    let r = unwrap_kernel(bzimage(&xz, 584));
    assert!(
        matches!(r, Err(BzImageError::Decompress { format: "xz", .. })),
        "{r:?}"
    );
}

#[test]
fn payload_outside_the_image_is_refused() {
    let mut img = bzimage(&unhex(SAMPLE_XZ), 584);
    img[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        unwrap_kernel(img.clone()),
        Err(BzImageError::PayloadOutsideImage { .. })
    ));
    img[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        unwrap_kernel(img),
        Err(BzImageError::PayloadOutsideImage { .. })
    ));
}

#[test]
fn old_boot_protocols_and_short_headers_are_refused() {
    let mut img = bzimage(&unhex(SAMPLE_XZ), 584);
    img[PROTOCOL_VERSION..PROTOCOL_VERSION + 2].copy_from_slice(&0x0207u16.to_le_bytes());
    assert_eq!(
        unwrap_kernel(img),
        Err(BzImageError::OldProtocol { version: 0x0207 })
    );
    let mut short = vec![0u8; HEADER_MAGIC + 4];
    short[HEADER_MAGIC..].copy_from_slice(b"HdrS");
    assert!(matches!(
        unwrap_kernel(short),
        Err(BzImageError::Truncated { .. })
    ));
}

proptest::proptest! {
    /// Arbitrary bytes behind a valid-looking header give a result or an error, never
    /// a panic.
    #[test]
    fn hostile_images_never_panic(
        body in proptest::collection::vec(proptest::num::u8::ANY, 0..4096),
        sects in proptest::num::u8::ANY,
        offset in proptest::num::u32::ANY,
        length in proptest::num::u32::ANY,
    ) {
        let mut img = vec![0u8; 0x260];
        img[SETUP_SECTS] = sects;
        img[HEADER_MAGIC..HEADER_MAGIC + 4].copy_from_slice(b"HdrS");
        img[PROTOCOL_VERSION..PROTOCOL_VERSION + 2].copy_from_slice(&0x020fu16.to_le_bytes());
        img[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4].copy_from_slice(&(offset % 8192).to_le_bytes());
        img[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&(length % 8192).to_le_bytes());
        img.extend_from_slice(&body);
        let _ = unwrap_kernel(img);
    }
}
