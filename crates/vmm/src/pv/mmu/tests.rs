use super::entry::*;
use super::*;
use rxen_abi::errno::{EBUSY, EINVAL, ENOSYS, EOPNOTSUPP, EPERM};
use rxen_abi::mmu::*;

const NR: u64 = 64;
const L4: u64 = 10;
const L3: u64 = 11;
const L2: u64 = 12;
const L1: u64 = 13;
/// Flags the domain builder uses for table links and data mappings.
const LINK: u64 = PAGE_PRESENT | PAGE_RW | PAGE_USER | PAGE_ACCESSED | PAGE_DIRTY;
const DATA: u64 = PAGE_PRESENT | PAGE_RW | PAGE_ACCESSED;
const RO: u64 = PAGE_PRESENT | PAGE_ACCESSED;

fn pte(frame: u64, flags: u64) -> u64 {
    (frame << 12) | flags
}

fn upd(table: u64, index: usize, val: u64) -> MmuUpdate {
    MmuUpdate {
        ptr: (table << 12) | ((index as u64) << 3),
        val,
    }
}

fn ext(cmd: u32, arg1: u64) -> MmuextOp {
    MmuextOp {
        cmd,
        arg1,
        ..Default::default()
    }
}

/// Tables as Xen's domain builder leaves them: L4[0] -> L3[0] -> L2[0] -> L1, the L1
/// mapping va i*4K to frame i for every frame, the table frames read-only.
fn boot_tables() -> VecFrames {
    let mut mem = VecFrames::new(NR);
    mem.write_entry(L4, 0, pte(L3, LINK));
    mem.write_entry(L3, 0, pte(L2, LINK));
    mem.write_entry(L2, 0, pte(L1, LINK));
    for f in 0..NR {
        let flags = if (L4..=L1).contains(&f) { RO } else { DATA };
        mem.write_entry(L1, f as usize, pte(f, flags));
    }
    mem
}

/// The builder's last step: pin the L4 and load it as vCPU 0's CR3.
fn booted() -> (Mmu, VecFrames) {
    let mut mem = boot_tables();
    let mut mmu = Mmu::new(NR, 1);
    let out = mmu.mmuext_op(
        &mut mem,
        0,
        &[ext(MMUEXT_PIN_L4_TABLE, L4), ext(MMUEXT_NEW_BASEPTR, L4)],
    );
    assert_eq!(out.result, Ok(()));
    assert_eq!(out.done, 2);
    mmu.audit(&mem).unwrap();
    (mmu, mem)
}

fn errno(r: Result<(), MmuError>) -> i32 {
    r.err().map_or(0, |e| e.errno())
}

fn update(mmu: &mut Mmu, mem: &mut VecFrames, reqs: &[MmuUpdate]) -> Result<(), MmuError> {
    let out = mmu.mmu_update(mem, reqs);
    mmu.audit(mem).unwrap();
    out.result
}

fn ext_ops(mmu: &mut Mmu, mem: &mut VecFrames, ops: &[MmuextOp]) -> Result<(), MmuError> {
    let out = mmu.mmuext_op(mem, 0, ops);
    mmu.audit(mem).unwrap();
    out.result
}

/// What a guest does before handing a frame to the MMU as a table: map it read-only.
fn make_ro(mmu: &mut Mmu, mem: &mut VecFrames, frame: u64) {
    update(mmu, mem, &[upd(L1, frame as usize, pte(frame, RO))]).unwrap();
}

#[test]
fn boot_tree_validates_with_types_and_counts() {
    let (mmu, mem) = booted();
    let ty = |f| mmu.frame(f).unwrap().ty;
    assert_eq!(ty(L4), FrameType::Table(Level::L4));
    assert_eq!(ty(L3), FrameType::Table(Level::L3));
    assert_eq!(ty(L2), FrameType::Table(Level::L2));
    assert_eq!(ty(L1), FrameType::Table(Level::L1));
    assert_eq!(ty(20), FrameType::Writable);
    // Pin + CR3 on the L4; one link each below.
    assert_eq!(mmu.frame(L4).unwrap().type_count, 2);
    assert_eq!(mmu.frame(L3).unwrap().type_count, 1);
    assert!(mmu.frame(L4).unwrap().pinned);
    assert_eq!(mmu.vcpu(0).unwrap().kernel, Some(L4));
    // Xen stores every present entry with U (the guest kernel runs at CPL 3).
    assert_eq!(
        mem.read_entry(L1, 20),
        pte(20, DATA | PAGE_USER | PAGE_GUEST_KERNEL)
    );
}

