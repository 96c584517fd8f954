//! The relocation protocol (live migration between two hosts' toolstacks), as its
//! lines: the sending VMM connects to the target xend's relocation port (Xen's 8002)
//! and writes a [`Hello`] line; the target answers with one [`Answer`] line
//! (`ready`, or `refused` and nothing more); then the image follows (Xen's migration
//! stream v2, `docs/migration.md`), and once the target's domain runs (or failed to)
//! the target writes a second [`Answer`] (`running` or `refused`) and closes.
//!
//! Types only: the sending side is the VMM (`rxen_vmm::snapshot::transport`), the
//! receiving side xend's relocation server.

use serde::{Deserialize, Serialize};

/// Longest [`Hello`] or [`Answer`] line, in bytes (without the newline).
pub const MAX_RELOCATION_LINE: usize = 64 * 1024;

/// What the sender says first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The relocation token both hosts are configured with.
    pub token: String,
    /// The toolstack's domain configuration (what the image's xl header holds).
    pub config: String,
    /// Pre-copy rounds follow (for the target's log; the stream is the same format).
    #[serde(default)]
    pub live: bool,
}

/// The target's answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "kebab-case")]
pub enum Answer {
    /// Send the image.
    Ready,
    /// The domain runs at the target as `domid`.
    Running { domid: u32 },
    /// No: `error` is a short code (`bad_token`, `name_in_use`, `bad_image`, ...),
    /// `message` says why.
    Refused { error: String, message: String },
}
