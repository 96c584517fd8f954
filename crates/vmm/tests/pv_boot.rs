//! Boots Xen's Mini-OS (`../shared/guests/mini-os-blk`, or `RXEN_GUESTS_DIR`) with
//! `xen-vmm run --pv` on Xen's PV start-of-day layout.
//!
//! What this proves (issue 8): the domain builder's layout, page tables, start_info and
//! hypercall page are right enough for Mini-OS to run at CPL 3 through rxen's PV page
//! tables; its hypercall page's `syscall` entries reach the VMM through the stub in
//! rxen's reserved L4 slot (its first hypercall is `console_io`, "Bootstrapping...");
//! `set_trap_table` and `set_callbacks` succeed; and exceptions reach its own handlers
//! through rxen's GDT/IDT/trap stubs in slot 257 with Xen's selectors. The test stops
//! the VMM itself once it has seen what it waits for (or at its deadline).
// A test fails by panicking: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
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

/// Collects a pipe into a shared string (at most `cap` bytes) on a thread.
fn collect(mut r: impl Read + Send + 'static, cap: usize) -> Arc<Mutex<String>> {
    let s = Arc::new(Mutex::new(String::new()));
    let out = s.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            let mut s = out.lock().unwrap();
            if s.len() < cap {
                s.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
    });
    s
}

/// Boots Mini-OS until `done(stdout, stderr)` holds, it exits, or 20 s pass; then
/// stops it. Returns (stdout, stderr), or `None` when the test must skip.
fn boot_mini_os(
    test: &str,
    log: &str,
    done: impl Fn(&str, &str) -> bool,
) -> Option<(String, String)> {
    boot_mini_os_with(test, log, &[], done)
}

