//! Block benchmark and checker over the SDK's blkfront (`rxen_guest::blkfront`), on
//! the first vbd of the domain. Command line (`key=value`):
//!
//! * `mode=bench` (default): sequential 1 MiB writes then reads (queue depth 1,
//!   indirect requests), then 4 KiB random reads and writes at queue depth 32 and 1;
//!   each phase runs `ms` milliseconds (default 2000) over the first `span_mib` MiB of
//!   the disk (default: all of it). Prints one line per figure,
//!   `blkbench: KEY=VALUE` (`seq_write_mbps`, `seq_read_mbps`, `rand4k_read_iops_qd32`,
//!   `rand4k_write_iops_qd32`, `rand4k_read_iops_qd1`, `rand4k_write_iops_qd1`,
//!   `lat4k_read_us_qd1`, `lat4k_write_us_qd1`), then `blkbench: done`.
//! * `mode=verify`: writes patterns (1 MiB indirect requests, 8-page direct requests,
//!   4 KiB random writes at queue depth 32), flushes, reads everything back and
//!   compares, discards a range and reads zeroes (when offered), checks that a read
//!   past the end fails; prints `blkbench: verify ok ...` or `blkbench: verify FAILED: why`.
//! * `mode=soak` (issue 11, save/restore with disks): rounds 1, 2, .. (`rounds`,
//!   default unbounded): writes `soak_blocks` 4 KiB blocks (default 128) at queue
//!   depth 32 with the round's pattern, reads them all back and compares, prints
//!   `blkbench: soak round=N ok` (or `blkbench: soak FAILED: why`) and sleeps
//!   `soak_ms` (default 20). A save and restore in the middle must lose no write
//!   that was acknowledged: a block read back with an older round's pattern fails.
//!
//! * `queues=N` (default 1): queues (rings) to use, capped by the backend's
//!   `multi-queue-max-queues`; requests go to them in turn. `lie_num_queues=N` writes N
//!   as `multi-queue-num-queues` whatever is used (the backend must refuse 0 or more
//!   than it offers: `blkbench: connect: ... backend state 5`).
//!
//! Both print the negotiated features first (`blkbench: sectors=.. persistent=..
//! indirect=.. discard=.. queues=..`) and power off at the end.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;

use rxen_guest::abi::blkif::BLKIF_RSP_OKAY;
use rxen_guest::abi::PAGE_SIZE;
use rxen_guest::blkfront::{BlkOp, Blkfront, Completion, Config};
use rxen_guest::grant::{GrantTable, FIRST_FREE_REF};
use rxen_guest::xenstore::Xenstore;
use rxen_guest::{println, start, time};

rxen_guest::entry!(main);

#[repr(C, align(4096))]
struct Page([u8; PAGE_SIZE as usize]);

/// The grant table's frame.
static mut TABLE: Page = Page([0; PAGE_SIZE as usize]);

const SEQ_PAGES: u32 = 256;
const QD: u32 = 32;

