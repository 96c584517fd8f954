//! Node ownership and the node quota, through the real daemon and a domain
//! connection: an unprivileged domain may not give its nodes to another owner (Xen's
//! `do_set_perms`: `EPERM`), so it can neither escape its own quota nor exhaust
//! another domain's; domain 0 may, and the charge follows the owner.
// A test fails by panicking: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::collections::BTreeMap;

use rxen_xenstore::client::{Client, ClientError};
use rxen_xenstore::wire::MsgType;

fn xs_err(r: Result<impl std::fmt::Debug, ClientError>) -> String {
    match r {
        Err(ClientError::Xs(e)) => e,
        other => panic!("expected an xenstore error, got {other:?}"),
    }
}

/// Nodes charged to each domain, from `CONTROL quota` (`domain D: nodes=N` lines).
fn owned(admin: &mut Client) -> BTreeMap<u32, u64> {
    let raw = admin
        .request(MsgType::Control, 0, b"quota\0".to_vec())
        .expect("CONTROL quota");
    String::from_utf8_lossy(&raw)
        .lines()
        .filter_map(|l| {
            let (d, n) = l.strip_prefix("domain ")?.split_once(": nodes=")?;
            Some((d.parse().ok()?, n.trim_end_matches('\0').parse().ok()?))
        })
        .collect()
}

/// Domain 0 introduces `domid` and gives it its home directory.
fn introduce_with_home(admin: &mut Client, domid: u32) {
    admin.introduce(domid, 1, 1).unwrap();
    let home = format!("/local/domain/{domid}");
    admin.mkdir(0, &home).unwrap();
    admin.set_perms(0, &home, &[&format!("n{domid}")]).unwrap();
}

#[test]
fn a_domain_cannot_give_its_nodes_away() {
    let d = Daemon::start("owner-escape", &[]);
    let mut admin = Client::connect(&d.socket).unwrap();
    introduce_with_home(&mut admin, 5);
    introduce_with_home(&mut admin, 6);
    let mut attacker = Client::connect(&d.domain_socket(5)).unwrap();
    let mut victim = Client::connect(&d.domain_socket(6)).unwrap();
    let before = owned(&mut admin);

    // The attack of issue 13: create nodes and hand each to domain 0 or the victim,
    // until the victim's quota is full.
    attacker.write(0, "gift", b"x").unwrap();
    assert_eq!(xs_err(attacker.set_perms(0, "gift", &["b0"])), "EPERM");
    assert_eq!(xs_err(attacker.set_perms(0, "gift", &["n6"])), "EPERM");
    let mut refused = 0;
    for i in 0..1100 {
        let p = format!("g{i}");
        match attacker.write(0, &p, b"x") {
            Ok(()) => {}
            Err(e) => {
                assert_eq!(xs_err(Err::<(), _>(e)), "ENOSPC", "its own quota");
                break;
            }
        }
        assert_eq!(xs_err(attacker.set_perms(0, &p, &["n6"])), "EPERM");
        refused += 1;
    }
    assert!(refused > 900, "the attacker hit its own quota at {refused}");
    // Inside a transaction too.
    let tx = attacker.transaction_start().unwrap();
    assert_eq!(xs_err(attacker.set_perms(tx, "gift", &["n6"])), "EPERM");
    attacker.transaction_end(tx, false).unwrap();

    let after = owned(&mut admin);
    assert_eq!(
        after.get(&6),
        before.get(&6),
        "the victim's charge is untouched"
    );
    assert_eq!(
        after.get(&0),
        before.get(&0),
        "domain 0's charge is untouched"
    );
    // The victim's own writes still succeed.
    for i in 0..20 {
        victim.write(0, &format!("mine{i}"), b"v").unwrap();
    }
    // Keeping the owner while changing the others' access is still allowed.
    attacker.set_perms(0, "gift", &["n5", "r6"]).unwrap();
    assert_eq!(victim.read(0, "/local/domain/5/gift").unwrap(), b"x");
    assert!(d.domain_socket(5).exists());
}

#[test]
fn domain0_moves_nodes_and_their_charge() {
    let d = Daemon::start("owner-move", &[]);
    let mut admin = Client::connect(&d.socket).unwrap();
    introduce_with_home(&mut admin, 5);
    introduce_with_home(&mut admin, 6);
    let mut dom5 = Client::connect(&d.domain_socket(5)).unwrap();
    dom5.write(0, "a", b"1").unwrap();
    dom5.write(0, "b", b"2").unwrap();
    let before = owned(&mut admin);
    assert_eq!(before[&5], 3, "home, a and b");

    admin.set_perms(0, "/local/domain/5/a", &["n6"]).unwrap();
    let after = owned(&mut admin);
    assert_eq!(after[&5], before[&5] - 1);
    assert_eq!(after[&6], before[&6] + 1);

    // In a transaction, at its commit.
    let tx = admin.transaction_start().unwrap();
    admin.set_perms(tx, "/local/domain/5/b", &["b0"]).unwrap();
    assert_eq!(owned(&mut admin), after, "nothing moves before the commit");
    admin.transaction_end(tx, true).unwrap();
    let committed = owned(&mut admin);
    assert_eq!(committed[&5], after[&5] - 1);
    assert_eq!(committed[&0], after[&0] + 1);

    // Domain 5 no longer owns `a`: it may not change its permissions at all.
    assert_eq!(xs_err(dom5.set_perms(0, "a", &["n5"])), "EACCES");
    admin
        .request(MsgType::Control, 0, b"check\0".to_vec())
        .unwrap();
}
