//! Unit and property tests of the grant table logic (no KVM).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rxen_abi::grant_table::*;
use rxen_abi::PAGE_SIZE;

use super::hypercall::{self, GrantOp, INVALID_GFN};
use super::*;
use crate::guest_view::GuestView;
use crate::memory::GuestRam;

const GUEST: u16 = 7;
const TABLE_PFN: u64 = 0x600;
const DATA_PFN: u64 = 0x700;

fn setup() -> (Arc<GuestRam>, GrantTable) {
    let ram = Arc::new(GuestRam::new("grant", 8 << 20).unwrap());
    let t = GrantTable::new(ram.clone(), GUEST);
    t.place_frame(0, TABLE_PFN).unwrap();
    ram.write(DATA_PFN * PAGE_SIZE, &[0xa5; 4096]).unwrap();
    (ram, t)
}

fn entry_addr(gref: u32) -> u64 {
    TABLE_PFN * PAGE_SIZE + u64::from(gref) * 8
}

/// The guest's side: fill an entry (frame and domid first, then flags).
fn grant(ram: &GuestRam, gref: u32, domid: u16, frame: u32, flags: u16) {
    ram.atomic_u32(entry_addr(gref) + 4)
        .unwrap()
        .store(frame, Ordering::SeqCst);
    ram.atomic_u32(entry_addr(gref))
        .unwrap()
        .store(u32::from(flags) | u32::from(domid) << 16, Ordering::SeqCst);
}

fn flags(ram: &GuestRam, gref: u32) -> u16 {
    ram.atomic_u32(entry_addr(gref))
        .unwrap()
        .load(Ordering::SeqCst) as u16
}

/// The guest's end of access as Linux and Mini-OS do it: refuse while the hypervisor
/// has GTF_reading/GTF_writing set, else compare-and-swap the flags to 0.
fn end_access(ram: &GuestRam, gref: u32) -> bool {
    let w = ram.atomic_u32(entry_addr(gref)).unwrap();
    let mut cur = w.load(Ordering::SeqCst);
    loop {
        if cur as u16 & (GTF_READING | GTF_WRITING) != 0 {
            return false;
        }
        match w.compare_exchange(cur, cur & 0xffff_0000, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return true,
            Err(seen) => cur = seen,
        }
    }
}

#[test]
fn readonly_map_reads_and_holds_the_grant_busy() {
    let (ram, t) = setup();
    grant(
        &ram,
        3,
        DOM0,
        DATA_PFN as u32,
        GTF_PERMIT_ACCESS | GTF_READONLY,
    );
    let m = t.map(DOM0, 3, true).unwrap();
    let mut buf = [0u8; 16];
    m.read(4080, &mut buf).unwrap();
    assert_eq!(buf, [0xa5; 16]);
    assert_eq!(m.write(0, b"x"), Err(GrantError::WriteToReadOnly));
    assert!(matches!(
        m.read(4090, &mut buf),
        Err(GrantError::BadCopyArg { .. })
    ));
    assert_eq!(flags(&ram, 3) & GTF_READING, GTF_READING);
    assert!(
        !end_access(&ram, 3),
        "revoking while mapped must fail: the grant is busy"
    );
    // A writable map of a read-only grant is refused, and leaves the entry as it was.
    assert_eq!(
        t.map(DOM0, 3, false).unwrap_err().status(),
        GNTST_GENERAL_ERROR
    );
    assert_eq!(
        flags(&ram, 3),
        GTF_PERMIT_ACCESS | GTF_READONLY | GTF_READING
    );
    m.unmap();
    assert_eq!(flags(&ram, 3), GTF_PERMIT_ACCESS | GTF_READONLY);
    assert_eq!(t.active_entries(), 0);
    assert!(end_access(&ram, 3));
    assert_eq!(
        t.map(DOM0, 3, true).unwrap_err().status(),
        GNTST_GENERAL_ERROR
    );
}

#[test]
fn writable_map_sets_writing_until_the_last_writer_goes() {
    let (ram, t) = setup();
    grant(&ram, 1, DOM0, DATA_PFN as u32, GTF_PERMIT_ACCESS);
    let r = t.map(DOM0, 1, true).unwrap();
    assert_eq!(flags(&ram, 1), GTF_PERMIT_ACCESS | GTF_READING);
    let w = t.map(DOM0, 1, false).unwrap();
    assert_eq!(
        flags(&ram, 1),
        GTF_PERMIT_ACCESS | GTF_READING | GTF_WRITING
    );
    w.write(10, b"hello").unwrap();
    let mut b = [0u8; 5];
    r.read(10, &mut b).unwrap();
    assert_eq!(&b, b"hello");
    drop(w);
    assert_eq!(flags(&ram, 1), GTF_PERMIT_ACCESS | GTF_READING);
    assert!(!end_access(&ram, 1));
    drop(r);
    assert!(end_access(&ram, 1));
}

