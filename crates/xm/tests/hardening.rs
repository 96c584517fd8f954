//! xm facing hostile local input (issue 13): files that must not be read whole.
// A test fails by panicking: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `xm ARGS` (against an address where nothing listens) and returns its exit
/// success and stderr; kills it and fails if it runs longer than `limit`.
fn xm_within(args: &[&str], limit: Duration) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_xm"))
        .args(args)
        .env("XEND_URL", "http://127.0.0.1:1")
        .env_remove("XEND_AUTH_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running xm");
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.success(), err);
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("xm {args:?} still running after {limit:?} (reading without bound?)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Item 6: `xm create /dev/zero` read until OOM; a 1 GB sparse file was read whole.
#[test]
fn create_and_new_refuse_device_files_and_huge_files_before_reading() {
    for cmd in ["create", "new"] {
        let (ok, err) = xm_within(&[cmd, "/dev/zero"], Duration::from_secs(10));
        assert!(!ok);
        assert!(err.contains("/dev/zero is not a regular file"), "{err}");
    }
    let dir = std::env::temp_dir().join(format!("xm-hardening-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sparse = dir.join("huge.cfg");
    std::fs::File::create(&sparse)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let path = sparse.to_str().unwrap();
    for cmd in ["create", "new"] {
        let (ok, err) = xm_within(&[cmd, path], Duration::from_secs(10));
        assert!(!ok);
        assert!(
            err.contains("larger than the limit of 1048576 bytes"),
            "{err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