fn arg(key: &str, default: u64) -> u64 {
    start::cmdline_value(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small xorshift generator.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Keeps `qd` requests of `pages` pages in flight for `budget_ns` (or `max_ops`
/// requests), request i of a slot at `sector_of(n)`; returns (requests, ns, errors).
fn run_qd(
    bf: &mut Blkfront,
    op: BlkOp,
    qd: u32,
    pages: u32,
    budget_ns: u64,
    max_ops: u64,
    mut sector_of: impl FnMut(u64) -> u64,
) -> (u64, u64, u64) {
    let mut slot_of_id = [0u32; 32];
    let mut issued = 0u64;
    let mut done_ops = 0u64;
    let mut errors = 0u64;
    let t0 = time::now_ns();
    let deadline = t0 + budget_ns;
    for slot in 0..qd {
        if issued >= max_ops {
            break;
        }
        match bf.queue(op, sector_of(issued), slot * pages, pages) {
            Ok(id) => slot_of_id[id as usize % 32] = slot,
            Err(e) => {
                println!("blkbench: queue failed: {e:?}");
                return (0, 1, 1);
            }
        }
        issued += 1;
    }
    bf.push();
    let mut done: Vec<Completion> = Vec::with_capacity(32);
    while done_ops < issued {
        done.clear();
        bf.wait(&mut done);
        let now = time::now_ns();
        for c in &done {
            done_ops += 1;
            if c.status != BLKIF_RSP_OKAY {
                errors += 1;
            }
            if now < deadline && issued < max_ops {
                let slot = slot_of_id[c.id as usize % 32];
                if let Ok(id) = bf.queue(op, sector_of(issued), slot * pages, pages) {
                    slot_of_id[id as usize % 32] = slot;
                    issued += 1;
                }
            }
        }
        bf.push();
    }
    (done_ops, time::now_ns() - t0, errors)
}

fn bench(bf: &mut Blkfront, span_sectors: u64) {
    let ms = arg("ms", 2000);
    let budget = ms * 1_000_000;
    let seq_sectors = u64::from(SEQ_PAGES) * 8;
    let chunks = (span_sectors / seq_sectors).max(1);
    for (name, op) in [
        ("seq_write_mbps", BlkOp::Write),
        ("seq_read_mbps", BlkOp::Read),
    ] {
        let (n, ns, err) = run_qd(bf, op, 1, SEQ_PAGES, budget, u64::MAX, |i| {
            (i % chunks) * seq_sectors
        });
        // Bytes per ns, times 1000: MB/s.
        let mbps = n * u64::from(SEQ_PAGES) * PAGE_SIZE * 1000 / ns.max(1);
        println!("blkbench: {name}={mbps} errors={err}");
    }
    let blocks = (span_sectors / 8).max(1);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (qd, name_r, name_w) in [
        (QD, "rand4k_read_iops_qd32", "rand4k_write_iops_qd32"),
        (1, "rand4k_read_iops_qd1", "rand4k_write_iops_qd1"),
    ] {
        for (name, op) in [(name_r, BlkOp::Read), (name_w, BlkOp::Write)] {
            let (n, ns, err) = run_qd(bf, op, qd, 1, budget, u64::MAX, |_| {
                (rng.next() % blocks) * 8
            });
            let iops = n * 1_000_000_000 / ns.max(1);
            println!("blkbench: {name}={iops} errors={err}");
            if qd == 1 {
                let lat_ns = ns / n.max(1);
                let key = if op == BlkOp::Read {
                    "lat4k_read_us_qd1"
                } else {
                    "lat4k_write_us_qd1"
                };
                println!("blkbench: {key}={}.{:03}", lat_ns / 1000, lat_ns % 1000);
            }
        }
    }
    println!("blkbench: done");
}

/// The 64-bit word at byte offset `off` of the disk after a write of generation `gen`.
fn pattern(off: u64, gen: u64) -> u64 {
    (off / 8).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (gen << 56) ^ 0x5a5a
}

fn fill(buf: &mut [u8], disk_off: u64, gen: u64) {
    for (i, w) in buf.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&pattern(disk_off + i as u64 * 8, gen).to_le_bytes());
    }
}

fn check(buf: &[u8], disk_off: u64, gen: u64) -> bool {
    buf.chunks_exact(8).enumerate().all(|(i, w)| {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        u64::from_le_bytes(b) == pattern(disk_off + i as u64 * 8, gen)
    })
}

fn verify(bf: &mut Blkfront, span_sectors: u64) -> Result<u64, &'static str> {
    let page = PAGE_SIZE;
    let mib_sectors = u64::from(SEQ_PAGES) * 8;
    let chunks = (span_sectors / mib_sectors).clamp(1, 8);
    let blocks = chunks * u64::from(SEQ_PAGES);
    // Generation of each 4 KiB block: 1 after the sequential pass, 2 once rewritten.
    let mut gens = vec![1u64; blocks as usize];
    let mut checked = 0u64;
    for c in 0..chunks {
        let at = c * mib_sectors * 512;
        fill(bf.buffer(0, SEQ_PAGES), at, 1);
        if bf.run(BlkOp::Write, c * mib_sectors, 0, SEQ_PAGES) != Ok(BLKIF_RSP_OKAY) {
            return Err("1 MiB indirect write");
        }
    }
    // 8-page direct writes (generation 2) on the first 32 KiB of each MiB.
    for c in 0..chunks {
        let b0 = c * u64::from(SEQ_PAGES);
        fill(bf.buffer(0, 8), b0 * page, 2);
        if bf.run(BlkOp::Write, b0 * 8, 0, 8) != Ok(BLKIF_RSP_OKAY) {
            return Err("8-page write");
        }
        for b in b0..b0 + 8 {
            gens[b as usize] = 2;
        }
    }
    // 4 KiB random writes at queue depth 32 (generation 3), distinct blocks per batch.
    let mut rng = Rng(42);
    for _round in 0..8 {
        let mut targets = Vec::with_capacity(QD as usize);
        while targets.len() < QD as usize {
            let b = rng.next() % blocks;
            if !targets.contains(&b) {
                targets.push(b);
            }
        }
        for (slot, b) in targets.iter().enumerate() {
            fill(bf.buffer(slot as u32, 1), b * page, 3);
        }
        let t = targets.clone();
        let (n, _, err) = run_qd(bf, BlkOp::Write, QD, 1, u64::MAX, u64::from(QD), |i| {
            t[i as usize] * 8
        });
        if n != u64::from(QD) || err != 0 {
            return Err("4 KiB writes at queue depth 32");
        }
        for b in targets {
            gens[b as usize] = 3;
        }
    }
    if bf.info.flush && bf.run(BlkOp::Flush, 0, 0, 0) != Ok(BLKIF_RSP_OKAY) {
        return Err("flush");
    }
    // Read back: 1 MiB indirect reads.
    for c in 0..chunks {
        if bf.run(BlkOp::Read, c * mib_sectors, 0, SEQ_PAGES) != Ok(BLKIF_RSP_OKAY) {
            return Err("1 MiB indirect read");
        }
        for p in 0..SEQ_PAGES {
            let b = c * u64::from(SEQ_PAGES) + u64::from(p);
            let buf = bf.buffer(p, 1);
            if !check(buf, b * page, gens[b as usize]) {
                println!(
                    "blkbench: block {b} (generation {}) differs",
                    gens[b as usize]
                );
                return Err("data read back differs");
            }
            checked += page;
        }
    }
    // And 4 KiB reads at queue depth 32 of blocks 0..32, each into its own page.
    for p in 0..QD {
        bf.buffer(p, 1).fill(0xee);
    }
    let (n, _, err) = run_qd(bf, BlkOp::Read, QD, 1, u64::MAX, u64::from(QD), |i| i * 8);
    if n != u64::from(QD) || err != 0 {
        return Err("4 KiB reads at queue depth 32");
    }
    for p in 0..QD {
        let b = u64::from(p);
        if !check(bf.buffer(p, 1), b * page, gens[b as usize]) {
            return Err("4 KiB read back differs");
        }
        checked += page;
    }
    if bf.info.discard {
        if bf.run(BlkOp::Discard, 0, 0, 16) != Ok(BLKIF_RSP_OKAY) {
            return Err("discard");
        }
        bf.buffer(0, 16).fill(0xee);
        if bf.run(BlkOp::Read, 0, 0, 16) != Ok(BLKIF_RSP_OKAY) {
            return Err("read after discard");
        }
        if bf.buffer(0, 16).iter().any(|b| *b != 0) {
            return Err("discarded range is not zero");
        }
    }
    // A read past the end of the disk is refused, and the device still works.
    match bf.run(BlkOp::Read, bf.info.sectors, 0, 1) {
        Ok(s) if s != BLKIF_RSP_OKAY => {}
        _ => return Err("a read past the end did not fail"),
    }
    if bf.run(BlkOp::Read, 8, 0, 1) != Ok(BLKIF_RSP_OKAY) {
        return Err("read after a refused request");
    }
    Ok(checked)
}

