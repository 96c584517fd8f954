//! Record framing shared by the libxl and libxc streams: a native-endian `(type u32,
//! length u32)` header, the body, then zero padding to a multiple of 8 bytes.

use std::io::{Read, Write};

use crate::error::StreamError;
use crate::MAX_RECORD_LEN;

/// Reads exactly `buf.len()` bytes; a short read is [`StreamError::Truncated`].
pub(crate) fn read_exact(
    r: &mut impl Read,
    buf: &mut [u8],
    what: &'static str,
) -> Result<(), StreamError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => StreamError::Truncated(what),
        _ => StreamError::Io(e),
    })
}

/// Reads `len` bytes without trusting `len` for the allocation (the buffer grows
/// with what actually arrives).
pub(crate) fn read_vec(
    r: &mut impl Read,
    len: usize,
    what: &'static str,
) -> Result<Vec<u8>, StreamError> {
    let mut out = Vec::with_capacity(len.min(64 << 10));
    let got = r.take(len as u64).read_to_end(&mut out)?;
    if got != len {
        return Err(StreamError::Truncated(what));
    }
    Ok(out)
}

/// A raw record: its type and its body without padding.
pub(crate) struct RawRecord {
    pub rtype: u32,
    pub body: Vec<u8>,
}

/// Reads one record of stream `stream`, checking its length against `MAX_RECORD_LEN`
/// and its padding.
pub(crate) fn read_record(
    r: &mut impl Read,
    stream: &'static str,
) -> Result<RawRecord, StreamError> {
    let (rtype, len) = read_record_header(r, stream)?;
    read_record_body(r, stream, rtype, len)
}

/// Reads a record header: its type and body length (checked against
/// `MAX_RECORD_LEN`).
pub(crate) fn read_record_header(
    r: &mut impl Read,
    stream: &'static str,
) -> Result<(u32, u32), StreamError> {
    let mut hdr = [0u8; 8];
    read_exact(r, &mut hdr, "a record header")?;
    let rtype = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    let len = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
    if len > MAX_RECORD_LEN {
        return Err(StreamError::RecordTooLarge {
            stream,
            rtype,
            len,
            max: MAX_RECORD_LEN,
        });
    }
    Ok((rtype, len))
}

/// Reads the body (and checks the padding) of a record whose header was read.
pub(crate) fn read_record_body(
    r: &mut impl Read,
    stream: &'static str,
    rtype: u32,
    len: u32,
) -> Result<RawRecord, StreamError> {
    let body = read_vec(r, len as usize, "a record body")?;
    let pad = padding(len as usize);
    let mut p = [0u8; 8];
    read_exact(r, &mut p[..pad], "a record's padding")?;
    if p.iter().any(|&b| b != 0) {
        return Err(StreamError::BadPadding { stream, rtype });
    }
    Ok(RawRecord { rtype, body })
}

/// Padding after a body of `len` bytes.
pub(crate) fn padding(len: usize) -> usize {
    (8 - len % 8) % 8
}

/// Writes one record whose body is the concatenation of `parts`.
pub(crate) fn write_record(
    w: &mut impl Write,
    rtype: u32,
    parts: &[&[u8]],
) -> Result<(), StreamError> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let len32 = u32::try_from(len)
        .ok()
        .filter(|&l| l <= MAX_RECORD_LEN)
        .ok_or_else(|| {
            StreamError::Unwritable(format!("record {rtype:#x} of {len} bytes is too large"))
        })?;
    w.write_all(&rtype.to_le_bytes())?;
    w.write_all(&len32.to_le_bytes())?;
    for p in parts {
        w.write_all(p)?;
    }
    w.write_all(&[0u8; 8][..padding(len)])?;
    Ok(())
}

/// Little-endian field readers over a body whose length was checked by the caller.
pub(crate) fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

pub(crate) fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}
