//! Issue 11, second milestone: `xm migrate [--live]` between two xends on one host
//! (two state directories, two xenstoreds, two API ports, two relocation ports). The
//! `memcheck` guest rewrites pages while it migrates (`dirty_kib=`) and checks every
//! page at every tick: it must go on counting at the target and never print FAILED,
//! 20 times back and forth. Domains with a disk (blkbench writing and checking it)
//! and a vif (httpd answering curl) migrate with their devices connected. Refusals
//! (a wrong token, a name taken at the target, a stream that is not an image, a fixed
//! TAP name the source holds on this host) leave the source running and nothing at
//! the target.
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

/// blkbench's pattern word at byte `off` of the disk after soak round `gen`.
fn pattern(off: u64, gen: u64) -> u64 {
    (off / 8).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (gen << 56) ^ 0x5a5a
}

/// The soak round (among `candidates`) whose pattern 4 KiB block `b` of `disk` holds.
fn block_round(disk: &[u8], b: u64, candidates: &[u64]) -> Option<u64> {
    let off = b * 4096;
    let block = &disk[off as usize..off as usize + 4096];
    candidates.iter().copied().find(|&g| {
        block.chunks_exact(8).enumerate().all(|(i, w)| {
            u64::from_le_bytes(w.try_into().unwrap()) == pattern(off + i as u64 * 8, g)
        })
    })
}

