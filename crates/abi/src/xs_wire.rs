//! The xenstore wire protocol of `xen/include/public/io/xs_wire.h`: message type
//! numbers (`enum xsd_sockmsg_type`), the error names sent in `XS_ERROR` replies
//! (`xsd_errors[]`), the message header (`struct xsd_sockmsg`), the size limits, and
//! the shared ring page (`struct xenstore_domain_interface`) with its feature,
//! connection and error values.
//!
//! Numbers only: xenstored (`crates/xenstore`), the VMM's ring relay and the guest
//! SDK's client all use these, so they cannot drift apart.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::errno;

// ------------------------------------------------------------------ message types

/// `XS_CONTROL` (formerly `XS_DEBUG`): xenstored control commands.
pub const XS_CONTROL: u32 = 0;
pub const XS_DIRECTORY: u32 = 1;
pub const XS_READ: u32 = 2;
pub const XS_GET_PERMS: u32 = 3;
pub const XS_WATCH: u32 = 4;
pub const XS_UNWATCH: u32 = 5;
pub const XS_TRANSACTION_START: u32 = 6;
pub const XS_TRANSACTION_END: u32 = 7;
pub const XS_INTRODUCE: u32 = 8;
pub const XS_RELEASE: u32 = 9;
pub const XS_GET_DOMAIN_PATH: u32 = 10;
pub const XS_WRITE: u32 = 11;
pub const XS_MKDIR: u32 = 12;
pub const XS_RM: u32 = 13;
pub const XS_SET_PERMS: u32 = 14;
/// Sent by xenstored only: a watch fired.
pub const XS_WATCH_EVENT: u32 = 15;
/// Sent by xenstored only: the request failed; the payload is an error name.
pub const XS_ERROR: u32 = 16;
pub const XS_IS_DOMAIN_INTRODUCED: u32 = 17;
pub const XS_RESUME: u32 = 18;
pub const XS_SET_TARGET: u32 = 19;
// 20 was XS_RESTRICT, removed from the protocol; it stays unused.
pub const XS_RESET_WATCHES: u32 = 21;
pub const XS_DIRECTORY_PART: u32 = 22;
pub const XS_GET_FEATURE: u32 = 23;
pub const XS_SET_FEATURE: u32 = 24;
pub const XS_GET_QUOTA: u32 = 25;
pub const XS_SET_QUOTA: u32 = 26;
/// Number of message type numbers (one more than the highest).
pub const XS_TYPE_COUNT: u32 = 27;
/// Guaranteed to remain an invalid type.
pub const XS_INVALID: u32 = 0xffff;

// ------------------------------------------------------------------ errors

/// `xsd_errors[]`: the error numbers xenstored reports and the names it sends for
/// them in an `XS_ERROR` reply (NUL-terminated). New errors are only ever appended.
pub const XSD_ERRORS: [(i32, &str); 16] = [
    (errno::EINVAL, "EINVAL"),
    (errno::EACCES, "EACCES"),
    (errno::EEXIST, "EEXIST"),
    (errno::EISDIR, "EISDIR"),
    (errno::ENOENT, "ENOENT"),
    (errno::ENOMEM, "ENOMEM"),
    (errno::ENOSPC, "ENOSPC"),
    (errno::EIO, "EIO"),
    (errno::ENOTEMPTY, "ENOTEMPTY"),
    (errno::ENOSYS, "ENOSYS"),
    (errno::EROFS, "EROFS"),
    (errno::EBUSY, "EBUSY"),
    (errno::EAGAIN, "EAGAIN"),
    (errno::EISCONN, "EISCONN"),
    (errno::E2BIG, "E2BIG"),
    (errno::EPERM, "EPERM"),
];

// ------------------------------------------------------------------ messages

/// `struct xsd_sockmsg`: the header of every message, followed by `len` bytes
/// (generally NUL-terminated strings). Little-endian on x86.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XsdSockmsg {
    /// `XS_*` message type.
    pub msg_type: u32,
    /// Request identifier, echoed in the daemon's reply.
    pub req_id: u32,
    /// Transaction id (0 if not related to a transaction).
    pub tx_id: u32,
    /// Length of the payload that follows.
    pub len: u32,
}

/// Size of [`XsdSockmsg`].
pub const XSD_SOCKMSG_LEN: usize = 16;