/// [`boot_mini_os`] with more `xen-vmm run` arguments.
fn boot_mini_os_with(
    test: &str,
    log: &str,
    extra: &[&std::ffi::OsStr],
    done: impl Fn(&str, &str) -> bool,
) -> Option<(String, String)> {
    if !kvm_available(test) {
        return None;
    }
    let Some(kernel) = mini_os() else {
        eprintln!("SKIPPED {test}: ../shared/guests/mini-os-blk not found (set RXEN_GUESTS_DIR)");
        return None;
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_xen-vmm"))
        .args(["run", "--pv", "--kernel"])
        .arg(&kernel)
        .args(extra)
        .env("RXEN_LOG", log)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting xen-vmm");
    let out = collect(child.stdout.take().unwrap(), 1 << 20);
    let err = collect(child.stderr.take().unwrap(), 4 << 20);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let exited = child.try_wait().expect("waiting for xen-vmm").is_some();
        let seen = done(&out.lock().unwrap(), &err.lock().unwrap());
        if exited || seen || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Still running (Mini-OS cannot finish yet): stop our own child.
    let _ = child.kill();
    child.wait().expect("reaping xen-vmm");
    // The collectors end at EOF, which the exit gives them.
    let end = Instant::now() + Duration::from_secs(5);
    while Arc::strong_count(&out) > 1 || Arc::strong_count(&err) > 1 {
        if Instant::now() > end {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let o = out.lock().unwrap().clone();
    let e = err.lock().unwrap().clone();
    Some((o, e))
}

/// The names of the hypercalls in a `rxen_vmm::hypercall=trace` log, in order.
fn hypercalls(err: &str) -> Vec<(&str, &str)> {
    err.lines()
        .filter(|l| l.contains(" hypercall "))
        .filter_map(|l| {
            let name = l.split("name=\"").nth(1)?.split('"').next()?;
            let rc = l.split("rc=").nth(1)?.split_whitespace().next()?;
            Some((name, rc))
        })
        .collect()
}

#[test]
fn mini_os_starts_and_makes_its_first_hypercalls() {
    let test = "mini_os_starts_and_makes_its_first_hypercalls";
    let filter = "rxen_vmm::hypercall=trace,rxen_vmm::hypervisor_console=info";
    let Some((out, err)) = boot_mini_os(test, filter, |_, e| hypercalls(e).len() >= 3) else {
        return;
    };
    // `console_io` is Xen's hypervisor console: logged, not the domain's console.
    assert!(
        err.contains("(d1) Bootstrapping..."),
        "stdout: {out}\nstderr: {err}"
    );
    assert!(!out.contains("Bootstrapping..."), "stdout: {out}");
    assert_eq!(
        hypercalls(&err).get(..3),
        Some(
            &[
                ("console_io", "17"),
                ("set_trap_table", "0"),
                ("set_callbacks", "0")
            ][..]
        ),
        "stderr: {err}"
    );
}

/// Mini-OS reads the M2P at `machine_to_phys_mapping` (slot 256, which this host
/// keeps for itself: every access faults). The fault comes through rxen's IDT and trap
/// stubs in slot 257 (Xen's selectors), the load is emulated, and Mini-OS goes on to
/// map its `shared_info` with `update_va_mapping` instead of triple-faulting.
#[test]
fn mini_os_gets_past_its_m2p_reads() {
    let test = "mini_os_gets_past_its_m2p_reads";
    let log = "rxen_vmm::hypercall=trace,rxen_vmm::traps=trace";
    let Some((out, err)) = boot_mini_os(test, log, |_, e| hypercalls(e).len() >= 4) else {
        return;
    };
    let calls: Vec<&str> = hypercalls(&err).iter().map(|c| c.0).collect();
    assert_eq!(
        calls.get(..4),
        Some(
            &[
                "console_io",
                "set_trap_table",
                "set_callbacks",
                "update_va_mapping"
            ][..]
        ),
        "stdout: {out}\nstderr: {err}"
    );
    let emulated = err
        .lines()
        .filter(|l| l.contains("M2P read emulated"))
        .count();
    assert!(emulated >= 1, "stderr: {err}");
    assert!(!err.contains("triple-fault"), "stderr: {err}");
}

/// Mini-OS returns from its exception handlers with a direct `iretq` to Xen's flat
/// selectors; rxen's GDT (page 14 of a Xen-shaped GDT in slot 257) must let them load.
/// A minimal PV kernel builds an `iretq` frame with CS 0xe033 / SS 0xe02b returning to
/// its `ud2`: the domain must end at that `ud2` (#UD, no trap table), not with a #GP.
#[test]
fn direct_iretq_to_xen_flat_selectors_loads_them() {
    let test = "direct_iretq_to_xen_flat_selectors_loads_them";
    if !kvm_available(test) {
        return;
    }
    let code = [
        0x48, 0x89, 0xe0, // mov rax, rsp
        0x68, 0x2b, 0xe0, 0, 0,    // push 0xe02b (ss)
        0x50, // push rax (rsp)
        0x9c, // pushfq
        0x68, 0x33, 0xe0, 0, 0, // push 0xe033 (cs)
        0x48, 0x8d, 0x0d, 0x03, 0, 0, 0,    // lea rcx, [rip + 3] (the ud2)
        0x51, // push rcx
        0x48, 0xcf, // iretq
        0x0f, 0x0b, // ud2 (at 0x19)
    ];
    let dir = TempDir::new(test);
    let path = dir.0.join("iretq");
    std::fs::write(&path, common::pv_kernel::pv_kernel(&code)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xen-vmm"))
        .args(["run", "--pv", "--kernel"])
        .arg(&path)
        .env("RXEN_LOG", "warn")
        .output()
        .expect("running xen-vmm");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("vector 6 ") && err.contains("at rip 0x19"),
        "stderr: {err}"
    );
}

/// `ramdisk=`: the initrd is loaded after the kernel and Mini-OS sees it in start_info
/// (it prints `mod_start` and `mod_len` at boot).
#[test]
fn mini_os_is_given_its_ramdisk() {
    let test = "mini_os_is_given_its_ramdisk";
    let dir = std::env::temp_dir().join(format!("rxen-ramdisk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let initrd = dir.join("initrd.img");
    let len = 3 * 4096 + 123;
    std::fs::write(&initrd, vec![0x5a; len]).unwrap();
    let args = [std::ffi::OsStr::new("--ramdisk"), initrd.as_os_str()];
    let Some((out, err)) = boot_mini_os_with(test, "warn", &args, |o, _| o.contains("cmd_line:"))
    else {
        return;
    };
    let _ = std::fs::remove_dir_all(&dir);
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in: {out}\nstderr: {err}"))
    };
    // Xen's builder gives the segment's length, i.e. page-rounded (xg_dom_x86.c).
    assert_eq!(field("mod_len:"), (4 * 4096).to_string(), "{out}");
    let start = field("mod_start:");
    assert_ne!(
        start, "0x0(VA)",
        "the ramdisk is mapped after the kernel: {out}"
    );
}
