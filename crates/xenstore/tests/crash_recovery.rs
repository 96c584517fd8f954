//! xenstored killed with SIGKILL loses nothing it acknowledged: every change is in
//! its log before the reply, and a new daemon on the same state file replays it.
//! Domains come back with their sockets and the watches of their connections.
// A test fails by panicking: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rxen_xenstore::client::{Client, ClientError};
use rxen_xenstore::wire::MsgType;

fn xs_err(r: Result<impl std::fmt::Debug, ClientError>) -> String {
    match r {
        Err(ClientError::Xs(e)) => e,
        other => panic!("expected an xenstore error, got {other:?}"),
    }
}

fn start(dir: PathBuf) -> Daemon {
    let state = dir.join("state/xenstored.json");
    Daemon::start_in(dir, &["--state-file", state.to_str().unwrap()])
}

fn wal(dir: &Path) -> PathBuf {
    dir.join("state/xenstored.json.wal")
}

#[test]
fn acknowledged_changes_survive_sigkill() {
    let d = start(temp_dir("sigkill"));
    let mut admin = Client::connect(&d.socket).unwrap();
    for i in 0..200 {
        admin
            .write(0, &format!("/data/n{i}"), format!("v{i}").as_bytes())
            .unwrap();
    }
    admin.rm(0, "/data/n7").unwrap();
    admin.set_perms(0, "/data/n8", &["n0", "r3"]).unwrap();
    let tx = admin.transaction_start().unwrap();
    admin.write(tx, "/tx/a", b"1").unwrap();
    admin.write(tx, "/tx/b", b"2").unwrap();
    admin.transaction_end(tx, true).unwrap();
    let aborted = admin.transaction_start().unwrap();
    admin.write(aborted, "/tx/aborted", b"x").unwrap();
    admin.introduce(5, 77, 3).unwrap();
    admin.mkdir(0, "/local/domain/5").unwrap();
    admin.set_perms(0, "/local/domain/5", &["n5"]).unwrap();
    admin.introduce(6, 78, 4).unwrap();
    admin.release(6).unwrap();
    let mut guest = Client::connect(&d.domain_socket(5)).unwrap();
    guest.set_timeout(Some(Duration::from_secs(10))).unwrap();
    guest.watch("control/shutdown", "sd").unwrap();
    assert_eq!(
        guest.next_event().unwrap(),
        ("control/shutdown".into(), "sd".into())
    );
    guest.watch("data", "gone").unwrap();
    guest.next_event().unwrap();
    guest.unwatch("data", "gone").unwrap();
    guest.write(0, "device/vif", b"ok").unwrap();
    // A privileged client's watch dies with its connection (as in Xen).
    admin.watch("/data", "admin").unwrap();

    let dir = d.sigkill();
    drop((admin, guest));
    let d = start(dir);
    let mut admin = Client::connect(&d.socket).unwrap();
    for i in (0..200).filter(|i| *i != 7) {
        assert_eq!(
            admin.read(0, &format!("/data/n{i}")).unwrap(),
            format!("v{i}").as_bytes()
        );
    }
    assert_eq!(xs_err(admin.read(0, "/data/n7")), "ENOENT");
    assert_eq!(
        admin
            .request(MsgType::GetPerms, 0, b"/data/n8\0".to_vec())
            .unwrap(),
        b"n0\0r3\0"
    );
    assert_eq!(admin.read(0, "/tx/a").unwrap(), b"1");
    assert_eq!(admin.read(0, "/tx/b").unwrap(), b"2");
    assert_eq!(xs_err(admin.read(0, "/tx/aborted")), "ENOENT");
    assert_eq!(admin.read(0, "/local/domain/5/device/vif").unwrap(), b"ok");
    assert_eq!(
        admin
            .request(MsgType::IsDomainIntroduced, 0, b"6\0".to_vec())
            .unwrap(),
        b"F\0"
    );
    assert!(!d.domain_socket(6).exists());
    assert_eq!(
        admin
            .request(MsgType::Control, 0, b"check\0".to_vec())
            .unwrap(),
        b"OK\n\0"
    );
    assert_eq!(
        stat(&mut admin, "watches"),
        0,
        "no privileged watch came back"
    );
    // The toolstack introduces its domains again: the same values are fine.
    admin.introduce(5, 77, 3).unwrap();
    assert_eq!(xs_err(admin.introduce(5, 1, 1)), "EEXIST");

    // The guest's connection comes back (its relay reconnects): its watch fires once
    // at once, and again when the toolstack asks it to shut down.
    assert!(d.domain_socket(5).exists(), "domain socket recreated");
    let mut guest = Client::connect(&d.domain_socket(5)).unwrap();
    guest.set_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(
        guest.next_event().unwrap(),
        ("control/shutdown".into(), "sd".into()),
        "the restored watch fires once"
    );
    admin
        .write(0, "/local/domain/5/control/shutdown", b"poweroff")
        .unwrap();
    assert_eq!(
        guest.next_event().unwrap(),
        ("control/shutdown".into(), "sd".into())
    );
    assert_eq!(
        stat(&mut admin, "watches"),
        1,
        "the unwatched one stays gone"
    );
}

