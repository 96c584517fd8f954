//! xend's API against real daemons and real domains.
// A test fails by panicking: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::time::Duration;

use serde_json::Value;

#[test]
fn lifecycle_through_the_api() {
    if !kvm_available("lifecycle_through_the_api") {
        return;
    }
    let env = Env::start("life");
    let (s, v) = env.create("name = 'web'\nmemory = 64\nvcpus = 1\nmaxvcpus = 2\nmaxmem = 96\nextra = 'hello=1'\ncolour = 'red'\n");
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        v["warnings"][0],
        "line 7, column 1: unknown setting \"colour\" ignored"
    );
    let domid = v["domain"]["domid"].as_u64().unwrap();
    let pid = v["domain"]["pid"].as_u64().unwrap();
    assert!(pid_alive(pid));
    // xenstore entries, permissions, and the guest's own writes through its ring.
    env.wait_until("the guest to report", || {
        env.get("/domains/web/console")
            .1
            .as_str()
            .is_some_and(|c| c.contains("xenstore: I am web"))
    });
    let mut xs = env.xenstore();
    assert_eq!(
        xs.read(0, &format!("/local/domain/{domid}/name")).unwrap(),
        b"web"
    );
    assert_eq!(
        xs.read(0, &format!("/local/domain/{domid}/memory/target"))
            .unwrap(),
        b"65536"
    );
    // The guest writes data/state after the line above (which may reach the log
    // first): wait for it.
    env.wait_until("data/state", || {
        xs.read(0, &format!("/local/domain/{domid}/data/state"))
            .is_ok_and(|v| v == b"running")
    });
    let uuid = v["domain"]["uuid"].as_str().unwrap().to_string();
    assert_eq!(xs.read(0, &format!("/vm/{uuid}/name")).unwrap(), b"web");
    // Console input reaches the guest (through its console ring) and it echoes it.
    let mut r = env
        .agent
        .post(env.url("/domains/web/console"))
        .send("ping\n")
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        204,
        "{}",
        r.body_mut().read_to_string().unwrap_or_default()
    );
    env.wait_until("the echo", || {
        env.get("/domains/web/console")
            .1
            .as_str()
            .is_some_and(|c| c.contains("console input: ping"))
    });
    // List and info.
    assert_eq!(env.domains().as_array().unwrap().len(), 1);
    assert_eq!(env.get(&format!("/domains/{domid}")).1["name"], "web");
    // Pause / unpause and wrong states.
    assert_eq!(env.post("/domains/web/pause", "").1["state"], "paused");
    let (s, e) = env.post("/domains/web/pause", "");
    assert_eq!((s, e["error"]["code"].as_str()), (409, Some("wrong_state")));
    assert_eq!(env.post("/domains/web/unpause", "").1["state"], "running");
    // Rename, vCPUs, memory.
    assert_eq!(
        env.post("/domains/web/rename", r#"{"name":"web2"}"#).1["name"],
        "web2"
    );
    assert_eq!(
        xs.read(0, &format!("/local/domain/{domid}/name")).unwrap(),
        b"web2"
    );
    assert_eq!(env.post("/domains/web2/vcpus", r#"{"count":2}"#).0, 200);
    assert_eq!(
        xs.read(0, &format!("/local/domain/{domid}/cpu/1/availability"))
            .unwrap(),
        b"online"
    );
    assert_eq!(env.post("/domains/web2/vcpus", r#"{"count":3}"#).0, 400);
    assert_eq!(
        env.post("/domains/web2/memory", r#"{"mib":80}"#).1["memory_mib"],
        80
    );
    assert_eq!(
        xs.read(0, &format!("/local/domain/{domid}/memory/target"))
            .unwrap(),
        b"81920"
    );
    assert_eq!(env.post("/domains/web2/memory", r#"{"mib":200}"#).0, 400);
    assert_eq!(
        env.post("/domains/web2/maxmem", r#"{"mib":70}"#).0,
        400,
        "below target"
    );
    assert!(
        env.get("/domains/web2/uptime").1["uptime_s"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    // Per-domain and per-vCPU figures reach /metrics (refreshed every second).
    env.wait_until("vCPU metrics", || {
        let m = env
            .agent
            .get(env.url("/metrics"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        m.contains(&format!(
            "xend_domain_vcpu_cpu_seconds_total{{domain=\"web2\",domid=\"{domid}\",vcpu=\"1\"}}"
        )) && m.contains("xend_domains{state=\"running\"} 1")
    });
    // Clean shutdown with the guest's cooperation.
    let (s, v) = env.post("/domains/web2/shutdown?wait=10", "");
    assert_eq!(s, 200, "{v}");
    env.wait_until("the VMM to exit", || !pid_alive(pid));
    assert_eq!(env.domains(), Value::Array(vec![]));
    assert!(env.xs_domains().is_empty(), "xenstore nodes removed");
    assert!(xs.read(0, &format!("/vm/{uuid}")).is_err());
    assert!(env
        .get("/domains/web2/console")
        .1
        .as_str()
        .is_none_or(|s| s.contains("no domain")));
    // Metrics and the API log.
    let m = env
        .agent
        .get(env.url("/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(m.contains("xend_api_requests_total{method=\"POST\",route=\"/domains/{id}/pause\",status=\"409\"} 1"), "{m}");
    let log = std::fs::read_dir(env.dir.join("log"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("xend.log"))
        .unwrap();
    let text = std::fs::read_to_string(log.path()).unwrap();
    assert!(
        text.contains("path=/domains/web/pause status=409"),
        "{text}"
    );
}

#[test]
fn client_mistakes_are_4xx_and_failed_creates_leave_nothing() {
    if !kvm_available("client_mistakes_are_4xx_and_failed_creates_leave_nothing") {
        return;
    }
    let env = Env::start("mistakes");
    assert_eq!(env.post("/domains", "not json").0, 400);
    assert_eq!(
        env.post("/domains", r#"{"config": "x", "spec": {}}"#).0,
        400
    );
    assert_eq!(env.post("/domains", r#"{"bogus": 1}"#).0, 400);
    let (s, e) = env.create("name = 'a'\nmemory = lots");
    assert_eq!(s, 422);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 2, column 10"),
        "{e}"
    );
    assert_eq!(env.create("name='k'\nkernel='/nonexistent'").0, 422);
    let garbage = env.dir.join("garbage.elf");
    std::fs::write(&garbage, b"\x7fELF not really").unwrap();
    let (s, e) = env.create(&format!(
        "name='g'\nmemory=32\nkernel='{}'",
        garbage.display()
    ));
    assert_eq!(s, 422, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("guest image rejected"),
        "{e}"
    );
    assert_eq!(env.domains(), Value::Array(vec![]), "nothing left behind");
    assert!(env.xs_domains().is_empty(), "no xenstore nodes left");
    assert_eq!(env.get("/domains/nosuch").0, 404);
    assert_eq!(env.delete("/domains/nosuch").0, 404);
    assert_eq!(env.post("/domains/nosuch/pause", "").0, 404);
    assert_eq!(env.get("/nowhere").0, 404);
    assert_eq!(env.create("name='dup'\nmemory=32").0, 201);
    let (s, e) = env.create("name='dup'\nmemory=32");
    assert_eq!((s, e["error"]["code"].as_str()), (409, Some("name_in_use")));
    assert_eq!(
        env.post("/domains/dup/rename", r#"{"name":"bad name"}"#).0,
        400
    );
    assert_eq!(env.post("/domains/dup/rename", r#"{}"#).0, 400);
    assert_eq!(env.post("/domains/dup/shutdown?wait=-1", "").0, 400);
    assert_eq!(env.post("/domains/dup/shutdown?wait=abc", "").0, 400);
}

#[test]
fn managed_domains_and_events() {
    if !kvm_available("managed_domains_and_events") {
        return;
    }
    let env = Env::start("managed");
    // Follow the event stream.
    let url = env.url("/events");
    let (subscribed_tx, subscribed) = std::sync::mpsc::channel();
    let events = std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(20)))
            .build()
            .into();
        // The reply's headers come after xend subscribed this stream to the events.
        let mut r = agent.get(&url).call().unwrap();
        subscribed_tx.send(()).unwrap();
        use std::io::BufRead;
        let mut seen = Vec::new();
        for line in std::io::BufReader::new(r.body_mut().as_reader()).lines() {
            let Ok(line) = line else { break };
            if let Some(d) = line.strip_prefix("data:") {
                let v: Value = serde_json::from_str(d.trim()).unwrap();
                seen.push(v["event"].as_str().unwrap_or("").to_string());
                if seen.last().map(String::as_str) == Some("destroyed") {
                    break;
                }
            }
        }
        seen
    });
    subscribed
        .recv_timeout(Duration::from_secs(10))
        .expect("the event stream answers");
    assert_eq!(
        env.post("/managed", r#"{"config": "name = 'm'\nmemory = 32"}"#)
            .0,
        201
    );
    let list = env.domains();
    assert_eq!(list[0]["state"], "halted");
    assert_eq!(env.post("/managed/m/start", "").0, 201);
    assert_eq!(env.delete("/managed/m").0, 409, "running");
    assert_eq!(
        env.domains().as_array().unwrap().len(),
        1,
        "running managed domain listed once"
    );
    assert_eq!(env.delete("/domains/m").0, 204);
    assert_eq!(env.domains()[0]["state"], "halted", "still managed");
    assert_eq!(env.delete("/managed/m").0, 204);
    assert_eq!(env.delete("/managed/m").0, 404);
    let seen = events.join().unwrap();
    assert!(
        seen.contains(&"created".to_string()) && seen.contains(&"destroyed".to_string()),
        "{seen:?}"
    );
}

#[test]
fn reboot_restarts_and_crash_preserves() {
    if !kvm_available("reboot_restarts_and_crash_preserves") {
        return;
    }
    let env = Env::start("actions");
    let (_, v) = env.create("name='r'\nmemory=32\non_reboot='restart'\non_crash='preserve'");
    let old = v["domain"]["domid"].as_u64().unwrap();
    assert_eq!(env.post("/domains/r/reboot", "").0, 202);
    env.wait_until("the restart", || {
        env.get("/domains/r").1["domid"]
            .as_u64()
            .is_some_and(|d| d != old)
            && env.get("/domains/r").1["state"] == "running"
    });
    // Crash: kill the VMM from outside; on_crash=preserve keeps the record.
    let pid = env.get("/domains/r").1["pid"].as_u64().unwrap();
    // SAFETY: killing the domain's VMM process.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    env.wait_until("the crash to be noticed", || {
        env.get("/domains/r").1["state"] == "crashed"
    });
    assert_eq!(env.get("/domains/r").1["state_flags"], "----c-");
    assert_eq!(env.delete("/domains/r").0, 204);
    assert_eq!(env.domains(), Value::Array(vec![]));
}

#[test]
fn xend_restart_loses_nothing() {
    if !kvm_available("xend_restart_loses_nothing") {
        return;
    }
    let mut env = Env::start("restart");
    let (_, a) = env.create("name='keep'\nmemory=32");
    let (_, b) = env.create("name='dies'\nmemory=32\non_crash='preserve'");
    let (_, c) = env.create("name='gone'\nmemory=32\non_crash='destroy'");
    let pa = a["domain"]["pid"].as_u64().unwrap();
    env.kill_xend(); // SIGKILL
    assert!(pid_alive(pa), "domains outlive xend");
    for d in [&b, &c] {
        // SAFETY: killing a domain's VMM while xend is down.
        unsafe { libc::kill(d["domain"]["pid"].as_u64().unwrap() as i32, libc::SIGKILL) };
    }
    env.wait_until("the killed VMMs to be gone", || {
        [&b, &c]
            .iter()
            .all(|d| !pid_alive(d["domain"]["pid"].as_u64().unwrap()))
    });
    env.start_xend();
    let keep = env.get("/domains/keep").1;
    assert_eq!(keep["state"], "running", "{keep}");
    assert_eq!(keep["pid"].as_u64(), Some(pa));
    assert_eq!(env.get("/domains/dies").1["state"], "crashed");
    assert_eq!(env.get("/domains/gone").0, 404, "on_crash=destroy applied");
    // The adopted domain is fully manageable.
    assert_eq!(env.post("/domains/keep/pause", "").1["state"], "paused");
    assert_eq!(env.post("/domains/keep/unpause", "").1["state"], "running");
    assert_eq!(env.post("/domains/keep/shutdown?wait=10", "").0, 200);
    env.wait_until("keep to end", || !pid_alive(pa));
    assert_eq!(env.get("/domains/keep").0, 404);
}

#[test]
fn parallel_creates_and_destroys_leak_nothing() {
    if !kvm_available("parallel_creates_and_destroys_leak_nothing") {
        return;
    }
    let env = std::sync::Arc::new(Env::start("parallel"));
    let handles: Vec<_> = (0..20)
        .map(|i| {
            let env = env.clone();
            std::thread::spawn(move || env.create(&format!("name='p{i}'\nmemory=16")))
        })
        .collect();
    let mut pids = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for h in handles {
        let (s, v) = h.join().unwrap();
        assert_eq!(s, 201, "{v}");
        pids.push(v["domain"]["pid"].as_u64().unwrap());
        assert!(
            ids.insert(v["domain"]["domid"].as_u64().unwrap()),
            "unique ids"
        );
    }
    assert_eq!(env.domains().as_array().unwrap().len(), 20);
    let handles: Vec<_> = (0..20)
        .map(|i| {
            let env = env.clone();
            std::thread::spawn(move || env.delete(&format!("/domains/p{i}")).0)
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 204);
    }
    env.wait_until("all VMMs to exit", || pids.iter().all(|p| !pid_alive(*p)));
    assert_eq!(env.domains(), Value::Array(vec![]));
    assert!(env.xs_domains().is_empty(), "no xenstore nodes leaked");
    // Ids are not reused while... and new ids continue upwards.
    let (_, v) = env.create("name='after'\nmemory=16");
    assert!(v["domain"]["domid"].as_u64().unwrap() > *ids.iter().max().unwrap());
}

#[test]
fn auth_token_is_enforced() {
    let token_file = std::env::temp_dir().join(format!("rxen-token-{}", std::process::id()));
    std::fs::write(&token_file, "s3cret\n").unwrap();
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let env = Env::start_with("auth", &["--auth-token-file", token_file.to_str().unwrap()]);
    assert_eq!(env.get("/health").0, 200, "health stays open");
    let (s, e) = env.get("/domains");
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let mut r = env
        .agent
        .get(env.url("/domains"))
        .header("Authorization", "Bearer s3cret")
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let _ = r.body_mut().read_to_string();
    // A non-loopback address without a token is refused at start.
    let out = std::process::Command::new(bin("xend"))
        .args([
            "foreground",
            "--listen",
            "0.0.0.0",
            "--port",
            "1",
            "--state-dir",
            "/tmp/rxen-none",
            "--log-dir",
            "/tmp/rxen-none",
        ])
        .env_remove("XEND_AUTH_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a token"));
}

/// A managed domain's vif without a MAC keeps the MAC generated at `new` across starts.
#[test]
fn managed_vif_mac_is_stable_across_starts() {
    if !kvm_available("managed_vif_mac_is_stable_across_starts") {
        return;
    }
    let env = Env::start("managed-mac");
    // A bridge of the test's own (xend creates it), never the host's xenbr0.
    let br = rxen_testkit::net::TestBridge::new();
    let tap = rxen_testkit::net::unique_ifname("rxv");
    let body = serde_json::json!({
        "config": format!("name = 'mm'\nmemory = 32\nvif = [ 'bridge={},vifname={tap}' ]", br.0)
    });
    assert_eq!(env.post("/managed", &body.to_string()).0, 201);
    let mut macs = Vec::new();
    for _ in 0..2 {
        let (s, v) = env.post("/managed/mm/start", "");
        assert_eq!(s, 201, "{v}");
        let (_, d) = env.get("/domains/mm");
        let mac = d["config"]["vifs"][0]["mac"]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert!(mac.starts_with("00:16:3e:"), "{d}");
        macs.push(mac);
        assert_eq!(env.delete("/domains/mm").0, 204);
    }
    assert_eq!(macs[0], macs[1], "the same MAC at every start");
    assert_eq!(env.delete("/managed/mm").0, 204);
}