#[test]
fn bad_refs_domids_flags_and_frames_give_xen_statuses() {
    let (ram, t) = setup();
    let st = |r: Result<GrantMapping, GrantError>| r.unwrap_err().status();
    assert_eq!(
        st(t.map(DOM0, 512, true)),
        GNTST_BAD_GNTREF,
        "beyond one frame"
    );
    assert_eq!(st(t.map(DOM0, u32::MAX, true)), GNTST_BAD_GNTREF);
    t.grow(2);
    assert_eq!(
        st(t.map(DOM0, 600, true)),
        GNTST_GENERAL_ERROR,
        "frame never placed"
    );
    grant(&ram, 2, 5, DATA_PFN as u32, GTF_PERMIT_ACCESS);
    assert_eq!(
        st(t.map(DOM0, 2, true)),
        GNTST_GENERAL_ERROR,
        "granted to another domain"
    );
    for bad in [
        GTF_INVALID,
        GTF_ACCEPT_TRANSFER,
        GTF_TRANSITIVE,
        GTF_PERMIT_ACCESS | GTF_SUB_PAGE,
    ] {
        grant(&ram, 2, DOM0, DATA_PFN as u32, bad);
        assert_eq!(
            st(t.map(DOM0, 2, true)),
            GNTST_GENERAL_ERROR,
            "flags {bad:#x}"
        );
        assert_eq!(flags(&ram, 2), bad, "refused pins leave the entry alone");
    }
    for frame in [0u32, 9, 0x30, 0x800, u32::MAX, TABLE_PFN as u32] {
        grant(&ram, 2, DOM0, frame, GTF_PERMIT_ACCESS);
        assert_eq!(st(t.map(DOM0, 2, true)), GNTST_BAD_PAGE, "frame {frame:#x}");
        assert_eq!(flags(&ram, 2), GTF_PERMIT_ACCESS, "GTF_reading undone");
    }
    // The hypercall page may be granted read-only, never writable.
    grant(&ram, 2, DOM0, 3, GTF_PERMIT_ACCESS);
    let ro = t.map(DOM0, 2, true).unwrap();
    assert_eq!(st(t.map(DOM0, 2, false)), GNTST_BAD_PAGE);
    assert_eq!(
        flags(&ram, 2),
        GTF_PERMIT_ACCESS | GTF_READING,
        "GTF_writing undone"
    );
    drop(ro);
    assert_eq!(t.active_entries(), 0);
    assert_eq!(flags(&ram, 2), GTF_PERMIT_ACCESS);
}

#[test]
fn a_guest_rewriting_a_mapped_entry_cannot_redirect_the_mapping() {
    let (ram, t) = setup();
    grant(&ram, 4, DOM0, DATA_PFN as u32, GTF_PERMIT_ACCESS);
    let m = t.map(DOM0, 4, false).unwrap();
    // Hostile guest: overwrite the whole entry, pointing it at another frame.
    ram.write_obj(entry_addr(4), &0xffff_ffff_ffff_ffffu64)
        .unwrap();
    m.write(0, b"still the old frame").unwrap();
    let mut b = [0u8; 19];
    ram.read(DATA_PFN * PAGE_SIZE, &mut b).unwrap();
    assert_eq!(&b, b"still the old frame");
    // A second mapping trusts the active entry, as Xen does.
    let m2 = t.map(DOM0, 4, true).unwrap();
    drop((m, m2));
    assert_eq!(t.active_entries(), 0);
}