/// xend's and the VMMs' logs of `env`, for a failure's message.
fn logs(env: &Env) -> String {
    let mut out = String::new();
    let files = std::fs::read_dir(env.dir.join("log"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .chain(
            std::fs::read_dir(env.dir.join("state/domains"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().join("vmm.log")),
        );
    for f in files {
        out.push_str(&std::fs::read_to_string(f).unwrap_or_default());
    }
    out
}

/// Migrates `name` live from `from` to `to` (listening at `port`); the reply.
fn migrate_to(from: &Env, to: &Env, name: &str, port: u16) -> Value {
    let (s, reply) = from.post(
        &format!("/domains/{name}/migrate"),
        &serde_json::json!({"host": "127.0.0.1", "port": port, "live": true}),
    );
    assert_eq!(
        s,
        200,
        "{reply}\n--- source:\n{}\n--- target:\n{}",
        logs(from),
        logs(to)
    );
    assert_eq!(from.get(&format!("/domains/{name}")).0, 404, "{reply}");
    reply
}

/// A domain with a disk migrates live: the backend is quiesced at the stop-and-copy
/// (every request taken answered and flushed) and its ring state travels in the
/// stream; the target's VMM opens the same file (one host: shared storage) and
/// serves the same ring, its frontend nodes Connected though the target's xend never
/// saw the image. blkbench writes and reads back its disk in rounds throughout, four
/// times back and forth: it must go on with the next round, never report a lost
/// write, and a final save finds the disk holding the last rounds in order.
#[test]
fn a_disk_writing_guest_migrates_live_back_and_forth_without_losing_writes() {
    const TEST: &str = "a_disk_writing_guest_migrates_live_back_and_forth_without_losing_writes";
    if !kvm_available(TEST) {
        return;
    }
    const BLOCKS: u64 = 256;
    let token = token_file("disk", "token-disk");
    let (a, port_a) = xend("mig-disk-a", &token);
    let (b, port_b) = xend("mig-disk-b", &token);
    let disk = a.dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 4 << 20]).unwrap();
    a.create(&format!(
        "name = \"blk\"\nkernel = \"{}\"\nmemory = 64\nextra = \"mode=soak soak_blocks={BLOCKS} soak_ms=5\"\ndisk = [ 'file:{},xvda,w' ]\non_crash = \"preserve\"\n",
        rxen_testkit::guest("blkbench").display(),
        disk.display()
    ));
    let mut round = wait_for_soak_round(&a, 2);
    for i in 0..4 {
        let (from, to, port) = if i % 2 == 0 {
            (&a, &b, port_b)
        } else {
            (&b, &a, port_a)
        };
        let reply = migrate_to(from, to, "blk", port);
        eprintln!("migration {i}: {reply}");
        let domid = reply["target_domid"].as_u64().unwrap();
        // Connected at the target without the guest taking part.
        let front = format!("/local/domain/{domid}/device/vbd/51712");
        let mut xs = to.xenstore();
        assert_eq!(xs.read(0, &format!("{front}/state")).unwrap(), b"4");
        assert!(xs.read(0, &format!("{front}/ring-ref")).is_ok());
        assert!(xs.read(0, &format!("{front}/event-channel")).is_ok());
        let now = wait_for_soak_round(to, round + 3);
        let resumed = soak_rounds(to);
        assert!(
            resumed[0] > round.saturating_sub(2) && resumed[0] <= now,
            "migration {i}: round {round} seen before, resumed at {}",
            resumed[0]
        );
        assert!(
            resumed.windows(2).all(|w| w[1] == w[0] + 1),
            "migration {i}: rounds jumped: {resumed:?}"
        );
        round = now;
    }
    // Back at a: a save quiesces the disk; it holds round R+1 then R, nothing older.
    let last = *soak_rounds(&a).last().unwrap();
    let image = a.dir.join("blk.save");
    a.xm_ok(&["save", "blk", image.to_str().unwrap()]);
    let bytes = std::fs::read(&disk).unwrap();
    let window: Vec<u64> = (last..last + 200).collect();
    let held: Vec<u64> = (0..BLOCKS)
        .map(|blk| {
            block_round(&bytes, blk, &window)
                .unwrap_or_else(|| panic!("block {blk} holds no recent round's data"))
        })
        .collect();
    let (lo, hi) = (*held.iter().min().unwrap(), *held.iter().max().unwrap());
    assert!(
        hi - lo <= 1 && held.windows(2).all(|w| w[0] >= w[1]),
        "the disk is not rounds R+1 then R: {held:?}"
    );
}

/// `curl -s --max-time 5 URL` from the test's namespace: the body when it worked.
fn curl(net: &common::netns::TestNet, url: &str) -> Option<String> {
    let out = net.exec("curl", &["-s", "--max-time", "5", url]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The httpd guest's request count (`/stats`), once curl gets it.
fn requests(net: &common::netns::TestNet, ip: &str) -> u64 {
    let mut n = 0;
    rxen_testkit::wait_until("curl to get /stats", Duration::from_secs(60), || {
        let Some(body) = curl(net, &format!("http://{ip}/stats")) else {
            return false;
        };
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        match v["requests"].as_u64() {
            Some(r) => {
                n = r;
                true
            }
            None => false,
        }
    });
    n
}

fn httpd_cfg(net: &common::netns::TestNet, ip: &str, vifname: Option<&str>) -> String {
    let vifname = vifname.map(|n| format!(",vifname={n}")).unwrap_or_default();
    format!(
        "name = \"web\"\nkernel = \"{}\"\nmemory = 64\nvif = [ 'bridge={}{vifname}' ]\nextra = \"ip={ip}/24\"\non_crash = \"preserve\"\n",
        rxen_testkit::guest("httpd").display(),
        net.bridge,
    )
}

/// The httpd guest on a test bridge migrates live and answers curl at the same
/// address from the target, its request counter going on (the same guest): its vif
/// is re-plugged there on a TAP of its own (`vif<domid>.0`). A fixed `vifname=` is
/// refused between xends on one host (the source holds that interface) and the
/// domain runs on at the source.
#[test]
fn the_httpd_guest_answers_curl_after_a_live_migration() {
    const TEST: &str = "the_httpd_guest_answers_curl_after_a_live_migration";
    if !kvm_available(TEST) {
        return;
    }
    let Some(net) = common::netns::test_net(TEST) else {
        return;
    };
    let token = token_file("httpd", "token-httpd");
    let (a, port_a) = xend("mig-httpd-a", &token);
    let (b, port_b) = xend("mig-httpd-b", &token);
    let ip = net.addr(2);
    // A fixed TAP name: refused, nothing at b, still serving at a.
    a.create(&httpd_cfg(&net, &ip, Some(&net.tap_name(0))));
    let before = requests(&net, &ip);
    let (s, v) = a.post(
        "/domains/web/migrate",
        &serde_json::json!({"host": "127.0.0.1", "port": port_b, "live": true}),
    );
    assert_eq!(s, 422, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("vifname="),
        "{v}"
    );
    assert_eq!(b.get("/domains/web").0, 404);
    assert!(requests(&net, &ip) > before);
    a.xm_ok(&["destroy", "web"]);
    // Both xends number domains from 1, one after the other: b's ids are moved on
    // past a's, so that the default TAP names (vif<domid>.0) of the twins never meet
    // on this host (b takes w+2.., a w+1..).
    // Another address: the namespace's ARP entry for the first one names the
    // destroyed domain's MAC.
    let ip = net.addr(3);
    a.create(&httpd_cfg(&net, &ip, None));
    let web = common::domid_of(&a, "web");
    loop {
        let pad = b.create(&format!(
            "name = \"pad\"\nkernel = \"{}\"\nmemory = 16\nextra = \"mib=1 tick_ms=50\"\n",
            rxen_testkit::guest("memcheck").display()
        ));
        b.xm_ok(&["destroy", "pad"]);
        if pad["domid"].as_u64().unwrap() > web {
            break;
        }
    }
    let mut last = requests(&net, &ip);
    for i in 0..2 {
        let (from, to, port) = if i % 2 == 0 {
            (&a, &b, port_b)
        } else {
            (&b, &a, port_a)
        };
        let reply = migrate_to(from, to, "web", port);
        let domid = reply["target_domid"].as_u64().unwrap();
        let front = format!("/local/domain/{domid}/device/vif/0");
        assert_eq!(
            to.xenstore().read(0, &format!("{front}/state")).unwrap(),
            b"4"
        );
        let mut page = String::new();
        rxen_testkit::wait_until("curl after the migration", Duration::from_secs(60), || {
            page = curl(&net, &format!("http://{ip}/")).unwrap_or_default();
            !page.is_empty()
        });
        assert!(page.contains("Hello from an rxen guest"), "{page}");
        let now = requests(&net, &ip);
        assert!(
            now > last + 1,
            "migration {i}: {last} requests before, {now} after"
        );
        last = now;
    }
    a.xm_ok(&["destroy", "web"]);
}
