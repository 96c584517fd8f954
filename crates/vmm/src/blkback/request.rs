//! A blkif request read from the ring, validated into what the backend will do.
//!
//! Pure: the slot was copied out of the shared page once, so nothing here can change
//! under the checks. Every value is checked against the protocol and the disk: a
//! segment count of 1..=11 for reads and writes, `first_sect <= last_sect <= 7` (a
//! segment stays within its 4 KiB page), the whole sector range within the disk (no
//! overflow), no writes to a read-only disk. Operations rxen does not offer (barrier,
//! discard, indirect, anything unknown) are refused with `BLKIF_RSP_EOPNOTSUPP`.

use rxen_abi::blkif::*;
use rxen_abi::PAGE_SIZE;

/// Last valid `last_sect` in a page (4096 / 512 - 1).
const MAX_SECT_IN_PAGE: u8 = (PAGE_SIZE / BLKIF_SECTOR_SIZE - 1) as u8;

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Read the sectors into the segments.
    Read,
    /// Write the segments to the sectors.
    Write,
    /// Write the segments (if any), then make everything written durable.
    Flush,
}

/// One segment: `len` bytes at `offset` of the page granted by `gref`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub gref: u32,
    pub offset: u64,
    pub len: u64,
}

/// A validated request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub id: u64,
    pub operation: u8,
    pub op: Op,
    /// First sector (512-byte units).
    pub sector: u64,
    pub segments: Vec<Segment>,
}

impl Request {
    /// Bytes the request moves.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }
}

/// Why a request is refused (it is answered, never executed).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("operation {0} is not supported")]
    Unsupported(u8),
    #[error("{0} segments (a read or write has 1 to 11)")]
    SegmentCount(u8),
    #[error("segment {index}: sectors {first}..={last} do not fit in a page")]
    BadSegment { index: usize, first: u8, last: u8 },
    #[error("sectors {sector}+{count} are beyond the disk's {disk} sectors")]
    OutOfRange { sector: u64, count: u64, disk: u64 },
    #[error("write to a read-only disk")]
    ReadOnly,
}

impl Refusal {
    /// The response status of the refusal.
    pub fn status(&self) -> i16 {
        match self {
            Refusal::Unsupported(_) => BLKIF_RSP_EOPNOTSUPP,
            _ => BLKIF_RSP_ERROR,
        }
    }
}

