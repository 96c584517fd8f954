//! The hostile Xen PV kernel `pvmmu` (guest/examples/src/bin/pvmmu, built with the
//! SDK, a PV kernel as every SDK guest) attacks the direct-paging MMU through real hypercalls:
//! every case must get Xen's answer (docs/guest-abi.md "Direct-paging MMU", errnos of
//! `pv/mmu/error.rs`), the legitimate sequence after the attacks must work, and the
//! domain must power off cleanly (a crash, a triple fault or a VMM error fails).
// A test fails by panicking: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rxen_abi::errno::{EBUSY, EFAULT, EINVAL, ENOSYS, EOPNOTSUPP, EPERM};
use rxen_abi::grant_table::{
    GNTST_BAD_DOMAIN, GNTST_BAD_GNTREF, GNTST_BAD_PAGE, GNTST_GENERAL_ERROR,
};

/// A refusal: the hypercall returns `-errno`.
const fn no(errno: i32) -> i64 {
    -(errno as i64)
}

/// What each case must print (`pvmmu: CASE = VALUE`); 1 means "true" for checks.
fn expected() -> BTreeMap<&'static str, i64> {
    let cases: &[(&str, i64)] = &[
        // update_va_mapping to frames the guest must not reach.
        ("map-rxen-stub-ro", no(EBUSY)),
        ("map-rxen-tss-rw", no(EBUSY)),
        ("map-not-ram", no(EPERM)),
        ("map-own-l4-rw", no(EBUSY)),
        ("map-own-l1-rw", no(EBUSY)),
        ("remap-l1-self-rw", no(EBUSY)),
        ("map-pwt-pcd", no(EINVAL)),
        ("map-shared-info-rw", 0),
        ("restore-victim", 0),
        ("uvm-hypervisor-range", no(EINVAL)),
        ("uvm-rxen-stub-va", no(EINVAL)),
        ("uvm-non-canonical", no(EINVAL)),
        ("uvm-no-l1", no(EINVAL)),
        // Table entries.
        ("l4-xen-slot-256", no(EINVAL)),
        ("l4-xen-slot-260", no(EINVAL)),
        ("l4-xen-slot-271", no(EINVAL)),
        ("l4-self-map", no(EINVAL)),
        ("l2-linear", no(EINVAL)),
        ("l2-points-at-l3", no(EINVAL)),
        ("l2-points-at-writable", no(EINVAL)),
        ("l3-points-at-rxen", no(EINVAL)),
        ("l2-superpage", no(EINVAL)),
        ("l1-entry-maps-l2-rw", no(EBUSY)),
        // Pins and base pointers.
        ("pin-writable-l1", no(EINVAL)),
        ("pin-l3-as-l2", no(EINVAL)),
        ("pin-l4-twice", no(EINVAL)),
        ("pin-rxen-frame", no(EINVAL)),
        ("unpin-never-pinned", no(EINVAL)),
        ("unpin-boot-l3", no(EINVAL)),
        ("new-baseptr-writable", no(EINVAL)),
        ("new-baseptr-l3", no(EINVAL)),
        ("new-baseptr-rxen", no(EINVAL)),
        ("new-baseptr-not-ram", no(EINVAL)),
        ("clear-page-l2", no(EINVAL)),
        ("clear-page-rxen-stub", no(EINVAL)),
        ("copy-page-into-l4", no(EINVAL)),
        ("copy-page-into-rxen-stub", no(EINVAL)),
        ("set-ldt-too-many", no(EINVAL)),
        ("set-ldt-misaligned", no(EINVAL)),
        ("set-ldt-hypervisor", no(EINVAL)),
        ("mark-super", no(EOPNOTSUPP)),
        ("unknown-ext-cmd", no(ENOSYS)),
        // mmu_update commands and targets, foreign domains.
        ("update-outside-ram", no(EINVAL)),
        ("update-rxen-stub", no(EINVAL)),
        ("update-rxen-stub-preserve-ad", no(EINVAL)),
        // Writable page tables are emulated (traps/ptwr.rs), so enabling them works.
        ("vm-assist-writable-pagetables", 0),
        ("update-bad-cmd-4", no(ENOSYS)),
        ("update-bad-cmd-7", no(ENOSYS)),
        ("machphys-rxen-frame", no(EINVAL)),
        ("machphys-outside-ram", no(EINVAL)),
        ("update-foreign", no(EPERM)),
        ("update-domid-io", no(EPERM)),
        ("update-foreign-high", no(EPERM)),
        ("ext-foreign", no(EPERM)),
        ("machphys-own-frame", 0),
        // Arrays and out-pointers.
        ("update-array-unmapped", no(EFAULT)),
        ("update-array-non-canonical", no(EFAULT)),
        ("update-array-wraps", no(EFAULT)),
        ("ext-array-unmapped", no(EFAULT)),
        ("update-pdone-rxen", no(EFAULT)),
        ("update-pdone-m2p", no(EFAULT)),
        ("ext-pdone-page-table", no(EFAULT)),
        ("ext-pdone-non-canonical", no(EFAULT)),
        ("ext-pdone-unmapped", no(EFAULT)),
        ("machphys-mapping-to-page-table", no(EFAULT)),
        ("machphys-mapping-to-rxen", no(EFAULT)),
        ("still-alive", 1),
        // Multicalls.
        ("multicall", 0),
        ("multicall-nested", no(EINVAL)),
        ("multicall-op-9999", no(ENOSYS)),
        ("multicall-op-max", no(ENOSYS)),
        ("multicall-iret", no(EINVAL)),
        ("multicall-xen-version-ok", 1),
        ("multicall-update-outside-ram", no(EINVAL)),
        ("multicall-update-unmapped", no(EFAULT)),
        ("multicall-ext-foreign", no(EPERM)),
        ("multicall-inner-untouched", 1),
        ("multicall-array-unmapped", no(EFAULT)),
        ("multicall-array-non-canonical", no(EFAULT)),
        ("multicall-array-page-table", no(EFAULT)),
        ("multicall-array-rxen", no(EFAULT)),
        ("multicall-too-many", no(EINVAL)),
        // Grant tables (statuses are GNTST_*). rxen does not map grants into PV
        // page tables (GNTTABOP_map_grant_ref with host_addr): a general error.
        ("gnttab-setup-rc", 0),
        ("gnttab-setup-status", 0),
        ("gnttab-frame-after-ram", 1),
        ("gnttab-map-frame-rw", 0),
        ("gnttab-restore-victim", 0),
        ("gnttab-map-bad-ref-rc", 0),
        ("gnttab-map-bad-ref-status", GNTST_GENERAL_ERROR.into()),
        ("gnttab-map-bad-domain-rc", 0),
        ("gnttab-map-bad-domain-status", GNTST_BAD_DOMAIN.into()),
        ("gnttab-copy-bad-source-ref-rc", 0),
        ("gnttab-copy-bad-source-ref-status", GNTST_BAD_GNTREF.into()),
        ("gnttab-copy-bad-dest-ref-rc", 0),
        ("gnttab-copy-bad-dest-ref-status", GNTST_BAD_GNTREF.into()),
        ("gnttab-copy-to-rxen-frame-rc", 0),
        ("gnttab-copy-to-rxen-frame-status", GNTST_BAD_PAGE.into()),
        ("gnttab-copy-from-rxen-frame-rc", 0),
        ("gnttab-copy-from-rxen-frame-status", GNTST_BAD_PAGE.into()),
        ("gnttab-copy-to-page-table-rc", 0),
        ("gnttab-copy-to-page-table-status", GNTST_BAD_PAGE.into()),
        ("tables-intact", 1),
        // The legitimate sequence.
        ("legit-table-read-only", 0),
        ("legit-pin-l1", 0),
        ("legit-link-l1", 0),
        ("legit-map-page", 0),
        ("legit-read-through-new-mapping", 1),
        ("legit-write-seen-directly", 1),
        ("legit-table-rw-while-pinned", no(EBUSY)),
        ("legit-unmap-page", 0),
        ("legit-unlink-l1", 0),
        ("legit-unpin-l1", 0),
        ("legit-table-rw-again", 0),
        ("legit-table-writable", 1),
        ("legit-unpin-again", no(EINVAL)),
        ("l4b-read-only", 0),
        ("l4b-pin", 0),
        ("l4b-new-baseptr", 0),
        ("l4b-running-with-rxen-slot", 1),
        ("l4b-back-to-boot-l4", 0),
        ("l4b-unpin", 0),
        ("l4b-writable-again", 0),
        // Non-leaf entries cleared and repointed, their tables reused (relink.rs).
        ("relink-l2-first-sees-a", 1),
        ("relink-l2-setup", 0),
        ("relink-l2-old-slot-sees-b", 1),
        ("relink-l2-reused-table-sees-c", 1),
        ("relink-l2-old-slot-again-b", 1),
        ("relink-l2-teardown", 0),
        ("relink-l3-first-sees-a", 1),
        ("relink-l3-setup", 0),
        ("relink-l3-old-slot-sees-b", 1),
        ("relink-l3-reused-table-sees-c", 1),
        ("relink-l3-old-slot-again-b", 1),
        ("relink-l3-teardown", 0),
        ("relink-hv-first-sees-a", 1),
        ("relink-hv-setup", 0),
        ("relink-hv-old-slot-sees-b", 1),
        ("relink-hv-reused-table-sees-c", 1),
        ("relink-hv-old-slot-again-b", 1),
        ("relink-hv-teardown", 0),
    ];
    cases.iter().copied().collect()
}

