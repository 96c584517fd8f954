//! A real xenstored + xend (+ xen-vmm per domain) per test: [`Env`].

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::{bin, free_port};

pub struct Env {
    pub dir: PathBuf,
    pub xs: Option<Child>,
    pub xend: Option<Child>,
    pub port: u16,
    pub agent: ureq::Agent,
    pub extra: Vec<String>,
}

impl Env {
    pub fn start(tag: &str) -> Env {
        Self::start_with(tag, &[])
    }

    pub fn start_with(tag: &str, extra: &[&str]) -> Env {
        let dir = std::env::temp_dir().join(format!("rxen-xend-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("xs/socket");
        // The same state and pid file as `xend start` gives xenstored (and xend when it
        // restarts xenstored, `rxen_xend::xenstored::XenstoredLaunch`), so that a
        // restarted xenstored continues this one's store.
        let state = dir.join("state");
        std::fs::create_dir_all(&state).unwrap();
        let xs = Command::new(bin("xenstored"))
            .arg("--socket")
            .arg(&sock)
            .arg("--state-file")
            .arg(state.join("xenstored.json"))
            .arg("--pid-file")
            .arg(state.join("xenstored.pid"))
            .stderr(Stdio::null())
            .spawn()
            .expect("xenstored");
        crate::wait_until("xenstored's socket", Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        });
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut env = Env {
            dir,
            xs: Some(xs),
            xend: None,
            port: free_port(),
            agent,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        env.start_xend();
        env
    }

    pub fn start_xend(&mut self) {
        let child = Command::new(bin("xend"))
            .arg("foreground")
            .args(["--port", &self.port.to_string()])
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--log-dir")
            .arg(self.dir.join("log"))
            .arg("--xenstored-socket")
            .arg(self.dir.join("xs/socket"))
            .arg("--unix-socket")
            .arg(self.unix_socket())
            .args(&self.extra)
            .stderr(Stdio::null())
            .spawn()
            .expect("xend");
        self.xend = Some(child);
        // Generous: a loaded CI machine (parallel tests, each with its own xend and
        // VMMs) has taken over 10 s to start a xend that reconciles killed VMMs.
        crate::wait_until("xend to answer /health", Duration::from_secs(30), || {
            self.get("/health").0 == 200
        });
    }

    /// SIGKILLs the test's xenstored (the one started here, or the daemon xend
    /// restarted) and waits until it is gone; with `lose_store` its state file and
    /// log go too, so that the next xenstored starts with an empty store. Returns
    /// the pid killed. xend's supervisor starts a new one.
    pub fn kill_xenstored(&mut self, lose_store: bool) -> i32 {
        let state = self.dir.join("state");
        let pid_file = state.join("xenstored.pid");
        let pid = match self.xs.take() {
            Some(mut c) => {
                let pid = c.id() as i32;
                let _ = c.kill();
                let _ = c.wait();
                pid
            }
            None => {
                let pid = rxen_xenstore::pidfile::PidFile::holder(&pid_file)
                    .filter(|p| *p > 0)
                    .expect("a live xenstored holds the pid file") as i32;
                // SAFETY: signalling the test's own xenstored, which holds its pid file.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                crate::wait_until("xenstored to die", Duration::from_secs(10), || {
                    rxen_xenstore::pidfile::PidFile::holder(&pid_file)
                        .is_none_or(|p| p as i32 != pid)
                });
                pid
            }
        };
        if lose_store {
            for f in ["xenstored.json", "xenstored.json.wal"] {
                let _ = std::fs::remove_file(state.join(f));
            }
        }
        pid
    }

    /// Waits until a xenstored other than `killed` holds the pid file and answers.
    pub fn wait_xenstored_restarted(&self, killed: i32) {
        let pid_file = self.dir.join("state/xenstored.pid");
        let sock = self.dir.join("xs/socket");
        crate::wait_until("xend to restart xenstored", Duration::from_secs(60), || {
            let holder = rxen_xenstore::pidfile::PidFile::holder(&pid_file);
            holder.is_some_and(|p| p != 0 && p as i32 != killed)
                && rxen_xenstore::client::Client::connect(&sock)
                    .and_then(|mut c| c.read(0, "/local/domain/0/name"))
                    .is_ok()
        });
    }

