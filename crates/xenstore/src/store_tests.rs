//! Behaviour of the store against Xen's semantics.

use crate::store::request::{strings, write};
use crate::store::{Effect, Store};
use crate::wire::{Message, MsgType, XsError};

const DOM0: u64 = 1;
const DOMU: u64 = 2;
const DOMU2: u64 = 3;

fn store() -> Store {
    let mut s = Store::new();
    s.connect(DOM0, 0, true);
    s.connect(DOMU, 5, false);
    s.connect(DOMU2, 6, false);
    s
}

/// The reply to a request: Ok(payload) or Err(error name).
fn call(s: &mut Store, c: u64, m: Message) -> Result<Vec<u8>, String> {
    let eff = s.handle(c, &m);
    match eff.first() {
        Some(Effect::Send(id, r)) if *id == c => {
            assert_eq!(r.header.req_id, m.header.req_id, "req_id echoed");
            if r.header.msg_type == MsgType::Error as u32 {
                Err(String::from_utf8_lossy(&r.payload)
                    .trim_end_matches('\0')
                    .to_string())
            } else {
                assert_eq!(r.header.msg_type, m.header.msg_type);
                Ok(r.payload.clone())
            }
        }
        other => panic!("no reply: {other:?}"),
    }
}

fn events(eff: &[Effect], c: u64) -> Vec<String> {
    eff.iter()
        .filter_map(|e| match e {
            Effect::Send(id, m) if *id == c && m.header.msg_type == MsgType::WatchEvent as u32 => {
                Some(
                    String::from_utf8_lossy(&m.payload)
                        .replace('\0', " ")
                        .trim_end()
                        .to_string(),
                )
            }
            _ => None,
        })
        .collect()
}

/// Creates `/local/domain/5` owned by domain 5, as the toolstack does.
fn give_home_to_domain5(s: &mut Store) {
    call(s, DOM0, strings(MsgType::Mkdir, 0, &[b"/local/domain/5"])).unwrap();
    call(
        s,
        DOM0,
        strings(MsgType::SetPerms, 0, &[b"/local/domain/5", b"n5"]),
    )
    .unwrap();
}

fn start_tx(s: &mut Store) -> u32 {
    let r = call(s, DOM0, strings(MsgType::TransactionStart, 0, &[b""])).unwrap();
    String::from_utf8(r)
        .unwrap()
        .trim_end_matches('\0')
        .parse()
        .unwrap()
}

fn rd(s: &mut Store, c: u64, p: &str) -> Result<Vec<u8>, String> {
    call(s, c, strings(MsgType::Read, 0, &[p.as_bytes()]))
}

#[test]
fn write_read_directory_rm() {
    let mut s = store();
    assert_eq!(
        call(&mut s, DOM0, write(0, "/a/b/c", b"v")),
        Ok(b"OK\0".to_vec())
    );
    assert_eq!(rd(&mut s, DOM0, "/a/b/c"), Ok(b"v".to_vec()));
    assert_eq!(
        rd(&mut s, DOM0, "/a/b"),
        Ok(b"".to_vec()),
        "parents are created empty"
    );
    call(&mut s, DOM0, write(0, "/a/x", b"with\0nul")).unwrap();
    assert_eq!(rd(&mut s, DOM0, "/a/x"), Ok(b"with\0nul".to_vec()));
    assert_eq!(
        call(&mut s, DOM0, strings(MsgType::Directory, 0, &[b"/a"])),
        Ok(b"b\0x\0".to_vec())
    );
    assert_eq!(
        call(&mut s, DOM0, strings(MsgType::Rm, 0, &[b"/a/b"])),
        Ok(b"OK\0".to_vec())
    );
    assert_eq!(rd(&mut s, DOM0, "/a/b/c"), Err("ENOENT".into()));
    assert_eq!(
        call(&mut s, DOM0, strings(MsgType::Rm, 0, &[b"/a/nothing"])),
        Ok(b"OK\0".to_vec())
    );
    assert_eq!(
        call(&mut s, DOM0, strings(MsgType::Rm, 0, &[b"/no/such"])),
        Err("ENOENT".into())
    );
    assert_eq!(
        call(&mut s, DOM0, strings(MsgType::Rm, 0, &[b"/"])),
        Err("EINVAL".into())
    );
    assert_eq!(
        call(&mut s, DOM0, strings(MsgType::Mkdir, 0, &[b"/m/n"])),
        Ok(b"OK\0".to_vec())
    );
    assert_eq!(
        call(&mut s, DOM0, strings(MsgType::Mkdir, 0, &[b"/m/n"])),
        Ok(b"OK\0".to_vec())
    );
    assert_eq!(s.check_consistency(), "OK\n");
}

