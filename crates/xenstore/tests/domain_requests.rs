//! Requests of a domain connection through the real daemon, as Xen's xenstored answers
//! them: `XS_DEBUG` (= `XS_CONTROL`) gets a reply (Mini-OS's xenbus test waits for
//! it), and relative paths resolve against `/local/domain/<id>` in every request that
//! takes a path, with watch events reported relative to a relative watch.
// A test fails by panicking: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::time::Duration;

use rxen_xenstore::client::{Client, ClientError};
use rxen_xenstore::wire::{Message, MsgType};

const DOMID: u32 = 7;

/// Domain 0 introduces `DOMID` and gives it its home directory.
fn domain_with_home(d: &Daemon) -> (Client, Client) {
    let mut admin = Client::connect(&d.socket).unwrap();
    admin.introduce(DOMID, 1, 1).unwrap();
    let home = format!("/local/domain/{DOMID}");
    admin.mkdir(0, &home).unwrap();
    admin.set_perms(0, &home, &[&format!("n{DOMID}")]).unwrap();
    let dom = Client::connect(&d.domain_socket(DOMID)).unwrap();
    dom.set_timeout(Some(Duration::from_secs(10))).unwrap();
    (admin, dom)
}

/// Sends `payload` as a message of type `t` with request id `req_id` and returns the
/// reply (the next message that is not a watch event).
fn raw_request(c: &mut Client, t: MsgType, req_id: u32, payload: &[u8]) -> Message {
    c.send_raw(&Message::new(t as u32, req_id, 0, payload.to_vec()).to_bytes())
        .unwrap();
    loop {
        let m = c.read_raw().unwrap();
        if m.header.msg_type != MsgType::WatchEvent as u32 {
            return m;
        }
    }
}

fn xs_err<T: std::fmt::Debug>(r: Result<T, ClientError>) -> String {
    match r {
        Err(ClientError::Xs(e)) => e,
        other => panic!("expected an xenstore error, got {other:?}"),
    }
}

#[test]
fn debug_requests_get_a_reply() {
    let d = Daemon::start("debug", &[]);
    let (mut admin, mut dom) = domain_with_home(&d);

    // Mini-OS's xenbus test: DEBUG "print" with its text, from its own domain. Xen
    // refuses CONTROL/DEBUG to unprivileged domains with EACCES, but replies.
    let r = raw_request(&mut dom, MsgType::DEBUG, 42, b"print\0Reply to debug?\0");
    assert_eq!(r.header.msg_type, MsgType::Error as u32);
    assert_eq!(
        (r.header.req_id, r.payload.as_slice()),
        (42, &b"EACCES\0"[..])
    );
    // The connection goes on.
    dom.write(0, "after-debug", b"1").unwrap();

    // Domain 0: print logs its text and acknowledges.
    let r = raw_request(&mut admin, MsgType::DEBUG, 43, b"print\0hello\0");
    assert_eq!(r.header.msg_type, MsgType::Control as u32);
    assert_eq!((r.header.req_id, r.payload.as_slice()), (43, &b"OK\0"[..]));
    // Exactly one argument, as Xen's do_control_print.
    assert_eq!(
        xs_err(admin.request(MsgType::DEBUG, 0, b"print\0".to_vec())),
        "EINVAL"
    );
    assert_eq!(
        xs_err(admin.request(MsgType::DEBUG, 0, b"print\0a\0b\0".to_vec())),
        "EINVAL"
    );
    // Unknown commands are EINVAL (Xen's do_control).
    assert_eq!(
        xs_err(admin.request(MsgType::DEBUG, 0, b"no-such-command\0".to_vec())),
        "EINVAL"
    );
    // A domain gets EACCES for every command, known or not.
    for cmd in [&b"check\0"[..], b"stats\0", b"no-such-command\0"] {
        assert_eq!(
            xs_err(dom.request(MsgType::DEBUG, 0, cmd.to_vec())),
            "EACCES"
        );
    }
}

