//! Operation sequences (write, rm, read, transactions) checked against a simple model:
//! a map from path to value, for the privileged connection without transactions.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use rxen_xenstore::store::request::{strings, write};
use rxen_xenstore::store::{Effect, Store};
use rxen_xenstore::wire::MsgType;

fuzz_target!(|data: &[u8]| {
    let mut s = Store::new();
    s.connect(1, 0, true);
    s.connect(2, 5, false);
    let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for chunk in data.chunks(3) {
        let [op, a, b] = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let p = format!("/f/{}/{}", a % 4, b % 4);
        let conn = if op & 0x80 != 0 { 2 } else { 1 };
        match op % 8 {
            0 => {
                let eff = s.handle(conn, &write(0, &p, &[b]));
                let written = matches!(eff.first(), Some(Effect::Send(_, m)) if m.header.msg_type == MsgType::Write as u32);
                if written {
                    model.insert(p.clone(), vec![b]);
                    model.entry(format!("/f/{}", a % 4)).or_default();
                    model.entry("/f".into()).or_default();
                }
            }
            1 => {
                if conn == 1 {
                    s.handle(1, &strings(MsgType::Rm, 0, &[p.as_bytes()]));
                    model.remove(&p);
                }
            }
            2 => {
                let eff = s.handle(1, &strings(MsgType::Read, 0, &[p.as_bytes()]));
                if let Some(Effect::Send(_, m)) = eff.first() {
                    let ok = m.header.msg_type == MsgType::Read as u32;
                    assert_eq!(ok, model.contains_key(&p));
                    if ok {
                        assert_eq!(Some(&m.payload), model.get(&p));
                    }
                }
            }
            3 => {
                s.handle(conn, &strings(MsgType::TransactionStart, 0, &[b""]));
            }
            4 => {
                // Transactions may commit writes the model did not see; stop checking.
                s.handle(conn, &write(a as u32 % 4, &p, &[b]));
                model.clear();
                s = Store::new();
                s.connect(1, 0, true);
                s.connect(2, 5, false);
            }
            5 => {
                s.handle(conn, &strings(MsgType::Watch, 0, &[p.as_bytes(), b"t"]));
            }
            6 => {
                s.handle(conn, &strings(MsgType::SetPerms, 0, &[p.as_bytes(), b"n5"]));
            }
            _ => {
                s.handle(conn, &strings(MsgType::Directory, 0, &[format!("/f/{}", a % 4).as_bytes()]));
            }
        }
        assert_eq!(s.check_consistency(), "OK\n");
    }
});