/// Writes, then reads back and checks, blocks `0..blocks` with the pattern of `gen`
/// at queue depth 32.
fn soak_round(bf: &mut Blkfront, blocks: u64, gen: u64) -> Result<(), &'static str> {
    let page = PAGE_SIZE;
    for batch in 0..blocks.div_ceil(u64::from(QD)) {
        let first = batch * u64::from(QD);
        let n = (blocks - first).min(u64::from(QD));
        for slot in 0..n {
            fill(bf.buffer(slot as u32, 1), (first + slot) * page, gen);
        }
        let (done, _, err) = run_qd(bf, BlkOp::Write, n as u32, 1, u64::MAX, n, |i| {
            (first + i) * 8
        });
        if done != n || err != 0 {
            return Err("a write failed");
        }
    }
    for batch in 0..blocks.div_ceil(u64::from(QD)) {
        let first = batch * u64::from(QD);
        let n = (blocks - first).min(u64::from(QD));
        for slot in 0..n {
            bf.buffer(slot as u32, 1).fill(0xee);
        }
        let (done, _, err) = run_qd(bf, BlkOp::Read, n as u32, 1, u64::MAX, n, |i| {
            (first + i) * 8
        });
        if done != n || err != 0 {
            return Err("a read failed");
        }
        for slot in 0..n {
            let b = first + slot;
            if !check(bf.buffer(slot as u32, 1), b * page, gen) {
                println!("blkbench: soak block {b} does not hold round {gen}'s data");
                return Err("an acknowledged write was lost");
            }
        }
    }
    Ok(())
}

