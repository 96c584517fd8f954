//! The backend against a synthetic frontend (no KVM): a real guest RAM and grant
//! table, a ring page and data pages granted to domain 0, a disk file. Honest requests
//! move data both ways; lying ones (bad grants, counts, segments, ranges, operations,
//! indices) get error responses or stop the ring, never a panic.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;

use rxen_abi::blkif::*;
use rxen_abi::grant_table::{GTF_PERMIT_ACCESS, GTF_READONLY};
use rxen_abi::PAGE_SIZE;
use zerocopy::{FromBytes, IntoBytes};

use super::disk::Disk;
use super::dispatch::{self, Dispatcher};
use super::io;
use super::request::Limits;
use super::ring::{BackRing, RingError};
use crate::grant::{GrantTable, DOM0};
use crate::memory::GuestRam;

pub(super) const GUEST: u16 = 9;
pub(super) const TABLE_PFN: u64 = 0x600;
pub(super) const RING_PFN: u64 = 0x700;
/// Data pages start here; gref `DATA_GREF + i` grants page `DATA_PFN + i`.
pub(super) const DATA_PFN: u64 = 0x710;
pub(super) const RING_GREF: u32 = 1;
pub(super) const DATA_GREF: u32 = 10;
pub(super) const RO_GREF: u32 = 30;
pub(super) const DISK_SECTORS: u64 = 256;

mod features;
mod queues;
mod quiesce;

pub(super) struct Front {
    pub(super) ram: Arc<GuestRam>,
    pub(super) grants: GrantTable,
    pub(super) disk: Arc<Disk>,
    pub(super) store: io::Store,
    pub(super) dispatcher: Dispatcher,
    bounce: io::Bounce,
    pub(super) req_prod: u32,
    _dir: std::path::PathBuf,
}

pub(super) fn grant(ram: &GuestRam, gref: u32, frame: u64, flags: u16) {
    let at = TABLE_PFN * PAGE_SIZE + u64::from(gref) * 8;
    ram.atomic_u32(at + 4).unwrap().store(frame as u32, SeqCst);
    ram.atomic_u32(at)
        .unwrap()
        .store(u32::from(flags) | u32::from(DOM0) << 16, SeqCst);
}

fn setup(name: &str) -> Front {
    setup_with(name, Limits::basic(DISK_SECTORS, true), false)
}