#[test]
fn mini_os_style_extension_validates() {
    // Mini-OS's new_pt_frame: make the new frame read-only where it is mapped, pin it
    // as an L1, link it into the L2, then map through it.
    let (mut mmu, mut mem) = booted();
    let new_l1 = 40;
    mem.write_entry(new_l1, 3, 0); // garbage-free page
    update(
        &mut mmu,
        &mut mem,
        &[upd(L1, new_l1 as usize, pte(new_l1, RO))],
    )
    .unwrap();
    ext_ops(&mut mmu, &mut mem, &[ext(MMUEXT_PIN_L1_TABLE, new_l1)]).unwrap();
    update(
        &mut mmu,
        &mut mem,
        &[upd(L2, 1, pte(new_l1, LINK)), upd(new_l1, 0, pte(41, DATA))],
    )
    .unwrap();
    assert_eq!(mmu.frame(new_l1).unwrap().type_count, 2);
    assert_eq!(
        mmu.frame(41).unwrap().type_count,
        2,
        "mapped writable twice"
    );
    // And Linux's order: write the new table while writable, unmap RW, then link
    // without pinning (the link validates it).
    let l1b = 42;
    update(
        &mut mmu,
        &mut mem,
        &[
            upd(l1b, 0, pte(43, DATA)),
            upd(L1, l1b as usize, pte(l1b, RO)),
        ],
    )
    .unwrap();
    update(&mut mmu, &mut mem, &[upd(L2, 2, pte(l1b, LINK))]).unwrap();
    assert_eq!(mmu.frame(l1b).unwrap().table_level(), Some(Level::L1));
}

#[test]
fn writable_mapping_of_a_page_table_is_refused() {
    let (mut mmu, mut mem) = booted();
    for table in [L4, L3, L2, L1] {
        let r = update(&mut mmu, &mut mem, &[upd(L1, 50, pte(table, DATA))]);
        assert_eq!(errno(r), EBUSY, "RW map of table {table}");
        update(&mut mmu, &mut mem, &[upd(L1, 50, pte(table, RO))]).unwrap();
    }
    // Making an existing read-only mapping of a table writable goes the slow path.
    assert_eq!(
        errno(update(
            &mut mmu,
            &mut mem,
            &[upd(L1, L1 as usize, pte(L1, DATA))]
        )),
        EBUSY
    );
    // A table whose entries map a table frame writable does not validate.
    make_ro(&mut mmu, &mut mem, 44);
    mem.write_entry(44, 0, pte(L2, DATA));
    assert_eq!(
        errno(ext_ops(&mut mmu, &mut mem, &[ext(MMUEXT_PIN_L1_TABLE, 44)])),
        EBUSY
    );
    // An L1 mapping itself writable does not validate either.
    make_ro(&mut mmu, &mut mem, 45);
    mem.write_entry(45, 7, pte(45, DATA));
    assert_eq!(
        errno(ext_ops(&mut mmu, &mut mem, &[ext(MMUEXT_PIN_L1_TABLE, 45)])),
        EBUSY
    );
    assert_eq!(mmu.frame(45).unwrap().ty, FrameType::None);
}

#[test]
fn writably_mapped_frame_cannot_become_a_table() {
    let (mut mmu, mut mem) = booted();
    // Frame 30 is mapped RW by the boot L1.
    assert_eq!(
        errno(ext_ops(&mut mmu, &mut mem, &[ext(MMUEXT_PIN_L1_TABLE, 30)])),
        EINVAL
    );
    assert_eq!(
        errno(update(&mut mmu, &mut mem, &[upd(L2, 3, pte(30, LINK))])),
        EINVAL
    );
}

