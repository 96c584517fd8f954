//! The data path's features against the synthetic frontend: multi-page rings,
//! indirect segments, persistent grants, discard, and the asynchronous worker pool;
//! with lying frontends for each.

use std::collections::BTreeSet;

use super::super::connection;
use super::super::pool::Pool;
use super::super::request::MAX_INDIRECT_SEGMENTS;
use super::*;

/// Grant of the indirect page (pfn [`IND_PFN`]) and of a 4-page ring at [`RING2_PFN`].
const IND_GREF: u32 = 50;
const IND_PFN: u64 = 0x720;
const RING2_GREF: u32 = 40;
const RING2_PFN: u64 = 0x680;

fn full() -> Limits {
    Limits {
        disk_sectors: DISK_SECTORS,
        writable: true,
        max_indirect_segments: MAX_INDIRECT_SEGMENTS,
        discard: true,
    }
}

fn indirect(op: u8, id: u64, n: u16, sector: u64, grefs: &[u32]) -> BlkifRequest {
    let mut ind = BlkifRequestIndirect {
        operation: BLKIF_OP_INDIRECT,
        indirect_op: op,
        nr_segments: n,
        id,
        sector_number: sector,
        ..Default::default()
    };
    ind.indirect_grefs[..grefs.len()].copy_from_slice(grefs);
    let mut slot = [0u8; 112];
    slot[..64].copy_from_slice(ind.as_bytes());
    BlkifRequest::read_from_bytes(&slot).unwrap()
}

fn discard(id: u64, sector: u64, nr_sectors: u64) -> BlkifRequest {
    let d = BlkifRequestDiscard {
        operation: BLKIF_OP_DISCARD,
        id,
        sector_number: sector,
        nr_sectors,
        ..Default::default()
    };
    let mut slot = [0u8; 112];
    slot[..32].copy_from_slice(d.as_bytes());
    BlkifRequest::read_from_bytes(&slot).unwrap()
}

/// Writes segments into the indirect page.
fn fill_indirect(f: &Front, segs: &[(u32, u8, u8)]) {
    grant(&f.ram, IND_GREF, IND_PFN, GTF_PERMIT_ACCESS);
    for (i, &(gref, first_sect, last_sect)) in segs.iter().enumerate() {
        let s = BlkifSegment {
            gref,
            first_sect,
            last_sect,
            pad: [0; 2],
        };
        f.ram
            .write(IND_PFN * PAGE_SIZE + i as u64 * 8, s.as_bytes())
            .unwrap();
    }
}

#[test]
fn indirect_requests_move_data_and_lies_fail() {
    let mut f = setup_with("indirect", full(), false);
    let mut ring = f.ring();
    f.ram.write(DATA_PFN * PAGE_SIZE, &[0x11; 4096]).unwrap();
    f.ram
        .write((DATA_PFN + 1) * PAGE_SIZE, &[0x22; 4096])
        .unwrap();
    fill_indirect(&f, &[(DATA_GREF, 0, 7), (DATA_GREF + 1, 0, 7)]);
    f.push(&indirect(BLKIF_OP_WRITE, 1, 2, 16, &[IND_GREF]));
    let (r, _) = f.serve(&mut ring);
    assert_eq!(r.unwrap(), 1);
    let rsp = f.response(0);
    // The response echoes the indirect operation (what Linux's blkfront expects).
    assert_eq!(
        (rsp.id, rsp.operation, rsp.status),
        (1, BLKIF_OP_WRITE, BLKIF_RSP_OKAY)
    );
    let mut on_disk = vec![0u8; 8192];
    f.disk.read_at(16 * 512, &mut on_disk).unwrap();
    assert!(on_disk[..4096].iter().all(|b| *b == 0x11));
    assert!(on_disk[4096..].iter().all(|b| *b == 0x22));

    // Lies: an indirect page nobody granted, a segment naming a bad grant, a segment
    // count past the offer, a read into a read-only page, a range past the disk.
    let cases = [
        indirect(BLKIF_OP_READ, 10, 1, 0, &[IND_GREF + 7]),
        indirect(BLKIF_OP_READ, 11, 300, 0, &[IND_GREF]),
        indirect(BLKIF_OP_READ, 12, 2, DISK_SECTORS - 8, &[IND_GREF]),
        indirect(BLKIF_OP_WRITE_BARRIER, 13, 1, 0, &[IND_GREF]),
    ];
    for c in &cases {
        f.push(c);
    }
    let (r, _) = f.serve(&mut ring);
    assert_eq!(r.unwrap(), cases.len() as u32);
    for i in 0..cases.len() as u32 {
        assert_ne!(f.response(1 + i).status, BLKIF_RSP_OKAY, "case {i}");
    }
    assert_eq!(f.response(4).status, BLKIF_RSP_EOPNOTSUPP);
    fill_indirect(&f, &[(DATA_GREF, 0, 7), (0xdead, 0, 7)]);
    f.push(&indirect(BLKIF_OP_READ, 20, 2, 0, &[IND_GREF]));
    fill_indirect(&f, &[(RO_GREF, 0, 7)]);
    f.push(&indirect(BLKIF_OP_READ, 21, 1, 0, &[IND_GREF]));
    let (r, _) = f.serve(&mut ring);
    assert_eq!(r.unwrap(), 2);
    assert_eq!(f.response(5).status, BLKIF_RSP_ERROR);
    assert_eq!(f.response(6).status, BLKIF_RSP_ERROR);
    // Read back what was written, through the indirect path.
    fill_indirect(&f, &[(DATA_GREF + 2, 0, 7), (DATA_GREF + 3, 0, 7)]);
    f.push(&indirect(BLKIF_OP_READ, 22, 2, 16, &[IND_GREF]));
    let (r, _) = f.serve(&mut ring);
    assert_eq!(r.unwrap(), 1);
    assert_eq!(f.response(7).status, BLKIF_RSP_OKAY);
    let mut page = vec![0u8; 4096];
    f.ram.read((DATA_PFN + 3) * PAGE_SIZE, &mut page).unwrap();
    assert!(page.iter().all(|b| *b == 0x22));
    assert_eq!(f.grants.active_entries(), 1);
}

