//! Xen's libxc migration stream v2/v3: the image header, the domain header and the
//! records rxen writes and reads (`docs/specs/libxc-migration-stream.pandoc`).

use std::io::{Read, Write};

use crate::error::StreamError;
use crate::framing::{le_u32, le_u64, read_exact, read_record, write_record};
use crate::{MAX_BATCH_PAGES, PAGE_SIZE};

/// Image header marker (all ones), big-endian.
pub const IHDR_MARKER: u64 = u64::MAX;
/// "XENF".
pub const IHDR_IDENT: u32 = 0x5845_4e46;
/// The version rxen writes (v3 adds `STATIC_DATA_END`).
pub const IHDR_VERSION: u32 = 3;
/// Domain type x86 PV.
pub const DHDR_TYPE_X86_PV: u32 = 1;
/// The Xen version rxen's images claim to come from (its ABI is Xen 4.17's).
pub const XEN_VERSION: (u32, u32) = (4, 17);

/// Record types of the libxc stream.
pub mod rec {
    pub const END: u32 = 0x0;
    pub const PAGE_DATA: u32 = 0x1;
    pub const X86_PV_INFO: u32 = 0x2;
    pub const X86_PV_P2M_FRAMES: u32 = 0x3;
    pub const X86_PV_VCPU_BASIC: u32 = 0x4;
    pub const X86_PV_VCPU_EXTENDED: u32 = 0x5;
    pub const X86_PV_VCPU_XSAVE: u32 = 0x6;
    pub const SHARED_INFO: u32 = 0x7;
    pub const X86_TSC_INFO: u32 = 0x8;
    pub const X86_PV_VCPU_MSRS: u32 = 0xc;
    pub const STATIC_DATA_END: u32 = 0x10;
}

const PFN_MASK: u64 = (1 << 52) - 1;
const PFN_RESERVED: u64 = ((1 << 60) - 1) & !PFN_MASK;
const TYPE_SHIFT: u32 = 60;

/// A page's type in `PAGE_DATA` (`XEN_DOMCTL_PFINFO_*` in the top 4 bits of the pfn).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageType {
    /// An ordinary page.
    Normal,
    /// A page table of level 1..=4; `pinned` for `LPINTAB`.
    Table { level: u8, pinned: bool },
    /// A broken page (no data).
    Broken,
    /// Allocate only (no data).
    AllocOnly,
    /// Invalid / not present (no data).
    Absent,
}

impl PageType {
    fn code(self) -> u64 {
        match self {
            PageType::Normal => 0,
            PageType::Table { level, pinned } => (level as u64 & 7) | if pinned { 8 } else { 0 },
            PageType::Broken => 0xd,
            PageType::AllocOnly => 0xe,
            PageType::Absent => 0xf,
        }
    }

    fn from_code(code: u64) -> Option<PageType> {
        Some(match code {
            0 => PageType::Normal,
            1..=4 => PageType::Table {
                level: code as u8,
                pinned: false,
            },
            9..=0xc => PageType::Table {
                level: (code & 7) as u8,
                pinned: true,
            },
            0xd => PageType::Broken,
            0xe => PageType::AllocOnly,
            0xf => PageType::Absent,
            _ => return None,
        })
    }

    /// Whether the record carries the page's 4096 bytes.
    pub fn has_data(self) -> bool {
        matches!(self, PageType::Normal | PageType::Table { .. })
    }
}

/// One entry of a `PAGE_DATA` record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PfnEntry {
    /// Guest frame number (52 bits).
    pub pfn: u64,
    pub ty: PageType,
}

/// A `PAGE_DATA` record: entries, and the data of those that have data, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageBatch {
    pub entries: Vec<PfnEntry>,
    pub data: Vec<u8>,
}

impl PageBatch {
    /// Pairs of (entry, its 4096 bytes) for the entries that have data.
    pub fn pages(&self) -> impl Iterator<Item = (PfnEntry, &[u8])> {
        let mut chunks = self.data.chunks_exact(PAGE_SIZE);
        self.entries
            .iter()
            .filter(|e| e.ty.has_data())
            .filter_map(move |e| chunks.next().map(|c| (*e, c)))
    }
}

/// Which `X86_PV_VCPU_*` record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuRecordKind {
    /// Xen's `vcpu_guest_context` (x86-64).
    Basic,
    Extended,
    /// `xcr0`, `xcr0_accum`, then the XSAVE area.
    Xsave,
    /// `{ index u32, reserved u32, value u64 }` entries.
    Msrs,
}

impl VcpuRecordKind {
    fn rtype(self) -> u32 {
        match self {
            VcpuRecordKind::Basic => rec::X86_PV_VCPU_BASIC,
            VcpuRecordKind::Extended => rec::X86_PV_VCPU_EXTENDED,
            VcpuRecordKind::Xsave => rec::X86_PV_VCPU_XSAVE,
            VcpuRecordKind::Msrs => rec::X86_PV_VCPU_MSRS,
        }
    }
}