fn soak(bf: &mut Blkfront) {
    let blocks = arg("soak_blocks", 128).clamp(1, bf.info.sectors / 8);
    let rounds = arg("rounds", u64::MAX);
    let pause = arg("soak_ms", 20);
    for round in 1..=rounds {
        match soak_round(bf, blocks, round) {
            Ok(()) => println!("blkbench: soak round={round} ok"),
            Err(why) => {
                println!("blkbench: soak FAILED: round {round}: {why}");
                return;
            }
        }
        time::sleep_ms(pause);
    }
}

fn main() {
    // SAFETY: TABLE is a page of this image used for nothing else.
    let table = match unsafe { GrantTable::setup(core::ptr::addr_of!(TABLE) as u64 / PAGE_SIZE) } {
        Ok(t) => t,
        Err(e) => {
            println!("blkbench: grant table: {e:?}");
            return;
        }
    };
    let mut xs = Xenstore::new();
    let Some(&devid) = Blkfront::devices(&mut xs).first() else {
        println!("blkbench: no vbd");
        return;
    };
    let cfg = Config {
        pool_pages: SEQ_PAGES,
        max_request_pages: SEQ_PAGES,
        queues: arg("queues", 1) as u32,
        num_queues_lie: start::cmdline_value("lie_num_queues").and_then(|v| v.parse().ok()),
    };
    let mut bf = match Blkfront::connect(&mut xs, &table, FIRST_FREE_REF, devid, cfg) {
        Ok(b) => b,
        Err(e) => {
            println!("blkbench: connect: {e:?}");
            return;
        }
    };
    let i = bf.info;
    println!(
        "blkbench: devid={devid} sectors={} readonly={} persistent={} indirect={} max_request_pages={} flush={} discard={} queues={}",
        i.sectors,
        i.readonly as u8,
        i.persistent as u8,
        i.max_indirect_segments,
        bf.max_request_pages(),
        i.flush as u8,
        i.discard as u8,
        i.queues
    );
    let span = match arg("span_mib", 0) {
        0 => i.sectors,
        m => (m * 2048).min(i.sectors),
    };
    if start::cmdline_value("mode") == Some("soak") {
        soak(&mut bf);
    } else if start::cmdline_value("mode") == Some("verify") {
        match verify(&mut bf, span) {
            Ok(bytes) => println!("blkbench: verify ok bytes={bytes}"),
            Err(why) => println!("blkbench: verify FAILED: {why}"),
        }
    } else {
        bench(&mut bf, span);
    }
}
