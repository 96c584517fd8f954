//! Quiescing a ring for a save and serving it again from the saved indices
//! (`connection::drain_in_flight`, `BackRing::resumed`, `SavedVbd::check`).

use super::super::connection;
use super::super::pool::Pool;
use super::super::saved::{SavedRing, SavedVbd};
use super::*;

fn write(id: u64, sector: u64) -> BlkifRequest {
    rw(
        BLKIF_OP_WRITE,
        id,
        sector,
        &[(DATA_GREF + (id % 8) as u32, 0, 7)],
    )
}

/// Requests handed to the workers when the ring stops are all answered and
/// published by the drain; a ring resumed from the indices answers what comes next.
#[test]
fn a_quiesced_ring_answers_everything_in_flight_and_resumes_where_it_was() {
    let mut f = setup_with("quiesce", Limits::basic(DISK_SECTORS, true), false);
    let mut ring = f.ring();
    for i in 0..32u64 {
        f.push(&write(i, i * 8));
    }
    let store = Arc::new(io::Store::new(f.disk.clone(), false));
    let pool = Pool::new("quiesce", 4, store, f.grants.clone()).unwrap();
    let mut dispatcher =
        Dispatcher::new(Limits::basic(DISK_SECTORS, true), f.grants.clone(), false);
    let mut notifies = 0;
    // Stop at the first idle moment: what the workers have not finished stays in
    // flight (as when a save stops the ring).
    connection::serve(
        &mut ring,
        &mut dispatcher,
        &pool,
        || notifies += 1,
        || false,
    )
    .unwrap();
    connection::drain_in_flight(&mut ring, &pool, || notifies += 1).unwrap();
    assert_eq!(ring.in_flight(), 0);
    assert_eq!(ring.indices(), (32, 32));
    assert_eq!(f.rsp_prod(), 32, "every response published");
    let ids: std::collections::BTreeSet<u64> = (0..32).map(|i| f.response(i).id).collect();
    assert_eq!(ids, (0..32).collect());
    assert!((0..32).all(|i| f.response(i).status == BLKIF_RSP_OKAY));
    drop(ring);
    drop(pool);

    // Resumed (as in the restored domain): the next requests are taken from 32 on.
    let page = f.grants.map(DOM0, RING_GREF, false).unwrap();
    let mut ring = BackRing::resumed(vec![page], 32, 32);
    for i in 32..36u64 {
        f.push(&write(i, i));
    }
    let (r, _) = f.serve(&mut ring);
    assert_eq!(r.unwrap(), 4);
    assert_eq!(f.rsp_prod(), 36);
    assert_eq!(
        (32..36).map(|i| f.response(i).id).collect::<Vec<_>>(),
        vec![32, 33, 34, 35]
    );
}

fn ring(refs: &[u32], cons: u32, prod: u32) -> SavedRing {
    SavedRing {
        ring_refs: refs.to_vec(),
        evtchn: 5,
        persistent: false,
        req_cons: cons,
        rsp_prod_pvt: prod,
        persistent_grants: Vec::new(),
    }
}

/// A saved vbd that no frontend could have negotiated, or that names another
/// disk, is refused.
#[test]
fn lying_saved_vbds_are_refused() {
    let vbd = |rings: Vec<SavedRing>| SavedVbd {
        rings,
        sectors: 256,
        writable: true,
    };
    assert!(vbd(vec![ring(&[8], 7, 7)]).check(4, 256, true).is_ok());
    assert!(vbd(vec![ring(&[8, 9], 40, 20)]).check(4, 256, true).is_ok());
    for (what, v) in [
        ("no queue", vbd(vec![])),
        (
            "five queues",
            vbd((0..5).map(|q| ring(&[q], 0, 0)).collect()),
        ),
        ("three pages", vbd(vec![ring(&[1, 2, 3], 0, 0)])),
        (
            "32 pages",
            vbd(vec![ring(&(0..32).collect::<Vec<_>>(), 0, 0)]),
        ),
        ("no page", vbd(vec![ring(&[], 0, 0)])),
        (
            "a shared page",
            vbd(vec![ring(&[1], 0, 0), ring(&[1], 0, 0)]),
        ),
        ("33 in flight on 32 slots", vbd(vec![ring(&[1], 33, 0)])),
        ("answers ahead of requests", vbd(vec![ring(&[1], 0, 1)])),
    ] {
        assert!(v.check(4, 256, true).is_err(), "{what}");
    }
    let ok = vbd(vec![ring(&[8], 0, 0)]);
    assert!(ok.check(4, 512, true).is_err(), "another disk size");
    assert!(ok.check(4, 256, false).is_err(), "a read-only disk");
    // Ring pages that are not granted to domain 0 cannot be mapped.
    let f = setup("quiesce-lie");
    assert!(f.grants.map(DOM0, 99, false).is_err());
}
