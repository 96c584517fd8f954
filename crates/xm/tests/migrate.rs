//! Issue 11, second milestone: `xm migrate [--live]` between two xends on one host
//! (two state directories, two xenstoreds, two API ports, two relocation ports). The
//! `memcheck` guest rewrites pages while it migrates (`dirty_kib=`) and checks every
//! page at every tick: it must go on counting at the target and never print FAILED,
//! 20 times back and forth. Refusals (a wrong token, a name taken at the target, a
//! stream that is not an image, a domain with a connected disk) leave the source
//! running and nothing at the target.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{kvm_available, Env};
use serde_json::Value;

const NAME: &str = "mc";

/// A token file (mode 0600) in a directory of its own.
fn token_file(tag: &str, token: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rxen-migrate-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("token");
    std::fs::write(&p, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// An xend with a relocation server on a free port; returns it and that port.
fn xend(tag: &str, token: &Path) -> (Env, u16) {
    let port = rxen_testkit::free_port();
    let env = Env::start_with(
        tag,
        &[
            "--relocation-port",
            &port.to_string(),
            "--relocation-token-file",
            token.to_str().unwrap(),
        ],
    );
    (env, port)
}

fn console(env: &Env) -> String {
    match env.get(&format!("/domains/{NAME}/console")) {
        (200, Value::String(s)) => s,
        _ => String::new(),
    }
}

fn ticks(text: &str) -> Vec<u64> {
    text.lines()
        .filter(|l| l.starts_with("memcheck: tick=") && l.ends_with(" ok"))
        .filter_map(|l| l["memcheck: tick=".len()..].split(' ').next()?.parse().ok())
        .collect()
}

/// Waits until the domain at `env` printed tick `at_least`; returns the last tick.
fn wait_for_tick(env: &Env, at_least: u64) -> u64 {
    rxen_testkit::wait_until(
        &format!("memcheck tick >= {at_least}"),
        Duration::from_secs(60),
        || {
            let t = console(env);
            assert!(!t.contains("FAILED"), "memcheck failed:\n{t}");
            ticks(&t).last().is_some_and(|&n| n >= at_least)
        },
    );
    *ticks(&console(env)).last().unwrap()
}

fn create_memcheck(env: &Env) -> Value {
    let kernel = rxen_testkit::guest("memcheck");
    env.create(&format!(
        "name = \"{NAME}\"\nkernel = \"{}\"\nmemory = 32\nextra = \"mib=8 tick_ms=10 dirty_kib=256\"\non_crash = \"preserve\"\n",
        kernel.display()
    ))
}

fn uuid_at(env: &Env) -> Option<String> {
    let (s, v) = env.get(&format!("/domains/{NAME}"));
    (s == 200).then(|| v["uuid"].as_str().unwrap().to_string())
}

#[test]
fn twenty_live_migrations_back_and_forth_keep_memory_and_counter() {
    if !kvm_available("twenty_live_migrations_back_and_forth_keep_memory_and_counter") {
        return;
    }
    let token = token_file("pair", "s3cret-relocation");
    let (a, port_a) = xend("mig-a", &token);
    let (b, port_b) = xend("mig-b", &token);
    let uuid = create_memcheck(&a)["uuid"].as_str().unwrap().to_string();
    let mut tick = wait_for_tick(&a, 3);
    let mut downtimes = Vec::new();
    for round in 0..20 {
        let (from, to, port) = if round % 2 == 0 {
            (&a, &b, port_b)
        } else {
            (&b, &a, port_a)
        };
        let target = format!("127.0.0.1:{port}");
        let (s, reply) = from.post(
            &format!("/domains/{NAME}/migrate"),
            &serde_json::json!({"host": "127.0.0.1", "port": port, "live": true}),
        );
        assert_eq!(s, 200, "migration {round}: {reply}");
        assert_eq!(reply["target"], target.as_str(), "{reply}");
        assert!(reply["rounds"].as_u64().unwrap() >= 2, "{reply}");
        let sent = reply["pages_sent"].as_u64().unwrap();
        let per_round: u64 = reply["pages_per_round"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(sent, per_round, "{reply}");
        downtimes.push(reply["downtime_ms"].as_f64().unwrap());
        // Gone here, running there with the same UUID, counting on with every page
        // checked.
        assert_eq!(from.get(&format!("/domains/{NAME}")).0, 404, "{reply}");
        assert_eq!(uuid_at(to).as_deref(), Some(uuid.as_str()));
        let now = wait_for_tick(to, tick + 2);
        let first = *ticks(&console(to)).first().unwrap();
        assert!(
            first + 1 >= tick,
            "round {round}: it counted from {first} after {tick}"
        );
        tick = now;
    }
    eprintln!("downtimes (ms): {downtimes:?}");
}

#[test]
fn xm_migrate_prints_the_figures_and_without_live_pauses_first() {
    if !kvm_available("xm_migrate_prints_the_figures_and_without_live_pauses_first") {
        return;
    }
    let token = token_file("xm", "xm-token");
    let (a, port_a) = xend("mig-xm-a", &token);
    let (b, port_b) = xend("mig-xm-b", &token);
    create_memcheck(&a);
    let tick = wait_for_tick(&a, 3);
    // xend's event stream, followed from before the migration.
    let events = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut stream = ureq::get(format!("{}/events", a.url()))
        .call()
        .expect("GET /events");
    let seen = events.clone();
    std::thread::spawn(move || {
        let body = stream.body_mut().as_reader();
        for line in BufReader::new(body).lines() {
            let Ok(line) = line else { return };
            seen.lock().unwrap().push_str(&line);
        }
    });
    let o = a.xm(&["migrate", "--live", NAME, &format!("127.0.0.1:{port_b}")]);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    eprintln!("{err}{out}");
    assert!(o.status.success(), "{err}");
    assert!(err.contains("Migrating domain mc to 127.0.0.1:"), "{err}");
    // Each pre-copy round was an event (xm prints them as `round N: ...`).
    common::wait_until("migration_progress events", || {
        let e = events.lock().unwrap();
        e.contains("\"migration_progress\"") && e.contains("\"migrated\"")
    });
    assert!(out.contains("Migrated domain mc to 127.0.0.1:"), "{out}");
    assert!(
        out.contains("downtime") && out.contains("round(s)"),
        "{out}"
    );
    let tick = wait_for_tick(&b, tick + 2);
    if std::env::var_os("RXEN_MIGRATE_TEST_LOGS").is_some() {
        for e in std::fs::read_dir(b.dir.join("log")).unwrap().flatten() {
            eprintln!("{}", std::fs::read_to_string(e.path()).unwrap_or_default());
        }
        for e in std::fs::read_dir(b.dir.join("state/domains"))
            .unwrap()
            .flatten()
        {
            let log = e.path().join("vmm.log");
            eprintln!("{}", std::fs::read_to_string(log).unwrap_or_default());
        }
    }
    // Without --live: one paused round.
    let out = b.xm_ok(&["migrate", NAME, &format!("127.0.0.1:{port_a}")]);
    assert!(out.contains(": 1 round(s)"), "{out}");
    wait_for_tick(&a, tick + 2);
    // xend's log (rotated daily: xend.log.DATE) has the figures.
    let log_b: String = std::fs::read_dir(b.dir.join("log"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("xend.log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(
        log_b.contains("migrated") && log_b.contains("downtime_ms"),
        "{log_b}"
    );
}

#[test]
fn refused_migrations_leave_the_source_running_and_nothing_at_the_target() {
    if !kvm_available("refused_migrations_leave_the_source_running_and_nothing_at_the_target") {
        return;
    }
    let (a, _) = xend("mig-ref-a", &token_file("ref-a", "token-a"));
    let token_b = "token-b";
    let (b, port_b) = xend("mig-ref-b", &token_file("ref-b", token_b));
    create_memcheck(&a);
    let mut tick = wait_for_tick(&a, 3);
    let migrate = |a: &Env| {
        a.post(
            &format!("/domains/{NAME}/migrate"),
            &serde_json::json!({"host": "127.0.0.1", "port": port_b, "live": true}),
        )
    };
    // A wrong token.
    let (s, v) = migrate(&a);
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["code"], "migrate_failed", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bad_token"),
        "{v}"
    );
    tick = wait_for_tick(&a, tick + 2);
    assert_eq!(b.get(&format!("/domains/{NAME}")).0, 404);

    // The right token but the name is taken at the target.
    let (c, port_c) = xend("mig-ref-c", &token_file("ref-c", "token-a"));
    c.create(&format!(
        "name = \"{NAME}\"\nkernel = \"{}\"\nmemory = 16\nextra = \"mib=1 tick_ms=50\"\n",
        rxen_testkit::guest("memcheck").display()
    ));
    let uuid_c = uuid_at(&c).unwrap();
    let (s, v) = a.post(
        &format!("/domains/{NAME}/migrate"),
        &serde_json::json!({"host": "127.0.0.1", "port": port_c, "live": true}),
    );
    assert_eq!(s, 422, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("name_in_use"),
        "{v}"
    );
    tick = wait_for_tick(&a, tick + 2);
    assert_eq!(uuid_at(&c).as_deref(), Some(uuid_c.as_str()));

    // Nobody at the port (Xen's 8002 unless one runs there): refused at once.
    let dead = rxen_testkit::free_port();
    let out = a.xm(&["migrate", "--live", NAME, &format!("127.0.0.1:{dead}")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("migrat"), "{err}");
    wait_for_tick(&a, tick + 2);

    // A stream that is not an image, with the right token: the target refuses it and
    // keeps nothing.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port_b)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let (spec, _) = rxen_xlcfg::DomainSpec::from_xl(&format!(
        "name = \"{NAME}\"\nkernel = \"{}\"\nmemory = 32\n",
        rxen_testkit::guest("memcheck").display()
    ))
    .unwrap();
    let config = serde_json::json!({
        "toolstack": "rxen-xend",
        "uuid": "6b1f8a52-8d63-4c38-9b7c-2d1b9a6f0e11",
        "spec": spec,
    });
    let hello = serde_json::json!({"token": token_b, "config": config.to_string(), "live": true});
    writeln!(s, "{hello}").unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.contains("\"ready\""), "{line}");
    s.write_all(b"Xen saved domain, xl format\n \0 \r this is not an image at all")
        .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    assert!(line.contains("\"refused\""), "{line}");
    assert_eq!(b.get(&format!("/domains/{NAME}")).0, 404);
    // And a hello without the token never gets `ready`.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port_b)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    writeln!(s, "{{\"token\":\"nope\",\"config\":\"{{}}\"}}").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    assert!(line.contains("bad_token"), "{line}");
    wait_for_tick(&a, tick + 4);
}

/// The `blkbench: soak round=N ok` rounds of `blk`'s console.
fn soak_rounds(env: &Env) -> Vec<u64> {
    let text = match env.get("/domains/blk/console") {
        (200, Value::String(s)) => s,
        _ => String::new(),
    };
    assert!(
        !text.contains("FAILED") && !text.contains("guest panic"),
        "blkbench failed:\n{text}"
    );
    text.lines()
        .filter_map(|l| l.strip_prefix("blkbench: soak round="))
        .filter_map(|l| l.strip_suffix(" ok")?.parse().ok())
        .collect()
}

fn wait_for_soak_round(env: &Env, at_least: u64) -> u64 {
    rxen_testkit::wait_until(
        &format!("soak round >= {at_least}"),
        Duration::from_secs(90),
        || soak_rounds(env).last().is_some_and(|&n| n >= at_least),
    );
    *soak_rounds(env).last().unwrap()
}

/// Live migration does not quiesce device backends (only `xm save` does): a domain
/// whose disk is connected is refused before the first round, keeps running here
/// with its disk working, and nothing is created at the target.
#[test]
fn a_domain_with_a_connected_disk_is_refused_and_keeps_its_disk() {
    if !kvm_available("a_domain_with_a_connected_disk_is_refused_and_keeps_its_disk") {
        return;
    }
    let token = token_file("disk", "token-disk");
    let (a, _) = xend("mig-disk-a", &token);
    let (b, port_b) = xend("mig-disk-b", &token);
    let disk = a.dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 4 << 20]).unwrap();
    a.create(&format!(
        "name = \"blk\"\nkernel = \"{}\"\nmemory = 64\nextra = \"mode=soak soak_blocks=256 soak_ms=5\"\ndisk = [ 'file:{},xvda,w' ]\non_crash = \"preserve\"\n",
        rxen_testkit::guest("blkbench").display(),
        disk.display()
    ));
    let round = wait_for_soak_round(&a, 1);
    let (s, v) = a.post(
        "/domains/blk/migrate",
        &serde_json::json!({"host": "127.0.0.1", "port": port_b, "live": true}),
    );
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["code"], "migrate_failed", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("disks or network devices"),
        "{v}"
    );
    // Refused before the relocation server was even contacted: nothing there.
    assert_eq!(b.get("/domains/blk").0, 404);
    wait_for_soak_round(&a, round + 2);
}
