//! Errors of reading and writing images.

/// Why an image could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("the image ends early (truncated within {0})")]
    Truncated(&'static str),
    #[error("not an xl save image (bad file signature)")]
    NotAnImage,
    #[error("bad {what}: {detail}")]
    BadHeader { what: &'static str, detail: String },
    #[error("unknown {stream} record type {rtype:#x}")]
    UnknownRecord { stream: &'static str, rtype: u32 },
    #[error("{stream} record {rtype:#x} of {len} bytes is larger than the {max}-byte limit")]
    RecordTooLarge {
        stream: &'static str,
        rtype: u32,
        len: u32,
        max: u32,
    },
    #[error("non-zero padding after {stream} record {rtype:#x}")]
    BadPadding { stream: &'static str, rtype: u32 },
    #[error("bad {record} record: {detail}")]
    BadRecord {
        record: &'static str,
        detail: String,
    },
    #[error("records out of order: {0}")]
    Order(String),
    #[error("cannot write: {0}")]
    Unwritable(String),
}

impl StreamError {
    pub(crate) fn bad(record: &'static str, detail: impl Into<String>) -> Self {
        StreamError::BadRecord {
            record,
            detail: detail.into(),
        }
    }
}