#[test]
fn watches_survive_a_second_crash_before_the_domain_reconnects() {
    let d = start(temp_dir("twice"));
    let mut admin = Client::connect(&d.socket).unwrap();
    admin.introduce(4, 1, 1).unwrap();
    admin.mkdir(0, "/local/domain/4").unwrap();
    admin.set_perms(0, "/local/domain/4", &["n4"]).unwrap();
    let mut guest = Client::connect(&d.domain_socket(4)).unwrap();
    guest.watch("control/shutdown", "sd").unwrap();
    drop(admin);
    let dir = d.sigkill();
    drop(guest);
    // Started, then killed again before the domain connected.
    let d = start(dir);
    let dir = d.sigkill();
    let d = start(dir);
    let mut guest = Client::connect(&d.domain_socket(4)).unwrap();
    guest.set_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(guest.next_event().unwrap().1, "sd");
}

#[test]
fn a_torn_final_log_record_is_ignored() {
    let d = start(temp_dir("torn"));
    let mut admin = Client::connect(&d.socket).unwrap();
    admin.write(0, "/kept", b"yes").unwrap();
    let dir = d.sigkill();
    // The daemon died in the middle of writing its next record.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(wal(&dir))
        .unwrap();
    f.write_all(br#"{"seq":99,"generation":5,"changes":[{"Node":{"path":"/lost""#)
        .unwrap();
    drop(f);
    let d = start(dir);
    let mut admin = Client::connect(&d.socket).unwrap();
    assert_eq!(admin.read(0, "/kept").unwrap(), b"yes");
    assert_eq!(xs_err(admin.read(0, "/lost")), "ENOENT");
    admin.write(0, "/after", b"1").unwrap();
    let dir = d.sigkill();
    let d = start(dir);
    let mut admin = Client::connect(&d.socket).unwrap();
    assert_eq!(
        admin.read(0, "/after").unwrap(),
        b"1",
        "new records after a torn one"
    );
}

#[test]
fn stale_domain_sockets_are_removed_at_start() {
    let dir = temp_dir("stale");
    std::fs::create_dir_all(dir.join("domains")).unwrap();
    let stale = dir.join("domains/9");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let d = start(dir);
    assert!(
        !d.domain_socket(9).exists(),
        "a socket of a previous run is gone"
    );
    let mut admin = Client::connect(&d.socket).unwrap();
    admin.introduce(9, 1, 1).unwrap();
    assert!(Client::connect(&d.domain_socket(9)).is_ok());
}

#[test]
fn state_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let d = start(temp_dir("private"));
    let mut admin = Client::connect(&d.socket).unwrap();
    admin.write(0, "/x", b"1").unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&wal(&d.dir)), 0o600);
    assert_eq!(mode(&d.dir.join("state/xenstored.json")), 0o600);
}
