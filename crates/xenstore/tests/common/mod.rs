//! A xenstored started for one test, stopped when dropped.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Daemon {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub socket: PathBuf,
}

pub fn temp_dir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "rxen-xs-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

impl Daemon {
    pub fn start(tag: &str, extra: &[&str]) -> Daemon {
        Self::start_in(temp_dir(tag), extra)
    }

    pub fn start_in(dir: PathBuf, extra: &[&str]) -> Daemon {
        let socket = dir.join("socket");
        let child = Command::new(env!("CARGO_BIN_EXE_xenstored"))
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .stderr(Stdio::null())
            .spawn()
            .expect("start xenstored");
        wait_until("xenstored to come up", Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
        Daemon {
            child: Some(child),
            dir,
            socket,
        }
    }

    /// Sends SIGTERM and waits; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        c.wait().ok()?.code()
    }

    /// Kills the daemon with SIGKILL (no chance to save anything) and keeps its
    /// directory for the next daemon; returns the directory.
    pub fn sigkill(mut self) -> PathBuf {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        std::mem::take(&mut self.dir)
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn domain_socket(&self, domid: u32) -> PathBuf {
        self.dir.join("domains").join(domid.to_string())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// True if Debian's xenstore clients are installed; otherwise says loudly that the
/// calling test is skipped.
pub fn have_tool(tool: &str, test: &str) -> bool {
    if Path::new(tool).exists() || which(tool) {
        true
    } else {
        eprintln!("SKIPPED {test}: {tool} is not installed (scripts/setup.sh installs xenstore-utils and xen-utils-4.17)");
        false
    }
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).exists()))
        .unwrap_or(false)
}

/// Waits until `cond` holds; fails the test if it does not within `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The counters of `CONTROL stats` (`name=value` pairs).
pub fn stats(c: &mut rxen_xenstore::client::Client) -> std::collections::BTreeMap<String, u64> {
    let raw = c
        .request(
            rxen_xenstore::wire::MsgType::Control,
            0,
            b"stats\0".to_vec(),
        )
        .expect("CONTROL stats");
    String::from_utf8_lossy(&raw)
        .trim_end_matches('\0')
        .split_whitespace()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// One counter of `CONTROL stats` (panics if the daemon does not report it).
pub fn stat(c: &mut rxen_xenstore::client::Client, name: &str) -> u64 {
    *stats(c)
        .get(name)
        .unwrap_or_else(|| panic!("CONTROL stats has no {name}"))
}