#[test]
fn persistent_grants_stay_mapped_and_are_reused() {
    let mut f = setup_with("persistent", full(), true);
    let mut ring = f.ring();
    f.ram.write(DATA_PFN * PAGE_SIZE, &[0x77; 4096]).unwrap();
    for i in 0..3 {
        f.push(&rw(BLKIF_OP_WRITE, i, i * 8, &[(DATA_GREF, 0, 7)]));
    }
    f.push(&rw(BLKIF_OP_READ, 3, 0, &[(DATA_GREF + 1, 0, 7)]));
    let (r, _) = f.serve(&mut ring);
    assert_eq!(r.unwrap(), 4);
    for i in 0..4 {
        assert_eq!(f.response(i).status, BLKIF_RSP_OKAY);
    }
    // The ring plus two data pages, mapped once each and kept.
    assert_eq!(f.dispatcher.persistent_grants(), 2);
    assert_eq!(f.grants.active_entries(), 3);
    let mut page = vec![0u8; 4096];
    f.ram.read((DATA_PFN + 1) * PAGE_SIZE, &mut page).unwrap();
    assert!(page.iter().all(|b| *b == 0x77));
    // A read-only grant cannot be mapped persistently: it falls back to copy (a write
    // from it works, a read into it fails); a bogus gref fails.
    f.push(&rw(BLKIF_OP_WRITE, 4, 0, &[(RO_GREF, 0, 0)]));
    f.push(&rw(BLKIF_OP_READ, 5, 0, &[(RO_GREF, 0, 0)]));
    f.push(&rw(BLKIF_OP_READ, 6, 0, &[(0xffff_0000, 0, 0)]));
    let (r, _) = f.serve(&mut ring);
    assert_eq!(r.unwrap(), 3);
    assert_eq!(f.response(4).status, BLKIF_RSP_OKAY);
    assert_eq!(f.response(5).status, BLKIF_RSP_ERROR);
    assert_eq!(f.response(6).status, BLKIF_RSP_ERROR);
    assert_eq!(f.dispatcher.persistent_grants(), 2);
    // Dropping the dispatcher (disconnect) unmaps them.
    f.dispatcher = Dispatcher::new(full(), f.grants.clone(), true);
    assert_eq!(f.grants.active_entries(), 1);
}

#[test]
fn discard_punches_a_hole() {
    let mut f = setup_with("discard", full(), false);
    let mut ring = f.ring();
    f.disk.write_at(0, &[0xab; 16 * 512]).unwrap();
    f.push(&discard(1, 4, 8));
    f.push(&discard(2, DISK_SECTORS - 1, 2));
    f.push(&discard(3, u64::MAX, u64::MAX));
    let (r, _) = f.serve(&mut ring);
    assert_eq!(r.unwrap(), 3);
    assert_eq!(
        (f.response(0).status, f.response(0).operation),
        (BLKIF_RSP_OKAY, BLKIF_OP_DISCARD)
    );
    assert_eq!(f.response(1).status, BLKIF_RSP_ERROR);
    assert_eq!(f.response(2).status, BLKIF_RSP_ERROR);
    let mut d = vec![0u8; 16 * 512];
    f.disk.read_at(0, &mut d).unwrap();
    assert!(d[..4 * 512].iter().all(|b| *b == 0xab));
    assert!(d[4 * 512..12 * 512].iter().all(|b| *b == 0));
    assert!(d[12 * 512..].iter().all(|b| *b == 0xab));
}

