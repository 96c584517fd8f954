//! Bad input to `xen-vmm` and to the domain API: every case is a clear error, never
//! a panic or a hang.
// A test fails by panicking: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::io::Write;

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn write_temp(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("rxen-test-{}-{name}", std::process::id()));
    std::fs::File::create(&p)
        .and_then(|mut f| f.write_all(bytes))
        .expect("temp file");
    p
}

#[test]
fn missing_kernel_file() {
    let out = xen_vmm(&["--kernel", "/nonexistent/guest.elf"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("reading kernel /nonexistent/guest.elf"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn malformed_kernels_are_rejected() {
    if !kvm_available("malformed_kernels_are_rejected") {
        return;
    }
    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "garbage",
            b"this is not an ELF file at all".to_vec(),
            "missing ELF magic",
        ),
        (
            "truncated",
            std::fs::read(guest("hello")).expect("hello")[..100].to_vec(),
            "guest image rejected",
        ),
        (
            "script",
            b"#!/bin/sh\necho hi\n".to_vec(),
            "missing ELF magic",
        ),
    ];
    for (name, bytes, needle) in cases {
        let p = write_temp(name, &bytes);
        let out = xen_vmm(&["--kernel", p.to_str().expect("utf-8")]);
        let _ = std::fs::remove_file(&p);
        assert_eq!(out.status.code(), Some(1), "{name}");
        assert!(
            stderr_of(&out).contains(needle),
            "{name}: {}",
            stderr_of(&out)
        );
    }
    // A host binary is an ELF, but dynamic and linked low: rejected with a reason.
    let out = xen_vmm(&["--kernel", "/bin/true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("guest image rejected"),
        "{}",
        stderr_of(&out)
    );
}

/// Bug 7: out-of-range values were found only while creating the domain and exited
/// with 1 (VMM error) instead of 2 (usage error).
#[test]
fn bad_arguments_are_usage_errors() {
    // Validation happens before the kernel is read or KVM is opened: no KVM needed.
    let long = "x".repeat(1024);
    let cases: &[(&[&str], &str)] = &[
        (
            &["--memory", "7"],
            "memory must be a multiple of 2 MiB between 8 and 16384",
        ),
        (&["--memory", "3"], "memory must be"),
        (&["--memory", "999999999999"], "memory must be"),
        (&["--memory", "lots"], "invalid value 'lots'"),
        (&["--vcpus", "33"], "vcpus must be 1..=32"),
        (&["--vcpus", "0"], "vcpus must be"),
        (&["--uuid", "not-a-uuid"], "--uuid must look like"),
        (
            &["--uuid", "01234567-89ab-cdef-0123-456789abcdeg"],
            "--uuid must look like",
        ),
        (&["--domid", "0"], "domid must be between 1 and 32751"),
        (&["--domid", "32752"], "domid must be"),
        (&["--domid", "70000"], "invalid value '70000'"),
        (&["--domid", "one"], "invalid value 'one'"),
        (&["--cmdline", &long], "command line is 1024 bytes"),
    ];
    for (args, needle) in cases {
        let out = xen_vmm(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr_of(&out));
        assert!(
            stderr_of(&out).contains(needle),
            "{args:?}: {}",
            stderr_of(&out)
        );
    }
}

#[test]
fn sigterm_destroys_the_domain() {
    if !kvm_available("sigterm_destroys_the_domain") {
        return;
    }
    let g = guest("hello");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_xen-vmm"))
        .args([
            "run",
            "--kernel",
            g.to_str().expect("utf-8"),
            "--cmdline",
            "forever",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // Wait until the guest runs (it prints its heap figures), then signal.
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut seen = String::new();
    while !seen.contains("heap free") {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut stdout, &mut line).expect("read");
        assert!(n > 0, "the guest ended before it was up: {seen}");
        seen.push_str(&line);
    }
    // SAFETY: sending SIGTERM to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).expect("read");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(9), "{}", stderr_of(&out));
    assert!(!rest.contains("goodbye"));
}

/// Issue 13 item 6: a 1 GB sparse file, /dev/zero and /proc/self/mem as `--kernel`
/// were read whole (1 GB RSS) before the 64 MiB image limit said no. They are refused
/// by type and size before reading, with status 1 (image rejected) and a clear message,
/// quickly and without growing the VMM.
#[test]
fn huge_and_special_kernel_files_are_refused_before_reading() {
    let sparse = std::env::temp_dir().join(format!("rxen-test-{}-sparse", std::process::id()));
    std::fs::File::create(&sparse)
        .and_then(|f| f.set_len(1 << 30))
        .expect("sparse file");
    let sparse_s = sparse.to_str().expect("utf-8").to_owned();
    let cases = [
        (sparse_s.as_str(), "more than the 67108864 allowed"),
        ("/dev/zero", "not a regular file (a character device)"),
        ("/tmp", "not a regular file (a directory)"),
        // procfs says size 0: read at most the limit, and page 0 is unmapped.
        ("/proc/self/mem", "reading kernel /proc/self/mem"),
    ];
    for (path, needle) in cases {
        let t0 = std::time::Instant::now();
        let out = xen_vmm(&["--kernel", path]);
        let took = t0.elapsed();
        assert_eq!(out.status.code(), Some(1), "{path}: {}", stderr_of(&out));
        assert!(
            stderr_of(&out).contains(needle),
            "{path}: {}",
            stderr_of(&out)
        );
        assert!(
            took < std::time::Duration::from_secs(5),
            "{path} took {took:?}"
        );
    }
    let _ = std::fs::remove_file(&sparse);
}

#[test]
fn ramdisks_need_a_pv_kernel_and_a_readable_file() {
    if !kvm_available("ramdisks_need_a_pv_kernel_and_a_readable_file") {
        return;
    }
    // Every SDK guest is a PV kernel: take one without its notes.
    let hello = without_xen_notes("hello", "ramdisks_need_a_pv_kernel");
    let initrd = write_temp("initrd", b"an initrd");
    let out = xen_vmm(&[
        "--kernel",
        hello.to_str().expect("utf-8"),
        "--ramdisk",
        initrd.to_str().expect("utf-8"),
    ]);
    let _ = std::fs::remove_file(&initrd);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("a ramdisk needs a Xen PV kernel"),
        "{}",
        stderr_of(&out)
    );
    let out = xen_vmm(&[
        "--kernel",
        hello.to_str().expect("utf-8"),
        "--ramdisk",
        "/nonexistent/initrd",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("ramdisk"), "{}", stderr_of(&out));
    let _ = std::fs::remove_file(&hello);
}

/// `--vif` values that cannot be a vif are usage errors (exit 2) naming the problem;
/// a TAP that cannot be created is an error of the run (exit 1), before any guest
/// runs.
#[test]
fn bad_vifs_are_refused() {
    for (vif, needle) in [
        ("devid=0,mac=00:16:3e:01:02,tap=v", "six hex pairs"),
        (
            "devid=0,mac=00:16:3e:01:02:03,tap=waytoolonginterface",
            "interface name",
        ),
        ("devid=0,mac=00:16:3e:01:02:03", "expected devid=N"),
    ] {
        let out = xen_vmm(&["--xenstored-socket", "/nonexistent", "--vif", vif]);
        assert_eq!(out.status.code(), Some(2), "{vif}: {}", stderr_of(&out));
        assert!(
            stderr_of(&out).contains(needle),
            "{vif}: {}",
            stderr_of(&out)
        );
    }
    // Two vifs with one device number: refused before the domain is built.
    let hello = guest("hello");
    let out = xen_vmm(&[
        "--kernel",
        hello.to_str().expect("utf-8"),
        "--xenstored-socket",
        "/nonexistent",
        "--vif",
        "devid=0,mac=00:16:3e:01:02:03,tap=rxtestdup0",
        "--vif",
        "devid=0,mac=00:16:3e:01:02:04,tap=rxtestdup1",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("two vifs have device number 0"),
        "{}",
        stderr_of(&out)
    );
}
