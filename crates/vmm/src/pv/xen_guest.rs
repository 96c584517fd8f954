//! The legacy `__xen_guest` section: one NUL-terminated string of comma-separated
//! `KEY=VALUE` pairs, e.g. `GUEST_OS=linux,XEN_VER=xen-3.0,VIRT_BASE=0xC0000000,
//! ELF_PADDR_OFFSET=0xC0000000,HYPERCALL_PAGE=0x2,LOADER=generic`.
//!
//! Keys and meanings follow `elf_xen_parse_guest_info` in Xen's
//! `xen/common/libelf/libelf-dominfo.c`: `LOADER`, `GUEST_OS`, `GUEST_VER`, `XEN_VER`,
//! `PAE`, `BSD_SYMTAB` (present means yes), `VIRT_BASE`, `VIRT_ENTRY`,
//! `ELF_PADDR_OFFSET`, `HYPERCALL_PAGE` (a *page number*: the address is that times
//! 4096, plus `VIRT_BASE` when given) and `FEATURES`; other keys are ignored. Numbers
//! are C `strtoull(.., 0)` syntax (`0x` hex, leading-`0` octal, decimal). Stricter than
//! libelf: a number with trailing garbage, a key over 31 or a value over 127 bytes
//! (libelf silently truncates those) and non-UTF-8 text are errors.

use super::features::FeatureError;
use super::notes::{NoteSource, XenNotes};

/// Longest key libelf reads (its buffer is 32 bytes with the NUL).
pub const MAX_KEY: usize = 31;
/// Longest value libelf reads (its buffer is 128 bytes with the NUL).
pub const MAX_VALUE: usize = 127;

/// Why a `__xen_guest` string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XenGuestError {
    #[error("not valid UTF-8")]
    NotUtf8,
    #[error("key {0:?} is longer than {max} bytes", max = MAX_KEY)]
    KeyTooLong(String),
    #[error("value of {0} is longer than {max} bytes", max = MAX_VALUE)]
    ValueTooLong(String),
    #[error("{key}={value:?} is not a number")]
    BadNumber { key: String, value: String },
    #[error("HYPERCALL_PAGE={0:#x} is out of range")]
    HypercallPageOutOfRange(u64),
    #[error(transparent)]
    Feature(#[from] FeatureError),
}

/// Parses the section contents (up to the first NUL or its end).
pub fn parse(section: &[u8]) -> Result<XenNotes, XenGuestError> {
    let len = section
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(section.len());
    let text = std::str::from_utf8(&section[..len]).map_err(|_| XenGuestError::NotUtf8)?;
    let mut notes = XenNotes {
        source: Some(NoteSource::LegacyXenGuest),
        ..XenNotes::default()
    };
    let mut hypercall_pfn = None;
    for pair in text.split(',').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key.len() > MAX_KEY {
            return Err(XenGuestError::KeyTooLong(key.into()));
        }
        if value.len() > MAX_VALUE {
            return Err(XenGuestError::ValueTooLong(key.into()));
        }
        let number = || {
            parse_c_number(value).ok_or_else(|| XenGuestError::BadNumber {
                key: key.into(),
                value: value.into(),
            })
        };
        match key {
            "LOADER" => notes.loader = Some(value.into()),
            "GUEST_OS" => notes.guest_os = Some(value.into()),
            "GUEST_VER" => notes.guest_version = Some(value.into()),
            "XEN_VER" => notes.xen_version = Some(value.into()),
            "PAE" => notes.pae_mode = Some(value.into()),
            "BSD_SYMTAB" => notes.bsd_symtab = true,
            "VIRT_BASE" => notes.virt_base = Some(number()?),
            "VIRT_ENTRY" => notes.entry = Some(number()?),
            "ELF_PADDR_OFFSET" => notes.paddr_offset = Some(number()?),
            "HYPERCALL_PAGE" => hypercall_pfn = Some(number()?),
            "FEATURES" => notes.features.add_feature_string(value)?,
            _ => continue,
        }
        notes.count += 1;
    }
    if let Some(pfn) = hypercall_pfn {
        let out_of_range = || XenGuestError::HypercallPageOutOfRange(pfn);
        let offset = pfn.checked_mul(4096).ok_or_else(out_of_range)?;
        let addr = offset
            .checked_add(notes.virt_base.unwrap_or(0))
            .ok_or_else(out_of_range)?;
        notes.hypercall_page = Some(addr);
    }
    Ok(notes)
}