#[test]
fn copies_are_bounded_and_pin_transiently() {
    let (ram, t) = setup();
    grant(
        &ram,
        5,
        DOM0,
        DATA_PFN as u32,
        GTF_PERMIT_ACCESS | GTF_READONLY,
    );
    let mut buf = [0u8; 200];
    assert_eq!(
        t.copy_from_grant(DOM0, 5, 4000, &mut buf)
            .unwrap_err()
            .status(),
        GNTST_BAD_COPY_ARG
    );
    assert_eq!(
        t.copy_from_grant(DOM0, 5, u64::MAX, &mut buf)
            .unwrap_err()
            .status(),
        GNTST_BAD_COPY_ARG
    );
    t.copy_from_grant(DOM0, 5, 3896, &mut buf).unwrap();
    assert_eq!(buf, [0xa5; 200]);
    assert_eq!(flags(&ram, 5), GTF_PERMIT_ACCESS | GTF_READONLY);
    assert_eq!(
        t.copy_to_grant(DOM0, 5, 0, b"x").unwrap_err().status(),
        GNTST_GENERAL_ERROR
    );
    grant(&ram, 6, DOM0, DATA_PFN as u32, GTF_PERMIT_ACCESS);
    t.copy_to_grant(DOM0, 6, 0, b"copied").unwrap();
    assert_eq!(flags(&ram, 6), GTF_PERMIT_ACCESS);
    let mut b = [0u8; 6];
    ram.read(DATA_PFN * PAGE_SIZE, &mut b).unwrap();
    assert_eq!(&b, b"copied");
}

#[test]
fn placing_frames() {
    let (ram, t) = setup();
    assert_eq!(
        t.place_frame(0, 0x1),
        Err(PlaceError::Invalid),
        "fixed low page"
    );
    assert_eq!(
        t.place_frame(0, 0x10),
        Err(PlaceError::Invalid),
        "page tables"
    );
    assert_eq!(
        t.place_frame(0, 0x800),
        Err(PlaceError::Invalid),
        "beyond RAM"
    );
    assert_eq!(t.place_frame(0, u64::MAX), Err(PlaceError::Invalid));
    assert_eq!(
        t.place_frame(64, 0x650),
        Err(PlaceError::Invalid),
        "beyond the maximum"
    );
    assert_eq!(
        t.place_frame(XENMAPIDX_GRANT_TABLE_STATUS, 0x650),
        Err(PlaceError::Invalid)
    );
    assert_eq!(
        t.place_frame(1, TABLE_PFN),
        Err(PlaceError::Invalid),
        "another frame's page"
    );
    grant(&ram, 8, DOM0, DATA_PFN as u32, GTF_PERMIT_ACCESS);
    let m = t.map(DOM0, 8, true).unwrap();
    assert_eq!(
        t.place_frame(0, 0x650),
        Err(PlaceError::Busy),
        "entries in use"
    );
    assert_eq!(
        t.place_frame(1, DATA_PFN),
        Err(PlaceError::Busy),
        "mapped page"
    );
    drop(m);
    // Moving keeps the entries; the table grows to hold frame 3.
    t.place_frame(0, 0x650).unwrap();
    assert_eq!(
        ram.read_obj::<u16>(0x650 * PAGE_SIZE + 64).unwrap(),
        GTF_PERMIT_ACCESS
    );
    t.place_frame(3, 0x651).unwrap();
    assert_eq!(t.nr_frames(), 4);
    assert_eq!(
        t.frame_pfns(5),
        vec![Some(0x650), None, None, Some(0x651), None]
    );
}

#[test]
fn maptrack_runs_out_cleanly() {
    let (ram, t) = setup();
    grant(
        &ram,
        9,
        DOM0,
        DATA_PFN as u32,
        GTF_PERMIT_ACCESS | GTF_READONLY,
    );
    let maps: Vec<_> = (0..MAX_MAPTRACK)
        .map(|_| t.map(DOM0, 9, true).unwrap())
        .collect();
    assert_eq!(t.map(DOM0, 9, true).unwrap_err().status(), GNTST_NO_SPACE);
    drop(maps);
    assert_eq!(flags(&ram, 9), GTF_PERMIT_ACCESS | GTF_READONLY);
}

