//! Faults change nothing (issue 13): kills of xend mid-create, stopped VMMs, memory
//! overcommit, a removed database, races of destroy and pause, leftover files, values
//! that look like flags, special kernel files, xenstored restarts. Each reproduces an
//! attack that worked before its fix.
// A test fails by panicking: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// Every xen-vmm process whose control socket lies under `dir`, with its name.
fn vmms_under(dir: &std::path::Path) -> Vec<(u32, String)> {
    let want = format!("--control={}", dir.display());
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !pid_alive(u64::from(pid)) || !args.iter().any(|a| a.starts_with(&want)) {
            continue;
        }
        let name = args
            .iter()
            .find_map(|a| a.strip_prefix("--name="))
            .unwrap_or("?")
            .to_string();
        out.push((pid, name));
    }
    out
}

/// Issue 13 item 3: SIGKILL of xend 1-20 ms into a create left running VMMs xend did
/// not list, xenstore nodes, and two live domains with one name after a re-create.
#[test]
fn killing_xend_mid_create_leaves_nothing_behind() {
    if !kvm_available("killing_xend_mid_create_leaves_nothing_behind") {
        return;
    }
    let mut env = Env::start("mid-create");
    for round in 0..20u64 {
        let url = env.url("/domains");
        let t = std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into();
            let _ = agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(r#"{"config":"name='victim'\nmemory=16"}"#);
        });
        std::thread::sleep(Duration::from_millis(1 + round % 20));
        env.kill_xend();
        let _ = t.join();
        env.start_xend();
        let listed: Vec<Value> = env
            .domains()
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["pid"].as_u64().is_some())
            .cloned()
            .collect();
        let vmms = vmms_under(&env.dir);
        assert_eq!(
            vmms.len(),
            listed.len(),
            "round {round}: every running VMM is listed: {vmms:?} vs {listed:?}"
        );
        assert!(listed.len() <= 1, "round {round}: {listed:?}");
        let xs = env.xs_domains();
        let ids: Vec<String> = listed
            .iter()
            .map(|d| d["domid"].as_u64().unwrap().to_string())
            .collect();
        let mut xs_ids = xs.clone();
        xs_ids.sort();
        xs_ids.dedup();
        assert_eq!(
            xs_ids, ids,
            "round {round}: xenstore holds only listed domains"
        );
        // Re-creating the name gives one domain or a clear conflict, never two.
        let (s, _) = env.create("name='victim'\nmemory=16");
        assert!(s == 201 || s == 409, "round {round}: {s}");
        let named = vmms_under(&env.dir)
            .into_iter()
            .filter(|(_, n)| n == "victim")
            .count();
        assert_eq!(named, 1, "round {round}: one live domain named victim");
        assert_eq!(env.delete("/domains/victim").0, 204);
    }
}

/// Issue 13 item 4: a stopped VMM at xend's start was declared dead and a second copy
/// started.
#[test]
fn a_stopped_vmm_is_kept_and_never_duplicated() {
    if !kvm_available("a_stopped_vmm_is_kept_and_never_duplicated") {
        return;
    }
    let mut env = Env::start("sigstop");
    let (_, v) = env.create("name='frozen'\nmemory=16\non_crash='restart'");
    let pid = v["domain"]["pid"].as_u64().unwrap();
    // SAFETY: stopping the domain's VMM (our test's process tree).
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    env.kill_xend();
    env.start_xend();
    let d = env.get("/domains/frozen").1;
    assert_eq!(d["pid"].as_u64(), Some(pid), "{d}");
    assert_eq!(d["unresponsive"], true, "{d}");
    assert_eq!(vmms_under(&env.dir).len(), 1, "no second copy");
    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    env.wait_until("the VMM to answer again", || {
        env.get("/domains/frozen").1["unresponsive"] == false
    });
    assert_eq!(vmms_under(&env.dir).len(), 1);
}

/// Issue 13 item 7: domains whose memory exceeds the host's were all started.
#[test]
fn memory_beyond_the_host_is_refused() {
    if !kvm_available("memory_beyond_the_host_is_refused") {
        return;
    }
    // Room for about 47 MiB of domains: one 16 MiB domain (24 with overhead), not two.
    let env = Env::start_with("overcommit", &["--memory-overcommit", "0.002"]);
    let (s, v) = env.create("name='a'\nmemory=16");
    assert_eq!(s, 201, "{v}");
    let (s, v) = env.create("name='b'\nmemory=16");
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (507, Some("insufficient_memory")),
        "{v}"
    );
    assert_eq!(env.delete("/domains/a").0, 204);
    let (s, v) = env.create("name='b'\nmemory=16");
    assert_eq!(s, 201, "memory is given back at destroy: {v}");
}

