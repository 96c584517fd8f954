//! The legitimate sequences: after the attacks the MMU must still do its job.
//!
//! Scratch page 2 becomes a new L1 table (read-only mapping, pin), is linked into an
//! unused slot of the boot L2, maps scratch page 3 at a fresh address where the guest
//! writes and reads back (and sees the data through the page's boot mapping); then
//! everything is taken apart and page 2 is made writable again.

use rxen_guest::abi::mmu::*;

use crate::calls::*;
use crate::{report, Setup};

/// L2 slot (2 MiB each) far past the boot mappings.
const SLOT: u64 = 100;

pub fn new_l1_table(s: &Setup) {
    let (table_va, page_va) = (s.scratch_va(2), s.scratch_va(3));
    let (table, page) = (s.scratch_frame(2), s.scratch_frame(3));
    // SAFETY: scratch pages are mapped read-write and used by nothing else.
    unsafe {
        core::ptr::write_bytes(table_va as *mut u8, 0, 4096);
        core::ptr::write_volatile(page_va as *mut u64, 0x1111);
    }
    report(
        "legit-table-read-only",
        update_va_mapping(table_va, table << 12 | P | A, UVMF_INVLPG),
    );
    report("legit-pin-l1", ext(MMUEXT_PIN_L1_TABLE, table));
    let l2_entry = (s.l2 << 12) + SLOT * 8;
    report("legit-link-l1", update(l2_entry, table << 12 | LINK));
    report(
        "legit-map-page",
        update(table << 12, page << 12 | P | RW | A),
    );
    let new_va = SLOT << 21;
    // SAFETY: `new_va` now maps scratch page 3 read-write (the hypercalls above
    // succeeded, or the guest ends in a fault the test reports).
    let seen = unsafe {
        let before = core::ptr::read_volatile(new_va as *const u64);
        core::ptr::write_volatile(new_va as *mut u64, 0x2222);
        before
    };
    report("legit-read-through-new-mapping", i64::from(seen == 0x1111));
    // SAFETY: scratch page 3 is still mapped at its boot address.
    let direct = unsafe { core::ptr::read_volatile(page_va as *const u64) };
    report("legit-write-seen-directly", i64::from(direct == 0x2222));
    // While pinned and linked, the table must not become writable.
    report(
        "legit-table-rw-while-pinned",
        update_va_mapping(table_va, table << 12 | P | RW | A, UVMF_INVLPG),
    );
    report("legit-unmap-page", update(table << 12, 0));
    report("legit-unlink-l1", update(l2_entry, 0));
    report("legit-unpin-l1", ext(MMUEXT_UNPIN_TABLE, table));
    report(
        "legit-table-rw-again",
        update_va_mapping(table_va, table << 12 | P | RW | A, UVMF_INVLPG),
    );
    // SAFETY: page 2 is mapped read-write again (or the domain faults, which the test
    // reports as a crash).
    let ok = unsafe {
        core::ptr::write_volatile(table_va as *mut u64, 0x3333);
        core::ptr::read_volatile(table_va as *const u64) == 0x3333
    };
    report("legit-table-writable", i64::from(ok));
    report("legit-unpin-again", ext(MMUEXT_UNPIN_TABLE, table));
}

/// Scratch page 5 becomes a second L4 (the boot L4's guest slots copied, read-only,
/// pinned); the vCPU switches to it with `NEW_BASEPTR` (the VMM loads CR3), keeps
/// running and making hypercalls through it, switches back, and takes it apart.
pub fn second_l4(s: &Setup) {
    let (l4_va, l4) = (s.scratch_va(5), s.scratch_frame(5));
    let boot = s.l4 << 12;
    for i in (0..256).chain(272..512) {
        // SAFETY: the boot L4 is mapped read-only, scratch page 5 read-write.
        unsafe {
            let e = core::ptr::read_volatile((boot + i * 8) as *const u64);
            core::ptr::write_volatile((l4_va + i * 8) as *mut u64, e);
        }
    }
    report(
        "l4b-read-only",
        update_va_mapping(l4_va, l4 << 12 | P | A, UVMF_INVLPG),
    );
    report("l4b-pin", ext(MMUEXT_PIN_L4_TABLE, l4));
    report("l4b-new-baseptr", ext(MMUEXT_NEW_BASEPTR, l4));
    // Printing needs hypercalls through rxen's slot, which validation put there.
    // SAFETY: page 5 is mapped read-only.
    let rxen_slot = unsafe { core::ptr::read_volatile((l4_va + 257 * 8) as *const u64) };
    report("l4b-running-with-rxen-slot", i64::from(rxen_slot & P != 0));
    report("l4b-back-to-boot-l4", ext(MMUEXT_NEW_BASEPTR, s.l4));
    report("l4b-unpin", ext(MMUEXT_UNPIN_TABLE, l4));
    report(
        "l4b-writable-again",
        update_va_mapping(l4_va, l4 << 12 | P | RW | A, UVMF_INVLPG),
    );
}
