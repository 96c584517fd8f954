//! Executes validated requests on the disk. Data moves between the disk and the
//! frontend's pages through a bounce buffer (4 KiB aligned, so that an `O_DIRECT`
//! descriptor can use it): a page is either persistently mapped
//! ([`Page::Mapped`], see [`super::persistent`]) or reached by grant copy
//! (`GrantTable::copy_from_grant`/`copy_to_grant`, [`Page::Granted`]); a bad grant fails
//! that request with `BLKIF_RSP_ERROR` and nothing else.
//!
//! Runs on the ring's worker threads ([`super::pool`]): one `pread`/`pwrite` per
//! request, `fdatasync` for flushes, a punched hole (`fallocate(PUNCH_HOLE|KEEP_SIZE)`)
//! for discards.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use rxen_abi::blkif::{BlkifResponse, BLKIF_SECTOR_SIZE};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::disk::Disk;
use super::request::{Op, Request};
use crate::grant::{GrantMapping, GrantTable, DOM0};

/// Why an accepted request failed.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("segment {index} (grant {gref}): {source}")]
    Grant {
        index: usize,
        gref: u32,
        source: crate::grant::GrantError,
    },
    #[error("disk I/O: {0}")]
    Disk(#[from] std::io::Error),
    #[error("sector {0} is beyond any byte offset")]
    Sector(u64),
}

/// The byte offset of `sector` (ranges with data were checked against the disk by
/// `request::parse`; this only keeps the arithmetic from overflowing).
fn byte_offset(sector: u64) -> Result<u64, IoError> {
    sector
        .checked_mul(BLKIF_SECTOR_SIZE)
        .ok_or(IoError::Sector(sector))
}

/// How a segment's page is reached.
#[derive(Clone, Debug)]
pub enum Page {
    /// Persistently mapped.
    Mapped(Arc<GrantMapping>),
    /// By grant copy of this reference.
    Granted(u32),
}

/// A request ready to run: one [`Page`] per segment.
#[derive(Clone, Debug)]
pub struct Job {
    pub req: Request,
    pub pages: Vec<Page>,
}

/// Where a vbd's data lives: the disk, and when asked for, a second descriptor of the
/// same open file with `O_DIRECT` (bypassing the host's page cache) used for reads and
/// writes whose offset and length suit it; the buffered descriptor serves the rest.
pub struct Store {
    pub disk: Arc<Disk>,
    direct: Option<File>,
}

/// Alignment `O_DIRECT` transfers get (offset, length and buffer).
const DIRECT_ALIGN: u64 = 4096;

impl Store {
    /// The store of `disk`; with `direct`, reopens its descriptor with `O_DIRECT`
    /// (a file system that refuses it leaves the buffered path, with a warning).
    pub fn new(disk: Arc<Disk>, direct: bool) -> Self {
        let direct = if direct { reopen_direct(&disk) } else { None };
        Self { disk, direct }
    }

    /// Whether an `O_DIRECT` descriptor is in use.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    fn direct_for(&self, offset: u64, len: usize) -> Option<&File> {
        self.direct.as_ref().filter(|_| {
            offset.is_multiple_of(DIRECT_ALIGN) && (len as u64).is_multiple_of(DIRECT_ALIGN)
        })
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        match self.direct_for(offset, buf.len()) {
            Some(f) => f.read_exact_at(buf, offset),
            None => self.disk.read_at(offset, buf),
        }
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        match self.direct_for(offset, data.len()) {
            Some(f) if self.disk.writable() => f.write_all_at(data, offset),
            _ => self.disk.write_at(offset, data),
        }
    }

    fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        if !self.disk.writable() {
            return Err(std::io::Error::from_raw_os_error(libc::EROFS));
        }
        if len == 0 {
            return Ok(());
        }
        let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        };
        // SAFETY: fallocate on a descriptor the disk owns; no memory is involved.
        let rc = unsafe {
            libc::fallocate(
                self.disk.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                n,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

fn reopen_direct(disk: &Disk) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = format!("/proc/self/fd/{}", disk.as_raw_fd());
    match std::fs::OpenOptions::new()
        .read(true)
        .write(disk.writable())
        .custom_flags(libc::O_DIRECT)
        .open(&path)
    {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(disk = %disk.path().display(), "blkback: O_DIRECT refused ({e}); using the page cache");
            None
        }
    }
}