#[test]
fn malformed_requests_get_errors() {
    let mut s = store();
    for p in [&b"a//b"[..], b"/bad path", b"/trailing/", b"", b"/x\xff"] {
        assert_eq!(
            rd(&mut s, DOM0, &String::from_utf8_lossy(p)).err(),
            Some("EINVAL".into())
        );
    }
    assert_eq!(
        call(&mut s, DOM0, Message::new(99, 1, 0, vec![])),
        Err("EINVAL".into())
    );
    assert_eq!(
        call(
            &mut s,
            DOM0,
            Message::new(MsgType::Read as u32, 1, 0, vec![])
        ),
        Err("EINVAL".into())
    );
    assert_eq!(
        call(
            &mut s,
            DOM0,
            Message::new(MsgType::WatchEvent as u32, 1, 0, b"/a\0t\0".to_vec())
        ),
        Err("EINVAL".into())
    );
    assert_eq!(
        call(&mut s, DOM0, strings(MsgType::Read, 77, &[b"/"])),
        Err("ENOENT".into()),
        "unknown transaction"
    );
    assert_eq!(
        call(&mut s, DOM0, strings(MsgType::SetPerms, 0, &[b"/", b"q1"])),
        Err("EINVAL".into())
    );
    assert_eq!(
        call(
            &mut s,
            DOM0,
            strings(MsgType::Introduce, 0, &[b"x", b"1", b"2"])
        ),
        Err("EINVAL".into())
    );
    assert_eq!(
        call(&mut s, DOM0, strings(MsgType::GetQuota, 0, &[])),
        Err("ENOSYS".into())
    );
}

#[test]
fn permissions_follow_xen() {
    let mut s = store();
    call(&mut s, DOM0, write(0, "/local/domain/5/name", b"guest")).unwrap();
    // dom0 owns it: domU 5 cannot read until permitted.
    assert_eq!(
        rd(&mut s, DOMU, "/local/domain/5/name"),
        Err("EACCES".into())
    );
    call(
        &mut s,
        DOM0,
        strings(MsgType::SetPerms, 0, &[b"/local/domain/5", b"n5"]),
    )
    .unwrap();
    call(
        &mut s,
        DOM0,
        strings(
            MsgType::SetPerms,
            0,
            &[b"/local/domain/5/name", b"n0", b"r5"],
        ),
    )
    .unwrap();
    assert_eq!(
        rd(&mut s, DOMU, "name"),
        Ok(b"guest".to_vec()),
        "relative path, r5"
    );
    assert_eq!(
        call(&mut s, DOMU, write(0, "name", b"x")),
        Err("EACCES".into())
    );
    // Domain 5 owns its home: it can create below it, and the new node is its own.
    call(&mut s, DOMU, write(0, "data/key", b"1")).unwrap();
    assert_eq!(
        call(&mut s, DOMU, strings(MsgType::GetPerms, 0, &[b"data/key"])),
        Ok(b"n5\0".to_vec())
    );
    // Domain 6 sees nothing of domain 5.
    assert_eq!(
        rd(&mut s, DOMU2, "/local/domain/5/data/key"),
        Err("EACCES".into())
    );
    assert_eq!(
        call(&mut s, DOMU2, write(0, "/local/domain/5/evil", b"x")),
        Err("EACCES".into())
    );
    // Owner may grant; only the owner or dom0 may change permissions.
    assert_eq!(
        call(
            &mut s,
            DOMU2,
            strings(MsgType::SetPerms, 0, &[b"/local/domain/5/data/key", b"b6"])
        ),
        Err("EACCES".into())
    );
    call(
        &mut s,
        DOMU,
        strings(MsgType::SetPerms, 0, &[b"data/key", b"n5", b"r6"]),
    )
    .unwrap();
    assert_eq!(
        rd(&mut s, DOMU2, "/local/domain/5/data/key"),
        Ok(b"1".to_vec())
    );
    // Privileged operations.
    assert_eq!(
        call(
            &mut s,
            DOMU,
            strings(MsgType::Introduce, 0, &[b"9", b"1", b"2"])
        ),
        Err("EACCES".into())
    );
    assert_eq!(
        call(&mut s, DOMU, strings(MsgType::Control, 0, &[b"check"])),
        Err("EACCES".into())
    );
}

