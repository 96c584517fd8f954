//! Helpers shared by rxen's integration tests (a dev-dependency only).
//!
//! Owns the rules every test follows: the KVM skip rule ([`kvm_available`]: skip
//! loudly, or fail when `RXEN_REQUIRE_KVM=1`), waiting on a condition with a deadline
//! ([`wait_until`], never a fixed sleep), finding built binaries and guests, a real
//! xenstored + xend environment ([`xend_env::Env`]), and test-owned bridges ([`net`]). It must not contain product code.
// Test support: a failed expectation here is a failed test, so panicking is its error path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod net;
pub mod xend_env;

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use xend_env::Env;

/// True if `/dev/kvm` can be opened. If not, says loudly that the calling test is
/// skipped and why, or fails the test when `RXEN_REQUIRE_KVM=1` (CI on KVM hosts).
pub fn kvm_available(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            if std::env::var("RXEN_REQUIRE_KVM").as_deref() == Ok("1") {
                panic!("{test}: /dev/kvm is not usable ({e}) and RXEN_REQUIRE_KVM=1");
            }
            eprintln!("SKIPPED {test}: /dev/kvm is not usable here ({e}); this test needs KVM");
            false
        }
    }
}

/// Waits until `f` holds, polling every few milliseconds; fails the test naming `what`
/// once `timeout` has passed.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A binary of this workspace, next to the test's own build (`target/<profile>/NAME`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/NAME
    let p = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join(name))
        .expect("target directory");
    assert!(
        p.exists(),
        "{} is not built; run `cargo build --workspace` first",
        p.display()
    );
    p
}

/// Path of example guest `name` (built by `rxen-guest-images`).
pub fn guest(name: &str) -> PathBuf {
    rxen_guest_images::guest_path(name)
}

/// Is process `pid` alive (a zombie is not)? The same check xend makes.
pub fn pid_alive(pid: u64) -> bool {
    u32::try_from(pid).is_ok_and(rxen_xend::process::pid_alive)
}

/// A TCP port free on loopback right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
