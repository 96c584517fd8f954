//! [`ImageWriter`]: writes an image over any `Write` in the order Xen's restore
//! expects. Page batches may be written any number of times (a later batch for the
//! same pfn replaces the earlier one), which is what pre-copy rounds need.

use std::io::Write;

use crate::error::StreamError;
use crate::framing::write_record;
use crate::libxc::{self, PfnEntry, Record};
use crate::libxl;
use crate::rxen_state::RxenState;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Libxc,
    AfterLibxc,
    Done,
}

/// Writes one image.
pub struct ImageWriter<W: Write> {
    w: W,
    phase: Phase,
    bytes: u64,
}

impl<W: Write> ImageWriter<W> {
    /// Writes the xl header (with `config` as its optional data), the libxl header,
    /// `LIBXC_CONTEXT` and the libxc headers.
    pub fn new(mut w: W, config: &[u8]) -> Result<Self, StreamError> {
        crate::xl_header::write(&mut w, config)?;
        libxl::write_header(&mut w)?;
        libxl::write_empty(&mut w, libxl::rec::LIBXC_CONTEXT)?;
        libxc::write_headers(&mut w)?;
        Ok(Self {
            w,
            phase: Phase::Libxc,
            bytes: 0,
        })
    }

    fn expect(&self, phase: Phase, what: &str) -> Result<(), StreamError> {
        if self.phase != phase {
            return Err(StreamError::Order(format!(
                "{what} written in phase {:?}",
                self.phase
            )));
        }
        Ok(())
    }

    /// Writes a libxc record; `Record::End` ends the libxc stream.
    pub fn record(&mut self, record: &Record) -> Result<(), StreamError> {
        self.expect(Phase::Libxc, "a libxc record")?;
        libxc::write_record_to(&mut self.w, record)?;
        if *record == Record::End {
            self.phase = Phase::AfterLibxc;
        }
        Ok(())
    }

    /// Writes one `PAGE_DATA` batch (at most [`crate::MAX_BATCH_PAGES`] entries).
    pub fn page_batch(&mut self, entries: &[PfnEntry], data: &[u8]) -> Result<(), StreamError> {
        self.expect(Phase::Libxc, "a page batch")?;
        libxc::write_page_batch(&mut self.w, entries, data)?;
        self.bytes += data.len() as u64;
        Ok(())
    }

    /// The underlying writer, whatever was written so far (for measuring a prefix).
    pub fn into_inner(self) -> W {
        self.w
    }

    /// Page bytes written so far (for progress reports).
    pub fn page_bytes(&self) -> u64 {
        self.bytes
    }

    /// Writes rxen's state record (after the libxc stream's `END`).
    pub fn rxen_state(&mut self, state: &RxenState) -> Result<(), StreamError> {
        self.expect(Phase::AfterLibxc, "the rxen state")?;
        let head = state.encode_head();
        write_record(
            &mut self.w,
            libxl::rec::EMULATOR_CONTEXT,
            &[&head, &state.document],
        )
    }

    /// Writes libxl's `END`, flushes and returns the writer.
    pub fn finish(mut self) -> Result<W, StreamError> {
        self.expect(Phase::AfterLibxc, "libxl END")?;
        libxl::write_empty(&mut self.w, libxl::rec::END)?;
        self.phase = Phase::Done;
        self.w.flush()?;
        Ok(self.w)
    }
}