#[test]
fn transactions_isolate_and_conflict() {
    let mut s = store();
    call(&mut s, DOM0, write(0, "/t/a", b"a")).unwrap();
    let id = start_tx(&mut s);
    assert_eq!(
        call(&mut s, DOM0, strings(MsgType::Read, id, &[b"/t/a"])),
        Ok(b"a".to_vec())
    );
    call(&mut s, DOM0, write(0, "/t/a", b"b")).unwrap();
    assert_eq!(
        call(&mut s, DOM0, strings(MsgType::Read, id, &[b"/t/a"])),
        Ok(b"a".to_vec()),
        "isolation"
    );
    call(&mut s, DOM0, write(id, "/t/a", b"c")).unwrap();
    assert_eq!(
        call(&mut s, DOM0, strings(MsgType::Read, id, &[b"/t/a"])),
        Ok(b"c".to_vec())
    );
    assert_eq!(
        call(&mut s, DOM0, strings(MsgType::TransactionEnd, id, &[b"T"])),
        Err("EAGAIN".into())
    );
    assert_eq!(rd(&mut s, DOM0, "/t/a"), Ok(b"b".to_vec()));
    assert_eq!(
        call(&mut s, DOM0, strings(MsgType::TransactionEnd, id, &[b"T"])),
        Err("ENOENT".into()),
        "ended"
    );

    // A clean read-modify-write commits, with its events at commit time.
    call(&mut s, DOM0, strings(MsgType::Watch, 0, &[b"/t", b"tok"])).unwrap();
    let id2 = start_tx(&mut s);
    call(&mut s, DOM0, strings(MsgType::Read, id2, &[b"/t/a"])).unwrap();
    let eff = s.handle(DOM0, &write(id2, "/t/new/deep", b"d"));
    assert!(events(&eff, DOM0).is_empty(), "no events before commit");
    let eff = s.handle(DOM0, &strings(MsgType::TransactionEnd, id2, &[b"T"]));
    assert_eq!(events(&eff, DOM0), vec!["/t/new/deep tok"]);
    assert_eq!(rd(&mut s, DOM0, "/t/new/deep"), Ok(b"d".to_vec()));
    assert_eq!(s.check_consistency(), "OK\n");

    // Abort discards.
    let id3 = start_tx(&mut s);
    call(&mut s, DOM0, strings(MsgType::Rm, id3, &[b"/t"])).unwrap();
    call(&mut s, DOM0, strings(MsgType::TransactionEnd, id3, &[b"F"])).unwrap();
    assert_eq!(rd(&mut s, DOM0, "/t/a"), Ok(b"b".to_vec()));
}

