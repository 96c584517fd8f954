//! [`ImageReader`]: reads an image over any `Read`, strictly, one item at a time (page
//! batches are never all in memory at once).

use std::io::Read;

use crate::error::StreamError;
use crate::framing::read_record;
use crate::libxc::{self, Record};
use crate::libxl;
use crate::rxen_state::RxenState;

/// One item of an image, in stream order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageItem {
    /// A libxc record; `Record::End` ends the libxc part.
    Libxc(Record),
    /// rxen's VMM state (libxl `EMULATOR_CONTEXT`).
    RxenState(RxenState),
    /// libxl's `END`: the image is complete.
    End,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Libxc,
    AfterLibxc,
    Done,
}

/// Reads one image.
pub struct ImageReader<R: Read> {
    r: R,
    phase: Phase,
    version: u32,
    config: Vec<u8>,
    seen_pv_info: bool,
    seen_state: bool,
}

impl<R: Read> ImageReader<R> {
    /// Reads the xl header, the libxl header, `LIBXC_CONTEXT` and the libxc headers.
    pub fn open(mut r: R) -> Result<Self, StreamError> {
        let config = crate::xl_header::read(&mut r)?;
        libxl::read_header(&mut r)?;
        let first = read_record(&mut r, "libxl")?;
        if first.rtype != libxl::rec::LIBXC_CONTEXT || !first.body.is_empty() {
            return Err(StreamError::Order(format!(
                "the first libxl record is {:#x} ({} bytes), expected an empty LIBXC_CONTEXT",
                first.rtype,
                first.body.len()
            )));
        }
        let version = libxc::read_headers(&mut r)?;
        Ok(Self {
            r,
            phase: Phase::Libxc,
            version,
            config,
            seen_pv_info: false,
            seen_state: false,
        })
    }

    /// The domain configuration of the xl header.
    pub fn config(&self) -> &[u8] {
        &self.config
    }

    /// The next item, or `None` after libxl's `END`.
    pub fn next_item(&mut self) -> Result<Option<ImageItem>, StreamError> {
        match self.phase {
            Phase::Done => Ok(None),
            Phase::Libxc => {
                let rec = libxc::read_record_from(&mut self.r, self.version)?;
                match &rec {
                    Record::X86PvInfo { .. } => {
                        if self.seen_pv_info {
                            return Err(StreamError::Order("X86_PV_INFO twice".into()));
                        }
                        self.seen_pv_info = true;
                    }
                    Record::End => self.phase = Phase::AfterLibxc,
                    _ if !self.seen_pv_info => {
                        return Err(StreamError::Order(
                            "a libxc record before X86_PV_INFO".into(),
                        ))
                    }
                    _ => {}
                }
                Ok(Some(ImageItem::Libxc(rec)))
            }
            Phase::AfterLibxc => {
                let raw = read_record(&mut self.r, "libxl")?;
                match raw.rtype {
                    libxl::rec::END if raw.body.is_empty() => {
                        self.phase = Phase::Done;
                        Ok(Some(ImageItem::End))
                    }
                    libxl::rec::END => Err(StreamError::bad("libxl END", "non-empty")),
                    libxl::rec::EMULATOR_CONTEXT => {
                        if self.seen_state {
                            return Err(StreamError::Order("two rxen state records".into()));
                        }
                        self.seen_state = true;
                        Ok(Some(ImageItem::RxenState(RxenState::decode(&raw.body)?)))
                    }
                    libxl::rec::LIBXC_CONTEXT => Err(StreamError::Order(
                        "a second LIBXC_CONTEXT (checkpointed streams are not supported)".into(),
                    )),
                    rtype @ (libxl::rec::EMULATOR_XENSTORE_DATA
                    | libxl::rec::CHECKPOINT_END
                    | libxl::rec::CHECKPOINT_STATE) => Err(StreamError::bad(
                        "libxl",
                        format!("record {rtype:#x} is valid Xen but not supported by rxen"),
                    )),
                    rtype => Err(StreamError::UnknownRecord {
                        stream: "libxl",
                        rtype,
                    }),
                }
            }
        }
    }
}