/// Issue 13 item 9: removing xend.db while xend ran orphaned every domain and reset
/// the domid counter.
#[test]
fn a_removed_database_is_written_back() {
    if !kvm_available("a_removed_database_is_written_back") {
        return;
    }
    let mut env = Env::start("db-removed");
    let (_, v) = env.create("name='kept'\nmemory=16");
    let first = v["domain"]["domid"].as_u64().unwrap();
    let db = env.dir.join("state/xend.db");
    std::fs::remove_file(&db).unwrap();
    env.wait_until("xend.db to be written back", || db.exists());
    env.kill_xend();
    env.start_xend();
    assert_eq!(env.get("/domains/kept").1["domid"].as_u64(), Some(first));
    let (_, v) = env.create("name='next'\nmemory=16");
    assert!(v["domain"]["domid"].as_u64().unwrap() > first, "{v}");
}

/// Issue 13 item 13: a pause racing a destroy overwrote the destroying state.
#[test]
fn destroy_and_pause_race_leaves_nothing() {
    if !kvm_available("destroy_and_pause_race_leaves_nothing") {
        return;
    }
    let env = std::sync::Arc::new(Env::start("destroy-pause"));
    for round in 0..10 {
        let (s, _) = env.create("name='r'\nmemory=16");
        assert_eq!(s, 201);
        let e2 = env.clone();
        let pauser = std::thread::spawn(move || e2.post("/domains/r/pause", "").0);
        let (destroyed, body) = env.delete("/domains/r");
        let paused = pauser.join().unwrap();
        assert!(
            matches!(destroyed, 204 | 409),
            "round {round}: {destroyed} {body}"
        );
        assert!(matches!(paused, 200 | 404 | 409), "round {round}: {paused}");
        if destroyed != 204 {
            assert_eq!(env.delete("/domains/r").0, 204);
        }
        assert_eq!(env.get("/domains/r").0, 404, "round {round}");
        assert!(env.xs_domains().is_empty(), "round {round}");
    }
}

/// Issue 13 item 14: thousands of domain directories stayed after destroy.
#[test]
fn destroy_removes_files_and_keeps_logs_by_rule() {
    if !kvm_available("destroy_removes_files_and_keeps_logs_by_rule") {
        return;
    }
    let env = Env::start("files");
    for i in 0..40 {
        let (_, v) = env.create(&format!("name='f{i}'\nmemory=16"));
        let domid = v["domain"]["domid"].as_u64().unwrap();
        assert_eq!(env.delete(&format!("/domains/f{i}")).0, 204);
        assert!(!env.dir.join(format!("state/domains/{domid}")).exists());
        assert!(env
            .dir
            .join(format!("state/logs/f{i}-{domid}/console.log"))
            .exists());
    }
    let kept = std::fs::read_dir(env.dir.join("state/logs"))
        .unwrap()
        .count();
    assert_eq!(kept, 32, "the newest 32 ended domains keep their logs");
}

/// Issue 13 item 17: names and command lines that look like flags reached xen-vmm's
/// argument parser as flags.
#[test]
fn values_that_look_like_flags_stay_values() {
    if !kvm_available("values_that_look_like_flags_stay_values") {
        return;
    }
    let env = Env::start("flags");
    let (s, v) = env.create("name='-rf'\nmemory=16\ncmdline='--help'");
    assert_eq!(s, 201, "{v}");
    assert_eq!(env.get("/domains/-rf").1["state"], "running");
    assert_eq!(env.delete("/domains/-rf").0, 204);
}

/// Issue 13 items 6 and 19: special or huge kernel files were read (or gave 500).
#[test]
fn special_kernel_files_are_refused_before_reading() {
    let env = Env::start("kernels");
    let sparse = env.dir.join("sparse.img");
    let f = std::fs::File::create(&sparse).unwrap();
    f.set_len(1 << 30).unwrap();
    for k in ["/proc/self/mem", "/dev/zero", "/", sparse.to_str().unwrap()] {
        let (s, v) = env.create(&format!("name='k'\nmemory=16\nkernel='{k}'"));
        assert_eq!(s, 422, "{k}: {v}");
        assert_eq!(v["error"]["code"], "invalid_config", "{k}: {v}");
    }
}