#[test]
fn watches_fire_for_subtree_and_respect_permissions() {
    let mut s = store();
    let eff = s.handle(DOM0, &strings(MsgType::Watch, 0, &[b"/w", b"t1"]));
    assert_eq!(events(&eff, DOM0), vec!["/w t1"], "initial event");
    assert_eq!(
        call(&mut s, DOM0, strings(MsgType::Watch, 0, &[b"/w", b"t1"])),
        Err("EEXIST".into())
    );
    let eff = s.handle(DOM0, &write(0, "/w/x/y", b"1"));
    assert_eq!(events(&eff, DOM0), vec!["/w/x/y t1"]);
    let eff = s.handle(DOM0, &write(0, "/other", b"1"));
    assert!(events(&eff, DOM0).is_empty());
    // A watch below a removed subtree reports its own path.
    call(
        &mut s,
        DOM0,
        strings(MsgType::Watch, 0, &[b"/w/x/y", b"t2"]),
    )
    .unwrap();
    let eff = s.handle(DOM0, &strings(MsgType::Rm, 0, &[b"/w/x"]));
    let mut ev = events(&eff, DOM0);
    ev.sort();
    assert_eq!(ev, vec!["/w/x t1", "/w/x/y t2"]);
    // Relative watches of a domain; no events for nodes it may not read.
    give_home_to_domain5(&mut s);
    s.handle(DOMU, &strings(MsgType::Watch, 0, &[b"device", b"dev"]));
    let eff = s.handle(DOM0, &write(0, "/local/domain/5/device/vif", b"x"));
    assert_eq!(events(&eff, DOMU), vec!["device/vif dev"]);
    call(
        &mut s,
        DOM0,
        strings(
            MsgType::SetPerms,
            0,
            &[b"/local/domain/5/device/vif", b"n0"],
        ),
    )
    .unwrap();
    let eff = s.handle(DOM0, &write(0, "/local/domain/5/device/vif", b"y"));
    assert!(
        events(&eff, DOMU).is_empty(),
        "not readable by domain 5 any more"
    );
    assert_eq!(
        call(
            &mut s,
            DOMU,
            strings(MsgType::Unwatch, 0, &[b"device", b"dev"])
        ),
        Ok(b"OK\0".to_vec())
    );
    assert_eq!(
        call(
            &mut s,
            DOMU,
            strings(MsgType::Unwatch, 0, &[b"device", b"dev"])
        ),
        Err("ENOENT".into())
    );
}

#[test]
fn domains_and_special_watches() {
    let mut s = store();
    s.handle(
        DOM0,
        &strings(MsgType::Watch, 0, &[b"@introduceDomain", b"i"]),
    );
    s.handle(
        DOM0,
        &strings(MsgType::Watch, 0, &[b"@releaseDomain", b"r"]),
    );
    s.handle(
        DOMU,
        &strings(MsgType::Watch, 0, &[b"@introduceDomain", b"i"]),
    );
    let eff = s.handle(DOM0, &strings(MsgType::Introduce, 0, &[b"7", b"4", b"1"]));
    assert_eq!(events(&eff, DOM0), vec!["@introduceDomain i"]);
    assert!(
        events(&eff, DOMU).is_empty(),
        "unprivileged domains do not see it"
    );
    assert!(eff.contains(&Effect::DomainIntroduced(7)));
    assert_eq!(
        call(
            &mut s,
            DOM0,
            strings(MsgType::Introduce, 0, &[b"7", b"5", b"1"])
        ),
        Err("EEXIST".into())
    );
    assert_eq!(
        call(
            &mut s,
            DOMU,
            strings(MsgType::IsDomainIntroduced, 0, &[b"7"])
        ),
        Ok(b"T\0".to_vec())
    );
    assert_eq!(
        call(&mut s, DOMU, strings(MsgType::GetDomainPath, 0, &[b"7"])),
        Ok(b"/local/domain/7\0".to_vec())
    );
    assert_eq!(
        call(&mut s, DOM0, strings(MsgType::Resume, 0, &[b"7"])),
        Ok(b"OK\0".to_vec())
    );
    assert_eq!(
        call(&mut s, DOM0, strings(MsgType::SetTarget, 0, &[b"7", b"8"])),
        Err("ENOENT".into())
    );
    let eff = s.handle(DOM0, &strings(MsgType::Release, 0, &[b"7"]));
    assert_eq!(events(&eff, DOM0), vec!["@releaseDomain r"]);
    assert!(eff.contains(&Effect::DomainReleased(7)));
    assert_eq!(
        call(&mut s, DOM0, strings(MsgType::Release, 0, &[b"7"])),
        Err("ENOENT".into())
    );
    assert_eq!(
        call(
            &mut s,
            DOM0,
            strings(MsgType::IsDomainIntroduced, 0, &[b"7"])
        ),
        Ok(b"F\0".to_vec())
    );
}

