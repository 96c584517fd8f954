//! Executes validated requests: data moves between the disk and the frontend's granted
//! pages by grant copy (`GrantTable::copy_from_grant`/`copy_to_grant`, one per
//! segment), so a bad grant fails that request with `BLKIF_RSP_ERROR` and nothing else.
//!
//! Milestone 1 is synchronous: one request at a time, in ring order, on the ring's
//! thread (`pread`/`pwrite` of the whole request, `fdatasync` for flushes).

use rxen_abi::blkif::{
    BlkifRequest, BlkifResponse, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, BLKIF_SECTOR_SIZE,
};

use super::disk::Disk;
use super::request::{self, Op, Request};
use crate::grant::{GrantTable, DOM0};

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
}

/// Carries out `req`.
pub fn execute(req: &Request, disk: &Disk, grants: &GrantTable) -> Result<(), IoError> {
    let offset = req.sector * BLKIF_SECTOR_SIZE;
    let mut buf = vec![0u8; req.bytes() as usize];
    match req.op {
        Op::Read => {
            disk.read_at(offset, &mut buf)?;
            let mut at = 0usize;
            for (index, s) in req.segments.iter().enumerate() {
                let part = &buf[at..at + s.len as usize];
                grants
                    .copy_to_grant(DOM0, s.gref, s.offset, part)
                    .map_err(|source| IoError::Grant {
                        index,
                        gref: s.gref,
                        source,
                    })?;
                at += s.len as usize;
            }
        }
        Op::Write | Op::Flush => {
            let mut at = 0usize;
            for (index, s) in req.segments.iter().enumerate() {
                let part = &mut buf[at..at + s.len as usize];
                grants
                    .copy_from_grant(DOM0, s.gref, s.offset, part)
                    .map_err(|source| IoError::Grant {
                        index,
                        gref: s.gref,
                        source,
                    })?;
                at += s.len as usize;
            }
            if !buf.is_empty() {
                disk.write_at(offset, &buf)?;
            }
            if req.op == Op::Flush {
                disk.flush()?;
            }
        }
    }
    Ok(())
}

/// Validates and executes one request slot, and says how it went. Refusals and
/// failures are logged at debug level (a hostile frontend must not flood the log).
pub fn handle(raw: &BlkifRequest, disk: &Disk, grants: &GrantTable) -> BlkifResponse {
    let status = match request::parse(raw, disk.sectors(), disk.writable()) {
        Err(refusal) => {
            tracing::debug!(
                id = raw.id,
                op = raw.operation,
                "blkback: request refused: {refusal}"
            );
            refusal.status()
        }
        Ok(req) => match execute(&req, disk, grants) {
            Ok(()) => BLKIF_RSP_OKAY,
            Err(e) => {
                tracing::debug!(
                    id = raw.id,
                    op = raw.operation,
                    "blkback: request failed: {e}"
                );
                BLKIF_RSP_ERROR
            }
        },
    };
    BlkifResponse {
        id: raw.id,
        operation: raw.operation,
        status,
        ..Default::default()
    }
}
