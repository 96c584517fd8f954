//! A real xenstored + xend per test, and the real `xm` binary to drive them.
//! (Adapted from `crates/xend/tests/common.rs`; to be folded into one dev crate.)
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Whether /dev/kvm is usable; prints `SKIPPED ...` when not, and fails instead when
/// `RXEN_REQUIRE_KVM=1`.
pub fn kvm_available(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            assert!(
                std::env::var("RXEN_REQUIRE_KVM").as_deref() != Ok("1"),
                "{test}: /dev/kvm is not usable ({e}) and RXEN_REQUIRE_KVM=1"
            );
            eprintln!("SKIPPED {test}: /dev/kvm is not usable ({e})");
            false
        }
    }
}

/// A binary of the workspace, next to `xm`.
pub fn bin(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_xm")).with_file_name(name);
    assert!(
        p.exists(),
        "{} is not built; run `cargo build -p rxen-xend -p rxen-xenstore -p rxen-vmm` first",
        p.display()
    );
    p
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Env {
    pub dir: PathBuf,
    xs: Option<Child>,
    xend: Option<Child>,
    pub port: u16,
    agent: ureq::Agent,
}

impl Env {
    pub fn start(tag: &str) -> Env {
        let dir = std::env::temp_dir().join(format!("rxen-xm-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test dir");
        let sock = dir.join("xs/socket");
        let xs = Command::new(bin("xenstored"))
            .arg("--socket")
            .arg(&sock)
            .stderr(Stdio::null())
            .spawn()
            .expect("xenstored");
        wait_until("xenstored", || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        });
        let port = free_port();
        let xend = Command::new(bin("xend"))
            .arg("foreground")
            .args(["--port", &port.to_string()])
            .arg("--unix-socket")
            .arg(dir.join("xend.sock"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--log-dir")
            .arg(dir.join("log"))
            .arg("--xenstored-socket")
            .arg(&sock)
            .stderr(Stdio::null())
            .spawn()
            .expect("xend");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let env = Env {
            dir,
            xs: Some(xs),
            xend: Some(xend),
            port,
            agent,
        };
        wait_until("xend", || env.get("/health").0 == 200);
        env
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn unix_socket(&self) -> PathBuf {
        self.dir.join("xend.sock")
    }

    fn decode(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
        match r {
            Ok(mut r) => {
                let status = r.status().as_u16();
                let text = r.body_mut().read_to_string().unwrap_or_default();
                (
                    status,
                    serde_json::from_str(&text).unwrap_or(Value::String(text)),
                )
            }
            Err(_) => (0, Value::Null),
        }
    }

    /// A request straight to the API (not through xm).
    pub fn get(&self, path: &str) -> (u16, Value) {
        Self::decode(self.agent.get(format!("{}{path}", self.url())).call())
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        Self::decode(
            self.agent
                .post(format!("{}{path}", self.url()))
                .header("Content-Type", "application/json")
                .send(body.to_string()),
        )
    }

    /// Creates a domain through the API (so tests of other commands do not depend
    /// on `xm create`).
    pub fn create(&self, cfg: &str) -> Value {
        let (s, v) = self.post("/domains", &serde_json::json!({ "config": cfg }));
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

impl Drop for Env {
    fn drop(&mut self) {
        if let (200, Value::Array(doms)) = self.get("/domains") {
            for d in doms {
                if let Some(id) = d["domid"].as_u64().filter(|&i| i != 0) {
                    let _ = self
                        .agent
                        .delete(format!("{}/domains/{id}", self.url()))
                        .call();
                }
            }
        }
        for c in [self.xend.take(), self.xs.take()].into_iter().flatten() {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whitespace-separated words of each line.
pub fn rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect()
}
