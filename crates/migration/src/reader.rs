//! [`ImageReader`]: reads an image over any `Read`, strictly, one item at a time (page
//! batches are never all in memory at once).

use std::io::{Read, Seek};

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

/// Where a `PAGE_DATA` record's pages are in a seekable image: its entries, and the
/// offset of the first page of data (the pages of the entries that have data follow
/// each other, 4096 bytes each).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageIndex {
    pub entries: Vec<crate::PfnEntry>,
    pub data_offset: u64,
}

/// One item of [`ImageReader::next_indexed`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexedItem {
    /// A `PAGE_DATA` record, its data skipped.
    Pages(PageIndex),
    /// Anything else, read as [`ImageReader::next_item`] reads it.
    Item(ImageItem),
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
    /// The image's length, once [`ImageReader::next_indexed`] needed it.
    stream_len: Option<u64>,
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
            stream_len: None,
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
                self.libxc_item(rec).map(Some)
            }
            Phase::AfterLibxc => self.libxl_item().map(Some),
        }
    }

    fn libxc_item(&mut self, rec: Record) -> Result<ImageItem, StreamError> {
        {
            {
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
                Ok(ImageItem::Libxc(rec))
            }
        }
    }

    fn libxl_item(&mut self) -> Result<ImageItem, StreamError> {
        {
            {
                let raw = read_record(&mut self.r, "libxl")?;
                match raw.rtype {
                    libxl::rec::END if raw.body.is_empty() => {
                        self.phase = Phase::Done;
                        Ok(ImageItem::End)
                    }
                    libxl::rec::END => Err(StreamError::bad("libxl END", "non-empty")),
                    libxl::rec::EMULATOR_CONTEXT => {
                        if self.seen_state {
                            return Err(StreamError::Order("two rxen state records".into()));
                        }
                        self.seen_state = true;
                        Ok(ImageItem::RxenState(RxenState::decode(&raw.body)?))
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

impl<R: Read + Seek> ImageReader<R> {
    /// As [`ImageReader::next_item`], but the data of a `PAGE_DATA` record is skipped
    /// (sought over) and its place returned: everything but the page data is checked
    /// as `next_item` checks it. For restoring by mapping the image's pages.
    pub fn next_indexed(&mut self) -> Result<Option<IndexedItem>, StreamError> {
        if self.phase != Phase::Libxc {
            return Ok(self.next_item()?.map(IndexedItem::Item));
        }
        let (rtype, len) = crate::framing::read_record_header(&mut self.r, "libxc")?;
        if rtype != libxc::rec::PAGE_DATA {
            let raw = crate::framing::read_record_body(&mut self.r, "libxc", rtype, len)?;
            let rec = libxc::parse_record(raw.rtype, raw.body, self.version)?;
            return self.libxc_item(rec).map(|i| Some(IndexedItem::Item(i)));
        }
        if !self.seen_pv_info {
            return Err(StreamError::Order(
                "a libxc record before X86_PV_INFO".into(),
            ));
        }
        let len = len as usize;
        let mut head = [0u8; 8];
        crate::framing::read_exact(&mut self.r, &mut head, "a PAGE_DATA header")?;
        let count = libxc::page_data_count(&head, len)?;
        let pfns = crate::framing::read_vec(&mut self.r, count * 8, "a PAGE_DATA pfn list")?;
        let (entries, pages) = libxc::page_data_entries(&pfns, len)?;
        let data_offset = self.r.stream_position()?;
        // The body is 8-aligned (8 + 8 * count + 4096 * pages): no padding follows.
        let end = data_offset + (pages * crate::PAGE_SIZE) as u64;
        let size = match self.stream_len {
            Some(s) => s,
            None => {
                let s = self.r.seek(std::io::SeekFrom::End(0))?;
                self.stream_len = Some(s);
                s
            }
        };
        if end > size {
            return Err(StreamError::Truncated("a PAGE_DATA record's data"));
        }
        self.r.seek(std::io::SeekFrom::Start(end))?;
        Ok(Some(IndexedItem::Pages(PageIndex {
            entries,
            data_offset,
        })))
    }
}
