//! What can go wrong in `xm`, with the message the user sees.

/// An `xm` failure; every one makes `xm` exit non-zero.
#[derive(Debug, thiserror::Error)]
pub enum XmError {
    /// xend answered with an error status (`ErrorReply`).
    #[error("{message} ({code})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// xend could not be reached or the connection broke.
    #[error("cannot reach xend at {url}: {reason}")]
    Connect { url: String, reason: String },
    /// xend answered something that is not what its API promises.
    #[error("bad reply from xend: {0}")]
    BadReply(String),
    /// `--url`/`XEND_URL` is not usable.
    #[error("bad xend URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    /// Bad command-line input.
    #[error("{0}")]
    Usage(String),
    /// A local file or terminal operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl XmError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        XmError::Io {
            what: what.into(),
            source,
        }
    }
}

pub type XmResult<T> = Result<T, XmError>;
