//! Grant tables end to end (issue 8 item 5): the `granttest` guest grants pages with
//! the SDK, domain 0 (the in-process `Domain`'s `shared().grants`) maps, reads, writes
//! and unmaps them, the guest revokes; in hostile mode the guest's garbage entries and
//! bad grant hypercalls get Xen's `GNTST_*` statuses and the VMM stays healthy.
// A test fails by panicking: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::time::Duration;

use rxen_abi::grant_table::*;
use rxen_abi::PAGE_SIZE;
use rxen_vmm::console::CaptureSink;
use rxen_vmm::grant::{GrantError, DOM0};
use rxen_vmm::{Domain, DomainConfig, DomainExit};

const WAIT: Duration = Duration::from_secs(15);
const RO_REF: u32 = 8;
const RW_REF: u32 = 9;

fn start(cmdline: &str) -> (Domain, CaptureSink) {
    let image = std::fs::read(guest("granttest")).expect("granttest guest");
    let sink = CaptureSink::default();
    let cfg = DomainConfig {
        name: "granttest".into(),
        cmdline: cmdline.into(),
        ..Default::default()
    };
    let d = Domain::create(cfg, &image, Box::new(sink.clone())).expect("create");
    wait_for(&sink, "granttest: ready");
    (d, sink)
}

fn wait_for(sink: &CaptureSink, text: &str) {
    wait_until(&format!("{text:?} on the console"), WAIT, || {
        sink.text().contains(text).then_some(())
    });
}

/// Sends a command line and waits for the guest's answer line starting with `answer`;
/// returns the rest of that (newest) line.
fn command(d: &Domain, sink: &CaptureSink, line: &str, answer: &str) -> String {
    let before = sink.text().len();
    d.shared().console_input(format!("{line}\n").as_bytes());
    wait_until(&format!("the answer to {line:?}"), WAIT, || {
        let out = sink.text();
        out[before..]
            .lines()
            .find_map(|l| l.strip_prefix(answer))
            .map(str::to_owned)
    })
}

/// Byte `i` of the guest's read-only page (the guest's `pattern`).
fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(7).wrapping_add(1) % 251) as u8
}

/// The line `granttest: CASE: ...` of hostile mode, without the prefix.
fn case(out: &str, name: &str) -> String {
    let prefix = format!("granttest: {name}: ");
    out.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no line for {name:?} in:\n{out}"))
        .to_owned()
}

#[test]
fn dom0_maps_reads_writes_and_the_guest_revokes() {
    if !kvm_available("dom0_maps_reads_writes_and_the_guest_revokes") {
        return;
    }
    let (d, sink) = start("");
    let out = sink.text();
    assert!(
        out.contains("granttest: ro ref=8 pfn=0x") && out.contains(" rw ref=9 pfn=0x"),
        "{out}"
    );
    let grants = &d.shared().grants;

    // The read-only grant shows the guest's pattern; writes through it are refused.
    let ro = grants
        .map(DOM0, RO_REF, true)
        .expect("map the read-only grant");
    let mut page = vec![0u8; PAGE_SIZE as usize];
    ro.read(0, &mut page).expect("read");
    assert!(
        page.iter().enumerate().all(|(i, &b)| b == pattern(i)),
        "the pattern"
    );
    assert_eq!(ro.write(0, b"x"), Err(GrantError::WriteToReadOnly));
    let err = grants.map(DOM0, RO_REF, false).unwrap_err();
    assert_eq!(err.status(), GNTST_GENERAL_ERROR, "{err}");
    // A copy into it is refused too.
    let err = grants.copy_to_grant(DOM0, RO_REF, 0, b"x").unwrap_err();
    assert_eq!(err.status(), GNTST_GENERAL_ERROR, "{err}");
    let mut pattern_again = vec![0u8; PAGE_SIZE as usize];
    ro.read(0, &mut pattern_again).unwrap();
    assert_eq!(page, pattern_again, "nothing changed the read-only page");

    // The read-write grant: domain 0 writes, the guest sees it.
    let rw = grants
        .map(DOM0, RW_REF, false)
        .expect("map the read-write grant");
    rw.write(0, b"written by dom0\0").expect("write");
    assert_eq!(
        command(&d, &sink, "show", "granttest: rw page: "),
        "\"written by dom0\""
    );
    // A bounded window: no access beyond the page.
    let err = rw.write(PAGE_SIZE - 2, b"abc").unwrap_err();
    assert_eq!(err.status(), GNTST_BAD_COPY_ARG);

    // Revoking while mapped is refused; after the unmap it works.
    assert_eq!(
        command(&d, &sink, "end 8", "granttest: end_access(8): "),
        "busy"
    );
    assert_eq!(
        command(&d, &sink, "end 9", "granttest: end_access(9): "),
        "busy"
    );
    ro.unmap();
    assert_eq!(
        command(&d, &sink, "end 8", "granttest: end_access(8): "),
        "ok"
    );
    // The ended grant cannot be mapped again.
    let err = grants.map(DOM0, RO_REF, true).unwrap_err();
    assert_eq!(err.status(), GNTST_GENERAL_ERROR, "{err}");
    // The read-write grant is still held; a copy still works through it.
    grants
        .copy_to_grant(DOM0, RW_REF, 0, b"copied\0")
        .expect("copy");
    assert_eq!(
        command(&d, &sink, "show", "granttest: rw page: "),
        "\"copied\""
    );
    drop(rw);
    assert_eq!(grants.active_entries(), 0);
    assert_eq!(
        command(&d, &sink, "end 9", "granttest: end_access(9): "),
        "ok"
    );

    d.shared().console_input(b"off\n");
    assert_eq!(d.wait(), DomainExit::Poweroff);
    assert!(sink.text().contains("granttest: goodbye"));
}