/// A 4 KiB block of the bounce buffer (aligned for `O_DIRECT`).
#[repr(C, align(4096))]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct Block([u8; 4096]);

/// A worker's reusable bounce buffer.
#[derive(Default)]
pub struct Bounce {
    blocks: Vec<Block>,
}

impl Bounce {
    fn get(&mut self, len: usize) -> &mut [u8] {
        let n = len.div_ceil(4096);
        if self.blocks.len() < n {
            self.blocks.resize(n, Block([0; 4096]));
        }
        &mut self.blocks[..n].as_mut_bytes()[..len]
    }
}

fn grant_err(index: usize, page: &Page, source: crate::grant::GrantError) -> IoError {
    let gref = match page {
        Page::Mapped(m) => m.gref(),
        Page::Granted(g) => *g,
    };
    IoError::Grant {
        index,
        gref,
        source,
    }
}

/// Carries out `job`.
pub fn execute(
    job: &Job,
    store: &Store,
    grants: &GrantTable,
    bounce: &mut Bounce,
) -> Result<(), IoError> {
    let req = &job.req;
    if let Op::Discard { sectors } = req.op {
        store.discard(byte_offset(req.sector)?, byte_offset(sectors)?)?;
        return Ok(());
    }
    let buf = bounce.get(req.bytes() as usize);
    let parts = req.segments.iter().zip(&job.pages).enumerate();
    match req.op {
        Op::Read => {
            store.read_at(byte_offset(req.sector)?, buf)?;
            let mut at = 0usize;
            for (index, (s, page)) in parts {
                let part = &buf[at..at + s.len as usize];
                let r = match page {
                    Page::Mapped(m) => m.write(s.offset, part),
                    Page::Granted(g) => grants.copy_to_grant(DOM0, *g, s.offset, part),
                };
                r.map_err(|e| grant_err(index, page, e))?;
                at += s.len as usize;
            }
        }
        Op::Write | Op::Flush => {
            let mut at = 0usize;
            for (index, (s, page)) in parts {
                let part = &mut buf[at..at + s.len as usize];
                let r = match page {
                    Page::Mapped(m) => m.read(s.offset, part),
                    Page::Granted(g) => grants.copy_from_grant(DOM0, *g, s.offset, part),
                };
                r.map_err(|e| grant_err(index, page, e))?;
                at += s.len as usize;
            }
            // A flush without data has no meaningful sector: Linux's blkfront sends
            // a flush request's unset position, (sector_t)-1.
            if !buf.is_empty() {
                store.write_at(byte_offset(req.sector)?, buf)?;
            }
            if req.op == Op::Flush {
                store.disk.flush()?;
            }
        }
        Op::Discard { .. } => {}
    }
    Ok(())
}

/// The response to a request with `id` and `operation`.
pub fn response(id: u64, operation: u8, status: i16) -> BlkifResponse {
    BlkifResponse {
        id,
        operation,
        status,
        ..Default::default()
    }
}

/// Runs `job` and answers it; failures are logged at debug level (a hostile frontend
/// must not flood the log).
pub fn run(job: &Job, store: &Store, grants: &GrantTable, bounce: &mut Bounce) -> BlkifResponse {
    let status = match execute(job, store, grants, bounce) {
        Ok(()) => rxen_abi::blkif::BLKIF_RSP_OKAY,
        Err(e) => {
            tracing::debug!(id = job.req.id, "blkback: request failed: {e}");
            rxen_abi::blkif::BLKIF_RSP_ERROR
        }
    };
    response(job.req.id, job.req.operation, status)
}
