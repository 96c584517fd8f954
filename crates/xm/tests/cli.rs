//! The real `xm` binary against a real xenstored + xend.
// A test fails by panicking: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use serde_json::Value;

const WEB: &str = "name = 'web'\nmemory = 64\nmaxmem = 96\nvcpus = 1\nmaxvcpus = 2\n";

#[test]
fn uptime_of_an_unknown_domain_fails() {
    let env = Env::start("uptime");
    let o = env.xm(&["uptime", "nope"]);
    assert!(!o.status.success(), "xm uptime nope succeeded");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.starts_with("xm: "), "{err}");
    // Any API error makes xm fail.
    for args in [
        &["list", "nope"][..],
        &["vcpu-list", "nope"],
        &["pause", "nope"],
        &["mem-set", "nope", "64"],
        &["domid", "nope"],
        &["destroy", "nope"],
    ] {
        assert!(!env.xm(args).status.success(), "xm {args:?} succeeded");
    }
}

#[test]
fn bad_sizes_and_ids_fail_before_any_request() {
    let env = Env::start("badargs");
    for args in [
        &["mem-set", "web", "12q"][..],
        &["mem-max", "web", "1000k"],
        &["domname", "web"],
    ] {
        let o = env.xm(args);
        assert!(!o.status.success(), "xm {args:?} succeeded");
    }
}

#[test]
fn list_shows_domain0_first_and_list_0_works() {
    let env = Env::start("dom0");
    let out = env.xm_ok(&["list"]);
    let r = rows(&out);
    assert!(r.len() > 1, "no Domain-0 in\n{out}");
    assert_eq!(r[0], ["Name", "ID", "Mem", "VCPUs", "State", "Time(s)"]);
    assert_eq!(r[1][..2], ["Domain-0", "0"]);
    let out = env.xm_ok(&["list", "0"]);
    assert_eq!(rows(&out)[1][..2], ["Domain-0", "0"]);
    assert_eq!(env.xm_ok(&["domid", "Domain-0"]).trim(), "0");
    assert_eq!(env.xm_ok(&["domname", "0"]).trim(), "Domain-0");
}

#[test]
fn info_prints_xl_keys() {
    let env = Env::start("info");
    let out = env.xm_ok(&["info"]);
    let keys: Vec<&str> = out
        .lines()
        .map(|l| l.split(" : ").next().unwrap_or("").trim_end())
        .collect();
    for k in [
        "host",
        "release",
        "machine",
        "nr_cpus",
        "total_memory",
        "free_memory",
        "xen_version",
        "xen_scheduler",
        "xend_config_format",
    ] {
        assert!(keys.contains(&k), "no {k} in\n{out}");
    }
    assert!(out.lines().all(|l| l.get(23..25) == Some(": ")), "{out}");
}