/// `X86_TSC_INFO`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TscInfo {
    pub mode: u32,
    pub khz: u32,
    pub nsec: u64,
    pub incarnation: u32,
}

/// A libxc record rxen understands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    PageData(PageBatch),
    X86PvInfo {
        guest_width: u8,
        pt_levels: u8,
    },
    X86PvP2mFrames {
        start_pfn: u32,
        end_pfn: u32,
        frames: Vec<u64>,
    },
    X86PvVcpu {
        kind: VcpuRecordKind,
        vcpu_id: u32,
        data: Vec<u8>,
    },
    /// The 4096 bytes of `shared_info`.
    SharedInfo(Vec<u8>),
    X86TscInfo(TscInfo),
    StaticDataEnd,
    End,
}

/// Writes the image header and the x86 PV domain header.
pub fn write_headers(w: &mut impl Write) -> Result<(), StreamError> {
    w.write_all(&IHDR_MARKER.to_be_bytes())?;
    w.write_all(&IHDR_IDENT.to_be_bytes())?;
    w.write_all(&IHDR_VERSION.to_be_bytes())?;
    w.write_all(&0u16.to_be_bytes())?; // options: little endian
    w.write_all(&0u16.to_be_bytes())?;
    w.write_all(&0u32.to_be_bytes())?;
    w.write_all(&DHDR_TYPE_X86_PV.to_le_bytes())?;
    w.write_all(&12u16.to_le_bytes())?;
    w.write_all(&0u16.to_le_bytes())?;
    w.write_all(&XEN_VERSION.0.to_le_bytes())?;
    w.write_all(&XEN_VERSION.1.to_le_bytes())?;
    Ok(())
}

/// Reads and checks the image and domain headers; returns the stream version.
pub fn read_headers(r: &mut impl Read) -> Result<u32, StreamError> {
    let mut h = [0u8; 24];
    read_exact(r, &mut h, "the libxc image header")?;
    let bad = |detail: String| StreamError::BadHeader {
        what: "libxc image header",
        detail,
    };
    let be32 = |at: usize| u32::from_be_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    if h[..8] != [0xff; 8] {
        return Err(bad("marker is not all ones".into()));
    }
    if be32(8) != IHDR_IDENT {
        return Err(bad(format!("ident {:#x}, expected XENF", be32(8))));
    }
    let version = be32(12);
    if !(2..=3).contains(&version) {
        return Err(bad(format!("version {version}, expected 2 or 3")));
    }
    let options = u16::from_be_bytes([h[16], h[17]]);
    if options != 0 {
        return Err(bad(format!(
            "options {options:#x} (only little-endian, no reserved bits)"
        )));
    }
    if h[18..24].iter().any(|&b| b != 0) {
        return Err(bad("reserved bits set".into()));
    }
    let mut d = [0u8; 16];
    read_exact(r, &mut d, "the libxc domain header")?;
    let bad = |detail: String| StreamError::BadHeader {
        what: "libxc domain header",
        detail,
    };
    if le_u32(&d, 0) != DHDR_TYPE_X86_PV {
        return Err(bad(format!(
            "domain type {:#x}, expected x86 PV",
            le_u32(&d, 0)
        )));
    }
    if u16::from_le_bytes([d[4], d[5]]) != 12 {
        return Err(bad("page shift is not 12".into()));
    }
    if d[6] != 0 || d[7] != 0 {
        return Err(bad("reserved bits set".into()));
    }
    Ok(version)
}

/// Writes one record.
pub fn write_record_to(w: &mut impl Write, record: &Record) -> Result<(), StreamError> {
    match record {
        Record::PageData(b) => write_page_batch(w, &b.entries, &b.data),
        Record::X86PvInfo {
            guest_width,
            pt_levels,
        } => write_record(
            w,
            rec::X86_PV_INFO,
            &[&[*guest_width, *pt_levels, 0, 0, 0, 0, 0, 0]],
        ),
        Record::X86PvP2mFrames {
            start_pfn,
            end_pfn,
            frames,
        } => {
            let mut body = Vec::with_capacity(8 + frames.len() * 8);
            body.extend_from_slice(&start_pfn.to_le_bytes());
            body.extend_from_slice(&end_pfn.to_le_bytes());
            for f in frames {
                body.extend_from_slice(&f.to_le_bytes());
            }
            write_record(w, rec::X86_PV_P2M_FRAMES, &[&body])
        }
        Record::X86PvVcpu {
            kind,
            vcpu_id,
            data,
        } => {
            let mut hdr = [0u8; 8];
            hdr[..4].copy_from_slice(&vcpu_id.to_le_bytes());
            write_record(w, kind.rtype(), &[&hdr, data])
        }
        Record::SharedInfo(page) => {
            if page.len() != PAGE_SIZE {
                return Err(StreamError::Unwritable(format!(
                    "shared_info of {} bytes",
                    page.len()
                )));
            }
            write_record(w, rec::SHARED_INFO, &[page])
        }
        Record::X86TscInfo(t) => {
            let mut body = [0u8; 24];
            body[..4].copy_from_slice(&t.mode.to_le_bytes());
            body[4..8].copy_from_slice(&t.khz.to_le_bytes());
            body[8..16].copy_from_slice(&t.nsec.to_le_bytes());
            body[16..20].copy_from_slice(&t.incarnation.to_le_bytes());
            write_record(w, rec::X86_TSC_INFO, &[&body])
        }
        Record::StaticDataEnd => write_record(w, rec::STATIC_DATA_END, &[]),
        Record::End => write_record(w, rec::END, &[]),
    }
}