/// A 4-page ring (128 slots): slot 72 straddles pages 1 and 2.
#[test]
fn a_four_page_ring_serves_slots_across_page_boundaries() {
    let mut f = setup_with("ring2", full(), false);
    for i in 0..4 {
        grant(
            &f.ram,
            RING2_GREF + i,
            RING2_PFN + u64::from(i),
            GTF_PERMIT_ACCESS,
        );
    }
    let base = RING2_PFN * PAGE_SIZE;
    f.ram.atomic_u32(base + 12).unwrap().store(1, SeqCst);
    let pages = (0..4)
        .map(|i| f.grants.map(DOM0, RING2_GREF + i, false).unwrap())
        .collect();
    let mut ring = BackRing::with_pages(pages);
    assert_eq!(ring.size(), 128);
    for round in 0..2u32 {
        for i in 0..128u32 {
            let idx = round * 128 + i;
            let req = rw(
                BLKIF_OP_READ,
                u64::from(idx),
                u64::from(i),
                &[(DATA_GREF, 0, 0)],
            );
            f.ram
                .write(base + 64 + u64::from(idx % 128) * 112, req.as_bytes())
                .unwrap();
        }
        f.ram
            .atomic_u32(base)
            .unwrap()
            .store((round + 1) * 128, SeqCst);
        let (r, notifies) = f.serve(&mut ring);
        assert_eq!(r.unwrap(), 128);
        assert!(notifies <= 1);
        for i in [0u32, 35, 36, 71, 72, 73, 127] {
            let mut b = [0u8; 16];
            f.ram.read(base + 64 + u64::from(i) * 112, &mut b).unwrap();
            let rsp = BlkifResponse::read_from_bytes(&b).unwrap();
            assert_eq!(
                (rsp.id, rsp.status),
                (u64::from(round * 128 + i), BLKIF_RSP_OKAY)
            );
        }
    }
    // 129 ahead of the responses is a lie.
    f.ram.atomic_u32(base).unwrap().store(256 + 129, SeqCst);
    assert!(matches!(
        f.serve(&mut ring).0,
        Err(RingError::Overflow { size: 128, .. })
    ));
}

/// The asynchronous path: every request of a full ring is taken and handed to the
/// workers before any is answered; all come back, in whatever order, each once.
#[test]
fn the_worker_pool_keeps_a_ring_in_flight() {
    let mut f = setup_with("pool", full(), true);
    let mut ring = f.ring();
    for i in 0..32u64 {
        f.push(&rw(
            BLKIF_OP_WRITE,
            i,
            i * 8,
            &[(DATA_GREF + (i % 8) as u32, 0, 7)],
        ));
    }
    let store = Arc::new(io::Store::new(f.disk.clone(), false));
    let pool = Pool::new("test", 4, store, f.grants.clone()).unwrap();
    let mut dispatcher = Dispatcher::new(full(), f.grants.clone(), true);
    let rsp_prod = || {
        f.ram
            .atomic_u32(RING_PFN * PAGE_SIZE + 8)
            .unwrap()
            .load(SeqCst)
    };
    let mut max_in_flight = 0;
    let mut first_check: Option<u32> = None;
    let mut notifies = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    connection::serve(
        &mut ring,
        &mut dispatcher,
        &pool,
        || notifies += 1,
        || {
            first_check.get_or_insert(rsp_prod());
            max_in_flight = max_in_flight.max(32 - rsp_prod());
            if rsp_prod() >= 32 || std::time::Instant::now() > deadline {
                return false;
            }
            let mut p = libc::pollfd {
                fd: pool.wake_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll on the pool's valid eventfd for a bounded time.
            unsafe { libc::poll(&mut p, 1, 100) };
            true
        },
    )
    .unwrap();
    assert_eq!(rsp_prod(), 32);
    // At the serve loop's first pause, several requests were in flight, or (the pool
    // beat the check, as on a loaded CI machine) all 32 were done: either way the ring
    // was taken whole, not one request at a time.
    assert!(
        max_in_flight > 1 || first_check == Some(32),
        "requests were in flight together (max {max_in_flight}, first check {first_check:?})"
    );
    assert!((1..=32).contains(&notifies));
    let ids: BTreeSet<u64> = (0..32).map(|i| f.response(i).id).collect();
    assert_eq!(ids, (0..32).collect());
    assert!((0..32).all(|i| f.response(i).status == BLKIF_RSP_OKAY));
}