/// `strtoull(s, NULL, 0)` for a whole string: `0x`/`0X` hex, leading `0` octal,
/// otherwise decimal. `None` on empty input, garbage or overflow.
pub fn parse_c_number(s: &str) -> Option<u64> {
    let s = s.trim_start();
    let s = s.strip_prefix('+').unwrap_or(s);
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16).ok();
    }
    if s.len() > 1 && s.starts_with('0') {
        return u64::from_str_radix(&s[1..], 8).ok();
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_style_string_is_read() {
        let n = parse(
            b"GUEST_OS=linux,GUEST_VER=2.6,XEN_VER=xen-3.0,VIRT_BASE=0xC0000000,\
ELF_PADDR_OFFSET=0xC0000000,HYPERCALL_PAGE=0x12,LOADER=generic,PAE=yes,\
FEATURES=writable_page_tables|!dom0\0trailing",
        )
        .unwrap();
        assert_eq!(n.source, Some(NoteSource::LegacyXenGuest));
        assert_eq!(n.guest_os.as_deref(), Some("linux"));
        assert_eq!(n.guest_version.as_deref(), Some("2.6"));
        assert_eq!(n.xen_version.as_deref(), Some("xen-3.0"));
        assert_eq!(n.loader.as_deref(), Some("generic"));
        assert_eq!(n.pae_mode.as_deref(), Some("yes"));
        assert_eq!(n.virt_base, Some(0xC000_0000));
        assert_eq!(n.paddr_offset, Some(0xC000_0000));
        assert_eq!(n.hypercall_page, Some(0xC000_0000 + 0x12 * 4096));
        assert!(n.features.requires(rxen_abi::features::XENFEAT_DOM0));
        assert_eq!(n.count, 9);
    }

    #[test]
    fn hypercall_page_without_virt_base_is_a_plain_address() {
        let n = parse(b"HYPERCALL_PAGE=2,BSD_SYMTAB,VIRT_ENTRY=010").unwrap();
        assert_eq!(n.hypercall_page, Some(0x2000));
        assert!(n.bsd_symtab);
        assert_eq!(n.entry, Some(8));
    }

    #[test]
    fn bad_values_are_typed_errors() {
        assert!(matches!(
            parse(b"VIRT_BASE=0xzz"),
            Err(XenGuestError::BadNumber { .. })
        ));
        assert!(matches!(
            parse(b"VIRT_BASE="),
            Err(XenGuestError::BadNumber { .. })
        ));
        assert_eq!(
            parse(b"HYPERCALL_PAGE=0xffffffffffffffff"),
            Err(XenGuestError::HypercallPageOutOfRange(u64::MAX))
        );
        assert!(matches!(
            parse(&[b'A'; 40]),
            Err(XenGuestError::KeyTooLong(_))
        ));
        let mut long = b"LOADER=".to_vec();
        long.extend([b'x'; 200]);
        assert!(matches!(parse(&long), Err(XenGuestError::ValueTooLong(_))));
        assert_eq!(parse(b"LOADER=\xff"), Err(XenGuestError::NotUtf8));
        assert!(matches!(
            parse(b"FEATURES=!bogus"),
            Err(XenGuestError::Feature(_))
        ));
    }

    #[test]
    fn c_numbers() {
        assert_eq!(parse_c_number("0"), Some(0));
        assert_eq!(parse_c_number("0x10"), Some(16));
        assert_eq!(parse_c_number("0X10"), Some(16));
        assert_eq!(parse_c_number("010"), Some(8));
        assert_eq!(parse_c_number("10"), Some(10));
        assert_eq!(parse_c_number("08"), None);
        assert_eq!(parse_c_number("-1"), None);
        assert_eq!(parse_c_number("18446744073709551616"), None);
    }
}