/// Issue 13 item 19: renaming onto a managed config's name mismatched the database.
#[test]
fn rename_onto_a_managed_name_is_refused() {
    if !kvm_available("rename_onto_a_managed_name_is_refused") {
        return;
    }
    let env = Env::start("rename-managed");
    assert_eq!(
        env.post("/managed", r#"{"config":"name='m'\nmemory=16"}"#)
            .0,
        201
    );
    assert_eq!(env.create("name='x'\nmemory=16").0, 201);
    let (s, v) = env.post("/domains/x/rename", r#"{"name":"m"}"#);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("name_in_use")),
        "{v}"
    );
}

/// Issue 13 item 5: after xenstored died, every domain's xenstore relay stopped for
/// good and `xm shutdown -w` timed out.
#[test]
fn xenstored_restarts_lose_no_domain() {
    if !kvm_available("xenstored_restarts_lose_no_domain") {
        return;
    }
    let mut env = Env::start("xs-restart");
    for i in 0..3 {
        assert_eq!(env.create(&format!("name='d{i}'\nmemory=16")).0, 201);
    }
    for (round, signal) in [libc::SIGKILL, libc::SIGTERM].into_iter().enumerate() {
        let pid = match env.xs.take() {
            Some(c) => c.id() as i32,
            None => std::fs::read_to_string(env.dir.join("state/xenstored.pid"))
                .unwrap()
                .trim()
                .parse()
                .unwrap(),
        };
        // SAFETY: signalling the test's own xenstored.
        unsafe { libc::kill(pid, signal) };
        let sock = env.dir.join("xs/socket");
        let pid_file = env.dir.join("state/xenstored.pid");
        // xend notices within ~1 s and restarts it. Once in a CI run (and once in a full
        // local run) the restart never completed within a minute: not reproduced since,
        // so on failure this says what it last saw and what xend logged.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let holder = rxen_xenstore::pidfile::PidFile::holder(&pid_file);
            let restarted = holder.is_some_and(|p| p != 0 && p as i32 != pid);
            let doms = rxen_xenstore::client::Client::connect(&sock).and_then(|mut c| {
                let name = c.read(0, "/local/domain/0/name")?;
                Ok((name, c.directory(0, "/local/domain")?))
            });
            if restarted {
                if let Ok((name, doms)) = &doms {
                    if name == b"Domain-0" && doms.len() == 1 + 3 - round {
                        break;
                    }
                }
            }
            let last = format!("pid file holder {holder:?} (killed {pid}), store {doms:?}");
            if std::time::Instant::now() > deadline {
                let logs: String = std::fs::read_dir(env.dir.join("log"))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .collect();
                let tail = &logs[logs.len().saturating_sub(6000)..];
                panic!("round {round}: xend did not restart xenstored: {last}\nxend logs:\n{tail}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The guest still honours control/shutdown through its relayed ring.
        let (s, v) = env.post(&format!("/domains/d{round}/shutdown?wait=20"), "");
        assert_eq!(s, 200, "round {round}: {v}");
    }
}

/// Unmounts a tmpfs when the test ends (before the environment removes its files).
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Issue 13 item 8: with the disk full, a failed database delete at destroy was
/// silent and the domain came back at the next start.
#[test]
fn a_full_disk_fails_operations_instead_of_losing_them() {
    if !kvm_available("a_full_disk_fails_operations_instead_of_losing_them") {
        return;
    }
    let mut env = Env::start("full-disk");
    env.kill_xend();
    let state = env.dir.join("state");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(&state)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !mounted {
        // Not a KVM matter: a sandbox without mount rights skips loudly.
        eprintln!("SKIPPED a_full_disk_fails_operations_instead_of_losing_them: cannot mount a tmpfs here (needs root with mount rights)");
        return;
    }
    let _unmount = Mounted(state.clone());
    env.start_xend();
    assert_eq!(env.create("name='d'\nmemory=16").0, 201);
    // Fill the disk.
    let filler = state.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    let (s, v) = env.delete("/domains/d");
    assert!(
        s >= 500,
        "destroy on a full disk must fail, not pretend: {s} {v}"
    );
    assert_eq!(
        env.get("/domains/d").1["state"],
        "running",
        "nothing was destroyed"
    );
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(env.delete("/domains/d").0, 204);
    env.kill_xend();
    env.start_xend();
    assert_eq!(
        env.get("/domains/d").0,
        404,
        "a destroyed domain stays destroyed"
    );
}