/// Validates `raw` against a disk of `disk_sectors` sectors (`writable` or not).
pub fn parse(raw: &BlkifRequest, disk_sectors: u64, writable: bool) -> Result<Request, Refusal> {
    let op = match raw.operation {
        BLKIF_OP_READ => Op::Read,
        BLKIF_OP_WRITE => Op::Write,
        BLKIF_OP_FLUSH_DISKCACHE => Op::Flush,
        other => return Err(Refusal::Unsupported(other)),
    };
    let n = raw.nr_segments;
    let max = BLKIF_MAX_SEGMENTS_PER_REQUEST as u8;
    let count_ok = match op {
        Op::Flush => n <= max,
        Op::Read | Op::Write => (1..=max).contains(&n),
    };
    if !count_ok {
        return Err(Refusal::SegmentCount(n));
    }
    if op != Op::Read && n > 0 && !writable {
        return Err(Refusal::ReadOnly);
    }
    let mut segments = Vec::with_capacity(n as usize);
    let mut count = 0u64;
    for (index, s) in raw.seg.iter().take(n as usize).enumerate() {
        let (first, last) = (s.first_sect, s.last_sect);
        if first > last || last > MAX_SECT_IN_PAGE {
            return Err(Refusal::BadSegment { index, first, last });
        }
        let sectors = u64::from(last - first) + 1;
        count += sectors;
        segments.push(Segment {
            gref: s.gref,
            offset: u64::from(first) * BLKIF_SECTOR_SIZE,
            len: sectors * BLKIF_SECTOR_SIZE,
        });
    }
    let sector = raw.sector_number;
    if n > 0
        && sector
            .checked_add(count)
            .is_none_or(|end| end > disk_sectors)
    {
        return Err(Refusal::OutOfRange {
            sector,
            count,
            disk: disk_sectors,
        });
    }
    Ok(Request {
        id: raw.id,
        operation: raw.operation,
        op,
        sector,
        segments,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn req(op: u8, n: u8, sector: u64, segs: &[(u32, u8, u8)]) -> BlkifRequest {
        let mut r = BlkifRequest {
            operation: op,
            nr_segments: n,
            id: 0xfeed,
            sector_number: sector,
            ..Default::default()
        };
        for (i, &(gref, first_sect, last_sect)) in segs.iter().enumerate() {
            r.seg[i] = BlkifSegment {
                gref,
                first_sect,
                last_sect,
                pad: [0; 2],
            };
        }
        r
    }

    #[test]
    fn reads_and_writes_become_segments() {
        let r = parse(
            &req(BLKIF_OP_READ, 2, 10, &[(5, 0, 7), (6, 2, 3)]),
            100,
            false,
        )
        .unwrap();
        assert_eq!(r.op, Op::Read);
        assert_eq!(r.id, 0xfeed);
        assert_eq!(
            r.segments,
            vec![
                Segment {
                    gref: 5,
                    offset: 0,
                    len: 4096
                },
                Segment {
                    gref: 6,
                    offset: 1024,
                    len: 1024
                }
            ]
        );
        assert_eq!(r.bytes(), 5120);
        // Exactly up to the end of the disk is fine.
        assert!(parse(&req(BLKIF_OP_WRITE, 1, 92, &[(1, 0, 7)]), 100, true).is_ok());
        // A flush alone needs no segment and works on read-only disks.
        let f = parse(&req(BLKIF_OP_FLUSH_DISKCACHE, 0, 0, &[]), 100, false).unwrap();
        assert_eq!((f.op, f.segments.len()), (Op::Flush, 0));
    }

    #[test]
    fn lies_are_refused() {
        let bad = |r: BlkifRequest, writable| parse(&r, 100, writable).unwrap_err();
        assert_eq!(
            bad(req(BLKIF_OP_READ, 0, 0, &[]), true),
            Refusal::SegmentCount(0)
        );
        assert_eq!(
            bad(req(BLKIF_OP_READ, 12, 0, &[]), true),
            Refusal::SegmentCount(12)
        );
        assert_eq!(
            bad(req(BLKIF_OP_FLUSH_DISKCACHE, 255, 0, &[]), true),
            Refusal::SegmentCount(255)
        );
        assert_eq!(
            bad(req(BLKIF_OP_READ, 1, 0, &[(1, 3, 2)]), true),
            Refusal::BadSegment {
                index: 0,
                first: 3,
                last: 2
            }
        );
        assert_eq!(
            bad(req(BLKIF_OP_READ, 2, 0, &[(1, 0, 7), (1, 0, 8)]), true),
            Refusal::BadSegment {
                index: 1,
                first: 0,
                last: 8
            }
        );
        assert_eq!(
            bad(req(BLKIF_OP_READ, 1, 93, &[(1, 0, 7)]), true),
            Refusal::OutOfRange {
                sector: 93,
                count: 8,
                disk: 100
            }
        );
        assert!(matches!(
            bad(req(BLKIF_OP_READ, 1, u64::MAX - 2, &[(1, 0, 7)]), true),
            Refusal::OutOfRange { .. }
        ));
        assert_eq!(
            bad(req(BLKIF_OP_WRITE, 1, 0, &[(1, 0, 0)]), false),
            Refusal::ReadOnly
        );
        for op in [
            BLKIF_OP_WRITE_BARRIER,
            BLKIF_OP_RESERVED_1,
            BLKIF_OP_DISCARD,
            BLKIF_OP_INDIRECT,
            200,
        ] {
            let e = bad(req(op, 1, 0, &[(1, 0, 0)]), true);
            assert_eq!(e, Refusal::Unsupported(op));
            assert_eq!(e.status(), BLKIF_RSP_EOPNOTSUPP);
        }
        assert_eq!(Refusal::ReadOnly.status(), BLKIF_RSP_ERROR);
    }
}
