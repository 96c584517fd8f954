//! Regression tests of the defects found when rxen was tried as a new Xen user would
//! (issue 7). Each failed before its fix.
// A test fails by panicking: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn guests_dir() -> String {
    guest("hello")
        .parent()
        .expect("guests directory")
        .display()
        .to_string()
}

/// Bug 1: a busy guest's CPU time read ~0 (it only grew when KVM_RUN returned).
#[test]
fn busy_guest_cpu_time_is_accounted() {
    if !kvm_available("busy_guest_cpu_time_is_accounted") {
        return;
    }
    let env = Env::start("cputime");
    let (s, v) = env.create(&format!(
        "name='busy'\nmemory=32\nkernel='{}'\ncmdline='iters=100000000000'",
        guest("cpubench").display()
    ));
    assert_eq!(s, 201, "{v}");
    rxen_testkit::wait_until("0.5 s of CPU time", Duration::from_secs(30), || {
        let d = env.get("/domains/busy").1;
        d["cpu_time_s"].as_f64().unwrap_or(0.0) >= 0.5
            && d["vcpu_list"][0]["cpu_time_s"].as_f64().unwrap_or(0.0) >= 0.5
    });
    assert_eq!(env.delete("/domains/busy").0, 204);
}

/// Bug 2: preserved (crashed) domains vanished on a restart of xend, leaving their
/// xenstore entries behind.
#[test]
fn preserved_domains_survive_xend_restart_until_destroyed() {
    if !kvm_available("preserved_domains_survive_xend_restart_until_destroyed") {
        return;
    }
    let mut env = Env::start("preserved");
    let (_, v) = env.create("name='kept'\nmemory=32\non_crash='preserve'");
    let domid = v["domain"]["domid"].as_u64().unwrap();
    let uuid = v["domain"]["uuid"].as_str().unwrap().to_string();
    let pid = v["domain"]["pid"].as_u64().unwrap();
    // SAFETY: killing the domain's VMM: a crash as far as xend can tell.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    env.wait_until("the crash", || {
        env.get("/domains/kept").1["state"] == "crashed"
    });
    for round in 0..2 {
        env.kill_xend();
        env.start_xend();
        let d = env.get("/domains/kept").1;
        assert_eq!(d["state"], "crashed", "round {round}: {d}");
        assert_eq!(d["domid"], domid);
        assert!(d["exit_reason"].as_str().unwrap().contains("crash"), "{d}");
        assert!(env.xs_domains().contains(&domid.to_string()));
    }
    assert_eq!(env.delete("/domains/kept").0, 204);
    assert!(env.xs_domains().is_empty(), "{:?}", env.xs_domains());
    let mut xs = env.xenstore();
    assert!(
        xs.read(0, &format!("/vm/{uuid}")).is_err(),
        "/vm/UUID removed"
    );
    env.kill_xend();
    env.start_xend();
    assert_eq!(env.get("/domains/kept").0, 404, "destroyed stays destroyed");
}

/// Bug 3: creates of guests that end at once failed with "xen-vmm exited while
/// starting" (about 1 in 6).
#[test]
fn guests_that_end_during_start_are_created() {
    if !kvm_available("guests_that_end_during_start_are_created") {
        return;
    }
    let env = Env::start("quick-exit");
    for i in 0..20 {
        let (s, v) = env.create(&format!(
            "name='q{i}'\nmemory=16\nkernel='{}'\non_poweroff='preserve'",
            guest("hello").display()
        ));
        assert_eq!(s, 201, "create {i}: {v}");
    }
    for i in 0..20 {
        env.wait_until("the guest's poweroff", || {
            env.get(&format!("/domains/q{i}")).1["state"] == "shutdown"
        });
        assert_eq!(env.delete(&format!("/domains/q{i}")).0, 204);
    }
    // The default action removes it after the create succeeded.
    let (s, v) = env.create(&format!(
        "name='gone'\nmemory=16\nkernel='{}'",
        guest("hello").display()
    ));
    assert_eq!(s, 201, "{v}");
    env.wait_until("the domain to go", || env.get("/domains/gone").0 == 404);
    assert!(env.xs_domains().is_empty());
}

/// Bug 4: `xend` refused to start after a SIGKILL while the dead daemon was an
/// unreaped zombie.
#[test]
fn xend_starts_after_a_killed_xend_left_a_zombie() {
    if !kvm_available("xend_starts_after_a_killed_xend_left_a_zombie") {
        return;
    }
    let mut env = Env::start("zombie");
    // The first xend is our child: kill it and do not reap it.
    let mut first = env.xend.take().expect("xend");
    first.kill().unwrap();
    env.wait_until("a zombie", || !pid_alive(first.id() as u64));
    env.start_xend();
    assert_eq!(env.get("/health").0, 200);
    let _ = first.wait();
}