#[test]
fn foreign_and_rxen_frames_are_refused() {
    let (mut mmu, mut mem) = booted();
    let mut mem2 = VecFrames::new(NR + 8);
    for f in 0..NR {
        for i in 0..ENTRIES {
            mem2.write_entry(f, i, mem.read_entry(f, i));
        }
    }
    let mut mmu2 = Mmu::new(NR + 8, 1);
    assert_eq!(
        mmu2.mmuext_op(&mut mem2, 0, &[ext(MMUEXT_PIN_L4_TABLE, L4)])
            .result,
        Ok(())
    );
    let rxen = NR; // an IDT page, say
    let hole = NR + 1;
    let shared = NR + 2;
    mmu2.set_owner(rxen, Owner::Rxen).unwrap();
    mmu2.set_owner(hole, Owner::Absent).unwrap();
    mmu2.set_owner(shared, Owner::SharedInfo).unwrap();
    let r =
        |mmu: &mut Mmu, mem: &mut VecFrames, val| mmu.mmu_update(mem, &[upd(L1, 60, val)]).result;
    assert_eq!(
        errno(r(&mut mmu2, &mut mem2, pte(rxen, RO))),
        EBUSY,
        "rxen's frames: not even read-only"
    );
    assert_eq!(errno(r(&mut mmu2, &mut mem2, pte(rxen, DATA))), EBUSY);
    assert_eq!(errno(r(&mut mmu2, &mut mem2, pte(hole, RO))), EPERM);
    assert_eq!(
        errno(r(&mut mmu2, &mut mem2, pte(NR + 100, RO))),
        EPERM,
        "beyond RAM"
    );
    assert_eq!(errno(r(&mut mmu2, &mut mem2, pte(INVALID_MFN, RO))), EINVAL);
    assert_eq!(
        r(&mut mmu2, &mut mem2, pte(shared, DATA)),
        Ok(()),
        "shared_info maps writable"
    );
    mmu2.audit(&mem2).unwrap();
    // Higher levels and the table being written must be the domain's too.
    assert_eq!(
        errno(
            mmu2.mmu_update(&mut mem2, &[upd(L2, 5, pte(rxen, LINK))])
                .result
        ),
        EINVAL
    );
    assert_eq!(
        errno(mmu2.mmu_update(&mut mem2, &[upd(rxen, 0, 0)]).result),
        EINVAL
    );
    assert_eq!(
        errno(mmu2.mmu_update(&mut mem2, &[upd(NR + 100, 0, 0)]).result),
        EINVAL
    );
    // shared_info never becomes a table; rxen's frames cannot be pinned.
    assert_eq!(
        errno(
            mmu2.mmuext_op(&mut mem2, 0, &[ext(MMUEXT_PIN_L1_TABLE, shared)])
                .result
        ),
        EINVAL
    );
    assert_eq!(
        errno(
            mmu2.mmuext_op(&mut mem2, 0, &[ext(MMUEXT_PIN_L1_TABLE, rxen)])
                .result
        ),
        EINVAL
    );
    assert_eq!(
        errno(
            mmu2.mmuext_op(&mut mem2, 0, &[ext(MMUEXT_NEW_BASEPTR, rxen)])
                .result
        ),
        EINVAL
    );
    mmu2.audit(&mem2).unwrap();
    // A frame in use cannot change owner.
    assert!(mmu.set_owner(20, Owner::Rxen).is_err());
    let _ = &mut mem;
}

#[test]
fn pin_unpin_and_unpin_twice() {
    let (mut mmu, mut mem) = booted();
    let t = 50;
    update(&mut mmu, &mut mem, &[upd(L1, t as usize, pte(t, RO))]).unwrap();
    ext_ops(&mut mmu, &mut mem, &[ext(MMUEXT_PIN_L2_TABLE, t)]).unwrap();
    assert_eq!(
        errno(ext_ops(&mut mmu, &mut mem, &[ext(MMUEXT_PIN_L2_TABLE, t)])),
        EINVAL
    );
    assert_eq!(
        errno(ext_ops(&mut mmu, &mut mem, &[ext(MMUEXT_PIN_L1_TABLE, t)])),
        EINVAL,
        "other level"
    );
    ext_ops(&mut mmu, &mut mem, &[ext(MMUEXT_UNPIN_TABLE, t)]).unwrap();
    assert_eq!(
        errno(ext_ops(&mut mmu, &mut mem, &[ext(MMUEXT_UNPIN_TABLE, t)])),
        EINVAL
    );
    assert_eq!(
        errno(ext_ops(
            &mut mmu,
            &mut mem,
            &[ext(MMUEXT_UNPIN_TABLE, NR + 5)]
        )),
        EINVAL
    );
    let f = mmu.frame(t).unwrap();
    assert_eq!(
        (f.type_count, f.refs, f.pinned, f.validated),
        (0, 1, false, false)
    );
}

