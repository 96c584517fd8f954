//! Host network things a test makes: interface names unique to the test run, and a
//! bridge deleted when the test ends ([`TestBridge`]), so that tests never touch a
//! real network (such as the host's `xenbr0`).

use std::sync::atomic::{AtomicU32, Ordering};

/// An interface name unique to this test run: `prefix` + pid + counter (at most 15
/// bytes for a prefix of up to 4).
pub fn unique_ifname(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}

/// The name of a bridge that does not exist yet and is deleted (if xend created it)
/// when this guard drops, however the test ends.
pub struct TestBridge(pub String);

impl TestBridge {
    pub fn new() -> Self {
        let name = unique_ifname("rxb");
        assert!(
            !rxen_hostnet::link::exists(&name),
            "test bridge {name} exists already"
        );
        TestBridge(name)
    }
}

impl Default for TestBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestBridge {
    fn drop(&mut self) {
        if let Err(e) = rxen_hostnet::bridge::delete(&self.0) {
            eprintln!("removing test bridge {}: {e}", self.0);
        }
    }
}