#[test]
fn guest_revoking_races_with_mapping() {
    let (ram, t) = setup();
    grant(&ram, 10, DOM0, DATA_PFN as u32, GTF_PERMIT_ACCESS);
    let stop = Arc::new(AtomicBool::new(false));
    let revocations = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let guest = {
        let (ram, stop, revocations) = (ram.clone(), stop.clone(), revocations.clone());
        std::thread::spawn(move || {
            let mut revoked = 0u32;
            while !stop.load(Ordering::SeqCst) {
                if end_access(&ram, 10) {
                    revoked += 1;
                    revocations.fetch_add(1, Ordering::SeqCst);
                    grant(&ram, 10, DOM0, DATA_PFN as u32, GTF_PERMIT_ACCESS);
                }
                // Leave the grant in place for a moment, as a real guest would.
                for _ in 0..500 {
                    std::hint::spin_loop();
                }
            }
            revoked
        })
    };
    // Run until both sides have won many times (with a deadline, never a fixed count).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut mapped = 0;
    let mut tries = 0u64;
    // On a loaded host the guest thread may not run for a while: wait for it to have
    // revoked at least once too.
    while (mapped < 1000 || tries < 20_000 || revocations.load(Ordering::SeqCst) == 0)
        && std::time::Instant::now() < deadline
    {
        tries += 1;
        if let Ok(m) = t.map(DOM0, 10, false) {
            mapped += 1;
            // While mapped, the guest's end of access must keep failing.
            assert_ne!(flags(&ram, 10) & GTF_READING, 0);
            m.write(0, b"w").unwrap();
        }
    }
    stop.store(true, Ordering::SeqCst);
    let revoked = guest.join().unwrap();
    assert!(
        mapped > 0 && revoked > 0,
        "mapped {mapped} revoked {revoked}"
    );
    assert_eq!(t.active_entries(), 0);
    assert_eq!(flags(&ram, 10) & (GTF_READING | GTF_WRITING), 0);
}

