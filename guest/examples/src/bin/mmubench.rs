//! `mmubench`: the cost of the direct-paging MMU's `mmu_update`, per entry, against a
//! hypercall that does nothing (`xen_version(0)`), both in TSC cycles measured in the
//! same run. A Xen PV kernel (`xen_pv_kernel!`).
//!
//! Setup: a free page becomes an L1 table (read-only mapping, pinned, linked into an
//! unused L2 slot). Each round is one `mmu_update` of `batch` entries (cmdline
//! `batch=`, default 256); entry `i` maps free page `1 + 2 * (i % 40) + phase`, the
//! phase flipping every round: every entry takes access away from a mapped frame, and
//! the old frames are 40 separate ones (no two adjacent), so the VMM validates each
//! entry, rewrites it and invalidates 40 ranges per batch — the worst case of its
//! invalidation coalescing, as a guest remapping scattered memory makes it do. Prints `mmubench: batch=N rounds=R
//! hypercall_cycles=C update_cycles=U entry_cycles=E` (medians of the rounds).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use rxen_guest::abi::hypercall as nr;
use rxen_guest::abi::mmu::{MmuUpdate, MmuextOp, MMUEXT_PIN_L1_TABLE, UVMF_INVLPG};
use rxen_guest::abi::DOMID_SELF;
use rxen_guest::hypercall::{hypercall3, hypercall5};
use rxen_guest::{println, pv, start};

rxen_guest::entry!(main);

const P: u64 = 1;
const RW: u64 = 2;
const U: u64 = 4;
const A: u64 = 0x20;
const D: u64 = 0x40;
/// An unused L2 slot (2 MiB each) past the boot mappings.
const SLOT: u64 = 100;

fn tsc() -> u64 {
    // SAFETY: rdtsc is allowed at CPL 3 and has no memory effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn update(reqs: &[MmuUpdate]) -> i64 {
    // SAFETY: the array lives on our heap for the call; the VMM checks everything.
    unsafe {
        hypercall5(
            nr::MMU_UPDATE,
            reqs.as_ptr() as u64,
            reqs.len() as u64,
            0,
            u64::from(DOMID_SELF),
            0,
        )
    }
}

fn ext(cmd: u32, arg1: u64) -> i64 {
    let op = MmuextOp {
        cmd,
        arg1,
        ..Default::default()
    };
    // SAFETY: as for `update`.
    unsafe {
        hypercall5(
            nr::MMUEXT_OP,
            &op as *const MmuextOp as u64,
            1,
            0,
            u64::from(DOMID_SELF),
            0,
        )
    }
}

fn main() {
    let batch: u64 = start::cmdline_value("batch")
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
        .clamp(1, 512);
    let rounds: usize = start::cmdline_value("rounds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let si = start::start_info();
    let (free, count) = pv::free_frames();
    assert!(count >= 82, "needs 82 free pages");
    let table_va = free;
    let page = |i: u64, phase: u64| free + (1 + 2 * (i % 40) + phase) * 4096;
    let l2 = (si.pt_base >> 12) + 2;
    // SAFETY: free pages are mapped read-write and used by nothing else.
    unsafe { core::ptr::write_bytes(table_va as *mut u8, 0, 4096) };
    // SAFETY: remapping our own free page read-only (the VMM validates it).
    let rc = unsafe {
        hypercall3(
            nr::UPDATE_VA_MAPPING,
            table_va,
            table_va | P | A,
            UVMF_INVLPG,
        )
    };
    assert_eq!(rc, 0, "table read-only");
    assert_eq!(ext(MMUEXT_PIN_L1_TABLE, table_va >> 12), 0, "pin");
    let link = MmuUpdate {
        ptr: (l2 << 12) + SLOT * 8,
        val: table_va | P | RW | U | A | D,
    };
    assert_eq!(update(&[link]), 0, "link");
    let mut reqs: Vec<MmuUpdate> = (0..batch)
        .map(|i| MmuUpdate {
            ptr: table_va + i * 8,
            val: page(i, 0) | P | RW | A,
        })
        .collect();
    assert_eq!(update(&reqs), 0, "first mapping");
    let (mut nops, mut updates) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let t0 = tsc();
        // SAFETY: xen_version(XENVER_version) has no pointer arguments.
        let v = unsafe { hypercall3(nr::XEN_VERSION, 0, 0, 0) };
        let t1 = tsc();
        assert!(v > 0);
        let phase = u64::from(round.is_multiple_of(2));
        for (i, r) in reqs.iter_mut().enumerate() {
            r.val = page(i as u64, phase) | P | RW | A;
        }
        let t2 = tsc();
        let rc = update(&reqs);
        let t3 = tsc();
        assert_eq!(rc, 0, "round {round}");
        nops.push(t1 - t0);
        updates.push(t3 - t2);
    }
    // The mappings work: the last entry maps the page its last round chose.
    let last = page(batch - 1, u64::from(!rounds.is_multiple_of(2)));
    // SAFETY: `last` is our own free page, mapped read-write at its boot address.
    unsafe { core::ptr::write_volatile(last as *mut u64, 0x5a5a) };
    // SAFETY: L2 slot SLOT maps our table, whose last entry maps `last` (read-write).
    let seen =
        unsafe { core::ptr::read_volatile(((SLOT << 21) + 4096 * (batch - 1)) as *const u64) };
    assert_eq!(seen, 0x5a5a, "the new mapping reaches the page");
    let (h, u) = (median(nops), median(updates));
    let entry = u.saturating_sub(h) / batch;
    println!(
        "mmubench: batch={batch} rounds={rounds} hypercall_cycles={h} update_cycles={u} entry_cycles={entry}"
    );
}