    pub fn kill_xend(&mut self) {
        if let Some(mut c) = self.xend.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The Unix socket xend also serves the API on.
    pub fn unix_socket(&self) -> PathBuf {
        self.dir.join("xend.sock")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn decode(mut r: ureq::http::Response<ureq::Body>) -> (u16, Value) {
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        match self.agent.get(self.url(path)).call() {
            Ok(r) => Self::decode(r),
            Err(_) => (0, Value::Null),
        }
    }

    /// `GET /domains` without Domain-0, after checking that Domain-0 comes first.
    pub fn domains(&self) -> Value {
        let (s, mut v) = self.get("/domains");
        assert_eq!(s, 200, "{v}");
        let list = v.as_array_mut().expect("a list");
        assert_eq!(list[0]["name"], "Domain-0", "Domain-0 is listed first");
        assert_eq!(list[0]["domid"], 0);
        list.remove(0);
        v
    }

    pub fn post(&self, path: &str, body: &str) -> (u16, Value) {
        Self::decode(
            self.agent
                .post(self.url(path))
                .header("Content-Type", "application/json")
                .send(body.to_string())
                .expect("post"),
        )
    }

    pub fn delete(&self, path: &str) -> (u16, Value) {
        Self::decode(self.agent.delete(self.url(path)).call().expect("delete"))
    }

    pub fn create(&self, cfg: &str) -> (u16, Value) {
        self.post("/domains", &serde_json::json!({"config": cfg}).to_string())
    }

    pub fn xenstore(&self) -> rxen_xenstore::client::Client {
        rxen_xenstore::client::Client::connect(&self.dir.join("xs/socket")).expect("xenstore")
    }

    /// Domain ids that have nodes under /local/domain.
    /// Guest domains in xenstore (`/local/domain/*` but Domain-0, and `/libxl/*`).
    pub fn xs_domains(&self) -> Vec<String> {
        let mut c = self.xenstore();
        let mut out: Vec<String> = c
            .directory(0, "/local/domain")
            .unwrap_or_default()
            .into_iter()
            .filter(|d| d != "0")
            .collect();
        out.extend(c.directory(0, "/libxl").unwrap_or_default());
        out.sort();
        out.dedup();
        out
    }

    pub fn wait_until(&self, what: &str, f: impl FnMut() -> bool) {
        crate::wait_until(what, Duration::from_secs(15), f)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Destroy what is left, then stop the daemons.
        if let (200, Value::Array(doms)) = self.get("/domains") {
            for d in doms {
                if let Some(id) = d["domid"].as_u64() {
                    let _ = self
                        .agent
                        .delete(self.url(&format!("/domains/{id}")))
                        .call();
                }
            }
        }
        self.kill_xend();
        if let Some(mut c) = self.xs.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // A xenstored that xend restarted runs as a daemon of its own. Only a live
        // holder of the pid file's lock is signalled (the file of the xenstored just
        // killed above names a pid that may be reused).
        if let Some(pid) =
            rxen_xenstore::pidfile::PidFile::holder(&self.dir.join("state/xenstored.pid"))
                .filter(|p| *p > 0)
        {
            // SAFETY: signalling the test's own xenstored, which holds its pid file.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        // VMMs run in sessions of their own and outlive xend: whatever a failed test
        // left of this environment's domains is stopped here.
        for (pid, _) in rxen_xend::process::vmms_under(&self.dir) {
            // SAFETY: signalling a xen-vmm whose control socket lies in this test's
            // own directory.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        if std::thread::panicking() && std::env::var_os("RXEN_KEEP_FAILED_TEST_DIRS").is_some() {
            eprintln!(
                "RXEN_KEEP_FAILED_TEST_DIRS: kept {} (logs: state/)",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
