//! Helpers of the KVM integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

pub use rxen_testkit::{guest, kvm_available};

/// Runs `xen-vmm run` with `args`; returns its output.
pub fn xen_vmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xen-vmm"))
        .arg("run")
        .args(args)
        .output()
        .expect("running xen-vmm")
}

/// Runs guest `name` through `xen-vmm` and returns (exit code, stdout, stderr).
pub fn run_guest(name: &str, extra: &[&str]) -> (i32, String, String) {
    let g = guest(name);
    let mut args = vec!["--kernel", g.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    let out = xen_vmm(&args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A temporary directory for one test (removed on drop).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(test: &str) -> Self {
        let p = std::env::temp_dir().join(format!("rxen-vmm-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits for `cond` until `timeout`, polling; panics with `what` if it never holds.
pub fn wait_until<T>(
    what: &str,
    timeout: std::time::Duration,
    mut cond: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

pub mod fake_xenstored;
pub mod pv_kernel;

/// Resident memory of process `pid`, KiB (`VmRSS` of /proc/PID/status).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Sends one control request to the VMM at `socket` and reads its reply, giving up
/// after `timeout` (None: no answer in time, or no socket).
pub fn control_request(
    socket: &std::path::Path,
    req: &rxen_vmm_api::Request,
    timeout: std::time::Duration,
) -> Option<rxen_vmm_api::Reply> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    s.write_all(rxen_vmm_api::encode(req).as_bytes()).ok()?;
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line).ok()?;
    rxen_vmm_api::decode(&line, rxen_vmm_api::MAX_LINE).ok()
}

/// A copy of guest `name` without its Xen notes (their owner renamed), written to a
/// temporary file: the VMM builds it on rxen's old layout, entering the SDK's `_start`.
/// For the tests of what only kernels without notes get.
pub fn without_xen_notes(name: &str, test: &str) -> PathBuf {
    let mut elf = std::fs::read(guest(name)).expect("guest image");
    let mut renamed = 0;
    for i in 0..elf.len().saturating_sub(16) {
        if elf[i..i + 4] == [4, 0, 0, 0] && &elf[i + 12..i + 16] == b"Xen\0" {
            elf[i + 12..i + 16].copy_from_slice(b"Xxx\0");
            renamed += 1;
        }
    }
    assert!(renamed > 0, "{name} has no Xen notes");
    let p = std::env::temp_dir().join(format!("rxen-{test}-{name}-{}", std::process::id()));
    std::fs::write(&p, elf).expect("write the image");
    p
}

/// As [`run_guest`], but the guest is killed after `limit` (exit code -1 then), so a
/// hanging guest fails its test instead of hanging it.
pub fn run_guest_within(
    name: &str,
    extra: &[&str],
    limit: std::time::Duration,
) -> (i32, String, String) {
    use std::io::Read;
    let g = guest(name);
    let mut child = Command::new(env!("CARGO_BIN_EXE_xen-vmm"))
        .args(["run", "--kernel", g.to_str().expect("utf-8 path")])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running xen-vmm");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = std::time::Instant::now() + limit;
    let code = loop {
        if let Some(status) = child.try_wait().expect("waiting for xen-vmm") {
            break status.code().unwrap_or(-1);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break -1;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    (
        code,
        out.join().expect("stdout"),
        err.join().expect("stderr"),
    )
}

/// The last tick the `memcheck` guest printed as checked (`memcheck: tick=N ... ok`)
/// on `s`; panics on a line saying a check FAILED.
pub fn memcheck_last_tick(s: &rxen_vmm::console::CaptureSink) -> Option<u64> {
    let out = s.text();
    assert!(!out.contains("FAILED"), "{out}");
    out.lines()
        .filter(|l| l.starts_with("memcheck: tick=") && l.ends_with(" ok"))
        .filter_map(|l| l["memcheck: tick=".len()..].split(' ').next()?.parse().ok())
        .next_back()
}