#[test]
fn type_drops_after_the_last_reference() {
    // PV-GRUB frees page tables and reuses the frames as data.
    let (mut mmu, mut mem) = booted();
    let t = 50;
    update(
        &mut mmu,
        &mut mem,
        &[upd(L1, t as usize, pte(t, RO)), upd(t, 0, pte(51, DATA))],
    )
    .unwrap();
    ext_ops(&mut mmu, &mut mem, &[ext(MMUEXT_PIN_L1_TABLE, t)]).unwrap();
    update(&mut mmu, &mut mem, &[upd(L2, 1, pte(t, LINK))]).unwrap();
    assert_eq!(mmu.frame(51).unwrap().type_count, 2);
    assert_eq!(
        errno(update(
            &mut mmu,
            &mut mem,
            &[upd(L1, t as usize, pte(t, DATA))]
        )),
        EBUSY
    );
    ext_ops(&mut mmu, &mut mem, &[ext(MMUEXT_UNPIN_TABLE, t)]).unwrap();
    assert_eq!(
        errno(update(
            &mut mmu,
            &mut mem,
            &[upd(L1, t as usize, pte(t, DATA))]
        )),
        EBUSY,
        "still linked"
    );
    update(&mut mmu, &mut mem, &[upd(L2, 1, 0)]).unwrap();
    assert_eq!(mmu.frame(t).unwrap().type_count, 0);
    assert_eq!(
        mmu.frame(51).unwrap().type_count,
        1,
        "the dead table's entries released"
    );
    update(&mut mmu, &mut mem, &[upd(L1, t as usize, pte(t, DATA))]).unwrap();
    assert_eq!(mmu.frame(t).unwrap().ty, FrameType::Writable);
}

#[test]
fn self_maps_and_linear_tables_are_refused() {
    let (mut mmu, mut mem) = booted();
    for flags in [LINK, LINK & !PAGE_RW] {
        assert_eq!(
            errno(update(&mut mmu, &mut mem, &[upd(L4, 5, pte(L4, flags))])),
            EINVAL
        );
        assert_eq!(
            errno(update(&mut mmu, &mut mem, &[upd(L3, 5, pte(L3, flags))])),
            EINVAL
        );
        assert_eq!(
            errno(update(&mut mmu, &mut mem, &[upd(L2, 5, pte(L2, flags))])),
            EINVAL
        );
        // Linear: an L2 entry to another L2 (same level) is refused as well.
        assert_eq!(
            errno(update(&mut mmu, &mut mem, &[upd(L3, 6, pte(L3, flags))])),
            EINVAL
        );
    }
    // A new L4 whose slot points back at itself does not validate.
    make_ro(&mut mmu, &mut mem, 52);
    mem.write_entry(52, 0, pte(52, LINK & !PAGE_RW));
    assert_eq!(
        errno(ext_ops(&mut mmu, &mut mem, &[ext(MMUEXT_PIN_L4_TABLE, 52)])),
        EINVAL
    );
}

