//! The xenstore wire protocol (xen/include/public/io/xs_wire.h): the 16-byte
//! `xsd_sockmsg` header, message types, error strings, and an incremental frame
//! decoder that rejects malformed input without panicking.

use std::fmt;

/// Largest payload of one message.
pub const PAYLOAD_MAX: usize = 4096;
/// Longest absolute path.
pub const ABS_PATH_MAX: usize = 3072;
/// Longest relative path.
pub const REL_PATH_MAX: usize = 2048;
/// Size of the header.
pub const HEADER_LEN: usize = 16;

/// Message types (`enum xsd_sockmsg_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum MsgType {
    Control = 0,
    Directory = 1,
    Read = 2,
    GetPerms = 3,
    Watch = 4,
    Unwatch = 5,
    TransactionStart = 6,
    TransactionEnd = 7,
    Introduce = 8,
    Release = 9,
    GetDomainPath = 10,
    Write = 11,
    Mkdir = 12,
    Rm = 13,
    SetPerms = 14,
    WatchEvent = 15,
    Error = 16,
    IsDomainIntroduced = 17,
    Resume = 18,
    SetTarget = 19,
    ResetWatches = 21,
    DirectoryPart = 22,
    GetFeature = 23,
    SetFeature = 24,
    GetQuota = 25,
    SetQuota = 26,
}

impl MsgType {
    /// The type with number `v`, if it is one.
    pub fn from_u32(v: u32) -> Option<Self> {
        use MsgType::*;
        Some(match v {
            0 => Control,
            1 => Directory,
            2 => Read,
            3 => GetPerms,
            4 => Watch,
            5 => Unwatch,
            6 => TransactionStart,
            7 => TransactionEnd,
            8 => Introduce,
            9 => Release,
            10 => GetDomainPath,
            11 => Write,
            12 => Mkdir,
            13 => Rm,
            14 => SetPerms,
            15 => WatchEvent,
            16 => Error,
            17 => IsDomainIntroduced,
            18 => Resume,
            19 => SetTarget,
            21 => ResetWatches,
            22 => DirectoryPart,
            23 => GetFeature,
            24 => SetFeature,
            25 => GetQuota,
            26 => SetQuota,
            _ => return None,
        })
    }
}

/// Xen's error replies (`xsd_errors`), sent as their names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XsError {
    EINVAL,
    EACCES,
    EEXIST,
    EISDIR,
    ENOENT,
    ENOMEM,
    ENOSPC,
    EIO,
    ENOTEMPTY,
    ENOSYS,
    EROFS,
    EBUSY,
    EAGAIN,
    EISCONN,
    E2BIG,
    EPERM,
}

impl XsError {
    pub fn as_str(self) -> &'static str {
        use XsError::*;
        match self {
            EINVAL => "EINVAL",
            EACCES => "EACCES",
            EEXIST => "EEXIST",
            EISDIR => "EISDIR",
            ENOENT => "ENOENT",
            ENOMEM => "ENOMEM",
            ENOSPC => "ENOSPC",
            EIO => "EIO",
            ENOTEMPTY => "ENOTEMPTY",
            ENOSYS => "ENOSYS",
            EROFS => "EROFS",
            EBUSY => "EBUSY",
            EAGAIN => "EAGAIN",
            EISCONN => "EISCONN",
            E2BIG => "E2BIG",
            EPERM => "EPERM",
        }
    }
}

impl fmt::Display for XsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for XsError {}

/// The header of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub msg_type: u32,
    pub req_id: u32,
    pub tx_id: u32,
    pub len: u32,
}

impl Header {
    pub fn parse(b: &[u8; HEADER_LEN]) -> Self {
        let w = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Header {
            msg_type: w(0),
            req_id: w(4),
            tx_id: w(8),
            len: w(12),
        }
    }

    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.msg_type.to_le_bytes());
        b[4..8].copy_from_slice(&self.req_id.to_le_bytes());
        b[8..12].copy_from_slice(&self.tx_id.to_le_bytes());
        b[12..16].copy_from_slice(&self.len.to_le_bytes());
        b
    }
}

