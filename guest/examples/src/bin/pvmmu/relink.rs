//! Non-leaf entry changes as Linux makes them (`munmap` and `free_pgtables`, then the
//! freed table frame reused): the guest must see its current tables, never a
//! translation cached for a table an entry no longer points at.
//!
//! L1 table T maps data page A under L2 slot `OLD`; the guest reads A there. Then, as
//! Linux does: the slot is cleared by `mmu_update`, T is unpinned and made writable,
//! the guest rewrites T itself (now mapping page C), pins it again and links it under
//! slot `NEW`; slot `OLD` gets another L1 table T2 mapping page B. Reading through
//! `OLD` must give B and through `NEW` C, in any order and again. The same follows one
//! level up: an L2 table under an L3 slot, unlinked and replaced.

use rxen_guest::abi::mmu::*;

use crate::calls::*;
use crate::{report, Setup};

/// L2 slots (2 MiB each) past the boot mappings and the other cases' slot (100).
const OLD: u64 = 101;
const NEW: u64 = 102;
/// L3 slots (1 GiB each) past the boot mappings.
const L3_OLD: u64 = 5;
const L3_NEW: u64 = 6;

/// Distinct contents of the data pages.
const MARK_A: u64 = 0xaaaa_0001;
const MARK_B: u64 = 0xbbbb_0002;
const MARK_C: u64 = 0xcccc_0003;

fn write(va: u64, v: u64) {
    // SAFETY: only called on scratch pages mapped read-write and used by nothing else.
    unsafe { core::ptr::write_volatile(va as *mut u64, v) }
}

fn read(va: u64) -> u64 {
    // SAFETY: only called on addresses the case mapped (or the domain faults, which
    // the test reports as a crash).
    unsafe { core::ptr::read_volatile(va as *const u64) }
}

/// Zeroes scratch page `i`, writes `entries` into it, makes it read-only and pins it as
/// a table of `pin` level. Returns the sum of the return codes (0 when all succeeded).
fn make_table(s: &Setup, i: u64, entries: &[(u64, u64)], pin: u32) -> i64 {
    let va = s.scratch_va(i);
    // SAFETY: scratch page `i` is mapped read-write and used by nothing else.
    unsafe { core::ptr::write_bytes(va as *mut u8, 0, 4096) };
    for &(idx, e) in entries {
        write(va + idx * 8, e);
    }
    update_va_mapping(va, s.scratch_frame(i) << 12 | P | A, UVMF_INVLPG).abs()
        + ext(pin, s.scratch_frame(i)).abs()
}

/// Unpins scratch page `i` and makes it writable again.
fn drop_table(s: &Setup, i: u64) -> i64 {
    ext(MMUEXT_UNPIN_TABLE, s.scratch_frame(i)).abs()
        + update_va_mapping(
            s.scratch_va(i),
            s.scratch_frame(i) << 12 | P | RW | A,
            UVMF_INVLPG,
        )
        .abs()
}

pub fn l2_relink(s: &Setup) {
    // Scratch pages: 6 = T, 7 = A, 8 = B, 9 = C, 10 = T2.
    let page = |i: u64| s.scratch_frame(i) << 12 | P | RW | A;
    write(s.scratch_va(7), MARK_A);
    write(s.scratch_va(8), MARK_B);
    write(s.scratch_va(9), MARK_C);
    let l2 = s.l2 << 12;
    let (old_va, new_va) = (OLD << 21, NEW << 21);
    let mut rc = make_table(s, 6, &[(0, page(7))], MMUEXT_PIN_L1_TABLE);
    rc += update(l2 + OLD * 8, s.scratch_frame(6) << 12 | LINK).abs();
    report("relink-l2-first-sees-a", i64::from(read(old_va) == MARK_A));
    // munmap: the L2 entry cleared, the L1 table released and reused.
    rc += update(l2 + OLD * 8, 0).abs();
    rc += drop_table(s, 6);
    rc += make_table(s, 6, &[(0, page(9))], MMUEXT_PIN_L1_TABLE);
    rc += update(l2 + NEW * 8, s.scratch_frame(6) << 12 | LINK).abs();
    rc += make_table(s, 10, &[(0, page(8))], MMUEXT_PIN_L1_TABLE);
    rc += update(l2 + OLD * 8, s.scratch_frame(10) << 12 | LINK).abs();
    report("relink-l2-setup", rc);
    let first_old = read(old_va);
    let first_new = read(new_va);
    let again_old = read(old_va);
    report("relink-l2-old-slot-sees-b", i64::from(first_old == MARK_B));
    report(
        "relink-l2-reused-table-sees-c",
        i64::from(first_new == MARK_C),
    );
    report("relink-l2-old-slot-again-b", i64::from(again_old == MARK_B));
    let mut rc = update(l2 + OLD * 8, 0).abs() + update(l2 + NEW * 8, 0).abs();
    rc += drop_table(s, 6) + drop_table(s, 10);
    report("relink-l2-teardown", rc);
}

