//! Hostile and broken clients: the daemon answers with errors or disconnects the
//! client, and stays alive and responsive for everyone else.
// A test fails by panicking: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::time::Duration;

/// How long a test waits for the daemon to notice a client went away.
const TIMEOUT: Duration = Duration::from_secs(10);

use rxen_xenstore::client::{Client, ClientError};
use rxen_xenstore::wire::{Header, Message, MsgType};

fn xs_err(r: Result<impl std::fmt::Debug, ClientError>) -> String {
    match r {
        Err(ClientError::Xs(e)) => e,
        other => panic!("expected an xenstore error, got {other:?}"),
    }
}

#[test]
fn malformed_messages() {
    let mut d = Daemon::start("malformed", &[]);
    let mut c = Client::connect(&d.socket).unwrap();
    // Unknown type, missing terminator, bad characters, too long paths.
    assert_eq!(
        xs_err(c.request(MsgType::Error, 0, b"/a\0".to_vec())),
        "EINVAL"
    );
    c.send_raw(&Message::new(999, 5, 0, b"x".to_vec()).to_bytes())
        .unwrap();
    let r = c.read_raw().unwrap();
    assert_eq!(
        (r.header.msg_type, r.header.req_id, r.payload.as_slice()),
        (MsgType::Error as u32, 5, &b"EINVAL\0"[..])
    );
    assert_eq!(xs_err(c.read(0, "/bad path")), "EINVAL");
    assert_eq!(
        xs_err(c.read(0, &format!("/{}", "a".repeat(3100)))),
        "EINVAL"
    );
    assert_eq!(xs_err(c.request(MsgType::Read, 0, b"".to_vec())), "EINVAL");
    assert_eq!(
        xs_err(c.request(MsgType::TransactionEnd, 12345, b"T\0".to_vec())),
        "ENOENT"
    );
    c.write(0, "/ok", b"still works").unwrap();
    // Length over 4096: the connection is dropped; the daemon lives on.
    let mut bad = Client::connect(&d.socket).unwrap();
    bad.send_raw(
        &Header {
            msg_type: 2,
            req_id: 1,
            tx_id: 0,
            len: 5000,
        }
        .to_bytes(),
    )
    .unwrap();
    bad.set_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(bad.read_raw().is_err(), "connection closed");
    assert_eq!(c.read(0, "/ok").unwrap(), b"still works");
    assert!(d.alive());
}

#[test]
fn floods_and_disconnects() {
    let mut d = Daemon::start("flood", &[]);
    let mut admin = Client::connect(&d.socket).unwrap();
    admin.introduce(5, 1, 1).unwrap();
    admin.mkdir(0, "/local/domain/5").unwrap();
    admin.set_perms(0, "/local/domain/5", &["n5"]).unwrap();
    let mut dom = Client::connect(&d.domain_socket(5)).unwrap();
    // Watch flood: quota.
    let mut last = Ok(());
    for i in 0..200 {
        last = dom.watch(&format!("w{i}"), "t");
        if last.is_err() {
            break;
        }
    }
    assert_eq!(xs_err(last), "E2BIG");
    // Transaction flood: quota.
    let mut last = Ok(0);
    for _ in 0..50 {
        last = dom.transaction_start();
        if last.is_err() {
            break;
        }
    }
    assert_eq!(xs_err(last), "ENOSPC");
    // Node flood: quota.
    let mut last = Ok(());
    for i in 0..2000 {
        last = dom.write(0, &format!("n{i}"), b"x");
        if last.is_err() {
            break;
        }
    }
    assert_eq!(xs_err(last), "ENOSPC");
    // Disconnect mid-transaction: its transaction is gone, nothing leaks.
    let before = stats(&mut admin);
    let mut t = Client::connect(&d.socket).unwrap();
    let tx = t.transaction_start().unwrap();
    t.write(tx, "/half/done", b"x").unwrap();
    t.watch("/half", "w").unwrap();
    assert_eq!(stat(&mut admin, "transactions"), before["transactions"] + 1);
    drop(t);
    wait_until("the connection to go away", TIMEOUT, || {
        stat(&mut admin, "connections") == before["connections"]
    });
    let after = stats(&mut admin);
    for what in ["transactions", "watches", "nodes"] {
        assert_eq!(after[what], before[what], "{what} leaked: {after:?}");
    }
    assert_eq!(xs_err(admin.read(0, "/half/done")), "ENOENT");
    // A client that never reads its watch events is disconnected; others carry on.
    let before = stats(&mut admin);
    let mut deaf = Client::connect(&d.socket).unwrap();
    deaf.watch("/noisy", "t").unwrap();
    // Long paths make large events: far more than the 1 MiB output bound plus what
    // the socket buffers hold.
    let long = "n".repeat(2000);
    for i in 0..3000 {
        admin
            .write(0, &format!("/noisy/{}{long}", i % 10), b"x")
            .unwrap();
        if i % 100 == 99 && stat(&mut admin, "connections") == before["connections"] {
            break;
        }
    }
    wait_until("the deaf client to be disconnected", TIMEOUT, || {
        stat(&mut admin, "connections") == before["connections"]
    });
    assert_eq!(
        stat(&mut admin, "watches"),
        before["watches"],
        "its watch went with it"
    );
    assert_eq!(stat(&mut admin, "transactions"), before["transactions"]);
    admin.write(0, "/after/deaf", b"ok").unwrap();
    assert_eq!(dom.read(0, "n0").unwrap(), b"x", "others carry on");
    drop(deaf);
    // The flooding domain goes away: its open transactions and watches go with it.
    drop(dom);
    wait_until("the domain connection to go away", TIMEOUT, || {
        stat(&mut admin, "connections") == 1
    });
    let after = stats(&mut admin);
    assert_eq!(
        (after["transactions"], after["watches"]),
        (0, 0),
        "{after:?}"
    );
    assert!(d.alive());
}