/// Bug 4 (the other half): two live xends never share a state directory.
#[test]
fn a_second_xend_on_one_state_dir_is_refused() {
    if !kvm_available("a_second_xend_on_one_state_dir_is_refused") {
        return;
    }
    let env = Env::start("two-xends");
    let second = || {
        let out = Command::new(bin("xend"))
            .arg("foreground")
            .args(["--port", &rxen_testkit::free_port().to_string()])
            .arg("--state-dir")
            .arg(env.dir.join("state"))
            .arg("--log-dir")
            .arg(env.dir.join("log2"))
            .arg("--xenstored-socket")
            .arg(env.dir.join("xs/socket"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = second();
    assert!(err.contains("another xend"), "{err}");
    // Even without its pid file, the state directory stays locked.
    std::fs::remove_file(env.dir.join("state/xend.pid")).unwrap();
    let err = second();
    assert!(err.contains("another xend"), "{err}");
    assert_eq!(env.get("/health").0, 200, "the first xend carries on");
}

/// Bug 7: `xend start` only said "xend did not come up".
#[test]
fn xend_start_says_why_it_cannot_start() {
    let dir = std::env::temp_dir().join(format!("rxen-xend-start-{}", std::process::id()));
    let run = |extra: &[&str]| {
        let out = Command::new(bin("xend"))
            .arg("start")
            .args(["--port", &rxen_testkit::free_port().to_string()])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--log-dir")
            .arg(dir.join("log"))
            .arg("--xenstored-socket")
            .arg(dir.join("xs/socket"))
            .args(extra)
            .env_remove("XEND_AUTH_TOKEN")
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&["--listen", "0.0.0.0"]);
    assert!(err.contains("needs a token"), "{err}");
    let err = run(&["--create", "/nonexistent/missing.cfg"]);
    assert!(err.contains("/nonexistent/missing.cfg"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bug 7: the JSON spec had no defaults; relative kernels resolved against xend's
/// directory; disks and vifs were accepted silently.
#[test]
fn create_forms_agree_and_say_what_they_ignore() {
    if !kvm_available("create_forms_agree_and_say_what_they_ignore") {
        return;
    }
    let env = Env::start("create-forms");
    let (s, v) = env.post("/domains", r#"{"spec":{"name":"d"}}"#);
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["domain"]["memory_mib"], 128);
    assert_eq!(v["domain"]["vcpus"], 1);
    let cfg = "name='rel'\nmemory=16\nkernel='hello'\non_poweroff='preserve'";
    let (s, v) = env.post("/domains", &json!({ "config": cfg }).to_string());
    assert_eq!(s, 422, "a relative kernel without a base directory: {v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("relative"));
    let (s, v) = env.post(
        "/domains",
        &json!({ "config": cfg, "base_dir": guests_dir() }).to_string(),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        v["domain"]["config"]["kernel"].as_str(),
        Some(guest("hello").display().to_string().as_str())
    );
    // Disks are attached now (issue 9): what cannot be a disk is refused up front.
    for (target, why) in [
        ("/nonexistent/x.img", "cannot be used"),
        ("/dev/null", "not a regular file or a block device"),
    ] {
        let (s, v) = env.create(&format!(
            "name='disky'\nmemory=16\ndisk=['file:{target},xvda,w']"
        ));
        assert_eq!(s, 422, "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(why) && msg.contains(target), "{msg}");
    }
    let img = env.dir.join("disk.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    // A bridge of the test's own (xend creates it), never the host's xenbr0.
    let br = rxen_testkit::net::TestBridge::new();
    let tap = rxen_testkit::net::unique_ifname("rxv");
    let (s, v) = env.create(&format!(
        "name='disky'\nmemory=16\ndisk=['file:{},xvda,w']\nvif=['bridge={},vifname={tap},rate=10Mb/s']",
        img.display(),
        br.0
    ));
    assert_eq!(s, 201, "{v}");
    let w = v["warnings"].as_array().unwrap();
    assert!(
        w.iter().all(|w| !w.as_str().unwrap().contains("disk")),
        "{v}"
    );
    assert!(
        w.iter().any(|w| w
            .as_str()
            .unwrap()
            .contains("vif 0: rate is accepted but not applied")),
        "{v}"
    );
    let domid = v["domain"]["domid"].as_u64().unwrap();
    // Vifs are attached now (issue 10): libxl's nodes, a MAC in Xen's range.
    let mac = env
        .xenstore()
        .read(0, &format!("/local/domain/0/backend/vif/{domid}/0/mac"))
        .unwrap();
    assert!(mac.starts_with(b"00:16:3e:"), "{mac:?}");
    let backend = format!("/local/domain/0/backend/vbd/{domid}/51712");
    let mut xs = env.xenstore();
    assert_eq!(
        xs.read(0, &format!("{backend}/params")).unwrap(),
        img.display().to_string().into_bytes()
    );
    assert_eq!(
        xs.read(
            0,
            &format!("/local/domain/{domid}/device/vbd/51712/backend")
        )
        .unwrap(),
        backend.clone().into_bytes()
    );
    // The VMM's blkback announces itself (InitWait) whatever the guest does.
    env.wait_until("blkback in InitWait", || {
        xs.read(0, &format!("{backend}/state")).ok().as_deref() == Some(b"2".as_slice())
    });
    assert_eq!(env.delete("/domains/disky").0, 204);
    assert!(
        xs.read(0, &format!("/local/domain/0/backend/vbd/{domid}"))
            .is_err(),
        "the backend nodes go with the domain"
    );
    // Paused at creation (xm create -p).
    let (s, v) = env.post(
        "/domains",
        &json!({ "config": "name='p'\nmemory=16", "paused": true }).to_string(),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["domain"]["state"], "paused");
    assert_eq!(env.post("/domains/p/unpause", "").1["state"], "running");
}

/// Bug 8: /metrics failed `promtool check metrics`; unique paths grew it without bound.
#[test]
fn metrics_pass_promtool_and_stay_bounded() {
    if !kvm_available("metrics_pass_promtool_and_stay_bounded") {
        return;
    }
    let env = Env::start("metrics");
    let (s, _) = env.create("name='m'\nmemory=16");
    assert_eq!(s, 201);
    for i in 0..50 {
        assert_eq!(env.get(&format!("/no/such/path/{i}")).0, 404);
        assert_eq!(env.get(&format!("/domains/nosuch{i}")).0, 404);
    }
    env.post("/domains/m/pause", "");
    let metrics = || {
        env.agent
            .get(env.url("/metrics"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap()
    };
    metrics(); // the first scrape adds the /metrics route's own series
    let text = metrics();
    assert!(!text.contains("/no/such"), "raw paths are never labels");
    assert!(!text.contains("nosuch"), "raw ids are never labels");
    assert!(text.contains("route=\"unmatched\""));
    assert!(text.contains("route=\"/domains/{id}/pause\""));
    let before = text.lines().count();
    for i in 50..100 {
        env.get(&format!("/no/such/path/{i}"));
    }
    assert_eq!(metrics().lines().count(), before, "no new series");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; scripts/setup.sh installs it)");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Xen compatibility: Domain-0, and the xenstore layout libxl writes.
#[test]
fn domain0_and_the_libxl_xenstore_layout() {
    if !kvm_available("domain0_and_the_libxl_xenstore_layout") {
        return;
    }
    let env = Env::start("layout");
    for id in ["0", "Domain-0"] {
        let (s, d) = env.get(&format!("/domains/{id}"));
        assert_eq!((s, &d["name"]), (200, &Value::from("Domain-0")), "{d}");
    }
    let (s, e) = env.delete("/domains/0");
    assert_eq!((s, e["error"]["code"].as_str()), (409, Some("domain0")));
    let (s, _) = env.create("name='Domain-0'\nmemory=16");
    assert_eq!(s, 409);
    let (s, v) = env.create("name='x'\nmemory=16");
    assert_eq!(s, 201, "{v}");
    let domid = v["domain"]["domid"].as_u64().unwrap();
    let uuid = v["domain"]["uuid"].as_str().unwrap();
    let mut xs = env.xenstore();
    let mut read =
        |p: &str| String::from_utf8(xs.read(0, p).unwrap_or_else(|e| panic!("{p}: {e}"))).unwrap();
    assert_eq!(read("/local/domain/0/name"), "Domain-0");
    let home = format!("/local/domain/{domid}");
    for key in [
        "store/ring-ref",
        "store/port",
        "console/ring-ref",
        "console/port",
    ] {
        read(&format!("{home}/{key}"))
            .parse::<u64>()
            .unwrap_or_else(|e| panic!("{key}: {e}"));
    }
    assert!(read(&format!("/vm/{uuid}/start_time"))
        .parse::<f64>()
        .is_ok());
    assert_eq!(read(&format!("/vm/{uuid}/image/ostype")), "linux");
    assert_eq!(read(&format!("/libxl/{domid}/type")), "pv");
    let info = env.get("/info").1;
    for key in [
        "nr_cpus",
        "total_memory",
        "free_memory",
        "xen_major",
        "xen_caps",
    ] {
        assert!(info.get(key).is_some(), "{key} in {info}");
    }
}

/// Issue 13 item 15: `xend stop` signalled whatever process the pid file named.
#[test]
fn xend_stop_signals_only_the_daemon_holding_the_lock() {
    let dir = std::env::temp_dir().join(format!("rxen-xend-stop-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("state")).unwrap();
    let mut bystander = Command::new("sleep").arg("30").spawn().unwrap();
    std::fs::write(dir.join("state/xend.pid"), format!("{}\n", bystander.id())).unwrap();
    let out = Command::new(bin("xend"))
        .arg("stop")
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--log-dir")
        .arg(dir.join("log"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "nothing to stop");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not running"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "the process the pid file named was not signalled"
    );
    let _ = bystander.kill();
    let _ = bystander.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
