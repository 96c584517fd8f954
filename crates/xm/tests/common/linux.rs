//! Debian's stock kernel as a Xen PV guest in tests (issue 12): where the kernel,
//! its modules and busybox come from, the initramfs the tests write, and what the
//! domain printed.
//!
//! The kernel comes from `RXEN_LINUX_KERNEL`, else from `target/linux-kernel/` (filled
//! by `scripts/fetch-linux-kernel.sh`, which `apt-get download`s the package
//! `linux-image-amd64` depends on, and Debian's `busybox-static`); the tests run that
//! script themselves when the cache is empty, and skip loudly when the packages cannot
//! be had. Modules (`xen-blkfront.ko`, `ext4.ko`, ...) come from `modules/` next to
//! `boot/` (`RXEN_LINUX_MODULES` overrides).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::guests::skip;

/// What every test's `/init` prints once it runs in guest user mode.
pub const INIT_MARKER: &str = "RXEN-INIT-OK";

/// The repository's `target/linux-kernel`, the fetch script's cache.
fn cache() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/linux-kernel")
}

/// The kernel to boot, or `None` after a loud skip.
pub fn kernel(test: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RXEN_LINUX_KERNEL") {
        return Some(PathBuf::from(p));
    }
    let cache = cache();
    let find = || -> Option<PathBuf> {
        std::fs::read_dir(cache.join("boot"))
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("vmlinuz-"))
            })
    };
    if let (Some(k), true) = (find(), cache.join("modules/ext4.ko").is_file()) {
        return Some(k);
    }
    let fetched = std::process::Command::new("bash")
        .arg(cache.join("../../scripts/fetch-linux-kernel.sh"))
        .arg(&cache)
        .status();
    match (fetched, find()) {
        (Ok(s), Some(k)) if s.success() => Some(k),
        (r, _) => {
            skip(
                test,
                &format!(
                    "Debian's kernel could not be obtained ({r:?}; run scripts/fetch-linux-kernel.sh or set RXEN_LINUX_KERNEL)"
                ),
            );
            None
        }
    }
}

/// Busybox from the cache `scripts/fetch-linux-kernel.sh` fills (next to `boot/`).
pub fn busybox(kernel: &Path, test: &str) -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("RXEN_BUSYBOX").map(PathBuf::from),
        kernel
            .parent()
            .and_then(|b| b.parent())
            .map(|d| d.join("busybox")),
        Some(PathBuf::from("/bin/busybox")),
    ];
    let found = candidates.into_iter().flatten().find(|p| p.is_file());
    if found.is_none() {
        skip(
            test,
            "no static busybox (scripts/fetch-linux-kernel.sh, or set RXEN_BUSYBOX)",
        );
    }
    found
}

/// The kernel module `name` (`ext4.ko`) of the kernel's package, or `None` after a
/// loud skip.
pub fn module(kernel: &Path, name: &str, test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("RXEN_LINUX_MODULES")
        .map(PathBuf::from)
        .or_else(|| {
            kernel
                .parent()
                .and_then(|b| b.parent())
                .map(|d| d.join("modules"))
        });
    let path = dir.map(|d| d.join(name)).filter(|p| p.is_file());
    if path.is_none() {
        skip(
            test,
            &format!("no {name} (scripts/fetch-linux-kernel.sh, or set RXEN_LINUX_MODULES)"),
        );
    }
    path
}

/// An initramfs (newc cpio, `rxen_initramfs`): busybox as `/bin/busybox` with
/// `/bin/sh`, `/dev/console`, `/sbin/poweroff` (busybox's `poweroff -f`, what Linux runs
/// for `control/shutdown`), `/init` with `init` as its script, and `files` (path in the
/// archive, contents; their directories must be among [`rxen_initramfs::DIRS`]).
pub fn initramfs(busybox: &Path, init: &str, files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let bb = std::fs::read(busybox).unwrap();
    rxen_initramfs::busybox_initramfs(&bb, init, files)
}

/// Everything the domains under `state` printed so far: the VMM's log (hypervisor
/// console lines, `(dN) ...`) and the console ring's log (hvc0).
pub fn boot_text(state: &Path) -> String {
    let mut text = String::new();
    let Ok(dirs) = std::fs::read_dir(state.join("domains")) else {
        return text;
    };
    for d in dirs.filter_map(|e| e.ok()) {
        for f in ["vmm.log", "console.log"] {
            if let Ok(b) = std::fs::read(d.path().join(f)) {
                text.push_str(&String::from_utf8_lossy(&b));
            }
        }
    }
    text
}

/// The lines of `text` that are not the guest's (`(dN) ...`): the VMM's own log.
pub fn vmm_lines(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with('[') && !l.contains("(d"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Waits (up to 300 s: a debug build on a shared 2-core host boots in ~12 s alone)
/// until what the domains under `state` printed satisfies `done`; fails early, with
/// the last lines, on a panic or a triple fault.
pub fn wait_for_text(state: &Path, what: &str, mut done: impl FnMut(&str) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(linux_wait_secs());
    loop {
        let text = boot_text(state);
        if done(&text) {
            return;
        }
        assert!(
            !text.contains("Kernel panic") && !text.contains("triple-faulted"),
            "the guest died waiting for {what}:\n{}\n--- the VMM's own lines:\n{}",
            tail(&text, 40),
            tail(&vmm_lines(&text), 30)
        );
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}:\n{}\n--- the VMM's own lines:\n{}",
            tail(&text, 40),
            tail(&vmm_lines(&text), 30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A domain config for `kernel` with `ramdisk`, 256 MiB, hvc0 as console, ended
/// domains preserved, plus `extra` lines.
pub fn config(name: &str, kernel: &Path, ramdisk: &Path, extra: &str) -> String {
    format!(
        "name = \"{name}\"\nkernel = \"{}\"\nramdisk = \"{}\"\nmemory = 256\nextra = \"console=hvc0 earlyprintk=xen\"\non_crash = \"preserve\"\non_poweroff = \"preserve\"\n{extra}",
        kernel.display(),
        ramdisk.display()
    )
}

/// How long [`wait_for_text`] waits: `RXEN_LINUX_WAIT_SECS`, else 300 s.
fn linux_wait_secs() -> u64 {
    std::env::var("RXEN_LINUX_WAIT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300)
}

/// The static `rxen-linux-probe` (`bench/linux-probe`): `RXEN_LINUX_PROBE`, else built
/// with cargo into `target/linux-probe` (its own target directory, `crt-static`, as
/// the bench builds it). `None` after a loud skip when it cannot be built.
pub fn probe(test: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RXEN_LINUX_PROBE") {
        return Some(PathBuf::from(p));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target_dir = root.join("target/linux-probe");
    let target = "x86_64-unknown-linux-gnu";
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["build", "--release", "--quiet", "--target", target])
        .arg("--manifest-path")
        .arg(root.join("bench/linux-probe/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .output();
    match out {
        Ok(o) if o.status.success() => {
            Some(target_dir.join(target).join("release/rxen-linux-probe"))
        }
        r => {
            skip(test, &format!("rxen-linux-probe could not be built: {r:?}"));
            None
        }
    }
}
