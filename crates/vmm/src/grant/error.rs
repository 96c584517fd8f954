//! Errors of grant operations, each with the `GNTST_*` status Xen gives for it.

use rxen_abi::grant_table::*;

/// Why a grant operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("grant reference {0} is beyond the grant table")]
    BadRef(u32),
    #[error("grant entry {gref} does not permit access to domain {grantee} (flags {flags:#x}, domid {domid})")]
    NotPermitted {
        gref: u32,
        grantee: u16,
        flags: u16,
        domid: u16,
    },
    #[error("grant entry {0} is read-only")]
    ReadOnlyGrant(u32),
    #[error("grant entry {0} kept changing while being pinned")]
    Unstable(u32),
    #[error("grant entry {gref} names frame {frame:#x}, which is not grantable guest RAM")]
    BadFrame { gref: u32, frame: u64 },
    #[error("grant handle {0} is not mapped")]
    BadHandle(u32),
    #[error("no mapping handle left")]
    NoSpace,
    #[error("copy of {len} bytes at offset {offset} crosses the page")]
    BadCopyArg { offset: u64, len: u64 },
    #[error("write through a read-only mapping")]
    WriteToReadOnly,
    #[error("domain {0} is not known here")]
    BadDomain(u16),
    #[error("copy by frame number is allowed only for DOMID_SELF")]
    PermissionDenied,
    #[error("local frame {0:#x} is not the caller's writable RAM")]
    BadPage(u64),
    #[error("operation not supported by rxen")]
    Unsupported,
}

impl GrantError {
    /// The `GNTST_*` status Xen reports for this failure.
    pub fn status(self) -> i16 {
        match self {
            GrantError::BadRef(_) => GNTST_BAD_GNTREF,
            GrantError::NotPermitted { .. }
            | GrantError::ReadOnlyGrant(_)
            | GrantError::Unstable(_)
            | GrantError::WriteToReadOnly
            | GrantError::Unsupported => GNTST_GENERAL_ERROR,
            GrantError::BadFrame { .. } | GrantError::BadPage(_) => GNTST_BAD_PAGE,
            GrantError::BadHandle(_) => GNTST_BAD_HANDLE,
            GrantError::NoSpace => GNTST_NO_SPACE,
            GrantError::BadCopyArg { .. } => GNTST_BAD_COPY_ARG,
            GrantError::BadDomain(_) => GNTST_BAD_DOMAIN,
            GrantError::PermissionDenied => GNTST_PERMISSION_DENIED,
        }
    }
}