#[test]
fn reserved_l4_slots_belong_to_rxen() {
    let (mut mmu, mut mem) = booted();
    for slot in [L4_FIRST_XEN_SLOT, L4_LAST_XEN_SLOT] {
        assert_eq!(
            errno(update(&mut mmu, &mut mem, &[upd(L4, slot, 0)])),
            EINVAL
        );
    }
    update(&mut mmu, &mut mem, &[upd(L4, L4_LAST_XEN_SLOT + 1, 0)]).unwrap();
    // rxen's M2P mapping goes into every validated L4, now and later.
    let m2p = pte(63, PAGE_PRESENT | PAGE_USER);
    mmu.set_xen_l4_entry(&mut mem, l4_slot(RO_MPT_VIRT_START), m2p)
        .unwrap();
    assert_eq!(mem.read_entry(L4, 256), m2p);
    // A new L4 with garbage in the reserved slots: ignored, then overwritten.
    make_ro(&mut mmu, &mut mem, 53);
    mem.write_entry(53, 256, pte(0, DATA));
    mem.write_entry(53, 260, 0xdead_beef);
    ext_ops(&mut mmu, &mut mem, &[ext(MMUEXT_PIN_L4_TABLE, 53)]).unwrap();
    assert_eq!(mem.read_entry(53, 256), m2p);
    assert_eq!(mem.read_entry(53, 260), 0);
    assert!(mmu.set_xen_l4_entry(&mut mem, 255, 0).is_err());
}

#[test]
fn disallowed_flags_are_refused() {
    let (mut mmu, mut mem) = booted();
    for bad in [PAGE_PCD, PAGE_PWT, PAGE_PSE_OR_PAT] {
        assert_eq!(
            errno(update(
                &mut mmu,
                &mut mem,
                &[upd(L1, 30, pte(30, DATA | bad))]
            )),
            EINVAL
        );
    }
    update(
        &mut mmu,
        &mut mem,
        &[upd(
            L1,
            30,
            pte(30, DATA | PAGE_GLOBAL | PAGE_NX | PAGE_AVAIL),
        )],
    )
    .unwrap();
    for bad in [PAGE_PSE_OR_PAT, PAGE_GLOBAL, PAGE_PCD] {
        assert_eq!(
            errno(update(
                &mut mmu,
                &mut mem,
                &[upd(L2, 0, pte(L1, LINK | bad))]
            )),
            EINVAL
        );
        assert_eq!(
            errno(update(
                &mut mmu,
                &mut mem,
                &[upd(L4, 0, pte(L3, LINK | bad))]
            )),
            EINVAL
        );
    }
    // A table with a bad entry after good ones rolls back what the good ones took.
    make_ro(&mut mmu, &mut mem, 54);
    mem.write_entry(54, 0, pte(31, DATA));
    mem.write_entry(54, 1, pte(32, DATA | PAGE_PCD));
    assert_eq!(
        errno(ext_ops(&mut mmu, &mut mem, &[ext(MMUEXT_PIN_L1_TABLE, 54)])),
        EINVAL
    );
    assert_eq!(mmu.frame(31).unwrap().type_count, 1);
}

#[test]
fn invalidations_list_what_old_entries_reached() {
    let (mut mmu, mut mem) = booted();
    let out = mmu.mmu_update(&mut mem, &[upd(L1, 60, 0)]);
    assert_eq!(
        out.invalidate.frames().collect::<Vec<_>>(),
        vec![60],
        "unmap"
    );
    // Granting access needs nothing.
    let out = mmu.mmu_update(&mut mem, &[upd(L1, 60, pte(61, RO))]);
    assert!(out.invalidate.is_empty());
    let out = mmu.mmu_update(&mut mem, &[upd(L1, 60, pte(61, DATA))]);
    assert!(out.invalidate.is_empty(), "RO -> RW");
    // Taking it away lists the old frame; moving it too.
    let out = mmu.mmu_update(
        &mut mem,
        &[upd(L1, 60, pte(61, RO)), upd(L1, 59, pte(62, DATA))],
    );
    assert_eq!(out.invalidate.frames().collect::<Vec<_>>(), vec![59, 61]);
    assert_eq!(out.invalidate.ranges(), vec![(59, 1), (61, 1)]);
    let out = mmu.mmu_update(&mut mem, &[upd(L1, 60, pte(61, RO | PAGE_NX))]);
    assert!(out.invalidate.covers(61), "NX set on the fast path");
    // Unlinking an L1 lists every frame it mapped.
    let out = mmu.mmu_update(&mut mem, &[upd(L2, 0, 0)]);
    assert_eq!(out.result, Ok(()));
    // (59 and 60 are no longer mapped; 61 and 62 are, by entries 60 and 59.)
    assert_eq!(out.invalidate.ranges(), vec![(0, 59), (61, 3)]);
    mmu.audit(&mem).unwrap();
}