#[test]
fn xend_url_may_be_a_unix_socket() {
    let env = Env::start("unix");
    let url = format!("unix://{}", env.unix_socket().display());
    wait_until("the unix socket", || env.unix_socket().exists());
    let o = env.xm_at(&url, &["--json", "list"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert!(v.is_array(), "{v}");
    // Errors come through the socket too.
    let o = env.xm_at(&url, &["uptime", "nope"]);
    assert!(!o.status.success());
    // A socket that is not there is a clear error.
    let o = env.xm_at("unix:///nonexistent/xend.sock", &["list"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/xend.sock"));
}

#[test]
fn domain_commands_in_xl_shapes() {
    if !kvm_available("domain_commands_in_xl_shapes") {
        return;
    }
    let env = Env::start("domu");
    let d = env.create(WEB);
    let domid = d["domid"].as_u64().expect("domid").to_string();
    // domid / domname
    assert_eq!(env.xm_ok(&["domid", "web"]).trim(), domid);
    assert_eq!(env.xm_ok(&["domname", &domid]).trim(), "web");
    // list NAME
    let r = rows(&env.xm_ok(&["list", "web"]));
    assert_eq!(r[1][..4], ["web", domid.as_str(), "64", "1"]);
    // list -l: libxl's shape.
    let v: Value = serde_json::from_str(&env.xm_ok(&["list", "-l", "web"])).expect("JSON");
    let c = &v[0]["config"];
    assert_eq!(v[0]["domid"].to_string(), domid);
    assert_eq!(c["c_info"]["type"], "pv");
    assert_eq!(c["c_info"]["name"], "web");
    assert_eq!(c["c_info"]["uuid"], d["uuid"]);
    assert_eq!(c["b_info"]["max_vcpus"], 2);
    assert_eq!(c["b_info"]["max_memkb"], 96 * 1024);
    assert_eq!(c["b_info"]["target_memkb"], 64 * 1024);
    assert!(c["disks"].is_array() && c["nics"].is_array());
    assert_eq!(c["on_poweroff"], "destroy");
    assert_eq!(c["on_reboot"], "restart");
    // mem-set / mem-max with xl's units (no unit: MiB).
    let mem = |env: &Env| {
        let v = env.get("/domains/web").1;
        (v["memory_mib"].as_u64(), v["maxmem_mib"].as_u64())
    };
    env.xm_ok(&["mem-set", "web", "48m"]);
    assert_eq!(mem(&env).0, Some(48));
    env.xm_ok(&["mem-set", "web", "57344k"]);
    assert_eq!(mem(&env).0, Some(56));
    env.xm_ok(&["mem-set", "web", "60"]);
    assert_eq!(mem(&env).0, Some(60));
    env.xm_ok(&["mem-max", "web", "80M"]);
    assert_eq!(mem(&env).1, Some(80));
    assert!(!env.xm(&["mem-set", "web", "1000k"]).status.success());
    assert_eq!(mem(&env).0, Some(60));
    // console --no-follow prints the guest's output.
    wait_until("the guest's console line", || {
        env.xm_ok(&["console", "web", "--no-follow"])
            .contains("xenstore: I am web")
    });
    // uptime NAME
    let r = rows(&env.xm_ok(&["uptime", "web"]));
    assert_eq!(r[0], ["Name", "ID", "Uptime"]);
    assert_eq!(r[1][..2], ["web", domid.as_str()]);
    // vcpu-list header
    let r = rows(&env.xm_ok(&["vcpu-list", "web"]));
    assert_eq!(
        r[0],
        ["Name", "ID", "VCPU", "CPU", "State", "Time(s)", "Affinity", "(Hard", "/", "Soft)"]
    );
}

/// Needs xend to fill `vcpu_list` (issue 7, server side).
#[test]
fn vcpu_list_has_a_row_per_vcpu() {
    if !kvm_available("vcpu_list_has_a_row_per_vcpu") {
        return;
    }
    let env = Env::start("vcpus");
    let d = env.create(WEB);
    let domid = d["domid"].as_u64().expect("domid").to_string();
    let r = rows(&env.xm_ok(&["vcpu-list", "web"]));
    assert_eq!(r.len(), 3, "{r:?}");
    assert_eq!(r[1][..3], ["web", domid.as_str(), "0"]);
    assert_eq!(r[2][..3], ["web", domid.as_str(), "1"]);
    // vCPU 1 is offline: no CPU, state --p.
    assert_eq!(r[2][3..5], ["-", "--p"]);
    // All domains: Domain-0's vCPUs come first.
    let r = rows(&env.xm_ok(&["vcpu-list"]));
    assert_eq!(r[1][..2], ["Domain-0", "0"]);
}

/// Needs xend to take `base_dir` and `paused` (issue 7, server side).
#[test]
fn create_paused_from_a_relative_path_and_shutdown_all() {
    if !kvm_available("create_paused_from_a_relative_path_and_shutdown_all") {
        return;
    }
    let env = Env::start("create");
    let cfgdir = env.dir.join("cfg");
    std::fs::create_dir_all(&cfgdir).expect("cfg dir");
    std::fs::write(cfgdir.join("web.cfg"), WEB).expect("cfg");
    std::fs::write(cfgdir.join("db.cfg"), WEB.replace("'web'", "'db'")).expect("cfg");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_xm"))
        .current_dir(&cfgdir)
        .env("XEND_URL", env.url())
        .args(["create", "-p", "web.cfg"])
        .output()
        .expect("xm");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(env.get("/domains/web").1["state"], "paused");
    let cfg = cfgdir.join("db.cfg");
    env.xm_ok(&["create", cfg.to_str().expect("path")]);
    assert_eq!(env.get("/domains/db").1["state"], "running");
    env.xm_ok(&["unpause", "web"]);
    // shutdown -a -w: both go, Domain-0 stays.
    env.xm_ok(&["shutdown", "-a", "-w", "--timeout", "20", "--force"]);
    let (_, list) = env.get("/domains");
    let names: Vec<&str> = list
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert!(
        !names.contains(&"web") && !names.contains(&"db"),
        "{names:?}"
    );
}

/// `xm console` on a terminal: raw mode, and Ctrl-] detaches (the guest keeps running).
#[test]
fn console_detaches_with_ctrl_bracket_on_a_terminal() {
    if !kvm_available("console_detaches_with_ctrl_bracket_on_a_terminal") {
        return;
    }
    let env = Env::start("console-tty");
    env.create(WEB);
    // `script` gives xm a pseudo-terminal; what we write to script's stdin is typed
    // on that terminal.
    let cmd = format!(
        "XEND_URL={} {} console web",
        env.url(),
        env!("CARGO_BIN_EXE_xm")
    );
    let mut child = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("script (util-linux)");
    let mut stdin = child.stdin.take().unwrap();
    // Let xm attach (it prints the console so far), then type Ctrl-].
    let mut out = child.stdout.take().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut out, &mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    wait_until("xm console to show the guest's output", || {
        String::from_utf8_lossy(&seen.lock().unwrap()).contains("idle guest")
    });
    use std::io::Write;
    stdin.write_all(b"\x1d").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Ctrl-] did not detach xm console"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert!(status.success(), "{status}");
    let _ = reader.join();
    assert_eq!(
        env.get("/domains/web").1["state"],
        "running",
        "the guest keeps running"
    );
}
