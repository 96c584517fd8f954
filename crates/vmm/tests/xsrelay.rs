//! The xenstore relay across xenstored restarts (issue 13 item 5): when xenstored's
//! connection is lost mid-request and its socket comes back, the guest's xenstore
//! client gets an error for the request that was lost (not a hang, not garbage from a
//! half-received reply) and then works again through the new connection.
// A test fails by panicking: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::fake_xenstored::FakeXenstored;
use common::*;

use std::process::{Command, Stdio};
use std::time::Duration;

use rxen_vmm_api::{Reply, Request};

#[test]
fn relay_reconnects_after_xenstored_restarts() {
    if !kvm_available("relay_reconnects_after_xenstored_restarts") {
        return;
    }
    let dir = TempDir::new("xsrelay-reconnect");
    let (control, log, xs) = (
        dir.0.join("control"),
        dir.0.join("console.log"),
        dir.0.join("xs.sock"),
    );
    // The first xenstored answers 5 reads, then dies halfway through a reply.
    let first = FakeXenstored::start(&xs, "first", Some(5));
    let mut child = Command::new(env!("CARGO_BIN_EXE_xen-vmm"))
        .arg("run")
        .arg("--kernel")
        .arg(guest("hostile"))
        .arg("--cmdline=xs-read-loop")
        .arg("--control")
        .arg(&control)
        .arg("--console-log")
        .arg(&log)
        .arg("--xenstore-socket")
        .arg(&xs)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn xen-vmm");
    let console = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("the lost request's error", Duration::from_secs(20), || {
        console().contains("xs-read-loop: error EIO").then_some(())
    });
    let text = console();
    assert_eq!(text.matches("xs-read-loop: ok first").count(), 5, "{text}");
    drop(first);
    // xenstored comes back at the same path.
    let _second = FakeXenstored::start(&xs, "second", None);
    wait_until(
        "reads through the new connection",
        Duration::from_secs(20),
        || (console().matches("xs-read-loop: ok second").count() >= 3).then_some(()),
    );
    let text = console();
    assert!(
        text.lines().all(|l| l.is_empty()
            || l.starts_with("hostile:")
            || l == "xs-read-loop: ok first"
            || l == "xs-read-loop: ok second"
            || l == "xs-read-loop: error EIO"),
        "unexpected console output: {text}"
    );
    assert_eq!(
        control_request(&control, &Request::Destroy, Duration::from_secs(5)),
        Some(Reply::Done)
    );
    let status = wait_until("the VMM to exit", Duration::from_secs(10), || {
        child.try_wait().expect("try_wait")
    });
    assert_eq!(status.code(), Some(9));
}
