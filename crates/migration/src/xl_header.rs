//! The xl file header in front of a saved image (what `xl save` writes): a 32-byte
//! signature, byte-order marker, mandatory and optional flags, and optional data (the
//! toolstack's domain configuration).

use std::io::{Read, Write};

use crate::error::StreamError;
use crate::framing::{le_u32, read_exact, read_vec};

/// xl's file signature.
pub const XL_MAGIC: &[u8; 32] = b"Xen saved domain, xl format\n \0 \r";
/// The byte-order marker as written on a little-endian host.
pub const XL_BYTEORDER_MARKER: u32 = 0x0102_0304;
/// The optional data is a JSON domain configuration.
pub const XL_MANDATORY_FLAG_JSON: u32 = 1 << 0;
/// The stream after the header is a libxl migration stream v2.
pub const XL_MANDATORY_FLAG_STREAMV2: u32 = 1 << 1;
/// Largest domain configuration accepted.
pub const MAX_CONFIG_LEN: usize = 1 << 20;

/// Writes the header with `config` as its optional data.
pub fn write(w: &mut impl Write, config: &[u8]) -> Result<(), StreamError> {
    if config.len() > MAX_CONFIG_LEN {
        return Err(StreamError::Unwritable(format!(
            "a domain configuration of {} bytes (at most {MAX_CONFIG_LEN})",
            config.len()
        )));
    }
    w.write_all(XL_MAGIC)?;
    w.write_all(&XL_BYTEORDER_MARKER.to_le_bytes())?;
    w.write_all(&(XL_MANDATORY_FLAG_JSON | XL_MANDATORY_FLAG_STREAMV2).to_le_bytes())?;
    w.write_all(&0u32.to_le_bytes())?;
    w.write_all(&(config.len() as u32).to_le_bytes())?;
    w.write_all(config)?;
    Ok(())
}

/// Reads the header; returns the configuration bytes.
pub fn read(r: &mut impl Read) -> Result<Vec<u8>, StreamError> {
    let mut magic = [0u8; 32];
    read_exact(r, &mut magic, "the xl header").map_err(|e| match e {
        StreamError::Truncated(_) => StreamError::NotAnImage,
        other => other,
    })?;
    if &magic != XL_MAGIC {
        return Err(StreamError::NotAnImage);
    }
    let mut h = [0u8; 16];
    read_exact(r, &mut h, "the xl header")?;
    let bad = |detail: String| StreamError::BadHeader {
        what: "xl header",
        detail,
    };
    if le_u32(&h, 0) != XL_BYTEORDER_MARKER {
        return Err(bad("not little-endian".into()));
    }
    let mandatory = le_u32(&h, 4);
    if mandatory != XL_MANDATORY_FLAG_JSON | XL_MANDATORY_FLAG_STREAMV2 {
        return Err(bad(format!(
            "mandatory flags {mandatory:#x}: rxen reads JSON + stream v2 images only"
        )));
    }
    let len = le_u32(&h, 12) as usize;
    if len > MAX_CONFIG_LEN {
        return Err(bad(format!("configuration of {len} bytes")));
    }
    read_vec(r, len, "the domain configuration")
}