#[test]
fn quotas_apply_to_domains() {
    let mut s = store();
    s.quota.nodes = 5;
    s.quota.watches = 2;
    s.quota.transactions = 1;
    give_home_to_domain5(&mut s);
    // domain 5 now owns its home (1 node); 4 more fit.
    for i in 0..4 {
        call(&mut s, DOMU, write(0, &format!("k{i}"), b"v")).unwrap();
    }
    assert_eq!(
        call(&mut s, DOMU, write(0, "k9", b"v")),
        Err("ENOSPC".into())
    );
    assert_eq!(
        call(&mut s, DOMU, write(0, "k0", &vec![b'x'; 2049])),
        Err("ENOSPC".into()),
        "node size"
    );
    call(&mut s, DOMU, strings(MsgType::Watch, 0, &[b"a", b"1"])).unwrap();
    call(&mut s, DOMU, strings(MsgType::Watch, 0, &[b"b", b"1"])).unwrap();
    assert_eq!(
        call(&mut s, DOMU, strings(MsgType::Watch, 0, &[b"c", b"1"])),
        Err("E2BIG".into())
    );
    call(&mut s, DOMU, strings(MsgType::TransactionStart, 0, &[b""])).unwrap();
    assert_eq!(
        call(&mut s, DOMU, strings(MsgType::TransactionStart, 0, &[b""])),
        Err("ENOSPC".into())
    );
    // dom0 is not limited.
    for i in 0..20 {
        call(
            &mut s,
            DOM0,
            write(0, &format!("/big/{i}"), &vec![b'x'; 3000]),
        )
        .unwrap();
    }
    let q = call(&mut s, DOM0, strings(MsgType::Control, 0, &[b"quota"])).unwrap();
    assert!(String::from_utf8_lossy(&q).contains("domain 5: nodes=5"));
    let _ = XsError::EAGAIN;
}

#[test]
fn directory_part_pages_large_directories() {
    let mut s = store();
    for i in 0..600 {
        call(
            &mut s,
            DOM0,
            write(0, &format!("/big/child-with-a-long-name-{i:04}"), b""),
        )
        .unwrap();
    }
    assert_eq!(
        call(&mut s, DOM0, strings(MsgType::Directory, 0, &[b"/big"])),
        Err("E2BIG".into())
    );
    let mut names = Vec::new();
    let mut offset = 0usize;
    loop {
        let r = call(
            &mut s,
            DOM0,
            strings(
                MsgType::DirectoryPart,
                0,
                &[b"/big", offset.to_string().as_bytes()],
            ),
        )
        .unwrap();
        let gen_end = r.iter().position(|&b| b == 0).unwrap();
        let body = &r[gen_end + 1..];
        let done = body.ends_with(b"\0\0") || body == b"\0";
        let chunk = if done { &body[..body.len() - 1] } else { body };
        offset += chunk.len();
        names.extend(
            chunk
                .split(|&b| b == 0)
                .filter(|n| !n.is_empty())
                .map(|n| String::from_utf8_lossy(n).to_string()),
        );
        if done {
            break;
        }
    }
    assert_eq!(names.len(), 600);
}

#[test]
fn snapshot_roundtrip() {
    let mut s = store();
    call(&mut s, DOM0, write(0, "/p/q", b"v")).unwrap();
    call(
        &mut s,
        DOM0,
        strings(MsgType::Introduce, 0, &[b"3", b"1", b"2"]),
    )
    .unwrap();
    let json = serde_json::to_string(&s.snapshot()).unwrap();
    let mut r = Store::from_snapshot(serde_json::from_str(&json).unwrap()).unwrap();
    r.connect(DOM0, 0, true);
    assert_eq!(rd(&mut r, DOM0, "/p/q"), Ok(b"v".to_vec()));
    assert!(r.domains().contains_key(&3));
}

