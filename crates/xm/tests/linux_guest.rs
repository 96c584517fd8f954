//! Debian's stock kernel (`linux-image-amd64`'s `vmlinuz`, a bzImage) as a Xen PV
//! guest under xend, created as xl would (`kernel = "/boot/vmlinuz-..."`), and how far
//! its boot gets (issue 12, first milestone; docs/linux-guest.md says where it stops).
//!
//! The kernel comes from `RXEN_LINUX_KERNEL`, else from `target/linux-kernel/` (filled
//! by `scripts/fetch-linux-kernel.sh`, which `apt-get download`s the package
//! `linux-image-amd64` depends on, and Debian's `busybox-static`); the test runs that
//! script itself when the cache is empty, and skips loudly when the packages cannot be
//! had. The initramfs (newc cpio: busybox, `/bin/sh`, `/dev/console`, an `/init`
//! script printing a marker and powering off) is written by the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::guests::skip;
use common::{kvm_available, Env};

/// Boot messages in the order Debian's 6.1 kernel prints them; the test reports the
/// last one seen.
const MILESTONES: &[&str] = &[
    // Early printk through HYPERVISOR_console_io (rxen's hypervisor console).
    "Linux version 6.1",
    "Hypervisor detected: Xen PV",
    "Booting kernel on Xen",
    "Memory: ",
    "xen:events: Using 2-level ABI",
    // From here the console is hvc0 (the console ring).
    "printk: console [hvc0] enabled",
    "Freeing SMP alternatives memory",
    "Grant table initialized",
    "xen:balloon: Initialising balloon driver",
    "clocksource: Switched to clocksource xen",
    "Unpacking initramfs",
    "Freeing unused kernel image",
    "Run /init as init process",
    // Printed by /init in guest user mode.
    INIT_MARKER,
    // busybox's `poweroff -f` (a fork, an exec, the reboot system call): "reboot:
    // System halted" or "reboot: Power down", then SCHEDOP_shutdown.
    "reboot: ",
];

/// What the test's `/init` prints.
const INIT_MARKER: &str = "RXEN-INIT-OK";

/// The milestone the boot must reach: `/init` ran in guest user mode, printed its
/// marker and powered the domain off through busybox (fork, exec, `reboot`).
const EXPECTED: &str = "reboot: ";