#[test]
fn new_baseptr_needs_an_l4() {
    let (mut mmu, mut mem) = booted();
    assert_eq!(
        errno(ext_ops(&mut mmu, &mut mem, &[ext(MMUEXT_NEW_BASEPTR, L3)])),
        EINVAL
    );
    assert_eq!(
        errno(ext_ops(&mut mmu, &mut mem, &[ext(MMUEXT_NEW_BASEPTR, 30)])),
        EINVAL,
        "mapped RW"
    );
    assert_eq!(mmu.vcpu(0).unwrap().kernel, Some(L4));
    // An unpinned frame that validates as an L4 is accepted (Xen validates it).
    make_ro(&mut mmu, &mut mem, 55);
    mem.write_entry(55, 0, pte(L3, LINK));
    ext_ops(&mut mmu, &mut mem, &[ext(MMUEXT_NEW_BASEPTR, 55)]).unwrap();
    assert_eq!(mmu.frame(L4).unwrap().type_count, 1, "old base released");
    assert_eq!(mmu.frame(L3).unwrap().type_count, 2);
    ext_ops(&mut mmu, &mut mem, &[ext(MMUEXT_NEW_USER_BASEPTR, L4)]).unwrap();
    ext_ops(&mut mmu, &mut mem, &[ext(MMUEXT_NEW_USER_BASEPTR, 0)]).unwrap();
    assert_eq!(mmu.vcpu(0).unwrap().user, None);
    // Dropping the CR3 of an unpinned L4 drops its type.
    ext_ops(&mut mmu, &mut mem, &[ext(MMUEXT_NEW_BASEPTR, L4)]).unwrap();
    assert_eq!(mmu.frame(55).unwrap().type_count, 0);
    assert_eq!(
        errno(
            mmu.mmuext_op(&mut mem, 3, &[ext(MMUEXT_NEW_BASEPTR, L4)])
                .result
        ),
        EINVAL,
        "no vCPU 3"
    );
}

#[test]
fn plain_writes_machphys_and_unknown_commands() {
    let (mut mmu, mut mem) = booted();
    update(&mut mmu, &mut mem, &[upd(30, 7, 0x1234)]).unwrap();
    assert_eq!(
        mem.read_entry(30, 7),
        0x1234,
        "a data frame is written as data"
    );
    let m2p = MmuUpdate {
        ptr: (30 << 12) | MMU_MACHPHYS_UPDATE,
        val: 5,
    };
    update(&mut mmu, &mut mem, &[m2p]).unwrap();
    assert_eq!(mem.m2p(30), Some(5));
    let bad = MmuUpdate {
        ptr: ((NR + 3) << 12) | MMU_MACHPHYS_UPDATE,
        val: 5,
    };
    assert_eq!(errno(update(&mut mmu, &mut mem, &[bad])), EINVAL);
    assert_eq!(
        errno(update(&mut mmu, &mut mem, &[MmuUpdate { ptr: 4, val: 0 }])),
        ENOSYS
    );
    assert_eq!(errno(ext_ops(&mut mmu, &mut mem, &[ext(99, 0)])), ENOSYS);
    assert_eq!(
        errno(ext_ops(&mut mmu, &mut mem, &[ext(MMUEXT_MARK_SUPER, 0)])),
        EOPNOTSUPP
    );
    ext_ops(
        &mut mmu,
        &mut mem,
        &[
            ext(MMUEXT_TLB_FLUSH_ALL, 0),
            ext(MMUEXT_INVLPG_LOCAL, 0x1000),
        ],
    )
    .unwrap();
    // A batch stops at its first refusal and reports how many were done.
    let out = mmu.mmu_update(
        &mut mem,
        &[
            upd(L1, 60, pte(61, RO)),
            upd(L1, 60, pte(L4, DATA)),
            upd(L1, 58, 0),
        ],
    );
    assert_eq!((out.done, errno(out.result)), (1, EBUSY));
    // PRESERVE_AD keeps the accessed/dirty bits the entry has.
    mem.write_entry(L1, 60, mem.read_entry(L1, 60) | PAGE_DIRTY);
    let keep = MmuUpdate {
        ptr: (L1 << 12) | (60 << 3) | MMU_PT_UPDATE_PRESERVE_AD,
        val: pte(61, PAGE_PRESENT),
    };
    update(&mut mmu, &mut mem, &[keep]).unwrap();
    assert_ne!(mem.read_entry(L1, 60) & PAGE_DIRTY, 0);
    // CLEAR_PAGE refuses page tables.
    assert_eq!(
        errno(ext_ops(&mut mmu, &mut mem, &[ext(MMUEXT_CLEAR_PAGE, L1)])),
        EINVAL
    );
    ext_ops(&mut mmu, &mut mem, &[ext(MMUEXT_CLEAR_PAGE, 30)]).unwrap();
    assert_eq!(mem.read_entry(30, 7), 0);
}

