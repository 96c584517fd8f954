//! A blkif request read from the ring, validated into what the backend will do.
//!
//! Pure: the slot (and any indirect page) was copied out of shared memory once, so
//! nothing here can change under the checks. Every value is checked against the
//! protocol, the features this backend offered ([`Limits`]) and the disk: a segment
//! count of 1..=11 for direct reads and writes, 1..=`feature-max-indirect-segments` for
//! `BLKIF_OP_INDIRECT` (whose `indirect_op` must be a read or a write and whose pages
//! must cover the segments), `first_sect <= last_sect <= 7` (a segment stays within its
//! 4 KiB page), the whole sector range within the disk (no overflow), no writes or
//! discards to a read-only disk. Operations rxen does not offer (barrier, discard or
//! indirect when not advertised, anything unknown) are refused with
//! `BLKIF_RSP_EOPNOTSUPP`.

use rxen_abi::blkif::*;
use rxen_abi::PAGE_SIZE;
use zerocopy::FromBytes;

/// Last valid `last_sect` in a page (4096 / 512 - 1).
const MAX_SECT_IN_PAGE: u8 = (PAGE_SIZE / BLKIF_SECTOR_SIZE - 1) as u8;

/// Segments of an indirect request this backend takes at most
/// (`feature-max-indirect-segments`): 1 MiB of 4 KiB pages, one indirect page.
pub const MAX_INDIRECT_SEGMENTS: u16 = 256;

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Read the sectors into the segments.
    Read,
    /// Write the segments to the sectors.
    Write,
    /// Write the segments (if any), then make everything written durable.
    Flush,
    /// Forget `sectors` sectors (they read back as zeroes): a hole punched in the file.
    Discard { sectors: u64 },
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
    /// The operation echoed in the response (an indirect request's `indirect_op`).
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

/// What the backend offered the frontend, and the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub disk_sectors: u64,
    pub writable: bool,
    /// `feature-max-indirect-segments` (0: indirect requests are not offered).
    pub max_indirect_segments: u16,
    /// `feature-discard`.
    pub discard: bool,
}

impl Limits {
    /// A disk of `disk_sectors` with only the milestone-1 operations.
    pub fn basic(disk_sectors: u64, writable: bool) -> Self {
        Self {
            disk_sectors,
            writable,
            max_indirect_segments: 0,
            discard: false,
        }
    }
}

/// An indirect request whose segments are still in its indirect pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndirectHeader {
    pub id: u64,
    pub operation: u8,
    pub op: Op,
    pub sector: u64,
    pub nr_segments: u16,
    /// The grants of the pages to read (exactly as many as the segments need).
    pub pages: Vec<u32>,
}

/// A parsed slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    Ready(Request),
    /// Read the indirect pages, then [`complete_indirect`].
    Indirect(IndirectHeader),
}

/// Why a request is refused (it is answered, never executed).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("operation {0} is not supported")]
    Unsupported(u8),
    #[error("{0} segments (a read or write has 1 to 11)")]
    SegmentCount(u8),
    #[error("{count} indirect segments (1 to {max} offered)")]
    IndirectCount { count: u16, max: u16 },
    #[error("segment {index}: sectors {first}..={last} do not fit in a page")]
    BadSegment { index: usize, first: u8, last: u8 },
    #[error("sectors {sector}+{count} are beyond the disk's {disk} sectors")]
    OutOfRange { sector: u64, count: u64, disk: u64 },
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("indirect page {0}: {1}")]
    IndirectPage(usize, String),
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

fn check_range(sector: u64, count: u64, disk: u64) -> Result<(), Refusal> {
    if sector.checked_add(count).is_none_or(|end| end > disk) {
        return Err(Refusal::OutOfRange {
            sector,
            count,
            disk,
        });
    }
    Ok(())
}