/// A whole message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub header: Header,
    pub payload: Vec<u8>,
}

impl Message {
    /// Builds a message; `payload` must not exceed [`PAYLOAD_MAX`] (callers guarantee it).
    pub fn new(msg_type: u32, req_id: u32, tx_id: u32, payload: Vec<u8>) -> Self {
        Message {
            header: Header {
                msg_type,
                req_id,
                tx_id,
                len: payload.len() as u32,
            },
            payload,
        }
    }

    /// Serializes header and payload.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER_LEN + self.payload.len());
        v.extend_from_slice(&self.header.to_bytes());
        v.extend_from_slice(&self.payload);
        v
    }

    /// Splits a payload into NUL-terminated strings. A payload that does not end in NUL
    /// yields its unterminated tail as the last element (`WRITE` values are not
    /// terminated).
    pub fn fields(&self) -> Vec<&[u8]> {
        split_fields(&self.payload)
    }
}

/// Splits at NUL bytes; a trailing NUL does not produce an empty last field.
pub fn split_fields(p: &[u8]) -> Vec<&[u8]> {
    if p.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<&[u8]> = p.split(|&b| b == 0).collect();
    if p.last() == Some(&0) {
        out.pop();
    }
    out
}

/// Why the byte stream of a connection cannot be decoded further.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("payload length {0} exceeds {max}", max = PAYLOAD_MAX)]
    TooLong(u32),
}

/// Incremental decoder of messages from a byte stream.
#[derive(Default, Debug)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Takes the next complete message, if any. A header announcing more than
    /// [`PAYLOAD_MAX`] bytes is a fatal protocol error for the connection.
    pub fn next_message(&mut self) -> Result<Option<Message>, FrameError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let mut hb = [0u8; HEADER_LEN];
        hb.copy_from_slice(&self.buf[..HEADER_LEN]);
        let header = Header::parse(&hb);
        if header.len as usize > PAYLOAD_MAX {
            return Err(FrameError::TooLong(header.len));
        }
        let total = HEADER_LEN + header.len as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        let payload = self.buf[HEADER_LEN..total].to_vec();
        self.buf.drain(..total);
        Ok(Some(Message { header, payload }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip_and_decoding() {
        let m = Message::new(MsgType::Write as u32, 7, 0, b"/a\0value".to_vec());
        let bytes = m.to_bytes();
        let mut d = Decoder::default();
        d.push(&bytes[..10]);
        assert_eq!(d.next_message().unwrap(), None);
        d.push(&bytes[10..]);
        d.push(&bytes);
        assert_eq!(d.next_message().unwrap(), Some(m.clone()));
        assert_eq!(d.next_message().unwrap(), Some(m));
        assert_eq!(d.next_message().unwrap(), None);
    }

    #[test]
    fn oversized_payload_is_fatal() {
        let mut d = Decoder::default();
        d.push(
            &Header {
                msg_type: 2,
                req_id: 0,
                tx_id: 0,
                len: 4097,
            }
            .to_bytes(),
        );
        assert_eq!(d.next_message(), Err(FrameError::TooLong(4097)));
    }

    #[test]
    fn fields_split() {
        assert_eq!(split_fields(b"a\0b\0"), vec![&b"a"[..], &b"b"[..]]);
        assert_eq!(split_fields(b"/p\0val"), vec![&b"/p"[..], &b"val"[..]]);
        assert_eq!(split_fields(b"/p\0"), vec![&b"/p"[..]]);
        assert_eq!(split_fields(b""), Vec::<&[u8]>::new());
        assert_eq!(MsgType::from_u32(20), None);
        assert_eq!(MsgType::from_u32(22), Some(MsgType::DirectoryPart));
    }

    proptest::proptest! {
        #[test]
        fn decoder_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(0u8..=255, 0..64), 0..20)) {
            let mut d = Decoder::default();
            for c in chunks {
                d.push(&c);
                loop {
                    match d.next_message() {
                        Ok(Some(m)) => proptest::prop_assert!(m.payload.len() <= PAYLOAD_MAX),
                        Ok(None) => break,
                        Err(_) => return Ok(()),
                    }
                }
            }
        }
    }
}