#[test]
fn update_va_mapping_walks_the_kernel_tables() {
    let (mut mmu, mut mem) = booted();
    let out = mmu.update_va_mapping(&mut mem, 0, 0x3c000, pte(20, RO));
    assert_eq!(out.result, Ok(()));
    assert!(out.invalidate.covers(0x3c), "RW -> another frame");
    assert_eq!(mem.read_entry(L1, 0x3c) & ADDR_MASK, 20 << 12);
    assert_eq!(
        errno(mmu.update_va_mapping(&mut mem, 0, 0x4000_0000, 0).result),
        EINVAL,
        "no L1 there"
    );
    assert_eq!(
        errno(
            mmu.update_va_mapping(&mut mem, 0, HYPERVISOR_VIRT_START, 0)
                .result
        ),
        EINVAL
    );
    assert_eq!(
        errno(
            mmu.update_va_mapping(&mut mem, 0, 0x8000_0000_0000, 0)
                .result
        ),
        EINVAL
    );
    assert_eq!(
        errno(
            mmu.update_va_mapping(&mut mem, 0, 0x1000, pte(L2, DATA))
                .result
        ),
        EBUSY
    );
    mmu.audit(&mem).unwrap();
}

/// `MMUEXT_SET_LDT` as Xen's `do_mmuext_op` checks it: a page-aligned, canonical
/// linear base outside Xen's range and at most 8192 entries (a base of anything with 0
/// entries clears the LDT); the vCPU's LDT is recorded, a refused one changes nothing.
/// Xen validates the LDT's pages as descriptor pages only when a selector loads from
/// it (lazily, on the fault); on this host no LDT selector can load (KVM's PVM has no
/// LDT), so rxen only records it (docs/linux-guest.md, "Segments on this host").
#[test]
fn set_ldt_records_the_ldt_and_refuses_what_xen_refuses() {
    let (mut mmu, mut mem) = booted();
    let set = |base: u64, ents: u64| MmuextOp {
        cmd: MMUEXT_SET_LDT,
        arg1: base,
        arg2: ents,
        ..Default::default()
    };
    let ldt = |mmu: &Mmu| mmu.vcpu(0).map(|v| v.ldt);
    // Linux's `xen_set_ldt`: a vmalloc'ed page, one entry (`modify_ldt`).
    let base = 0xffff_c900_0012_3000;
    ext_ops(&mut mmu, &mut mem, &[set(base, 1)]).unwrap();
    assert_eq!(ldt(&mmu), Some((base, 1)));
    ext_ops(&mut mmu, &mut mem, &[set(0x7000, 8192)]).unwrap();
    assert_eq!(ldt(&mmu), Some((0x7000, 8192)));
    for (bad_base, ents) in [
        (0x7008, 1),                         // not page-aligned
        (0x7000, 8193),                      // too many entries
        (0x0000_8000_0000_0000, 1),          // not canonical
        (HYPERVISOR_VIRT_START + 0x1000, 1), // Xen's range
    ] {
        assert_eq!(
            errno(ext_ops(&mut mmu, &mut mem, &[set(bad_base, ents)])),
            EINVAL,
            "base {bad_base:#x}, {ents} entries"
        );
        assert_eq!(ldt(&mmu), Some((0x7000, 8192)), "unchanged");
    }
    // No entries: no LDT, whatever the base.
    ext_ops(&mut mmu, &mut mem, &[set(0x7008, 0)]).unwrap();
    assert_eq!(ldt(&mmu), Some((0, 0)));
}
