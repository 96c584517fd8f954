//! Unmodified Xen PV guests others wrote (PV-GRUB, Mini-OS) and an attached
//! `xm console` to drive them.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use super::Env;

/// Skips `test` loudly for `why`, or fails it when `RXEN_REQUIRE_KVM` is set (CI).
pub fn skip(test: &str, why: &str) {
    assert!(
        std::env::var_os("RXEN_REQUIRE_KVM").is_none(),
        "{test}: {why}"
    );
    eprintln!("SKIPPED {test}: {why}");
}

/// Debian's PV-GRUB (`grub-xen-host`), or `RXEN_PVGRUB`.
pub fn pv_grub(test: &str) -> Option<PathBuf> {
    let path = std::env::var_os("RXEN_PVGRUB")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/grub-xen/grub-x86_64-xen.bin"));
    if path.exists() {
        return Some(path);
    }
    skip(
        test,
        &format!(
            "{} is missing (apt-get install grub-xen-host, or set RXEN_PVGRUB)",
            path.display()
        ),
    );
    None
}

/// Xen's Mini-OS with its block test (`../shared/guests/mini-os-blk`, or
/// `RXEN_GUESTS_DIR`). It opens only `device/vbd/768` (`hda`).
pub fn mini_os(test: &str) -> Option<PathBuf> {
    shared_guest(test, "mini-os-blk")
}

/// The same Mini-OS with netfront too (`mini-os-blk-net`): it opens `device/vif/0`.
pub fn mini_os_net(test: &str) -> Option<PathBuf> {
    shared_guest(test, "mini-os-blk-net")
}

/// A guest image of `../shared/guests` (or `RXEN_GUESTS_DIR`); skips when missing.
fn shared_guest(test: &str, file: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("RXEN_GUESTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../../shared/guests"
            ))
        });
    let path = dir.join(file);
    if path.exists() {
        return Some(path);
    }
    skip(
        test,
        &format!(
            "{} is missing (../shared/guests, or set RXEN_GUESTS_DIR)",
            path.display()
        ),
    );
    None
}

/// An attached `xm console DOMAIN` whose input we type and whose output we collect.
pub struct Console {
    child: Child,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Console {
    pub fn attach(env: &Env, domain: &str) -> Console {
        let mut child = Command::new(env!("CARGO_BIN_EXE_xm"))
            .args(["console", domain])
            .env("XEND_URL", env.url())
            .env_remove("XEND_AUTH_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("xm console");
        let mut out = child.stdout.take().expect("stdout");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .expect("console buffer")
                    .extend_from_slice(&buf[..n]);
            }
        });
        Console { child, seen }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().expect("console buffer")).into_owned()
    }

    /// Output after the first `from` bytes.
    pub fn text_from(&self, from: usize) -> String {
        let seen = self.seen.lock().expect("console buffer");
        String::from_utf8_lossy(&seen[from.min(seen.len())..]).into_owned()
    }

    pub fn len(&self) -> usize {
        self.seen.lock().expect("console buffer").len()
    }

    pub fn type_line(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin.write_all(line.as_bytes()).expect("typing");
        // Not a terminal: xm sends stdin line by line; GRUB takes `\n` as Enter.
        stdin.write_all(b"\n").expect("typing");
        stdin.flush().expect("typing");
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