/// Writes a `PAGE_DATA` record without copying the page data into one buffer.
pub fn write_page_batch(
    w: &mut impl Write,
    entries: &[PfnEntry],
    data: &[u8],
) -> Result<(), StreamError> {
    if entries.is_empty() || entries.len() > MAX_BATCH_PAGES {
        return Err(StreamError::Unwritable(format!(
            "a page batch of {} entries (1..={MAX_BATCH_PAGES})",
            entries.len()
        )));
    }
    let with_data = entries.iter().filter(|e| e.ty.has_data()).count();
    if data.len() != with_data * PAGE_SIZE {
        return Err(StreamError::Unwritable(format!(
            "{} bytes of page data for {with_data} pages",
            data.len()
        )));
    }
    let mut head = Vec::with_capacity(8 + entries.len() * 8);
    head.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    head.extend_from_slice(&0u32.to_le_bytes());
    for e in entries {
        if e.pfn > PFN_MASK {
            return Err(StreamError::Unwritable(format!(
                "pfn {:#x} over 52 bits",
                e.pfn
            )));
        }
        if let PageType::Table { level, .. } = e.ty {
            if !(1..=4).contains(&level) {
                return Err(StreamError::Unwritable(format!(
                    "page-table level {level} (Xen has 1 to 4)"
                )));
            }
        }
        head.extend_from_slice(&(e.pfn | (e.ty.code() << TYPE_SHIFT)).to_le_bytes());
    }
    write_record(w, rec::PAGE_DATA, &[&head, data])
}

/// Reads one libxc record, strictly.
pub fn read_record_from(r: &mut impl Read, version: u32) -> Result<Record, StreamError> {
    let raw = read_record(r, "libxc")?;
    parse_record(raw.rtype, raw.body, version)
}

fn exact(record: &'static str, body: &[u8], len: usize) -> Result<(), StreamError> {
    if body.len() != len {
        return Err(StreamError::bad(
            record,
            format!("{} bytes, expected {len}", body.len()),
        ));
    }
    Ok(())
}