/// Runs `xen-vmm run --kernel pvmmu` to its end (killed after a deadline): (exit
/// code, stdout, stderr).
fn run_pvmmu() -> (Option<i32>, String, String) {
    let kernel = guest("pvmmu");
    let mut child = Command::new(env!("CARGO_BIN_EXE_xen-vmm"))
        .args(["run", "--kernel"])
        .arg(&kernel)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting xen-vmm");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).ok();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).ok();
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for xen-vmm") {
            break Some(status);
        }
        if Instant::now() > deadline {
            child.kill().expect("stopping xen-vmm");
            child.wait().expect("reaping xen-vmm");
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.and_then(|s| s.code()),
        out.join().unwrap(),
        err.join().unwrap(),
    )
}

#[test]
fn hostile_pv_kernel_gets_xens_errors_and_powers_off() {
    let test = "hostile_pv_kernel_gets_xens_errors_and_powers_off";
    if !kvm_available(test) {
        return;
    }
    // The SDK prints through the console ring: the domain console, stdout.
    let (code, out, err) = run_pvmmu();
    let ctx = format!("stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(code, Some(0), "the domain must power off; {ctx}");
    assert!(out.contains("pvmmu: done"), "{ctx}");
    assert!(!err.contains("panicked"), "{ctx}");
    let mut seen = BTreeMap::new();
    for line in out.lines() {
        let Some((case, value)) = line
            .strip_prefix("pvmmu: ")
            .and_then(|l| l.split_once(" = "))
        else {
            continue;
        };
        let value: i64 = value.trim().parse().expect("numeric result");
        assert!(
            seen.insert(case.to_owned(), value).is_none(),
            "{case} twice"
        );
    }
    let expected = expected();
    let mut wrong = Vec::new();
    for (case, want) in &expected {
        match seen.get(*case) {
            Some(got) if got == want => {}
            got => wrong.push(format!("{case}: want {want}, got {got:?}")),
        }
    }
    for case in seen.keys() {
        if !expected.contains_key(case.as_str()) {
            wrong.push(format!("{case}: printed but not expected"));
        }
    }
    assert!(wrong.is_empty(), "{}\n{ctx}", wrong.join("\n"));
}
