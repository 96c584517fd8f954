//! A real xenstored + xend per test (`rxen-testkit`), and the real `xm` binary to
//! drive them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

pub use rxen_testkit::kvm_available;

pub fn wait_until(what: &str, f: impl FnMut() -> bool) {
    rxen_testkit::wait_until(what, Duration::from_secs(15), f)
}

pub struct Env {
    inner: rxen_testkit::Env,
    pub dir: PathBuf,
}

impl Env {
    pub fn start(tag: &str) -> Env {
        Self::start_with(tag, &[])
    }

    /// An environment whose xend gets `extra` options.
    pub fn start_with(tag: &str, extra: &[&str]) -> Env {
        let inner = rxen_testkit::Env::start_with(&format!("xm-{tag}"), extra);
        let dir = inner.dir.clone();
        Env { inner, dir }
    }

    /// xend's base URL.
    pub fn url(&self) -> String {
        self.inner.url("")
    }

    /// A privileged connection to the test's xenstored.
    pub fn xenstore(&self) -> rxen_xenstore::client::Client {
        self.inner.xenstore()
    }

    pub fn unix_socket(&self) -> PathBuf {
        self.inner.unix_socket()
    }

    /// A request straight to the API (not through xm).
    pub fn get(&self, path: &str) -> (u16, Value) {
        self.inner.get(path)
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.inner.post(path, &body.to_string())
    }

    pub fn delete(&self, path: &str) -> (u16, Value) {
        self.inner.delete(path)
    }

    /// SIGKILLs xenstored (see `rxen_testkit::Env::kill_xenstored`); returns its pid.
    pub fn kill_xenstored(&mut self, lose_store: bool) -> i32 {
        self.inner.kill_xenstored(lose_store)
    }

    /// Waits until xend started a xenstored other than `killed`.
    pub fn wait_xenstored_restarted(&self, killed: i32) {
        self.inner.wait_xenstored_restarted(killed)
    }

    /// Kills xend (SIGKILL; domains keep running) and starts it again on the same
    /// state directory, so that it adopts them.
    pub fn restart_xend(&mut self) {
        self.inner.kill_xend();
        self.inner.start_xend();
    }

    /// Creates a domain through the API (so tests of other commands do not depend
    /// on `xm create`).
    pub fn create(&self, cfg: &str) -> Value {
        let (s, v) = self.inner.create(cfg);
        assert_eq!(s, 201, "create: {v}");
        v["domain"].clone()
    }

    /// Runs `xm ARGS` against this xend over TCP.
    pub fn xm(&self, args: &[&str]) -> Output {
        self.xm_at(&self.url(), args)
    }

    pub fn xm_at(&self, url: &str, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_xm"))
            .args(args)
            .env("XEND_URL", url)
            .env_remove("XEND_AUTH_TOKEN")
            .stdin(Stdio::null())
            .output()
            .expect("running xm")
    }

    /// `xm ARGS` that must succeed; its stdout.
    pub fn xm_ok(&self, args: &[&str]) -> String {
        let o = self.xm(args);
        assert!(
            o.status.success(),
            "xm {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).expect("xm prints UTF-8")
    }
}

/// Whitespace-separated words of each line.
pub fn rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect()
}
/// A xenstore node's value as domain 0 reads it, `None` if absent.
pub fn read_node(env: &Env, path: &str) -> Option<String> {
    env.xenstore()
        .read(0, path)
        .ok()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// The domid of domain `name` (which must exist).
pub fn domid_of(env: &Env, name: &str) -> u64 {
    let (s, dom) = env.get(&format!("/domains/{name}"));
    assert_eq!(s, 200, "{dom}");
    dom["domid"].as_u64().unwrap()
}

/// A Mini-OS domain config `name` with `extra` lines, written to the test's directory.
pub fn mini_os_cfg(env: &Env, kernel: &Path, name: &str, extra: &str) -> PathBuf {
    let cfg = env.dir.join(format!("{name}.cfg"));
    std::fs::write(
        &cfg,
        format!(
            "name = \"{name}\"\nkernel = \"{}\"\nmemory = 32\non_crash = \"preserve\"\n{extra}",
            kernel.display()
        ),
    )
    .unwrap();
    cfg
}

/// Runs `xm args`, which must fail; its stderr.
pub fn xm_err(env: &Env, args: &[&str]) -> String {
    let o = env.xm(args);
    assert!(!o.status.success(), "xm {args:?} succeeded");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub mod guests;
pub mod linux;
pub mod netns;
pub mod soak;
