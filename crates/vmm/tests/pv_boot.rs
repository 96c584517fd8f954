//! Boots Xen's Mini-OS (`../shared/guests/mini-os-blk`, or `RXEN_GUESTS_DIR`) with
//! `xen-vmm run --pv` on Xen's PV start-of-day layout.
//!
//! What this proves today (issue 8, builder only): the domain builder's layout, page
//! tables, start_info and hypercall page are right enough for Mini-OS to run its first
//! instructions at CPL 3 through rxen's PV page tables, and its hypercall page's
//! `syscall` entries reach the VMM through the stub in rxen's reserved L4 slot: its
//! first hypercall is `console_io` ("Bootstrapping..." appears on the console), its
//! next `set_trap_table`. Traps, callbacks and the M2P are not wired yet, so Mini-OS
//! then fails (at the time of writing: `set_trap_table` and `set_callbacks` return
//! -ENOSYS and its first read of the M2P at 0xffff800000000000 triple-faults). The test
//! does not assert that failure, so it keeps passing as those pieces arrive; it stops
//! the VMM itself if Mini-OS is still running after its deadline.
// A test fails by panicking: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn mini_os() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("RXEN_GUESTS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/guests")
        });
    let p = dir.join("mini-os-blk");
    p.exists().then_some(p)
}

#[test]
fn mini_os_starts_and_makes_its_first_hypercalls() {
    let test = "mini_os_starts_and_makes_its_first_hypercalls";
    if !kvm_available(test) {
        return;
    }
    let Some(kernel) = mini_os() else {
        eprintln!("SKIPPED {test}: ../shared/guests/mini-os-blk not found (set RXEN_GUESTS_DIR)");
        return;
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_xen-vmm"))
        .args(["run", "--pv", "--kernel"])
        .arg(&kernel)
        .env("RXEN_LOG", "rxen_vmm::hypercall=trace")
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
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if child.try_wait().expect("waiting for xen-vmm").is_some() {
            break;
        }
        if Instant::now() > deadline {
            // Still running (later work may get Mini-OS further): stop our child.
            child.kill().expect("stopping xen-vmm");
            child.wait().expect("reaping xen-vmm");
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = out.join().unwrap();
    let err = err.join().unwrap();
    assert!(
        out.contains("Bootstrapping..."),
        "stdout: {out}\nstderr: {err}"
    );
    let calls: Vec<&str> = err
        .lines()
        .filter(|l| l.contains(" hypercall "))
        .filter_map(|l| l.split("name=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(
        calls.get(..2),
        Some(&["console_io", "set_trap_table"][..]),
        "stderr: {err}"
    );
}