pub fn l3_relink(s: &Setup) {
    // Scratch pages: 11 = L2 table U, 12 = L1 under U, 13 = L2 table U2, 14 = L1 under
    // U2, and the data pages A, B, C of `l2_relink`.
    let page = |i: u64| s.scratch_frame(i) << 12 | P | RW | A;
    let link = |i: u64| s.scratch_frame(i) << 12 | LINK;
    let l3 = s.l3 << 12;
    let (old_va, new_va) = (L3_OLD << 30, L3_NEW << 30);
    let mut rc = make_table(s, 12, &[(0, page(7))], MMUEXT_PIN_L1_TABLE);
    rc += make_table(s, 11, &[(0, link(12))], MMUEXT_PIN_L2_TABLE);
    rc += update(l3 + L3_OLD * 8, link(11)).abs();
    report("relink-l3-first-sees-a", i64::from(read(old_va) == MARK_A));
    rc += update(l3 + L3_OLD * 8, 0).abs();
    rc += drop_table(s, 11) + drop_table(s, 12);
    // The old L2 frame reused as an L2 (under the new slot), its L1 frame reused too.
    rc += make_table(s, 12, &[(0, page(9))], MMUEXT_PIN_L1_TABLE);
    rc += make_table(s, 11, &[(0, link(12))], MMUEXT_PIN_L2_TABLE);
    rc += update(l3 + L3_NEW * 8, link(11)).abs();
    rc += make_table(s, 14, &[(0, page(8))], MMUEXT_PIN_L1_TABLE);
    rc += make_table(s, 13, &[(0, link(14))], MMUEXT_PIN_L2_TABLE);
    rc += update(l3 + L3_OLD * 8, link(13)).abs();
    report("relink-l3-setup", rc);
    let first_old = read(old_va);
    let first_new = read(new_va);
    let again_old = read(old_va);
    report("relink-l3-old-slot-sees-b", i64::from(first_old == MARK_B));
    report(
        "relink-l3-reused-table-sees-c",
        i64::from(first_new == MARK_C),
    );
    report("relink-l3-old-slot-again-b", i64::from(again_old == MARK_B));
    let mut rc = update(l3 + L3_OLD * 8, 0).abs() + update(l3 + L3_NEW * 8, 0).abs();
    rc += drop_table(s, 11) + drop_table(s, 13) + drop_table(s, 12) + drop_table(s, 14);
    report("relink-l3-teardown", rc);
}

/// As [`l2_relink`], but the reused table's new contents are written by the hypervisor
/// (`MMUEXT_CLEAR_PAGE`, then an ordinary `mmu_update` write while it is no table),
/// which the host's shadow MMU cannot see, and the guest never writes the frame.
pub fn l2_relink_hypervisor_written(s: &Setup) {
    // Scratch pages: 15 = T, 16 = T2; data pages A, B, C of `l2_relink`.
    const OLD2: u64 = 103;
    const NEW2: u64 = 104;
    let page = |i: u64| s.scratch_frame(i) << 12 | P | RW | A;
    let l2 = s.l2 << 12;
    let t = s.scratch_frame(15);
    let mut rc = make_table(s, 15, &[(0, page(7))], MMUEXT_PIN_L1_TABLE);
    rc += update(l2 + OLD2 * 8, t << 12 | LINK).abs();
    report(
        "relink-hv-first-sees-a",
        i64::from(read(OLD2 << 21) == MARK_A),
    );
    rc += update(l2 + OLD2 * 8, 0).abs();
    rc += ext(MMUEXT_UNPIN_TABLE, t).abs();
    rc += ext(MMUEXT_CLEAR_PAGE, t).abs();
    rc += update(t << 12, page(9)).abs();
    rc += ext(MMUEXT_PIN_L1_TABLE, t).abs();
    rc += update(l2 + NEW2 * 8, t << 12 | LINK).abs();
    rc += make_table(s, 16, &[(0, page(8))], MMUEXT_PIN_L1_TABLE);
    rc += update(l2 + OLD2 * 8, s.scratch_frame(16) << 12 | LINK).abs();
    report("relink-hv-setup", rc);
    let first_old = read(OLD2 << 21);
    let first_new = read(NEW2 << 21);
    let again_old = read(OLD2 << 21);
    report("relink-hv-old-slot-sees-b", i64::from(first_old == MARK_B));
    report(
        "relink-hv-reused-table-sees-c",
        i64::from(first_new == MARK_C),
    );
    report("relink-hv-old-slot-again-b", i64::from(again_old == MARK_B));
    let mut rc = update(l2 + OLD2 * 8, 0).abs() + update(l2 + NEW2 * 8, 0).abs();
    rc += drop_table(s, 15) + drop_table(s, 16);
    report("relink-hv-teardown", rc);
}
