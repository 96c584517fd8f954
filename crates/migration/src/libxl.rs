//! Xen's libxl migration stream v2 around the libxc stream: its header and records
//! (`docs/specs/libxl-migration-stream.pandoc`).

use std::io::{Read, Write};

use crate::error::StreamError;
use crate::framing::{read_exact, write_record};

/// "LibxlFmt", big-endian.
pub const HDR_IDENT: u64 = 0x4c69_6278_6c46_6d74;
pub const HDR_VERSION: u32 = 2;

/// libxl record types.
pub mod rec {
    pub const END: u32 = 0x0;
    pub const LIBXC_CONTEXT: u32 = 0x1;
    pub const EMULATOR_XENSTORE_DATA: u32 = 0x2;
    pub const EMULATOR_CONTEXT: u32 = 0x3;
    pub const CHECKPOINT_END: u32 = 0x4;
    pub const CHECKPOINT_STATE: u32 = 0x5;
}

/// Writes the libxl header (little-endian stream, not legacy-converted).
pub fn write_header(w: &mut impl Write) -> Result<(), StreamError> {
    w.write_all(&HDR_IDENT.to_be_bytes())?;
    w.write_all(&HDR_VERSION.to_be_bytes())?;
    w.write_all(&0u32.to_be_bytes())?;
    Ok(())
}

/// Reads and checks the libxl header.
pub fn read_header(r: &mut impl Read) -> Result<(), StreamError> {
    let mut h = [0u8; 16];
    read_exact(r, &mut h, "the libxl header")?;
    let bad = |detail: String| StreamError::BadHeader {
        what: "libxl header",
        detail,
    };
    let mut ident = [0u8; 8];
    ident.copy_from_slice(&h[..8]);
    if u64::from_be_bytes(ident) != HDR_IDENT {
        return Err(bad("ident is not LibxlFmt".into()));
    }
    let version = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
    if version != HDR_VERSION {
        return Err(bad(format!("version {version}, expected {HDR_VERSION}")));
    }
    let options = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);
    if options != 0 {
        return Err(bad(format!(
            "options {options:#x} (only little-endian, not legacy-converted)"
        )));
    }
    Ok(())
}

/// Writes a body-less libxl record (`LIBXC_CONTEXT`, `END`, `CHECKPOINT_END`).
pub fn write_empty(w: &mut impl Write, rtype: u32) -> Result<(), StreamError> {
    write_record(w, rtype, &[])
}