/// The kernel to boot, or `None` after a loud skip.
fn linux_kernel(test: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RXEN_LINUX_KERNEL") {
        return Some(PathBuf::from(p));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cache = root.join("target/linux-kernel");
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
    if let Some(k) = find() {
        return Some(k);
    }
    let fetched = std::process::Command::new("bash")
        .arg(root.join("scripts/fetch-linux-kernel.sh"))
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
fn busybox(kernel: &Path, test: &str) -> Option<PathBuf> {
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

/// One entry of a newc (`070701`) cpio archive.
fn cpio_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
    let fields = [
        ino,
        mode,
        0,
        0,
        1,
        0,
        data.len() as u32,
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    out.extend_from_slice(data);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// The test's initramfs: `/init` prints [`INIT_MARKER`] and powers off.
fn initramfs(busybox: &Path) -> Vec<u8> {
    const DIR: u32 = 0o040755;
    const FILE: u32 = 0o100755;
    const LINK: u32 = 0o120777;
    const CHR: u32 = 0o020600;
    let init = format!("#!/bin/sh\necho {INIT_MARKER}\n/bin/busybox poweroff -f\n");
    let bb = std::fs::read(busybox).unwrap();
    let mut out = Vec::new();
    cpio_entry(&mut out, 1, "bin", DIR, (0, 0), &[]);
    cpio_entry(&mut out, 2, "dev", DIR, (0, 0), &[]);
    cpio_entry(&mut out, 3, "proc", DIR, (0, 0), &[]);
    cpio_entry(&mut out, 4, "dev/console", CHR, (5, 1), &[]);
    cpio_entry(&mut out, 5, "bin/busybox", FILE, (0, 0), &bb);
    cpio_entry(&mut out, 6, "bin/sh", LINK, (0, 0), b"busybox");
    cpio_entry(&mut out, 7, "init", FILE, (0, 0), init.as_bytes());
    cpio_entry(&mut out, 8, "TRAILER!!!", 0, (0, 0), &[]);
    out
}

/// Everything the domain printed so far: the VMM's log (hypervisor console lines,
/// `(dN) ...`) and the console ring's log (hvc0).
fn boot_text(state: &Path) -> String {
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

fn furthest(text: &str) -> Option<usize> {
    MILESTONES.iter().rposition(|m| text.contains(m))
}

/// Debian's kernel boots as a PV domain created by `xm create` with `kernel =` the
/// bzImage and `ramdisk =` the test's initramfs: its early printk appears on the
/// hypervisor console, `/init` runs in guest user mode, prints [`INIT_MARKER`] on hvc0
/// and powers off ([`EXPECTED`]). Waits until the boot stops making progress (no new milestone for
/// 60 s), the domain ends, or the last milestone is reached.
#[test]
fn debian_kernel_boots_as_a_pv_guest() {
    let test = "debian_kernel_boots_as_a_pv_guest";
    if !kvm_available(test) {
        return;
    }
    let Some(kernel) = linux_kernel(test) else {
        return;
    };
    let Some(busybox) = busybox(&kernel, test) else {
        return;
    };
    let env = Env::start("linux");
    let ramdisk = env.dir.join("initramfs.cpio");
    std::fs::write(&ramdisk, initramfs(&busybox)).unwrap();
    let cfg = env.dir.join("linux.cfg");
    std::fs::write(
        &cfg,
        format!(
            "name = \"linux\"\nkernel = \"{}\"\nramdisk = \"{}\"\nmemory = 256\nextra = \"console=hvc0 earlyprintk=xen\"\non_crash = \"preserve\"\non_poweroff = \"preserve\"\n",
            kernel.display(),
            ramdisk.display()
        ),
    )
    .unwrap();
    let started = Instant::now();
    env.xm_ok(&["create", cfg.to_str().unwrap()]);
    let state = env.dir.join("state");
    let deadline = Duration::from_secs(600);
    let stall = Duration::from_secs(60);
    let mut best = None;
    let mut last_progress = Instant::now();
    loop {
        let text = boot_text(&state);
        let now = furthest(&text);
        if now > best {
            if let Some(i) = now {
                eprintln!("{test}: {:?} after {:?}", MILESTONES[i], started.elapsed());
            }
            best = now;
            last_progress = Instant::now();
        }
        let ended = text.contains("Kernel panic") || text.contains("triple-faulted");
        if best == Some(MILESTONES.len() - 1)
            || ended
            || last_progress.elapsed() > stall
            || started.elapsed() > deadline
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = boot_text(&state);
    let tail: String = text
        .lines()
        .rev()
        .take(30)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    let reached = best.map(|i| MILESTONES[i]);
    // How the domain ended, if it did: the VMM's own lines (not the guest's).
    let mut vmm_lines = Vec::new();
    if let Ok(dirs) = std::fs::read_dir(state.join("domains")) {
        for d in dirs.filter_map(|e| e.ok()) {
            if let Ok(b) = std::fs::read(d.path().join("vmm.log")) {
                vmm_lines.extend(
                    String::from_utf8_lossy(&b)
                        .lines()
                        .filter(|l| !l.contains("(d"))
                        .map(str::to_owned),
                );
            }
        }
    }
    eprintln!(
        "{test}: VMM log tail:\n{}",
        vmm_lines[vmm_lines.len().saturating_sub(8)..].join("\n")
    );
    eprintln!(
        "{test}: furthest milestone {reached:?} in {:?}; last lines:\n{tail}",
        started.elapsed()
    );
    let expected = MILESTONES.iter().position(|m| *m == EXPECTED).unwrap();
    assert!(
        best >= Some(expected),
        "the boot stopped before {EXPECTED:?} (furthest: {reached:?}):\n{tail}"
    );
    assert!(
        text.contains("Linux version 6."),
        "no early printk:\n{tail}"
    );
    assert!(
        text.contains(INIT_MARKER),
        "/init did not print its marker:\n{tail}"
    );
}