/// Turns `segs` into checked segments; returns them and their sector count.
fn segments(segs: &[BlkifSegment]) -> Result<(Vec<Segment>, u64), Refusal> {
    let mut out = Vec::with_capacity(segs.len());
    let mut count = 0u64;
    for (index, s) in segs.iter().enumerate() {
        let (first, last) = (s.first_sect, s.last_sect);
        if first > last || last > MAX_SECT_IN_PAGE {
            return Err(Refusal::BadSegment { index, first, last });
        }
        let sectors = u64::from(last - first) + 1;
        count += sectors;
        out.push(Segment {
            gref: s.gref,
            offset: u64::from(first) * BLKIF_SECTOR_SIZE,
            len: sectors * BLKIF_SECTOR_SIZE,
        });
    }
    Ok((out, count))
}

/// Validates `raw` against what was offered (`lim`).
pub fn parse(raw: &BlkifRequest, lim: &Limits) -> Result<Parsed, Refusal> {
    use zerocopy::IntoBytes;
    let op = match raw.operation {
        BLKIF_OP_READ => Op::Read,
        BLKIF_OP_WRITE => Op::Write,
        BLKIF_OP_FLUSH_DISKCACHE => Op::Flush,
        BLKIF_OP_DISCARD if lim.discard => {
            let d = BlkifRequestDiscard::read_from_prefix(raw.as_bytes())
                .map(|(d, _)| d)
                .unwrap_or_default();
            if !lim.writable {
                return Err(Refusal::ReadOnly);
            }
            check_range(d.sector_number, d.nr_sectors, lim.disk_sectors)?;
            return Ok(Parsed::Ready(Request {
                id: raw.id,
                operation: raw.operation,
                op: Op::Discard {
                    sectors: d.nr_sectors,
                },
                sector: d.sector_number,
                segments: Vec::new(),
            }));
        }
        BLKIF_OP_INDIRECT if lim.max_indirect_segments > 0 => {
            return parse_indirect(raw, lim).map(Parsed::Indirect)
        }
        other => return Err(Refusal::Unsupported(other)),
    };
    let n = raw.nr_segments;
    let max = BLKIF_MAX_SEGMENTS_PER_REQUEST as u8;
    let count_ok = match op {
        Op::Flush => n <= max,
        _ => (1..=max).contains(&n),
    };
    if !count_ok {
        return Err(Refusal::SegmentCount(n));
    }
    if op != Op::Read && n > 0 && !lim.writable {
        return Err(Refusal::ReadOnly);
    }
    let (segments, count) = segments(&raw.seg[..n as usize])?;
    let sector = raw.sector_number;
    if n > 0 {
        check_range(sector, count, lim.disk_sectors)?;
    }
    Ok(Parsed::Ready(Request {
        id: raw.id,
        operation: raw.operation,
        op,
        sector,
        segments,
    }))
}

fn parse_indirect(raw: &BlkifRequest, lim: &Limits) -> Result<IndirectHeader, Refusal> {
    use zerocopy::IntoBytes;
    let ind = BlkifRequestIndirect::read_from_prefix(raw.as_bytes())
        .map(|(r, _)| r)
        .unwrap_or_default();
    let op = match ind.indirect_op {
        BLKIF_OP_READ => Op::Read,
        BLKIF_OP_WRITE => Op::Write,
        other => return Err(Refusal::Unsupported(other)),
    };
    let n = ind.nr_segments;
    let max = lim.max_indirect_segments;
    if n == 0 || n > max {
        return Err(Refusal::IndirectCount { count: n, max });
    }
    if op == Op::Write && !lim.writable {
        return Err(Refusal::ReadOnly);
    }
    let nr_pages = usize::from(n).div_ceil(BLKIF_SEGS_PER_INDIRECT_FRAME);
    // max <= MAX_INDIRECT_SEGMENTS keeps nr_pages within the 8 grefs; checked anyway.
    let pages = ind
        .indirect_grefs
        .get(..nr_pages)
        .ok_or(Refusal::IndirectCount { count: n, max })?
        .to_vec();
    Ok(IndirectHeader {
        id: ind.id,
        operation: ind.indirect_op,
        op,
        sector: ind.sector_number,
        nr_segments: n,
        pages,
    })
}