/// Largest payload of one message ("violating this is very bad").
pub const XENSTORE_PAYLOAD_MAX: usize = 4096;
/// Longest absolute path (longer ones get an error back).
pub const XENSTORE_ABS_PATH_MAX: usize = 3072;
/// Longest relative path.
pub const XENSTORE_REL_PATH_MAX: usize = 2048;

/// `XS_WATCH_EVENT` payload fields: the path, then the token.
pub const XS_WATCH_PATH: usize = 0;
pub const XS_WATCH_TOKEN: usize = 1;

// ------------------------------------------------------------------ the ring page

/// Bytes in each direction of the xenstore ring.
pub const XENSTORE_RING_SIZE: usize = 1024;

/// `struct xenstore_domain_interface`: the xenstore ring page.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenstoreDomainInterface {
    /// Requests to xenstored.
    pub req: [u8; XENSTORE_RING_SIZE],
    /// Replies and watch events.
    pub rsp: [u8; XENSTORE_RING_SIZE],
    pub req_cons: u32,
    pub req_prod: u32,
    pub rsp_cons: u32,
    pub rsp_prod: u32,
    /// Bitmap of `XENSTORE_SERVER_FEATURE_*`.
    pub server_features: u32,
    /// `XENSTORE_CONNECTED` or `XENSTORE_RECONNECT`.
    pub connection: u32,
    /// `XENSTORE_ERROR_*`.
    pub error: u32,
}

/// Offsets of the index words of [`XenstoreDomainInterface`].
pub const XS_REQ_CONS: u64 = 2048;
pub const XS_REQ_PROD: u64 = 2052;
pub const XS_RSP_CONS: u64 = 2056;
pub const XS_RSP_PROD: u64 = 2060;
pub const XS_SERVER_FEATURES: u64 = 2064;
pub const XS_CONNECTION: u64 = 2068;
pub const XS_ERROR_FIELD: u64 = 2072;

/// The server can reconnect a ring.
pub const XENSTORE_SERVER_FEATURE_RECONNECTION: u32 = 1;
/// The ring page has the `error` field.
pub const XENSTORE_SERVER_FEATURE_ERROR: u32 = 2;

/// `connection`: the steady state.
pub const XENSTORE_CONNECTED: u32 = 0;
/// `connection`: a reconnect is in progress.
pub const XENSTORE_RECONNECT: u32 = 1;

/// `error`: no error.
pub const XENSTORE_ERROR_NONE: u32 = 0;
/// `error`: communication problem.
pub const XENSTORE_ERROR_COMM: u32 = 1;
/// `error`: invalid ring index.
pub const XENSTORE_ERROR_RINGIDX: u32 = 2;
/// `error`: protocol violation (payload too long): the guest broke the ring protocol.
pub const XENSTORE_ERROR_PROTO: u32 = 3;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout_check::assert_layout;

    #[test]
    fn layouts() {
        assert_layout!(
            XsdSockmsg,
            size = XSD_SOCKMSG_LEN,
            msg_type = 0,
            req_id = 4,
            tx_id = 8,
            len = 12
        );
        assert_layout!(
            XenstoreDomainInterface,
            size = 2076,
            req = 0,
            rsp = 1024,
            req_cons = XS_REQ_CONS as usize,
            req_prod = XS_REQ_PROD as usize,
            rsp_cons = XS_RSP_CONS as usize,
            rsp_prod = XS_RSP_PROD as usize,
            server_features = XS_SERVER_FEATURES as usize,
            connection = XS_CONNECTION as usize,
            error = XS_ERROR_FIELD as usize
        );
    }

    #[test]
    fn error_table_matches_xen() {
        // Spot checks against Linux/Xen errno values.
        assert_eq!(XSD_ERRORS[0], (22, "EINVAL"));
        assert_eq!(XSD_ERRORS[3], (21, "EISDIR"));
        assert_eq!(XSD_ERRORS[8], (39, "ENOTEMPTY"));
        assert_eq!(XSD_ERRORS[10], (30, "EROFS"));
        assert_eq!(XSD_ERRORS[15], (1, "EPERM"));
        for (i, (n, s)) in XSD_ERRORS.iter().enumerate() {
            assert_eq!(crate::errno::name(*n), *s, "entry {i}");
        }
    }

    #[test]
    fn type_numbers() {
        assert_eq!(XS_SET_TARGET + 2, XS_RESET_WATCHES, "20 is unused");
        assert_eq!(XS_SET_QUOTA + 1, XS_TYPE_COUNT);
    }
}