#[test]
fn relative_paths_resolve_in_the_domain_home() {
    let d = Daemon::start("relative", &[]);
    let (mut admin, mut dom) = domain_with_home(&d);
    let home = format!("/local/domain/{DOMID}");

    // WRITE, READ, MKDIR, DIRECTORY.
    dom.write(0, "rel/a", b"va").unwrap();
    assert_eq!(admin.read(0, &format!("{home}/rel/a")).unwrap(), b"va");
    assert_eq!(dom.read(0, "rel/a").unwrap(), b"va");
    dom.mkdir(0, "rel/m").unwrap();
    assert!(admin.read(0, &format!("{home}/rel/m")).is_ok());
    assert_eq!(dom.directory(0, "rel").unwrap(), vec!["a", "m"]);

    // DIRECTORY_PART: generation, then the children, then an empty string.
    let part = dom
        .request(MsgType::DirectoryPart, 0, b"rel\x000\x00".to_vec())
        .unwrap();
    let fields: Vec<&[u8]> = part.split(|&b| b == 0).collect();
    assert!(std::str::from_utf8(fields[0])
        .unwrap()
        .parse::<u64>()
        .is_ok());
    assert_eq!(&fields[1..], &[&b"a"[..], b"m", b"", b""]);

    // GET_PERMS and SET_PERMS.
    let perms = dom
        .request(MsgType::GetPerms, 0, b"rel/a\0".to_vec())
        .unwrap();
    assert_eq!(perms, format!("n{DOMID}\0").into_bytes());
    dom.set_perms(0, "rel/a", &[&format!("n{DOMID}"), "r0"])
        .unwrap();
    let perms = admin
        .request(MsgType::GetPerms, 0, format!("{home}/rel/a\0").into_bytes())
        .unwrap();
    assert_eq!(perms, format!("n{DOMID}\0r0\0").into_bytes());

    // Inside a transaction.
    let tx = dom.transaction_start().unwrap();
    dom.write(tx, "rel/t", b"vt").unwrap();
    assert_eq!(dom.read(tx, "rel/t").unwrap(), b"vt");
    dom.transaction_end(tx, true).unwrap();
    assert_eq!(admin.read(0, &format!("{home}/rel/t")).unwrap(), b"vt");

    // RM.
    dom.rm(0, "rel/m").unwrap();
    assert_eq!(xs_err(admin.read(0, &format!("{home}/rel/m"))), "ENOENT");

    // Domain 0's relative paths are in /local/domain/0.
    admin.write(0, "zero-rel", b"z").unwrap();
    assert_eq!(admin.read(0, "/local/domain/0/zero-rel").unwrap(), b"z");
}

#[test]
fn watch_events_are_relative_to_a_relative_watch() {
    let d = Daemon::start("relwatch", &[]);
    let (mut admin, mut dom) = domain_with_home(&d);
    let home = format!("/local/domain/{DOMID}");
    dom.write(0, "w/x", b"1").unwrap();

    // A relative watch: its initial event and every event are relative.
    dom.watch("w", "rel").unwrap();
    assert_eq!(dom.next_event().unwrap(), ("w".into(), "rel".into()));
    admin.write(0, &format!("{home}/w/x/y"), b"2").unwrap();
    assert_eq!(dom.next_event().unwrap(), ("w/x/y".into(), "rel".into()));

    // The same node watched by its absolute path: absolute events.
    dom.watch(&format!("{home}/w"), "abs").unwrap();
    assert_eq!(
        dom.next_event().unwrap(),
        (format!("{home}/w"), "abs".into())
    );
    dom.write(0, "w/z", b"3").unwrap();
    let mut got = vec![dom.next_event().unwrap(), dom.next_event().unwrap()];
    got.sort();
    assert_eq!(
        got,
        vec![
            (format!("{home}/w/z"), "abs".into()),
            ("w/z".into(), "rel".into())
        ]
    );

    // A watch below a removed node fires with its own path, relative.
    dom.watch("w/x/y/deep", "deep").unwrap();
    assert_eq!(
        dom.next_event().unwrap(),
        ("w/x/y/deep".into(), "deep".into())
    );
    dom.unwatch(&format!("{home}/w"), "abs").unwrap();
    admin.rm(0, &format!("{home}/w/x")).unwrap();
    let mut got = vec![dom.next_event().unwrap(), dom.next_event().unwrap()];
    got.sort();
    assert_eq!(
        got,
        vec![
            ("w/x".into(), "rel".into()),
            ("w/x/y/deep".into(), "deep".into())
        ]
    );

    // UNWATCH takes the relative path too.
    dom.unwatch("w", "rel").unwrap();
    dom.unwatch("w/x/y/deep", "deep").unwrap();
    assert_eq!(xs_err(dom.unwatch("w", "rel")), "ENOENT");
    assert_eq!(stat(&mut admin, "watches"), 0);
}
