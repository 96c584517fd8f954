//! Xen's own clients against our daemon: Debian's xenstore-utils and Xen's
//! test-xenstore.
// A test fails by panicking: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::process::Command;

fn tool(d: &Daemon, name: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(name)
        .args(args)
        .env("XENSTORED_PATH", &d.socket)
        .output()
        .expect(name);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn xenstore_utils_work() {
    if !have_tool("xenstore-write", "xenstore_utils_work") {
        return;
    }
    let d = Daemon::start("utils", &[]);
    assert_eq!(
        tool(&d, "xenstore-write", &["/vm/a", "1", "/vm/b/c", "two"]).0,
        0
    );
    assert_eq!(tool(&d, "xenstore-read", &["/vm/b/c"]), (0, "two\n".into()));
    let (code, ls) = tool(&d, "xenstore-ls", &["/vm"]);
    assert_eq!(code, 0);
    assert!(
        ls.contains("a = \"1\"") && ls.contains("c = \"two\""),
        "{ls}"
    );
    let (code, list) = tool(&d, "xenstore-list", &["/vm"]);
    assert_eq!((code, list.as_str()), (0, "a\nb\n"));
    assert_eq!(tool(&d, "xenstore-exists", &["/vm/a"]).0, 0);
    assert_ne!(tool(&d, "xenstore-exists", &["/vm/zz"]).0, 0);
    assert_eq!(tool(&d, "xenstore-chmod", &["/vm/a", "n0", "r7"]).0, 0);
    let (_, ls) = tool(&d, "xenstore-ls", &["-p", "/vm"]);
    assert!(ls.contains("(n0,r7)"), "{ls}");
    assert_eq!(tool(&d, "xenstore-rm", &["/vm/b"]).0, 0);
    assert_ne!(tool(&d, "xenstore-read", &["/vm/b/c"]).0, 0);
    // xenstore-watch: initial event, then one per change, stops after -n events.
    let child = Command::new("xenstore-watch")
        .args(["-n", "3", "/vm"])
        .env("XENSTORED_PATH", &d.socket)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("xenstore-watch");
    // Wait until xenstore-watch has registered its watch.
    let mut admin = rxen_xenstore::client::Client::connect(&d.socket).unwrap();
    wait_until(
        "xenstore-watch to register its watch",
        std::time::Duration::from_secs(10),
        || stat(&mut admin, "watches") == 1,
    );
    tool(&d, "xenstore-write", &["/vm/w", "x"]);
    tool(&d, "xenstore-rm", &["/vm/w"]);
    let out = child.wait_with_output().expect("watch output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        vec!["/vm", "/vm/w", "/vm/w"],
        "{text}"
    );
}

#[test]
fn xen_test_xenstore_passes() {
    let prog = "/usr/lib/xen-4.17/bin/test-xenstore";
    if !have_tool(prog, "xen_test_xenstore_passes") {
        return;
    }
    let d = Daemon::start("testxs", &[]);
    for args in [&[][..], &["-i", "20"][..], &["-r", "3"][..]] {
        let out = Command::new(prog)
            .args(args)
            .env("XENSTORED_PATH", &d.socket)
            .output()
            .expect("test-xenstore");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "test-xenstore {args:?} failed: {text}"
        );
        for t in ["read 1", "write 2000", "rm dir", "ta rmw", "ta err"] {
            if args.is_empty() {
                assert!(text.contains(t), "{t} ran: {text}");
            }
        }
    }
}
