//! The attacks: each is one hypercall the MMU must refuse without changing anything.

use rxen_guest::abi::hypercall as nr;
use rxen_guest::abi::mmu::*;
use rxen_guest::abi::DOMID_SELF;
use rxen_guest::hypercall::{hypercall3, xen_version};

use crate::calls::*;
use crate::{report, Setup};

/// A domain that is not this one (`xen-vmm run` domains are small numbers).
const OTHER_DOMAIN: u64 = 12345;
/// `DOMID_IO`.
const DOMID_IO: u64 = 0x7ff1;
/// rxen's `syscall` stub in its reserved L4 slot 257 (read-only for the guest).
const RXEN_STUB_VA: u64 = 0xffff_8080_0000_1000;
/// Mapped by nobody (the boot tables cover only the first few MiB).
const UNMAPPED: u64 = 0x4000_0000_0000;
const NON_CANONICAL: u64 = 0x8000_0000_0000;
/// A frame far beyond any RAM.
const NOT_RAM_FRAME: u64 = 1 << 30;

/// update_va_mapping of a scratch page to frames it must not reach.
pub fn mappings(s: &Setup) {
    let victim = s.scratch_va(0);
    let map = |frame: u64, flags: u64| update_va_mapping(victim, frame << 12 | flags, UVMF_INVLPG);
    report("map-rxen-stub-ro", map(s.rxen_stub_frame(), P | A));
    report("map-rxen-tss-rw", map(s.nr_pages + 2, P | RW | A));
    report("map-not-ram", map(NOT_RAM_FRAME, P | A));
    report("map-own-l4-rw", map(s.l4, P | RW | A));
    report("map-own-l1-rw", map(s.first_l1, P | RW | A));
    // The boot L1 maps itself read-only: making that mapping writable.
    let l1_va = s.first_l1 << 12;
    report(
        "remap-l1-self-rw",
        update_va_mapping(l1_va, s.first_l1 << 12 | P | RW | A, UVMF_INVLPG),
    );
    report("map-pwt-pcd", map(s.scratch_frame(1), P | RW | A | 0x18));
    // What the guest may map writable: its shared_info (the first frame after its
    // RAM) and the grant frame `setup_table` gives (checked in grants.rs); then the
    // victim page is restored.
    report("map-shared-info-rw", map(s.nr_pages, P | RW | A));
    report("restore-victim", map(s.scratch_frame(0), P | RW | A));
    report(
        "uvm-hypervisor-range",
        update_va_mapping(HYPERVISOR_VIRT_START, s.scratch_frame(1) << 12 | P | A, 0),
    );
    report(
        "uvm-rxen-stub-va",
        update_va_mapping(RXEN_STUB_VA, s.scratch_frame(1) << 12 | P | RW | A, 0),
    );
    report(
        "uvm-non-canonical",
        update_va_mapping(NON_CANONICAL, s.scratch_frame(1) << 12 | P | A, 0),
    );
    report(
        "uvm-no-l1",
        update_va_mapping(UNMAPPED, s.scratch_frame(1) << 12 | P | A, 0),
    );
}

/// Page-table entries the MMU must refuse.
pub fn table_entries(s: &Setup) {
    let l4_slot = |slot: u64| (s.l4 << 12) + slot * 8;
    report("l4-xen-slot-256", update(l4_slot(256), s.l3 << 12 | LINK));
    report("l4-xen-slot-260", update(l4_slot(260), s.l3 << 12 | LINK));
    report("l4-xen-slot-271", update(l4_slot(271), s.l3 << 12 | LINK));
    report("l4-self-map", update(l4_slot(300), s.l4 << 12 | P | U | A));
    report(
        "l2-linear",
        update((s.l2 << 12) + 400 * 8, s.l2 << 12 | P | U | A),
    );
    report(
        "l2-points-at-l3",
        update((s.l2 << 12) + 400 * 8, s.l3 << 12 | LINK),
    );
    report(
        "l2-points-at-writable",
        update((s.l2 << 12) + 400 * 8, s.scratch_frame(0) << 12 | LINK),
    );
    report(
        "l3-points-at-rxen",
        update((s.l3 << 12) + 100 * 8, (s.nr_pages + 5) << 12 | LINK),
    );
    report(
        "l2-superpage",
        update(
            (s.l2 << 12) + 400 * 8,
            s.scratch_frame(0) << 12 | LINK | 0x80,
        ),
    );
    report(
        "l1-entry-maps-l2-rw",
        update(s.first_l1 << 12, s.l2 << 12 | P | RW | A),
    );
}

