//! The xenstore wire protocol (xen/include/public/io/xs_wire.h): the 16-byte
//! `xsd_sockmsg` header, message types, error strings, and an incremental frame
//! decoder that rejects malformed input without panicking. The numbers come from
//! [`rxen_abi::xs_wire`].

use std::fmt;

use rxen_abi::xs_wire as xs;

/// Largest payload of one message.
pub const PAYLOAD_MAX: usize = xs::XENSTORE_PAYLOAD_MAX;
/// Longest absolute path.
pub const ABS_PATH_MAX: usize = xs::XENSTORE_ABS_PATH_MAX;
/// Longest relative path.
pub const REL_PATH_MAX: usize = xs::XENSTORE_REL_PATH_MAX;
/// Size of the header.
pub const HEADER_LEN: usize = xs::XSD_SOCKMSG_LEN;

/// Message types (`enum xsd_sockmsg_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum MsgType {
    Control = xs::XS_CONTROL,
    Directory = xs::XS_DIRECTORY,
    Read = xs::XS_READ,
    GetPerms = xs::XS_GET_PERMS,
    Watch = xs::XS_WATCH,
    Unwatch = xs::XS_UNWATCH,
    TransactionStart = xs::XS_TRANSACTION_START,
    TransactionEnd = xs::XS_TRANSACTION_END,
    Introduce = xs::XS_INTRODUCE,
    Release = xs::XS_RELEASE,
    GetDomainPath = xs::XS_GET_DOMAIN_PATH,
    Write = xs::XS_WRITE,
    Mkdir = xs::XS_MKDIR,
    Rm = xs::XS_RM,
    SetPerms = xs::XS_SET_PERMS,
    WatchEvent = xs::XS_WATCH_EVENT,
    Error = xs::XS_ERROR,
    IsDomainIntroduced = xs::XS_IS_DOMAIN_INTRODUCED,
    Resume = xs::XS_RESUME,
    SetTarget = xs::XS_SET_TARGET,
    ResetWatches = xs::XS_RESET_WATCHES,
    DirectoryPart = xs::XS_DIRECTORY_PART,
    GetFeature = xs::XS_GET_FEATURE,
    SetFeature = xs::XS_SET_FEATURE,
    GetQuota = xs::XS_GET_QUOTA,
    SetQuota = xs::XS_SET_QUOTA,
}

impl MsgType {
    /// `XS_DEBUG`, the old name of [`MsgType::Control`] (xs_wire.h keeps it as an
    /// alias; Mini-OS still sends it).
    pub const DEBUG: MsgType = MsgType::Control;

    /// Every message type, in number order.
    pub const ALL: [MsgType; 26] = [
        MsgType::Control,
        MsgType::Directory,
        MsgType::Read,
        MsgType::GetPerms,
        MsgType::Watch,
        MsgType::Unwatch,
        MsgType::TransactionStart,
        MsgType::TransactionEnd,
        MsgType::Introduce,
        MsgType::Release,
        MsgType::GetDomainPath,
        MsgType::Write,
        MsgType::Mkdir,
        MsgType::Rm,
        MsgType::SetPerms,
        MsgType::WatchEvent,
        MsgType::Error,
        MsgType::IsDomainIntroduced,
        MsgType::Resume,
        MsgType::SetTarget,
        MsgType::ResetWatches,
        MsgType::DirectoryPart,
        MsgType::GetFeature,
        MsgType::SetFeature,
        MsgType::GetQuota,
        MsgType::SetQuota,
    ];

    /// The type with number `v`, if it is one.
    pub fn from_u32(v: u32) -> Option<Self> {
        use MsgType::*;
        Some(match v {
            xs::XS_CONTROL => Control,
            xs::XS_DIRECTORY => Directory,
            xs::XS_READ => Read,
            xs::XS_GET_PERMS => GetPerms,
            xs::XS_WATCH => Watch,
            xs::XS_UNWATCH => Unwatch,
            xs::XS_TRANSACTION_START => TransactionStart,
            xs::XS_TRANSACTION_END => TransactionEnd,
            xs::XS_INTRODUCE => Introduce,
            xs::XS_RELEASE => Release,
            xs::XS_GET_DOMAIN_PATH => GetDomainPath,
            xs::XS_WRITE => Write,
            xs::XS_MKDIR => Mkdir,
            xs::XS_RM => Rm,
            xs::XS_SET_PERMS => SetPerms,
            xs::XS_WATCH_EVENT => WatchEvent,
            xs::XS_ERROR => Error,
            xs::XS_IS_DOMAIN_INTRODUCED => IsDomainIntroduced,
            xs::XS_RESUME => Resume,
            xs::XS_SET_TARGET => SetTarget,
            xs::XS_RESET_WATCHES => ResetWatches,
            xs::XS_DIRECTORY_PART => DirectoryPart,
            xs::XS_GET_FEATURE => GetFeature,
            xs::XS_SET_FEATURE => SetFeature,
            xs::XS_GET_QUOTA => GetQuota,
            xs::XS_SET_QUOTA => SetQuota,
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
    /// The error number (Xen's `errno.h`).
    pub fn errno(self) -> i32 {
        use rxen_abi::errno;
        use XsError::*;
        match self {
            EINVAL => errno::EINVAL,
            EACCES => errno::EACCES,
            EEXIST => errno::EEXIST,
            EISDIR => errno::EISDIR,
            ENOENT => errno::ENOENT,
            ENOMEM => errno::ENOMEM,
            ENOSPC => errno::ENOSPC,
            EIO => errno::EIO,
            ENOTEMPTY => errno::ENOTEMPTY,
            ENOSYS => errno::ENOSYS,
            EROFS => errno::EROFS,
            EBUSY => errno::EBUSY,
            EAGAIN => errno::EAGAIN,
            EISCONN => errno::EISCONN,
            E2BIG => errno::E2BIG,
            EPERM => errno::EPERM,
        }
    }

    /// The name sent in an `XS_ERROR` reply, from `xsd_errors[]`.
    pub fn as_str(self) -> &'static str {
        let n = self.errno();
        xs::XSD_ERRORS
            .iter()
            .find(|(e, _)| *e == n)
            .map(|(_, s)| *s)
            .unwrap_or("EINVAL")
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
    fn every_error_has_its_xen_name() {
        use XsError::*;
        for e in [
            EINVAL, EACCES, EEXIST, EISDIR, ENOENT, ENOMEM, ENOSPC, EIO, ENOTEMPTY, ENOSYS, EROFS,
            EBUSY, EAGAIN, EISCONN, E2BIG, EPERM,
        ] {
            assert_eq!(e.as_str(), format!("{e:?}"));
        }
    }

    #[test]
    fn type_numbers_roundtrip() {
        for t in MsgType::ALL {
            assert_eq!(MsgType::from_u32(t as u32), Some(t));
        }
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
