//! Grant-table operations with bad refs and frames the guest must not reach.

use rxen_guest::abi::grant_table::*;
use rxen_guest::abi::hypercall as nr;
use rxen_guest::abi::DOMID_SELF;
use rxen_guest::hypercall::hypercall3;

use rxen_guest::abi::mmu::UVMF_INVLPG;

use crate::calls::{update_va_mapping, A, P, RW};
use crate::{report, Setup};

/// A grant ref beyond any table rxen gives.
const BAD_REF: u32 = 100_000;

fn gnttab<T>(cmd: u64, op: &mut T) -> i64 {
    // SAFETY: `op` is a valid structure of the command's type.
    unsafe { hypercall3(nr::GRANT_TABLE_OP, cmd, op as *mut T as u64, 1) }
}

fn copy(s: &Setup, source: GnttabCopyPtr, dest: GnttabCopyPtr, flags: u16) -> (i64, i64) {
    let _ = s;
    let mut op = GnttabCopy {
        source,
        dest,
        len: 8,
        flags,
        ..Default::default()
    };
    let rc = gnttab(GNTTABOP_COPY, &mut op);
    (rc, i64::from(op.status))
}

/// `setup_table`, then maps and copies through refs and frames that are not valid.
pub fn bad_refs(s: &Setup) {
    let mut frame = 0u64;
    let mut st = GnttabSetupTable {
        dom: DOMID_SELF,
        nr_frames: 1,
        frame_list: &mut frame as *mut u64 as u64,
        ..Default::default()
    };
    let rc = gnttab(GNTTABOP_SETUP_TABLE, &mut st);
    report("gnttab-setup-rc", rc);
    report("gnttab-setup-status", i64::from(st.status));
    // The grant frame lies in rxen's area, after the guest's RAM.
    report("gnttab-frame-after-ram", i64::from(frame >= s.nr_pages));
    // The grant frame is the guest's to map read-write (then the page is restored).
    let victim = s.scratch_va(0);
    report(
        "gnttab-map-frame-rw",
        update_va_mapping(victim, frame << 12 | P | RW | A, UVMF_INVLPG),
    );
    report(
        "gnttab-restore-victim",
        update_va_mapping(victim, s.scratch_frame(0) << 12 | P | RW | A, UVMF_INVLPG),
    );

    let mut map = GnttabMapGrantRef {
        host_addr: s.scratch_va(1),
        flags: GNTMAP_HOST_MAP,
        r#ref: BAD_REF,
        dom: DOMID_SELF,
        ..Default::default()
    };
    report(
        "gnttab-map-bad-ref-rc",
        gnttab(GNTTABOP_MAP_GRANT_REF, &mut map),
    );
    report("gnttab-map-bad-ref-status", i64::from(map.status));
    let mut map = GnttabMapGrantRef {
        host_addr: s.scratch_va(1),
        flags: GNTMAP_HOST_MAP,
        r#ref: 8,
        dom: 12345,
        ..Default::default()
    };
    report(
        "gnttab-map-bad-domain-rc",
        gnttab(GNTTABOP_MAP_GRANT_REF, &mut map),
    );
    report("gnttab-map-bad-domain-status", i64::from(map.status));

    let own = |gmfn: u64| GnttabCopyPtr {
        u: gmfn,
        domid: DOMID_SELF,
        ..Default::default()
    };
    let by_ref = |r: u32| GnttabCopyPtr {
        u: u64::from(r),
        domid: DOMID_SELF,
        ..Default::default()
    };
    let (rc, st) = copy(
        s,
        by_ref(BAD_REF),
        own(s.scratch_frame(1)),
        GNTCOPY_SOURCE_GREF,
    );
    report("gnttab-copy-bad-source-ref-rc", rc);
    report("gnttab-copy-bad-source-ref-status", st);
    let (rc, st) = copy(
        s,
        own(s.scratch_frame(1)),
        by_ref(BAD_REF),
        GNTCOPY_DEST_GREF,
    );
    report("gnttab-copy-bad-dest-ref-rc", rc);
    report("gnttab-copy-bad-dest-ref-status", st);
    let (rc, st) = copy(s, own(s.scratch_frame(1)), own(s.rxen_stub_frame()), 0);
    report("gnttab-copy-to-rxen-frame-rc", rc);
    report("gnttab-copy-to-rxen-frame-status", st);
    let (rc, st) = copy(s, own(s.rxen_stub_frame()), own(s.scratch_frame(1)), 0);
    report("gnttab-copy-from-rxen-frame-rc", rc);
    report("gnttab-copy-from-rxen-frame-status", st);
    let (rc, st) = copy(s, own(s.scratch_frame(1)), own(s.l4), 0);
    report("gnttab-copy-to-page-table-rc", rc);
    report("gnttab-copy-to-page-table-status", st);
}