/// Pins, unpins and base pointers.
pub fn pins_and_bases(s: &Setup) {
    let scratch = s.scratch_frame(0);
    report("pin-writable-l1", ext(MMUEXT_PIN_L1_TABLE, scratch));
    report("pin-l3-as-l2", ext(MMUEXT_PIN_L2_TABLE, s.l3));
    report("pin-l4-twice", ext(MMUEXT_PIN_L4_TABLE, s.l4));
    report(
        "pin-rxen-frame",
        ext(MMUEXT_PIN_L1_TABLE, s.rxen_stub_frame()),
    );
    report("unpin-never-pinned", ext(MMUEXT_UNPIN_TABLE, scratch));
    report("unpin-boot-l3", ext(MMUEXT_UNPIN_TABLE, s.l3));
    report("new-baseptr-writable", ext(MMUEXT_NEW_BASEPTR, scratch));
    report("new-baseptr-l3", ext(MMUEXT_NEW_BASEPTR, s.l3));
    report("new-baseptr-rxen", ext(MMUEXT_NEW_BASEPTR, s.nr_pages + 5));
    report(
        "new-baseptr-not-ram",
        ext(MMUEXT_NEW_BASEPTR, NOT_RAM_FRAME),
    );
    report("clear-page-l2", ext(MMUEXT_CLEAR_PAGE, s.l2));
    report(
        "clear-page-rxen-stub",
        ext(MMUEXT_CLEAR_PAGE, s.rxen_stub_frame()),
    );
    report("copy-page-into-l4", ext2(MMUEXT_COPY_PAGE, s.l4, scratch));
    report(
        "copy-page-into-rxen-stub",
        ext2(MMUEXT_COPY_PAGE, s.rxen_stub_frame(), scratch),
    );
    report(
        "set-ldt-too-many",
        ext2(MMUEXT_SET_LDT, s.scratch_va(0), 8193),
    );
    report(
        "set-ldt-misaligned",
        ext2(MMUEXT_SET_LDT, s.scratch_va(0) + 8, 1),
    );
    report(
        "set-ldt-hypervisor",
        ext2(MMUEXT_SET_LDT, HYPERVISOR_VIRT_START, 1),
    );
    report("mark-super", ext(MMUEXT_MARK_SUPER, scratch));
    report("unknown-ext-cmd", ext(99, scratch));
}

/// Bad `mmu_update` commands and targets, foreign domains.
pub fn commands(s: &Setup) {
    let scratch = s.scratch_frame(0);
    report("update-outside-ram", update(1 << 40, 0));
    report("update-rxen-stub", update(s.rxen_stub_frame() << 12, 0));
    report(
        "update-rxen-stub-preserve-ad",
        update(s.rxen_stub_frame() << 12 | MMU_PT_UPDATE_PRESERVE_AD, 0),
    );
    // SAFETY: vm_assist takes no pointer.
    let rc = unsafe {
        hypercall3(
            nr::VM_ASSIST,
            0,
            u64::from(VMASST_TYPE_WRITABLE_PAGETABLES),
            0,
        )
    };
    report("vm-assist-writable-pagetables", rc);
    for cmd in [4u64, 7] {
        let rc = update((scratch << 12) | cmd, 0);
        match cmd {
            4 => report("update-bad-cmd-4", rc),
            _ => report("update-bad-cmd-7", rc),
        }
    }
    report(
        "machphys-rxen-frame",
        update(s.rxen_stub_frame() << 12 | MMU_MACHPHYS_UPDATE, 0),
    );
    report(
        "machphys-outside-ram",
        update(1 << 40 | MMU_MACHPHYS_UPDATE, 0),
    );
    let req = MmuUpdate {
        ptr: scratch << 12 | MMU_MACHPHYS_UPDATE,
        val: scratch,
    };
    let op = MmuextOp {
        cmd: MMUEXT_TLB_FLUSH_LOCAL,
        pad: 0,
        arg1: 0,
        arg2: 0,
    };
    let reqp = &req as *const _ as u64;
    let opp = &op as *const _ as u64;
    report("update-foreign", mmu_update_raw(reqp, 1, 0, OTHER_DOMAIN));
    report("update-domid-io", mmu_update_raw(reqp, 1, 0, DOMID_IO));
    report(
        "update-foreign-high",
        mmu_update_raw(reqp, 1, 0, 1 << 16 | u64::from(DOMID_SELF)),
    );
    report("ext-foreign", mmuext_raw(opp, 1, 0, OTHER_DOMAIN));
    report(
        "machphys-own-frame",
        mmu_update_raw(reqp, 1, 0, u64::from(DOMID_SELF)),
    );
}