pub(super) fn setup_with(name: &str, limits: Limits, persistent: bool) -> Front {
    let ram = Arc::new(GuestRam::new("blk", 16 << 20).unwrap());
    let grants = GrantTable::new(ram.clone(), GUEST);
    grants.place_frame(0, TABLE_PFN).unwrap();
    grant(&ram, RING_GREF, RING_PFN, GTF_PERMIT_ACCESS);
    for i in 0..11 {
        grant(
            &ram,
            DATA_GREF + i,
            DATA_PFN + u64::from(i),
            GTF_PERMIT_ACCESS,
        );
    }
    grant(
        &ram,
        RO_GREF,
        DATA_PFN + 11,
        GTF_PERMIT_ACCESS | GTF_READONLY,
    );
    // SHARED_RING_INIT: indices 0, events 1.
    let r = RING_PFN * PAGE_SIZE;
    ram.atomic_u32(r + 4).unwrap().store(1, SeqCst);
    ram.atomic_u32(r + 12).unwrap().store(1, SeqCst);
    let dir = std::env::temp_dir().join(format!("rxen-blk-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("disk.img");
    std::fs::write(&img, vec![0u8; (DISK_SECTORS * 512) as usize]).unwrap();
    let disk = Arc::new(Disk::open(&img, true).unwrap());
    Front {
        dispatcher: Dispatcher::new(limits, grants.clone(), persistent),
        store: io::Store::new(disk.clone(), false),
        bounce: io::Bounce::default(),
        ram,
        grants,
        disk,
        req_prod: 0,
        _dir: dir,
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

impl Front {
    pub(super) fn ring(&self) -> BackRing {
        BackRing::new(self.grants.map(DOM0, RING_GREF, false).unwrap())
    }

    pub(super) fn push(&mut self, req: &BlkifRequest) {
        let slot = RING_PFN * PAGE_SIZE + 64 + u64::from(self.req_prod % 32) * 112;
        self.ram.write(slot, req.as_bytes()).unwrap();
        self.req_prod = self.req_prod.wrapping_add(1);
        self.set_req_prod(self.req_prod);
    }

    pub(super) fn set_req_prod(&self, v: u32) {
        self.ram
            .atomic_u32(RING_PFN * PAGE_SIZE)
            .unwrap()
            .store(v, SeqCst);
    }

    pub(super) fn response(&self, idx: u32) -> BlkifResponse {
        let mut b = [0u8; 16];
        let slot = RING_PFN * PAGE_SIZE + 64 + u64::from(idx % 32) * 112;
        self.ram.read(slot, &mut b).unwrap();
        BlkifResponse::read_from_bytes(&b).unwrap()
    }

    pub(super) fn rsp_prod(&self) -> u32 {
        self.ram
            .atomic_u32(RING_PFN * PAGE_SIZE + 8)
            .unwrap()
            .load(SeqCst)
    }

    pub(super) fn serve(&mut self, ring: &mut BackRing) -> (Result<u32, RingError>, u32) {
        let mut notifies = 0;
        let (d, store, bounce) = (&mut self.dispatcher, &self.store, &mut self.bounce);
        let r = ring.serve(
            |req| dispatch::handle_now(d, store, bounce, req),
            || notifies += 1,
        );
        (r, notifies)
    }
}

pub(super) fn rw(op: u8, id: u64, sector: u64, segs: &[(u32, u8, u8)]) -> BlkifRequest {
    let mut r = BlkifRequest {
        operation: op,
        nr_segments: segs.len() as u8,
        id,
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
fn writes_then_reads_back_through_grants() {
    let mut f = setup("rw");
    let mut ring = f.ring();
    f.ram.write(DATA_PFN * PAGE_SIZE, &[0x5a; 4096]).unwrap();
    f.ram
        .write((DATA_PFN + 1) * PAGE_SIZE + 1024, &[0xc3; 1024])
        .unwrap();
    // 8 sectors from page 0, then 2 sectors (1024..2048) of page 1, at sector 100.
    f.push(&rw(
        BLKIF_OP_WRITE,
        1,
        100,
        &[(DATA_GREF, 0, 7), (DATA_GREF + 1, 2, 3)],
    ));
    f.push(&rw(BLKIF_OP_FLUSH_DISKCACHE, 2, 0, &[]));
    let (r, notifies) = f.serve(&mut ring);
    assert_eq!(r.unwrap(), 2);
    assert_eq!(notifies, 1, "one notify for the batch");
    assert_eq!(f.rsp_prod(), 2);
    for (i, id, op) in [(0, 1, BLKIF_OP_WRITE), (1, 2, BLKIF_OP_FLUSH_DISKCACHE)] {
        let rsp = f.response(i);
        assert_eq!(
            (rsp.id, rsp.operation, rsp.status),
            (id, op, BLKIF_RSP_OKAY)
        );
    }
    let mut on_disk = vec![0u8; 10 * 512];
    f.disk.read_at(100 * 512, &mut on_disk).unwrap();
    assert!(on_disk[..4096].iter().all(|b| *b == 0x5a));
    assert!(on_disk[4096..].iter().all(|b| *b == 0xc3));
    // Read the ten sectors back into pages 2 and 3.
    f.push(&rw(
        BLKIF_OP_READ,
        3,
        100,
        &[(DATA_GREF + 2, 0, 7), (DATA_GREF + 3, 6, 7)],
    ));
    let (r, _) = f.serve(&mut ring);
    assert_eq!(r.unwrap(), 1);
    assert_eq!(f.response(2).status, BLKIF_RSP_OKAY);
    let mut page = vec![0u8; 4096];
    f.ram.read((DATA_PFN + 2) * PAGE_SIZE, &mut page).unwrap();
    assert!(page.iter().all(|b| *b == 0x5a));
    f.ram.read((DATA_PFN + 3) * PAGE_SIZE, &mut page).unwrap();
    assert!(page[3072..].iter().all(|b| *b == 0xc3));
    assert!(page[..3072].iter().all(|b| *b == 0));
    // Nothing stays pinned but the ring itself.
    assert_eq!(f.grants.active_entries(), 1);
}

/// Linux's blkfront sends a flush without data at its request's unset position,
/// sector (sector_t)-1: the flush is done and answered, the sector ignored (the I/O
/// thread multiplied it into a byte offset and panicked on the overflow).
#[test]
fn a_flush_without_data_ignores_its_sector() {
    let mut f = setup("flush-sector");
    let mut ring = f.ring();
    f.push(&rw(BLKIF_OP_FLUSH_DISKCACHE, 9, u64::MAX, &[]));
    let (r, _) = f.serve(&mut ring);
    assert_eq!(r.unwrap(), 1);
    let rsp = f.response(0);
    assert_eq!(
        (rsp.id, rsp.operation, rsp.status),
        (9, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_RSP_OKAY)
    );
}

#[test]
fn lying_requests_get_error_responses() {
    let mut f = setup("lies");
    let mut ring = f.ring();
    let mut twelve = rw(BLKIF_OP_READ, 0, 0, &[(DATA_GREF, 0, 7)]);
    twelve.nr_segments = 12;
    let cases: Vec<(BlkifRequest, i16)> = vec![
        // A grant reference nobody granted, and one beyond the table.
        (
            rw(BLKIF_OP_READ, 0, 0, &[(DATA_GREF + 20, 0, 7)]),
            BLKIF_RSP_ERROR,
        ),
        (
            rw(BLKIF_OP_WRITE, 0, 0, &[(0xffff_fff0, 0, 7)]),
            BLKIF_RSP_ERROR,
        ),
        // A read into a page granted read-only.
        (rw(BLKIF_OP_READ, 0, 0, &[(RO_GREF, 0, 0)]), BLKIF_RSP_ERROR),
        // A good segment followed by a bad one fails the whole request.
        (
            rw(
                BLKIF_OP_WRITE,
                0,
                0,
                &[(DATA_GREF, 0, 7), (DATA_GREF + 25, 0, 0)],
            ),
            BLKIF_RSP_ERROR,
        ),
        (rw(BLKIF_OP_READ, 0, 0, &[]), BLKIF_RSP_ERROR),
        (twelve, BLKIF_RSP_ERROR),
        (
            rw(BLKIF_OP_READ, 0, 0, &[(DATA_GREF, 5, 2)]),
            BLKIF_RSP_ERROR,
        ),
        (
            rw(BLKIF_OP_READ, 0, 0, &[(DATA_GREF, 0, 9)]),
            BLKIF_RSP_ERROR,
        ),
        (
            rw(BLKIF_OP_READ, 0, DISK_SECTORS - 7, &[(DATA_GREF, 0, 7)]),
            BLKIF_RSP_ERROR,
        ),
        (
            rw(BLKIF_OP_WRITE, 0, u64::MAX, &[(DATA_GREF, 0, 0)]),
            BLKIF_RSP_ERROR,
        ),
        (rw(BLKIF_OP_DISCARD, 0, 0, &[]), BLKIF_RSP_EOPNOTSUPP),
        (
            rw(BLKIF_OP_INDIRECT, 0, 0, &[(DATA_GREF, 0, 7)]),
            BLKIF_RSP_EOPNOTSUPP,
        ),
        (rw(BLKIF_OP_WRITE_BARRIER, 0, 0, &[]), BLKIF_RSP_EOPNOTSUPP),
        (rw(0xee, 0, 0, &[]), BLKIF_RSP_EOPNOTSUPP),
    ];
    for (i, (mut req, _)) in cases.iter().cloned().enumerate() {
        req.id = 1000 + i as u64;
        f.push(&req);
    }
    // And an honest one at the end still works.
    f.push(&rw(BLKIF_OP_READ, 7, 0, &[(DATA_GREF, 0, 7)]));
    let (r, _) = f.serve(&mut ring);
    assert_eq!(r.unwrap(), cases.len() as u32 + 1);
    for (i, (req, status)) in cases.iter().enumerate() {
        let rsp = f.response(i as u32);
        assert_eq!(rsp.id, 1000 + i as u64, "case {i}");
        assert_eq!(rsp.operation, req.operation, "case {i}");
        assert_eq!(rsp.status, *status, "case {i}: {req:?}");
    }
    assert_eq!(f.response(cases.len() as u32).status, BLKIF_RSP_OKAY);
    // The disk was not written by the refused write.
    let mut first = vec![0u8; 4096];
    f.disk.read_at(0, &mut first).unwrap();
    assert!(first.iter().all(|b| *b == 0));
    assert_eq!(f.grants.active_entries(), 1);
}

#[test]
fn a_runaway_req_prod_stops_the_ring() {
    let mut f = setup("overflow");
    let mut ring = f.ring();
    f.set_req_prod(33);
    let (r, notifies) = f.serve(&mut ring);
    assert!(
        matches!(r, Err(RingError::Overflow { prod: 33, .. })),
        "{r:?}"
    );
    assert_eq!((notifies, f.rsp_prod()), (0, 0));
    f.set_req_prod(u32::MAX);
    assert!(f.serve(&mut ring).0.is_err());
}

#[test]
fn a_full_ring_wraps_and_notifies_by_rsp_event() {
    let mut f = setup("wrap");
    let mut ring = f.ring();
    for round in 0..3u32 {
        for i in 0..32u64 {
            f.push(&rw(BLKIF_OP_READ, i, i, &[(DATA_GREF, 0, 0)]));
        }
        // The frontend wants to hear only once 40 more responses exist (it does not).
        let rsp_event = f.rsp_prod().wrapping_add(40);
        f.ram
            .atomic_u32(RING_PFN * PAGE_SIZE + 12)
            .unwrap()
            .store(rsp_event, SeqCst);
        let (r, notifies) = f.serve(&mut ring);
        assert_eq!(r.unwrap(), 32, "round {round}");
        assert_eq!(notifies, 0, "round {round}");
        assert_eq!(f.rsp_prod(), 32 * (round + 1));
        // req_event is armed at req_cons + 1.
        let req_event = f
            .ram
            .atomic_u32(RING_PFN * PAGE_SIZE + 4)
            .unwrap()
            .load(SeqCst);
        assert_eq!(req_event, 32 * (round + 1) + 1);
    }
}
