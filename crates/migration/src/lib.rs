//! The byte format of rxen's saved domain images, and nothing else.
//!
//! An image is what `xl save` writes: the xl file header (with the toolstack's domain
//! configuration as its optional data), then Xen's libxl migration stream v2 whose
//! `LIBXC_CONTEXT` record carries a libxc migration stream v2 (image and domain
//! headers, `PAGE_DATA` batches, x86 PV records, `END`), then rxen's own VMM state in
//! a libxl `EMULATOR_CONTEXT` record ([`rxen_state`]), then libxl's `END`. Specs:
//! Xen's `docs/specs/libxc-migration-stream.pandoc` and
//! `docs/specs/libxl-migration-stream.pandoc`; `docs/migration.md` here.
//!
//! This crate owns the framing, the typed records, a writer over any
//! [`std::io::Write`] and a strict reader over any [`std::io::Read`]: every length,
//! count, alignment, padding and reserved field is checked and every failure is a
//! typed [`StreamError`], never a panic. It must not know anything of a VMM, KVM or
//! xend: what a VMM puts in its state record is opaque bytes here.

pub mod error;
mod framing;
pub mod libxc;
pub mod libxl;
pub mod reader;
pub mod rxen_state;
pub mod writer;
pub mod xl_header;

pub use error::StreamError;
pub use libxc::{PageBatch, PageType, PfnEntry, Record, TscInfo, VcpuRecordKind};
pub use reader::{ImageItem, ImageReader, IndexedItem, PageIndex};
pub use rxen_state::RxenState;
pub use writer::ImageWriter;

/// Size of a guest page in the stream (`page_shift` 12).
pub const PAGE_SIZE: usize = 4096;

/// Most pages in one `PAGE_DATA` record (Xen's batch size).
pub const MAX_BATCH_PAGES: usize = 1024;

/// Largest record body the reader accepts (a full page batch is just over 4 MiB).
pub const MAX_RECORD_LEN: u32 = 16 << 20;