/// Hypercall arrays and out-pointers the VMM must not follow.
pub fn pointers(s: &Setup) {
    let scratch = s.scratch_frame(0);
    let req = MmuUpdate {
        ptr: scratch << 12 | MMU_MACHPHYS_UPDATE,
        val: scratch,
    };
    let op = MmuextOp {
        cmd: MMUEXT_TLB_FLUSH_LOCAL,
        pad: 0,
        arg1: 0,
        arg2: 0,
    };
    let reqp = &req as *const _ as u64;
    let opp = &op as *const _ as u64;
    let me = u64::from(DOMID_SELF);
    report("update-array-unmapped", mmu_update_raw(UNMAPPED, 1, 0, me));
    report(
        "update-array-non-canonical",
        mmu_update_raw(NON_CANONICAL, 1, 0, me),
    );
    report("update-array-wraps", mmu_update_raw(u64::MAX - 8, 2, 0, me));
    report("ext-array-unmapped", mmuext_raw(UNMAPPED, 1, 0, me));
    report(
        "update-pdone-rxen",
        mmu_update_raw(reqp, 1, RXEN_STUB_VA, me),
    );
    report(
        "update-pdone-m2p",
        mmu_update_raw(reqp, 1, RO_MPT_VIRT_START, me),
    );
    report("ext-pdone-page-table", mmuext_raw(opp, 1, s.l4 << 12, me));
    report(
        "ext-pdone-non-canonical",
        mmuext_raw(opp, 1, NON_CANONICAL, me),
    );
    report("ext-pdone-unmapped", mmuext_raw(opp, 1, UNMAPPED, me));
    // SAFETY: the hypervisor must refuse to write a read-only or foreign page.
    let rc = unsafe { hypercall3(nr::MEMORY_OP, XENMEM_MACHPHYS_MAPPING, s.l4 << 12, 0) };
    report("machphys-mapping-to-page-table", rc);
    // SAFETY: as above.
    let rc = unsafe { hypercall3(nr::MEMORY_OP, XENMEM_MACHPHYS_MAPPING, RXEN_STUB_VA, 0) };
    report("machphys-mapping-to-rxen", rc);
    let version = xen_version::<u8>(0, None);
    report("still-alive", i64::from(version > 0));
}

/// `struct multicall_entry`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Multicall {
    op: u64,
    result: u64,
    args: [u64; 6],
}

fn multicall(entries: u64, count: u64) -> i64 {
    // SAFETY: the hypervisor validates the array; bad ones are the test.
    unsafe { hypercall3(nr::MULTICALL, entries, count, 0) }
}

/// Nested and garbage multicalls, and arrays the results cannot be written to.
pub fn multicalls(s: &Setup) {
    let me = u64::from(DOMID_SELF);
    let bad = MmuUpdate {
        ptr: 1 << 40,
        val: 0,
    };
    let mut inner = [Multicall {
        op: u64::from(nr::XEN_VERSION),
        ..Default::default()
    }];
    let entry = |op: u64, args: [u64; 6]| Multicall {
        op,
        result: 0x5a5a,
        args,
    };
    let mut calls = [
        entry(
            u64::from(nr::MULTICALL),
            [inner.as_mut_ptr() as u64, 1, 0, 0, 0, 0],
        ),
        entry(9999, [0; 6]),
        entry(u64::MAX, [0; 6]),
        entry(u64::from(nr::IRET), [0; 6]),
        entry(u64::from(nr::XEN_VERSION), [0; 6]),
        entry(
            u64::from(nr::MMU_UPDATE),
            [&bad as *const _ as u64, 1, 0, me, 0, 0],
        ),
        entry(u64::from(nr::MMU_UPDATE), [UNMAPPED, 1, 0, me, 0, 0]),
        entry(u64::from(nr::MMUEXT_OP), [0, 1, 0, 12345, 0, 0]),
    ];
    let names = [
        "multicall-nested",
        "multicall-op-9999",
        "multicall-op-max",
        "multicall-iret",
        "multicall-xen-version-ok",
        "multicall-update-outside-ram",
        "multicall-update-unmapped",
        "multicall-ext-foreign",
    ];
    report(
        "multicall",
        multicall(calls.as_mut_ptr() as u64, calls.len() as u64),
    );
    for (c, name) in calls.iter().zip(names) {
        let rc = c.result as i64;
        if c.op == u64::from(nr::XEN_VERSION) {
            report(name, i64::from(rc > 0));
        } else {
            report(name, rc);
        }
    }
    report("multicall-inner-untouched", i64::from(inner[0].result == 0));
    report("multicall-array-unmapped", multicall(UNMAPPED, 1));
    report("multicall-array-non-canonical", multicall(NON_CANONICAL, 1));
    report("multicall-array-page-table", multicall(s.l4 << 12, 1));
    report("multicall-array-rxen", multicall(RXEN_STUB_VA, 1));
    report(
        "multicall-too-many",
        multicall(calls.as_mut_ptr() as u64, 1 << 20),
    );
}