#[test]
fn hostile_grants_get_xen_statuses_and_the_vmm_stays_healthy() {
    if !kvm_available("hostile_grants_get_xen_statuses_and_the_vmm_stays_healthy") {
        return;
    }
    let (d, sink) = start("hostile");
    let out = sink.text();
    assert!(out.contains("granttest: hostile done"), "{out}");
    let grants = &d.shared().grants;

    // Garbage entries, mapped by domain 0: (ref, readonly, expected status).
    let garbage: &[(u32, bool, i16)] = &[
        (20, true, GNTST_GENERAL_ERROR), // accept-transfer type
        (21, true, GNTST_GENERAL_ERROR), // granted to domain 7
        (22, true, GNTST_GENERAL_ERROR), // sub-page flag on a v1 map
        (23, true, GNTST_BAD_PAGE),      // frame beyond RAM
        (24, true, GNTST_BAD_PAGE),      // the grant frame itself
        (25, false, GNTST_BAD_PAGE),     // page tables, writable
        (26, true, GNTST_BAD_PAGE),      // null frame
        (27, true, GNTST_GENERAL_ERROR), // all flag bits (type 3)
        (28, false, GNTST_BAD_PAGE),     // hypercall page, writable
        (512, true, GNTST_BAD_GNTREF),   // beyond the one-frame table
        (u32::MAX, true, GNTST_BAD_GNTREF),
    ];
    for &(gref, readonly, status) in garbage {
        let err = grants.map(DOM0, gref, readonly).map(|_| ()).unwrap_err();
        assert_eq!(err.status(), status, "ref {gref}: {err}");
        // A copy makes the same checks (a read copy for read-only cases, a write copy
        // for writable ones), except that v1 copies ignore `GTF_sub_page` (Xen
        // refuses it only for maps).
        let mut buf = [0u8; 8];
        let copied = if readonly {
            grants.copy_from_grant(DOM0, gref, 0, &mut buf)
        } else {
            grants.copy_to_grant(DOM0, gref, 0, &buf)
        };
        if gref == 22 {
            copied.expect("a read copy of a sub-page v1 grant");
        } else {
            let err = copied.unwrap_err();
            assert_eq!(err.status(), status, "copy with ref {gref}: {err}");
        }
    }
    // Failed pins leave nothing behind.
    assert_eq!(grants.active_entries(), 0);

    // The guest's own bad hypercalls.
    let expect: &[(&str, String)] = &[
        (
            "setup 65 frames",
            format!("rc=0 status={GNTST_GENERAL_ERROR}"),
        ),
        (
            "setup u32::MAX frames",
            format!("rc=0 status={GNTST_GENERAL_ERROR}"),
        ),
        ("setup null frame list", "rc=-14 status=99".into()),
        (
            "setup other domain",
            format!("rc=0 status={GNTST_BAD_DOMAIN}"),
        ),
        ("copy own frames", format!("rc=0 status={GNTST_OKAY}")),
        (
            "copy across the page",
            format!("rc=0 status={GNTST_BAD_COPY_ARG}"),
        ),
        (
            "copy to a frame beyond RAM",
            format!("rc=0 status={GNTST_BAD_PAGE}"),
        ),
        (
            "copy to the page tables",
            format!("rc=0 status={GNTST_BAD_PAGE}"),
        ),
        (
            "copy from domain 0's frame",
            format!("rc=0 status={GNTST_PERMISSION_DENIED}"),
        ),
        (
            "copy from a grant of domain 0",
            format!("rc=0 status={GNTST_BAD_DOMAIN}"),
        ),
        (
            "copy from grant ref 99999",
            format!("rc=0 status={GNTST_BAD_GNTREF}"),
        ),
        (
            "copy from a grant for domain 0",
            format!("rc=0 status={GNTST_GENERAL_ERROR}"),
        ),
        ("copy null pointer", "rc=-14".into()),
        ("copy 513 ops", "rc=-22".into()),
        (
            "map from domain 0",
            format!("rc=0 status={GNTST_BAD_DOMAIN}"),
        ),
        ("unmap handle 0", format!("rc=0 status={GNTST_BAD_HANDLE}")),
        ("set_version 2", "rc=-38 version=1".into()),
        ("transfer", "rc=-38".into()),
        ("physmap frame 64", "rc=-22".into()),
        ("physmap status frame", "rc=-22".into()),
        ("physmap beyond RAM", "rc=-22".into()),
        ("physmap low memory", "rc=-22".into()),
        ("physmap onto frame 0", "rc=-22".into()),
    ];
    let mut wrong = Vec::new();
    for (name, want) in expect {
        let got = case(&out, name);
        if &got != want {
            wrong.push(format!("{name}: got {got}, want {want}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // Still healthy: the good grants work, revoke is still busy while mapped, and the
    // guest powers off normally.
    let ro = grants
        .map(DOM0, RO_REF, true)
        .expect("map after the attacks");
    let mut b = [0u8; 4];
    ro.read(0, &mut b).unwrap();
    assert_eq!(b, [pattern(0), pattern(1), pattern(2), pattern(3)]);
    assert_eq!(
        command(&d, &sink, "end 8", "granttest: end_access(8): "),
        "busy"
    );
    drop(ro);
    assert_eq!(
        command(&d, &sink, "end 8", "granttest: end_access(8): "),
        "ok"
    );
    assert!(d.shared().exit_reason().is_none());
    d.shared().console_input(b"off\n");
    assert_eq!(d.wait(), DomainExit::Poweroff);
}
