//! Linux bzImage unwrapping: finds the compressed `vmlinux` inside an x86 boot image
//! (`arch/x86/boot/header.S`'s setup header: `setup_sects`, the `HdrS` magic, the boot
//! protocol version, `payload_offset`/`payload_length`, boot protocol 2.08 and later)
//! and decompresses it, as Xen's toolstack does before reading a PV kernel's ELF notes.
//!
//! Owns only the byte-level unwrapping: it never touches guest memory, never reads
//! files, and never decides the boot protocol. Every header value is read once from the
//! image and checked against its length; the decompressed size is bounded by
//! [`MAX_VMLINUX_BYTES`] whatever the compressed stream claims. Supported payloads: xz
//! (Debian's kernels: an xz stream with the x86 BCJ filter and LZMA2) and gzip; others
//! are named in a typed error.

use std::io::Read;

/// Largest decompressed kernel accepted (Debian's 6.1 `vmlinux` is about 63 MiB).
pub const MAX_VMLINUX_BYTES: usize = 256 << 20;

/// Offset of the setup header's `setup_sects` byte.
const SETUP_SECTS: usize = 0x1f1;
/// Offset of the `HdrS` magic.
const HEADER_MAGIC: usize = 0x202;
/// Offset of the boot protocol version.
const PROTOCOL_VERSION: usize = 0x206;
/// Offset of `payload_offset` (from the start of the protected-mode code).
const PAYLOAD_OFFSET: usize = 0x248;
/// Offset of `payload_length`.
const PAYLOAD_LENGTH: usize = 0x24c;
/// First boot protocol version with `payload_offset`/`payload_length`.
const MIN_PROTOCOL: u16 = 0x0208;

/// Why a kernel image could not be unwrapped.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BzImageError {
    #[error("bzImage header is cut short ({len} bytes)")]
    Truncated { len: usize },
    #[error("bzImage boot protocol {version:#06x} predates payload_offset (2.08 needed)")]
    OldProtocol { version: u16 },
    #[error("bzImage payload {offset:#x}+{length:#x} lies outside the {len}-byte image")]
    PayloadOutsideImage {
        offset: u64,
        length: u64,
        len: usize,
    },
    #[error("bzImage payload is compressed with {0}, which rxen does not decompress (xz and gzip are supported)")]
    UnsupportedCompression(&'static str),
    #[error("bzImage payload has an unknown format (first bytes {0:02x?})")]
    UnknownPayload(Vec<u8>),
    #[error("decompressing the bzImage payload ({format}): {message}")]
    Decompress {
        format: &'static str,
        message: String,
    },
    #[error("decompressed kernel is larger than {MAX_VMLINUX_BYTES} bytes")]
    TooLarge,
    #[error("decompressed kernel is not an ELF image")]
    NotElf,
}

/// Whether `image` is an x86 boot image (`HdrS` at 0x202).
pub fn is_bzimage(image: &[u8]) -> bool {
    image.get(HEADER_MAGIC..HEADER_MAGIC + 4) == Some(b"HdrS")
}

/// Returns the ELF kernel inside `image`: `image` itself when it is not a bzImage,
/// otherwise its decompressed payload (which must be an ELF image).
pub fn unwrap_kernel(image: Vec<u8>) -> Result<Vec<u8>, BzImageError> {
    if !is_bzimage(&image) {
        return Ok(image);
    }
    let payload = payload(&image)?;
    let elf = decompress(payload)?;
    if elf.get(..4) != Some(b"\x7fELF") {
        return Err(BzImageError::NotElf);
    }
    Ok(elf)
}

fn read_u16(image: &[u8], at: usize) -> Result<u16, BzImageError> {
    image
        .get(at..at + 2)
        .and_then(|b| b.try_into().ok())
        .map(u16::from_le_bytes)
        .ok_or(BzImageError::Truncated { len: image.len() })
}

fn read_u32(image: &[u8], at: usize) -> Result<u32, BzImageError> {
    image
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or(BzImageError::Truncated { len: image.len() })
}

/// The compressed payload of a bzImage, bounds-checked.
pub fn payload(image: &[u8]) -> Result<&[u8], BzImageError> {
    let version = read_u16(image, PROTOCOL_VERSION)?;
    if version < MIN_PROTOCOL {
        return Err(BzImageError::OldProtocol { version });
    }
    let setup_sects = *image
        .get(SETUP_SECTS)
        .ok_or(BzImageError::Truncated { len: image.len() })?;
    // A zero count means 4 (the boot protocol's rule for old images).
    let setup_sects = if setup_sects == 0 { 4 } else { setup_sects };
    let protected_start = (u64::from(setup_sects) + 1) * 512;
    let offset = protected_start + u64::from(read_u32(image, PAYLOAD_OFFSET)?);
    let length = u64::from(read_u32(image, PAYLOAD_LENGTH)?);
    let outside = BzImageError::PayloadOutsideImage {
        offset,
        length,
        len: image.len(),
    };
    let end = offset.checked_add(length).ok_or(outside.clone())?;
    let (Ok(start), Ok(end)) = (usize::try_from(offset), usize::try_from(end)) else {
        return Err(outside);
    };
    image.get(start..end).ok_or(outside)
}

/// Names the compression of `payload` by its magic bytes (the formats Linux's
/// `arch/x86/boot/compressed` can carry).
fn compression(payload: &[u8]) -> Option<&'static str> {
    const MAGICS: [(&[u8], &str); 7] = [
        (b"\xfd7zXZ\x00", "xz"),
        (b"\x1f\x8b", "gzip"),
        (b"\x28\xb5\x2f\xfd", "zstd"),
        (b"BZh", "bzip2"),
        (b"\x02\x21\x4c\x18", "lz4"),
        (b"\x89LZO", "lzo"),
        (b"\x5d\x00\x00", "lzma"),
    ];
    MAGICS
        .iter()
        .find(|(magic, _)| payload.starts_with(magic))
        .map(|(_, name)| *name)
}

/// Decompresses `payload` (bounded by [`MAX_VMLINUX_BYTES`]).
pub fn decompress(payload: &[u8]) -> Result<Vec<u8>, BzImageError> {
    let format = compression(payload)
        .ok_or_else(|| BzImageError::UnknownPayload(payload.iter().take(8).copied().collect()))?;
    let error = |e: std::io::Error| BzImageError::Decompress {
        format,
        message: e.to_string(),
    };
    // Linux appends the decompressed size (le32) after the stream: a capacity hint
    // only, never trusted beyond the cap.
    let hint = payload
        .len()
        .checked_sub(4)
        .and_then(|at| payload.get(at..))
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .map_or(0, |n| (n as usize).min(MAX_VMLINUX_BYTES));
    let mut out = Vec::with_capacity(hint);
    let limit = MAX_VMLINUX_BYTES as u64 + 1;
    match format {
        "xz" => lzma_rust2::XzReader::new(payload, false)
            .take(limit)
            .read_to_end(&mut out)
            .map_err(error)?,
        "gzip" => flate2::read::GzDecoder::new(payload)
            .take(limit)
            .read_to_end(&mut out)
            .map_err(error)?,
        other => return Err(BzImageError::UnsupportedCompression(other)),
    };
    if out.len() > MAX_VMLINUX_BYTES {
        return Err(BzImageError::TooLarge);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
