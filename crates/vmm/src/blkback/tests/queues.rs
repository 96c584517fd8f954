//! Multi-queue: each queue's ring is served by its own ring loop and worker pool, at
//! the same time, against one disk (as `xenbus` connects one `Connection` per queue).

use std::time::{Duration, Instant};

use super::super::connection;
use super::super::pool::Pool;
use super::*;

/// Queue 1's one-page ring (queue 0 uses the fixture's [`RING_GREF`]).
const Q1_RING_GREF: u32 = 46;
const Q1_RING_PFN: u64 = 0x6a0;
const PER_QUEUE: u32 = 16;

/// Writes `PER_QUEUE` requests into the one-page ring at `pfn` (sectors from `first`,
/// each from data page `gref`) and publishes them.
fn fill_ring(f: &Front, pfn: u64, first: u64, gref: u32) {
    let base = pfn * PAGE_SIZE;
    for i in 0..PER_QUEUE {
        let req = rw(
            BLKIF_OP_WRITE,
            u64::from(i),
            first + u64::from(i) * 8,
            &[(gref, 0, 7)],
        );
        f.ram
            .write(base + 64 + u64::from(i) * 112, req.as_bytes())
            .unwrap();
    }
    f.ram.atomic_u32(base).unwrap().store(PER_QUEUE, SeqCst);
}

/// Serves the ring of `gref` (page `pfn`) with its own pool until every request of
/// [`fill_ring`] is answered (or a deadline passes).
fn serve_queue(f: &Front, gref: u32, pfn: u64, name: &str) -> u32 {
    let mut ring = BackRing::new(f.grants.map(DOM0, gref, false).unwrap());
    let store = Arc::new(io::Store::new(f.disk.clone(), false));
    let pool = Pool::new(name, 2, store, f.grants.clone()).unwrap();
    let mut dispatcher =
        Dispatcher::new(Limits::basic(DISK_SECTORS, true), f.grants.clone(), false);
    let rsp_prod = || f.ram.atomic_u32(pfn * PAGE_SIZE + 8).unwrap().load(SeqCst);
    let deadline = Instant::now() + Duration::from_secs(20);
    connection::serve(
        &mut ring,
        &mut dispatcher,
        &pool,
        || {},
        || {
            if rsp_prod() >= PER_QUEUE || Instant::now() > deadline {
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
    rsp_prod()
}

#[test]
fn each_queue_has_a_ring_served_at_the_same_time() {
    let f = setup("queues");
    grant(&f.ram, Q1_RING_GREF, Q1_RING_PFN, GTF_PERMIT_ACCESS);
    f.ram
        .atomic_u32(Q1_RING_PFN * PAGE_SIZE + 12)
        .unwrap()
        .store(1, SeqCst);
    // Queue 0 writes 0x11 to sectors 0..128, queue 1 writes 0x22 to 128..256.
    f.ram.write(DATA_PFN * PAGE_SIZE, &[0x11; 4096]).unwrap();
    f.ram
        .write((DATA_PFN + 1) * PAGE_SIZE, &[0x22; 4096])
        .unwrap();
    fill_ring(&f, RING_PFN, 0, DATA_GREF);
    fill_ring(&f, Q1_RING_PFN, 128, DATA_GREF + 1);
    let (a, b) = std::thread::scope(|s| {
        let q0 = s.spawn(|| serve_queue(&f, RING_GREF, RING_PFN, "q0"));
        let q1 = s.spawn(|| serve_queue(&f, Q1_RING_GREF, Q1_RING_PFN, "q1"));
        (q0.join().unwrap(), q1.join().unwrap())
    });
    assert_eq!((a, b), (PER_QUEUE, PER_QUEUE));
    for pfn in [RING_PFN, Q1_RING_PFN] {
        let mut ids = Vec::new();
        for i in 0..PER_QUEUE {
            let mut r = [0u8; 16];
            f.ram
                .read(pfn * PAGE_SIZE + 64 + u64::from(i) * 112, &mut r)
                .unwrap();
            let rsp = BlkifResponse::read_from_bytes(&r).unwrap();
            assert_eq!(rsp.status, BLKIF_RSP_OKAY);
            ids.push(rsp.id);
        }
        ids.sort_unstable();
        assert_eq!(ids, (0..u64::from(PER_QUEUE)).collect::<Vec<_>>());
    }
    let d = std::fs::read(f.disk.path()).unwrap();
    assert!(d[..128 * 512].iter().all(|b| *b == 0x11));
    assert!(d[128 * 512..].iter().all(|b| *b == 0x22));
}