#[test]
fn domain_connections_act_as_their_domain() {
    let d = Daemon::start("domsock", &[]);
    let mut admin = Client::connect(&d.socket).unwrap();
    assert!(!d.domain_socket(7).exists());
    admin.watch("@releaseDomain", "rel").unwrap();
    assert_eq!(admin.next_event().unwrap().0, "@releaseDomain");
    admin.introduce(7, 1234, 3).unwrap();
    assert!(d.domain_socket(7).exists(), "socket appears at INTRODUCE");
    admin.write(0, "/local/domain/7/name", b"guest").unwrap();
    admin.set_perms(0, "/local/domain/7", &["n7"]).unwrap();
    admin.write(0, "/local/domain/8/secret", b"x").unwrap();
    let mut dom = Client::connect(&d.domain_socket(7)).unwrap();
    dom.write(0, "data/k", b"v").unwrap();
    assert_eq!(admin.read(0, "/local/domain/7/data/k").unwrap(), b"v");
    assert_eq!(xs_err(dom.read(0, "/local/domain/8/secret")), "EACCES");
    assert_eq!(xs_err(dom.introduce(9, 1, 1)), "EACCES");
    dom.watch("data", "tok").unwrap();
    assert_eq!(
        dom.next_event().unwrap(),
        ("data".into(), "tok".into()),
        "relative initial event"
    );
    admin.write(0, "/local/domain/7/data/x", b"1").unwrap();
    assert_eq!(dom.next_event().unwrap(), ("data/x".into(), "tok".into()));
    admin.release(7).unwrap();
    assert_eq!(admin.next_event().unwrap().0, "@releaseDomain");
    assert!(!d.domain_socket(7).exists(), "socket removed at RELEASE");
    dom.set_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(dom.read(0, "data/k").is_err(), "domain connection closed");
}

#[test]
fn state_file_survives_restart() {
    let dir = temp_dir("state");
    let state = dir.join("state.json");
    let st = state.to_str().unwrap().to_string();
    let mut d = Daemon::start_in(dir.clone(), &["--state-file", &st]);
    let mut c = Client::connect(&d.socket).unwrap();
    c.write(0, "/keep/me", b"value").unwrap();
    c.set_perms(0, "/keep/me", &["n0", "r3"]).unwrap();
    c.introduce(3, 9, 1).unwrap();
    drop(c);
    assert_eq!(d.stop(), Some(0), "clean shutdown on SIGTERM");
    assert!(!d.socket.exists(), "socket removed");
    assert!(state.exists());
    let d2 = Daemon::start_in(dir, &["--state-file", &st]);
    let mut c = Client::connect(&d2.socket).unwrap();
    assert_eq!(c.read(0, "/keep/me").unwrap(), b"value");
    assert_eq!(
        c.request(MsgType::GetPerms, 0, b"/keep/me\0".to_vec())
            .unwrap(),
        b"n0\0r3\0"
    );
    assert_eq!(
        c.request(MsgType::IsDomainIntroduced, 0, b"3\0".to_vec())
            .unwrap(),
        b"T\0"
    );
    assert!(d2.domain_socket(3).exists(), "domain socket recreated");
}

#[test]
fn corrupt_state_file_is_refused() {
    let dir = temp_dir("badstate");
    let state = dir.join("state.json");
    std::fs::write(&state, "{not json").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xenstored"))
        .args([
            "--socket",
            dir.join("s").to_str().unwrap(),
            "--state-file",
            state.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("parsing state file"));
    let _ = std::fs::remove_dir_all(dir);
}

/// The next message that is not a watch event.
fn raw_reply(c: &mut Client) -> Message {
    loop {
        let m = c.read_raw().expect("reply");
        if m.header.msg_type != MsgType::WatchEvent as u32 {
            return m;
        }
    }
}

/// Xen's xenstored ignores the transaction id of WATCH and UNWATCH (`XS_FLAG_NOTID` in
/// its `wire_funcs[]`): a stale id, or one never started, must not make them fail.
#[test]
fn watch_and_unwatch_ignore_the_transaction_id() {
    let d = Daemon::start("notid", &[]);
    let mut c = Client::connect(&d.socket).unwrap();
    c.set_timeout(Some(Duration::from_secs(10))).unwrap();
    let stale_tx = 12345;
    let body = b"/notid\0tok\0".to_vec();
    c.send_raw(&Message::new(MsgType::Watch as u32, 41, stale_tx, body.clone()).to_bytes())
        .unwrap();
    let r = raw_reply(&mut c);
    assert_eq!(
        (r.header.msg_type, r.header.req_id, r.payload.as_slice()),
        (MsgType::Watch as u32, 41, &b"OK\0"[..]),
        "WATCH with an unknown transaction id"
    );
    c.send_raw(&Message::new(MsgType::Unwatch as u32, 42, stale_tx, body).to_bytes())
        .unwrap();
    let r = raw_reply(&mut c);
    assert_eq!(
        (r.header.msg_type, r.header.req_id, r.payload.as_slice()),
        (MsgType::Unwatch as u32, 42, &b"OK\0"[..]),
        "UNWATCH with an unknown transaction id"
    );
    // Other requests still check the id.
    assert_eq!(xs_err(c.read(stale_tx, "/notid")), "ENOENT");
}