#[test]
fn guest_hypercalls() {
    let (ram, t) = setup();
    let arg = 0x500000;
    let list = 0x501000;
    ram.write_obj(
        arg,
        &GnttabSetupTable {
            dom: rxen_abi::DOMID_SELF,
            nr_frames: 3,
            frame_list: list,
            ..Default::default()
        },
    )
    .unwrap();
    let op = hypercall::decode(GNTTABOP_SETUP_TABLE, arg, 1, &GuestView::identity(&ram)).unwrap();
    assert_eq!(hypercall::execute(&t, &GuestView::identity(&ram), op), 0);
    assert_eq!(
        ram.read_obj::<GnttabSetupTable>(arg).unwrap().status,
        GNTST_OKAY
    );
    assert_eq!(
        ram.read_obj::<[u64; 3]>(list).unwrap(),
        [TABLE_PFN, INVALID_GFN, INVALID_GFN]
    );
    assert_eq!(
        hypercall::decode(GNTTABOP_SETUP_TABLE, arg, 2, &GuestView::identity(&ram)).unwrap_err(),
        -rxen_abi::errno::EINVAL
    );
    ram.write_obj(
        arg,
        &GnttabSetupTable {
            dom: 0,
            nr_frames: 65,
            frame_list: list,
            ..Default::default()
        },
    )
    .unwrap();
    let op = hypercall::decode(GNTTABOP_SETUP_TABLE, arg, 1, &GuestView::identity(&ram)).unwrap();
    hypercall::execute(&t, &GuestView::identity(&ram), op);
    assert_eq!(
        ram.read_obj::<GnttabSetupTable>(arg).unwrap().status,
        GNTST_BAD_DOMAIN
    );
    ram.write_obj(
        arg,
        &GnttabSetupTable {
            dom: GUEST,
            nr_frames: 65,
            frame_list: list,
            ..Default::default()
        },
    )
    .unwrap();
    let op = hypercall::decode(GNTTABOP_SETUP_TABLE, arg, 1, &GuestView::identity(&ram)).unwrap();
    hypercall::execute(&t, &GuestView::identity(&ram), op);
    assert_eq!(
        ram.read_obj::<GnttabSetupTable>(arg).unwrap().status,
        GNTST_GENERAL_ERROR
    );
    // A count beyond the limit is a status, whatever the list (Xen checks the limit
    // before writing the list): found by the granttest guest.
    ram.write_obj(
        arg,
        &GnttabSetupTable {
            dom: GUEST,
            nr_frames: u32::MAX,
            frame_list: list,
            ..Default::default()
        },
    )
    .unwrap();
    let op = hypercall::decode(GNTTABOP_SETUP_TABLE, arg, 1, &GuestView::identity(&ram)).unwrap();
    assert_eq!(hypercall::execute(&t, &GuestView::identity(&ram), op), 0);
    assert_eq!(
        ram.read_obj::<GnttabSetupTable>(arg).unwrap().status,
        GNTST_GENERAL_ERROR
    );
    ram.write_obj(
        arg,
        &GnttabSetupTable {
            dom: GUEST,
            nr_frames: 4,
            frame_list: 0x9000,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        hypercall::decode(GNTTABOP_SETUP_TABLE, arg, 1, &GuestView::identity(&ram)).unwrap_err(),
        -rxen_abi::errno::EFAULT
    );

    ram.write_obj(
        arg,
        &GnttabQuerySize {
            dom: rxen_abi::DOMID_SELF,
            ..Default::default()
        },
    )
    .unwrap();
    let op = hypercall::decode(GNTTABOP_QUERY_SIZE, arg, 1, &GuestView::identity(&ram)).unwrap();
    assert_eq!(hypercall::execute(&t, &GuestView::identity(&ram), op), 0);
    let q: GnttabQuerySize = ram.read_obj(arg).unwrap();
    assert_eq!(
        (q.nr_frames, q.max_nr_frames, q.status),
        (3, 64, GNTST_OKAY)
    );

    ram.write_obj(arg, &GnttabSetVersion { version: 2 })
        .unwrap();
    let op = hypercall::decode(GNTTABOP_SET_VERSION, arg, 1, &GuestView::identity(&ram)).unwrap();
    assert_eq!(
        hypercall::execute(&t, &GuestView::identity(&ram), op),
        -i64::from(rxen_abi::errno::ENOSYS)
    );
    assert_eq!(ram.read_obj::<u32>(arg).unwrap(), 1);
    let op = GrantOp::GetVersion { ptr: arg, dom: 99 };
    assert_eq!(
        hypercall::execute(&t, &GuestView::identity(&ram), op),
        -i64::from(rxen_abi::errno::ESRCH)
    );

    // A copy from the guest's own grant into one of its frames, and bad ones.
    grant(&ram, 11, GUEST, DATA_PFN as u32, GTF_PERMIT_ACCESS);
    let side = |u: u64, domid: u16, offset: u16| GnttabCopyPtr {
        u,
        domid,
        offset,
        pad: 0,
    };
    let ops = [
        GnttabCopy {
            source: side(11, rxen_abi::DOMID_SELF, 0),
            dest: side(0x510, rxen_abi::DOMID_SELF, 8),
            len: 4,
            flags: GNTCOPY_SOURCE_GREF,
            ..Default::default()
        },
        GnttabCopy {
            source: side(11, 3, 0),
            dest: side(0x510, rxen_abi::DOMID_SELF, 8),
            len: 4,
            flags: GNTCOPY_SOURCE_GREF,
            ..Default::default()
        },
        GnttabCopy {
            source: side(0x510, 0, 0),
            dest: side(0x511, rxen_abi::DOMID_SELF, 0),
            len: 4,
            ..Default::default()
        },
        GnttabCopy {
            source: side(11, GUEST, 4095),
            dest: side(0x510, rxen_abi::DOMID_SELF, 0),
            len: 2,
            flags: GNTCOPY_SOURCE_GREF,
            ..Default::default()
        },
        GnttabCopy {
            source: side(0x3, rxen_abi::DOMID_SELF, 0),
            dest: side(0x10, rxen_abi::DOMID_SELF, 0),
            len: 2,
            ..Default::default()
        },
        GnttabCopy {
            source: side(9999, GUEST, 0),
            dest: side(0x510, rxen_abi::DOMID_SELF, 0),
            len: 2,
            flags: GNTCOPY_SOURCE_GREF,
            ..Default::default()
        },
    ];
    for (i, c) in ops.iter().enumerate() {
        ram.write_obj(arg + i as u64 * 40, c).unwrap();
    }
    let op = hypercall::decode(
        GNTTABOP_COPY,
        arg,
        ops.len() as u64,
        &GuestView::identity(&ram),
    )
    .unwrap();
    assert_eq!(hypercall::execute(&t, &GuestView::identity(&ram), op), 0);
    let statuses: Vec<i16> = (0..ops.len())
        .map(|i| {
            ram.read_obj::<GnttabCopy>(arg + i as u64 * 40)
                .unwrap()
                .status
        })
        .collect();
    assert_eq!(
        statuses,
        [
            GNTST_OKAY,
            GNTST_BAD_DOMAIN,
            GNTST_PERMISSION_DENIED,
            GNTST_BAD_COPY_ARG,
            GNTST_BAD_PAGE,
            GNTST_BAD_GNTREF
        ]
    );
    assert_eq!(
        ram.read_obj::<u32>(0x510 * PAGE_SIZE + 8).unwrap(),
        0xa5a5_a5a5
    );
    assert_eq!(
        hypercall::decode(GNTTABOP_COPY, arg, 513, &GuestView::identity(&ram)).unwrap_err(),
        -rxen_abi::errno::EINVAL
    );
    assert_eq!(
        hypercall::decode(GNTTABOP_TRANSFER, arg, 1, &GuestView::identity(&ram)).unwrap_err(),
        -rxen_abi::errno::ENOSYS
    );

    // Guest map requests: no host/device flag, a foreign domain, its own grants.
    let maps = [
        (0u32, GUEST),
        (GNTMAP_HOST_MAP, 3),
        (GNTMAP_HOST_MAP, GUEST),
    ];
    for (i, &(flags, dom)) in maps.iter().enumerate() {
        ram.write_obj(
            arg + i as u64 * 32,
            &GnttabMapGrantRef {
                flags,
                dom,
                r#ref: 11,
                ..Default::default()
            },
        )
        .unwrap();
    }
    let op = hypercall::decode(GNTTABOP_MAP_GRANT_REF, arg, 3, &GuestView::identity(&ram)).unwrap();
    assert_eq!(hypercall::execute(&t, &GuestView::identity(&ram), op), 0);
    let statuses: Vec<i16> = (0..3)
        .map(|i| {
            ram.read_obj::<GnttabMapGrantRef>(arg + i * 32)
                .unwrap()
                .status
        })
        .collect();
    assert_eq!(
        statuses,
        [GNTST_BAD_GNTREF, GNTST_BAD_DOMAIN, GNTST_GENERAL_ERROR]
    );
    assert_eq!(t.active_entries(), 0);

    let ap = XenAddToPhysmap {
        domid: rxen_abi::DOMID_SELF,
        space: XENMAPSPACE_GRANT_TABLE,
        idx: 1,
        gpfn: 0x652,
        size: 0,
    };
    assert_eq!(hypercall::add_to_physmap(&t, &ap), 0);
    assert_eq!(
        hypercall::add_to_physmap(
            &t,
            &XenAddToPhysmap {
                space: XENMAPSPACE_SHARED_INFO,
                ..ap
            }
        ),
        -i64::from(rxen_abi::errno::ENOSYS)
    );
    assert_eq!(
        hypercall::add_to_physmap(&t, &XenAddToPhysmap { domid: 3, ..ap }),
        -i64::from(rxen_abi::errno::ESRCH)
    );
    assert_eq!(
        hypercall::add_to_physmap(&t, &XenAddToPhysmap { gpfn: 0x2, ..ap }),
        -i64::from(rxen_abi::errno::EINVAL)
    );
}

proptest::proptest! {
    /// Arbitrary entries and sequences of map/unmap/copy/guest rewrites: never a panic,
    /// never an access outside a frame that was granted, and once every mapping is
    /// gone no entry is left pinned.
    #[test]
    fn arbitrary_entries_and_ops(
        entries in proptest::collection::vec((0u32..16, proptest::prelude::any::<u16>(), 0u16..4, proptest::prelude::any::<u32>()), 1..8),
        ops in proptest::collection::vec((0u8..6, 0u32..20, proptest::prelude::any::<bool>(), 0u64..4200, 0usize..300), 1..40),
    ) {
        let (ram, t) = setup();
        for &(gref, flags, domid, frame) in &entries {
            // Frames near DATA_PFN often, anything otherwise.
            let frame = if frame % 2 == 0 { DATA_PFN as u32 + frame % 3 } else { frame };
            grant(&ram, gref, domid, frame, flags);
        }
        let mut maps = Vec::new();
        for &(kind, gref, ro, off, len) in &ops {
            match kind {
                0 => if let Ok(m) = t.map(DOM0, gref, ro) { maps.push(m) },
                1 => { if !maps.is_empty() { maps.remove(off as usize % maps.len()); } }
                2 => { let mut b = vec![0u8; len]; let _ = t.copy_from_grant(DOM0, gref, off, &mut b); }
                3 => { let _ = t.copy_to_grant(DOM0, gref, off, &vec![1u8; len]); }
                4 => { let _ = ram.write_obj(entry_addr(gref % 512), &off.wrapping_mul(0x9e37_79b9_7f4a_7c15)); }
                _ => {
                    for m in &maps {
                        let mut b = vec![0u8; len];
                        let r = m.read(off, &mut b);
                        proptest::prop_assert_eq!(r.is_ok(), off + len as u64 <= PAGE_SIZE);
                        if m.write(off, &b).is_ok() {
                            proptest::prop_assert!(!m.readonly());
                        }
                    }
                }
            }
            // Nothing ever lands in the grant frame or outside the data pages.
            proptest::prop_assert_eq!(t.frame_pfns(1), vec![Some(TABLE_PFN)]);
        }
        drop(maps);
        proptest::prop_assert_eq!(t.active_entries(), 0);
    }
}