/// Completes an indirect request from the contents of its pages (`pages[i]` is the
/// copy of page `h.pages[i]`).
pub fn complete_indirect(
    h: &IndirectHeader,
    pages: &[[u8; PAGE_SIZE as usize]],
    lim: &Limits,
) -> Result<Request, Refusal> {
    let mut raw = Vec::with_capacity(usize::from(h.nr_segments));
    for i in 0..usize::from(h.nr_segments) {
        let page = pages
            .get(i / BLKIF_SEGS_PER_INDIRECT_FRAME)
            .ok_or_else(|| {
                Refusal::IndirectPage(i / BLKIF_SEGS_PER_INDIRECT_FRAME, "missing".into())
            })?;
        let at = (i % BLKIF_SEGS_PER_INDIRECT_FRAME) * 8;
        let seg = BlkifSegment::read_from_bytes(&page[at..at + 8]).unwrap_or_default();
        raw.push(seg);
    }
    let (segments, count) = segments(&raw)?;
    check_range(h.sector, count, lim.disk_sectors)?;
    Ok(Request {
        id: h.id,
        operation: h.operation,
        op: h.op,
        sector: h.sector,
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

    fn ready(p: Result<Parsed, Refusal>) -> Request {
        match p.unwrap() {
            Parsed::Ready(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn full() -> Limits {
        Limits {
            disk_sectors: 4096,
            writable: true,
            max_indirect_segments: MAX_INDIRECT_SEGMENTS,
            discard: true,
        }
    }

    fn indirect(op: u8, n: u16, sector: u64, grefs: &[u32]) -> BlkifRequest {
        use zerocopy::IntoBytes;
        let mut ind = BlkifRequestIndirect {
            operation: BLKIF_OP_INDIRECT,
            indirect_op: op,
            nr_segments: n,
            id: 77,
            sector_number: sector,
            ..Default::default()
        };
        ind.indirect_grefs[..grefs.len()].copy_from_slice(grefs);
        let mut slot = [0u8; 112];
        slot[..64].copy_from_slice(ind.as_bytes());
        BlkifRequest::read_from_bytes(&slot).unwrap()
    }

    fn seg_page(segs: &[(u32, u8, u8)]) -> [u8; 4096] {
        use zerocopy::IntoBytes;
        let mut p = [0u8; 4096];
        for (i, &(gref, first_sect, last_sect)) in segs.iter().enumerate() {
            let s = BlkifSegment {
                gref,
                first_sect,
                last_sect,
                pad: [0; 2],
            };
            p[i * 8..i * 8 + 8].copy_from_slice(s.as_bytes());
        }
        p
    }

    #[test]
    fn indirect_requests_are_read_from_their_pages() {
        let lim = full();
        let Parsed::Indirect(h) = parse(&indirect(BLKIF_OP_WRITE, 3, 8, &[40, 41]), &lim).unwrap()
        else {
            panic!("not indirect")
        };
        assert_eq!((h.id, h.operation, h.nr_segments), (77, BLKIF_OP_WRITE, 3));
        assert_eq!(h.pages, vec![40], "one page covers 3 segments");
        let r =
            complete_indirect(&h, &[seg_page(&[(1, 0, 7), (2, 0, 7), (3, 0, 3)])], &lim).unwrap();
        assert_eq!((r.op, r.sector, r.bytes()), (Op::Write, 8, 2 * 4096 + 2048));
        // Lies: a bad segment inside the page, a range past the disk, too many or no
        // segments, an indirect op that is not a read or write, a read-only disk, and
        // indirect requests on a backend that did not offer them.
        assert!(matches!(
            complete_indirect(&h, &[seg_page(&[(1, 0, 7), (2, 6, 5), (3, 0, 3)])], &lim),
            Err(Refusal::BadSegment { index: 1, .. })
        ));
        assert!(matches!(
            complete_indirect(&h, &[], &lim),
            Err(Refusal::IndirectPage(0, _))
        ));
        let Parsed::Indirect(far) = parse(&indirect(BLKIF_OP_READ, 1, 4095, &[40]), &lim).unwrap()
        else {
            panic!()
        };
        assert!(matches!(
            complete_indirect(&far, &[seg_page(&[(1, 0, 7)])], &lim),
            Err(Refusal::OutOfRange { .. })
        ));
        for n in [0u16, MAX_INDIRECT_SEGMENTS + 1, u16::MAX] {
            assert!(matches!(
                parse(&indirect(BLKIF_OP_READ, n, 0, &[40]), &lim),
                Err(Refusal::IndirectCount { .. })
            ));
        }
        for op in [
            BLKIF_OP_INDIRECT,
            BLKIF_OP_FLUSH_DISKCACHE,
            BLKIF_OP_DISCARD,
            99,
        ] {
            assert_eq!(
                parse(&indirect(op, 1, 0, &[40]), &lim),
                Err(Refusal::Unsupported(op))
            );
        }
        let ro = Limits {
            writable: false,
            ..lim
        };
        assert_eq!(
            parse(&indirect(BLKIF_OP_WRITE, 1, 0, &[40]), &ro),
            Err(Refusal::ReadOnly)
        );
        assert_eq!(
            parse(
                &indirect(BLKIF_OP_READ, 1, 0, &[40]),
                &Limits::basic(100, true)
            ),
            Err(Refusal::Unsupported(BLKIF_OP_INDIRECT))
        );
    }

    #[test]
    fn discards_are_checked() {
        use zerocopy::IntoBytes;
        let disc = |sector: u64, nr_sectors: u64| {
            let d = BlkifRequestDiscard {
                operation: BLKIF_OP_DISCARD,
                id: 5,
                sector_number: sector,
                nr_sectors,
                ..Default::default()
            };
            let mut slot = [0u8; 112];
            slot[..32].copy_from_slice(d.as_bytes());
            BlkifRequest::read_from_bytes(&slot).unwrap()
        };
        let lim = full();
        let r = ready(parse(&disc(8, 16), &lim));
        assert_eq!((r.op, r.sector, r.id), (Op::Discard { sectors: 16 }, 8, 5));
        assert!(matches!(
            parse(&disc(4000, 97), &lim),
            Err(Refusal::OutOfRange { .. })
        ));
        assert!(matches!(
            parse(&disc(u64::MAX, 2), &lim),
            Err(Refusal::OutOfRange { .. })
        ));
        let ro = Limits {
            writable: false,
            ..lim
        };
        assert_eq!(parse(&disc(0, 1), &ro), Err(Refusal::ReadOnly));
        assert_eq!(
            parse(&disc(0, 1), &Limits::basic(100, true)),
            Err(Refusal::Unsupported(BLKIF_OP_DISCARD))
        );
    }

    #[test]
    fn reads_and_writes_become_segments() {
        let r = ready(parse(
            &req(BLKIF_OP_READ, 2, 10, &[(5, 0, 7), (6, 2, 3)]),
            &Limits::basic(100, false),
        ));
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
        assert!(parse(
            &req(BLKIF_OP_WRITE, 1, 92, &[(1, 0, 7)]),
            &Limits::basic(100, true)
        )
        .is_ok());
        // A flush alone needs no segment and works on read-only disks.
        let f = ready(parse(
            &req(BLKIF_OP_FLUSH_DISKCACHE, 0, 0, &[]),
            &Limits::basic(100, false),
        ));
        assert_eq!((f.op, f.segments.len()), (Op::Flush, 0));
    }

    #[test]
    fn lies_are_refused() {
        let bad = |r: BlkifRequest, writable| parse(&r, &Limits::basic(100, writable)).unwrap_err();
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