proptest::proptest! {
    /// Random operation sequences keep the tree consistent and agree with a simple
    /// model (a map of path -> value) for non-transactional writes and removals.
    #[test]
    fn random_sequences_match_a_model(ops in proptest::collection::vec((0u8..6, 0usize..6, 0usize..6, 0u8..3), 1..80)) {
        let names = ["a", "b", "c", "d", "e", "f"];
        let mut s = store();
        let mut model: std::collections::BTreeMap<String, Vec<u8>> = Default::default();
        for (op, i, j, v) in ops {
            let p = format!("/m/{}/{}", names[i], names[j]);
            match op {
                0 | 1 => {
                    let val = vec![b'0' + v; v as usize];
                    call(&mut s, DOM0, write(0, &p, &val)).unwrap();
                    model.insert(format!("/m/{}", names[i]), model.get(&format!("/m/{}", names[i])).cloned().unwrap_or_default());
                    model.insert(p, val);
                }
                2 => {
                    let _ = call(&mut s, DOM0, strings(MsgType::Rm, 0, &[p.as_bytes()]));
                    model.remove(&p);
                }
                3 => {
                    let q = format!("/m/{}", names[i]);
                    let _ = call(&mut s, DOM0, strings(MsgType::Rm, 0, &[q.as_bytes()]));
                    model.retain(|k, _| !(k == &q || k.starts_with(&format!("{q}/"))));
                }
                4 => {
                    let got = rd(&mut s, DOM0, &p).ok();
                    proptest::prop_assert_eq!(got, model.get(&p).cloned());
                }
                _ => {
                    let _ = s.handle(DOM0, &Message::new(v as u32 * 9, 1, j as u32, p.as_bytes().to_vec()));
                }
            }
            proptest::prop_assert_eq!(s.check_consistency(), "OK\n");
        }
    }
}

proptest::proptest! {
    /// Replaying the journal of random operations (writes, removals, permission
    /// changes, transactions, domains, domain watches) over the initial store gives
    /// the same store.
    #[test]
    fn journal_replay_rebuilds_the_store(ops in proptest::collection::vec((0u8..9, 0usize..4, 0usize..4), 1..60)) {
        let names = ["a", "b", "c", "d"];
        let mut s = store();
        call(&mut s, DOM0, strings(MsgType::Introduce, 0, &[b"5", b"1", b"1"])).unwrap();
        let mut journal = vec![(s.snapshot(), 0)];
        s.enable_journal();
        let mut journal_changes = Vec::new();
        let mut tx = 0u32;
        for (op, i, j) in ops {
            let p = format!("/local/domain/5/{}/{}", names[i], names[j]);
            let m = match op {
                0 | 1 => write(tx, &p, names[j].as_bytes()),
                2 => strings(MsgType::Rm, tx, &[p.as_bytes()]),
                3 => strings(MsgType::SetPerms, tx, &[p.as_bytes(), b"n5", b"r6"]),
                4 => strings(MsgType::SetPerms, tx, &[p.as_bytes(), b"b0"]),
                5 if tx == 0 => strings(MsgType::TransactionStart, 0, &[b""]),
                5 => strings(MsgType::TransactionEnd, tx, &[if i % 2 == 0 { b"T" } else { b"F" }]),
                6 => strings(MsgType::Introduce, 0, &[format!("{}", 6 + i).as_bytes(), b"1", b"1"]),
                7 => strings(MsgType::Release, 0, &[format!("{}", 6 + i).as_bytes()]),
                _ => strings(MsgType::Watch, 0, &[names[i].as_bytes(), names[j].as_bytes()]),
            };
            let who = match op {
                8 if j % 2 == 0 => DOMU,
                8 => DOMU2,
                0..=3 if j % 2 == 0 && tx == 0 => DOMU,
                _ => DOM0,
            };
            let r = call(&mut s, who, m.clone());
            match (op, r) {
                (5, Ok(v)) if tx == 0 => {
                    tx = String::from_utf8_lossy(&v).trim_end_matches('\0').parse().unwrap_or(0);
                }
                (5, _) => tx = 0,
                _ => {}
            }
            if s.connection_count() < 3 {
                // Domain 6 was released with its connection; it connects again.
                s.connect(DOMU2, 6, false);
            }
            journal_changes.push((s.take_changes(), s.generation()));
        }
        s.disconnect(DOMU);
        journal_changes.push((s.take_changes(), s.generation()));
        let mut r = Store::from_snapshot(journal.remove(0).0).unwrap();
        for (changes, generation) in journal_changes {
            r.apply(changes, generation);
        }
        let (a, b) = (s.snapshot(), r.snapshot());
        proptest::prop_assert_eq!(&a.nodes, &b.nodes);
        proptest::prop_assert_eq!(a.generation, b.generation);
        proptest::prop_assert_eq!(
            serde_json::to_string(&a.domains).unwrap(),
            serde_json::to_string(&b.domains).unwrap()
        );
        proptest::prop_assert_eq!(&a.domain_watches, &b.domain_watches);
        proptest::prop_assert_eq!(r.check_consistency(), "OK\n");
    }
}