pub(crate) fn parse_record(rtype: u32, body: Vec<u8>, version: u32) -> Result<Record, StreamError> {
    Ok(match rtype {
        rec::END => {
            exact("END", &body, 0)?;
            Record::End
        }
        rec::PAGE_DATA => Record::PageData(parse_page_data(body)?),
        rec::X86_PV_INFO => {
            exact("X86_PV_INFO", &body, 8)?;
            let (guest_width, pt_levels) = (body[0], body[1]);
            if guest_width != 8 || pt_levels != 4 {
                return Err(StreamError::bad(
                    "X86_PV_INFO",
                    format!(
                        "width {guest_width}, levels {pt_levels}: only 64-bit guests with 4 levels"
                    ),
                ));
            }
            if body[2..].iter().any(|&b| b != 0) {
                return Err(StreamError::bad("X86_PV_INFO", "reserved bits set"));
            }
            Record::X86PvInfo {
                guest_width,
                pt_levels,
            }
        }
        rec::X86_PV_P2M_FRAMES => {
            if body.len() < 8 || !body.len().is_multiple_of(8) {
                return Err(StreamError::bad(
                    "X86_PV_P2M_FRAMES",
                    format!("{} bytes: at least 8 and a multiple of 8", body.len()),
                ));
            }
            let (start_pfn, end_pfn) = (le_u32(&body, 0), le_u32(&body, 4));
            if start_pfn > end_pfn {
                return Err(StreamError::bad("X86_PV_P2M_FRAMES", "start after end"));
            }
            let frames = body[8..].chunks_exact(8).map(|c| le_u64(c, 0)).collect();
            Record::X86PvP2mFrames {
                start_pfn,
                end_pfn,
                frames,
            }
        }
        rec::X86_PV_VCPU_BASIC
        | rec::X86_PV_VCPU_EXTENDED
        | rec::X86_PV_VCPU_XSAVE
        | rec::X86_PV_VCPU_MSRS => {
            let kind = match rtype {
                rec::X86_PV_VCPU_BASIC => VcpuRecordKind::Basic,
                rec::X86_PV_VCPU_EXTENDED => VcpuRecordKind::Extended,
                rec::X86_PV_VCPU_XSAVE => VcpuRecordKind::Xsave,
                _ => VcpuRecordKind::Msrs,
            };
            if body.len() < 8 {
                return Err(StreamError::bad(
                    "X86_PV_VCPU",
                    "shorter than its 8-byte header",
                ));
            }
            if le_u32(&body, 4) != 0 {
                return Err(StreamError::bad("X86_PV_VCPU", "reserved bits set"));
            }
            if kind == VcpuRecordKind::Msrs && !(body.len() - 8).is_multiple_of(16) {
                return Err(StreamError::bad(
                    "X86_PV_VCPU_MSRS",
                    "not a whole number of 16-byte entries",
                ));
            }
            Record::X86PvVcpu {
                kind,
                vcpu_id: le_u32(&body, 0),
                data: body[8..].to_vec(),
            }
        }
        rec::SHARED_INFO => {
            exact("SHARED_INFO", &body, PAGE_SIZE)?;
            Record::SharedInfo(body)
        }
        rec::X86_TSC_INFO => {
            exact("X86_TSC_INFO", &body, 24)?;
            if le_u32(&body, 20) != 0 {
                return Err(StreamError::bad("X86_TSC_INFO", "reserved bits set"));
            }
            Record::X86TscInfo(TscInfo {
                mode: le_u32(&body, 0),
                khz: le_u32(&body, 4),
                nsec: le_u64(&body, 8),
                incarnation: le_u32(&body, 16),
            })
        }
        rec::STATIC_DATA_END => {
            exact("STATIC_DATA_END", &body, 0)?;
            if version < 3 {
                return Err(StreamError::bad("STATIC_DATA_END", "in a v2 stream"));
            }
            Record::StaticDataEnd
        }
        other => {
            return Err(StreamError::UnknownRecord {
                stream: "libxc",
                rtype: other,
            })
        }
    })
}

/// The entry count of a `PAGE_DATA` body whose first 8 bytes are `head`, checked.
pub(crate) fn page_data_count(head: &[u8], body_len: usize) -> Result<usize, StreamError> {
    let bad = |d: String| StreamError::bad("PAGE_DATA", d);
    if body_len < 8 || head.len() < 8 {
        return Err(bad(format!("{body_len} bytes, shorter than its header")));
    }
    let count = le_u32(head, 0) as usize;
    if le_u32(head, 4) != 0 {
        return Err(bad("reserved bits set".into()));
    }
    if count == 0 || count > MAX_BATCH_PAGES {
        return Err(bad(format!("{count} entries (1..={MAX_BATCH_PAGES})")));
    }
    if body_len < 8 + count * 8 {
        return Err(bad(format!(
            "{count} entries do not fit in {body_len} bytes"
        )));
    }
    Ok(count)
}

/// The entries of a `PAGE_DATA` body (`pfns`: its pfn list), checked against the
/// body's length; returns them and how many have data.
pub(crate) fn page_data_entries(
    pfns: &[u8],
    body_len: usize,
) -> Result<(Vec<PfnEntry>, usize), StreamError> {
    let bad = |d: String| StreamError::bad("PAGE_DATA", d);
    let mut entries = Vec::with_capacity(pfns.len() / 8);
    for (i, c) in pfns.chunks_exact(8).enumerate() {
        let raw = le_u64(c, 0);
        if raw & PFN_RESERVED != 0 {
            return Err(bad(format!("reserved bits set in pfn[{i}]: {raw:#x}")));
        }
        let ty = PageType::from_code(raw >> TYPE_SHIFT)
            .ok_or_else(|| bad(format!("invalid type in pfn[{i}]: {raw:#x}")))?;
        entries.push(PfnEntry {
            pfn: raw & PFN_MASK,
            ty,
        });
    }
    let pages = entries.iter().filter(|e| e.ty.has_data()).count();
    let pfn_end = 8 + pfns.len();
    if body_len != pfn_end + pages * PAGE_SIZE {
        return Err(bad(format!(
            "{body_len} bytes, expected {} for {pages} pages of data",
            pfn_end + pages * PAGE_SIZE
        )));
    }
    Ok((entries, pages))
}

fn parse_page_data(body: Vec<u8>) -> Result<PageBatch, StreamError> {
    let count = page_data_count(&body, body.len())?;
    let pfn_end = 8 + count * 8;
    let (entries, _) = page_data_entries(&body[8..pfn_end], body.len())?;
    let mut body = body;
    let data = body.split_off(pfn_end);
    Ok(PageBatch { entries, data })
}
