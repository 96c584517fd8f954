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
use super::{kvm_available, Env};

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

/// An `/init` that prints [`INIT_MARKER`] and leaves a shell on the console (hvc0).
pub fn shell_init(before: &str) -> String {
    format!(
        "#!/bin/sh\n/bin/busybox mount -t proc proc /proc\n{before}echo {INIT_MARKER}\nexec /bin/sh\n"
    )
}

/// Boots Debian's kernel under a fresh xend with `init` and `files` in its initramfs
/// and `extra` config lines, as domain `name`; `None` after a loud skip.
pub fn boot(
    test: &str,
    name: &str,
    init: &str,
    files: &[(&str, Vec<u8>)],
    extra: &str,
) -> Option<Env> {
    if !kvm_available(test) {
        return None;
    }
    let kernel = kernel(test)?;
    let busybox = busybox(&kernel, test)?;
    let env = Env::start(name);
    create_in(&env, &kernel, &busybox, name, init, files, extra);
    Some(env)
}

/// `xm create` of domain `name` in `env`: `kernel` with an initramfs of `busybox`,
/// `init` and `files`, plus `extra` config lines (see [`config`]).
pub fn create_in(
    env: &Env,
    kernel: &Path,
    busybox: &Path,
    name: &str,
    init: &str,
    files: &[(&str, Vec<u8>)],
    extra: &str,
) {
    let ramdisk = env.dir.join(format!("{name}-initramfs.cpio"));
    std::fs::write(&ramdisk, initramfs(busybox, init, files)).unwrap();
    let cfg = env.dir.join(format!("{name}.cfg"));
    std::fs::write(&cfg, config(name, kernel, &ramdisk, extra)).unwrap();
    env.xm_ok(&["create", cfg.to_str().unwrap()]);
}

/// `xm shutdown -w` on a domain that ended: a clean poweroff, preserved.
pub fn assert_powered_off(env: &Env, name: &str) {
    let (_, dom) = env.get(&format!("/domains/{name}"));
    assert_eq!(dom["state"], "shutdown", "{dom}");
    assert!(
        dom["exit_reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("poweroff"),
        "{dom}"
    );
}

/// What the disk test's file holds.
pub const DISK_FILE: &str = "hello from an rxen disk under Linux";

/// Modules the disk tests' `/init` loads, in order (Debian builds them as modules).
pub const DISK_MODULES: &[&str] = rxen_initramfs::EXT4_ROOT_MODULES;

/// The disk modules as initramfs files (`lib/NAME.ko`), or `None` after a loud skip.
pub fn disk_modules(kernel: &std::path::Path, test: &str) -> Option<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    for m in DISK_MODULES {
        let path = module(kernel, m, test)?;
        files.push((format!("lib/{m}"), std::fs::read(path).unwrap()));
    }
    Some(files)
}

/// `/init` lines loading [`DISK_MODULES`] and waiting (bounded: blkfront probes
/// asynchronously) for xvda, then making its node.
pub fn load_disk_modules() -> String {
    let mut lines = String::from("/bin/busybox mount -t sysfs sysfs /sys\n");
    for m in DISK_MODULES {
        lines.push_str(&format!("/bin/busybox insmod /lib/{m}\n"));
    }
    lines.push_str(
        "i=0; while [ ! -e /sys/block/xvda ] && [ $i -lt 300 ]; do /bin/busybox sleep 0.1; i=$((i+1)); done\n\
         /bin/busybox mknod /dev/xvda b 202 0\n",
    );
    lines
}

/// An ext2 image of `tree` made by `mke2fs -d` (next to it), or `None` after a loud
/// skip when mke2fs is missing.
pub fn ext2_image(test: &str, tree: &std::path::Path) -> Option<std::path::PathBuf> {
    let img = tree.with_extension("img");
    let made = std::process::Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext2", "-d"])
        .arg(tree)
        .arg(&img)
        .arg("16M")
        .output();
    match made {
        Ok(o) if o.status.success() => Some(img),
        Ok(o) => panic!("mke2fs: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => {
            skip(
                test,
                &format!("mke2fs is not usable ({e}); apt-get install e2fsprogs"),
            );
            None
        }
    }
}

/// A fresh directory for `test`'s disk tree (its image goes next to it).
pub fn tempfile_dir(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rxen-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The largest `RXEN-COUNT-<n>` the counter loop of [`counter_init`] printed in `text`.
pub fn last_count(text: &str) -> Option<u64> {
    text.split("RXEN-COUNT-")
        .skip(1)
        .filter_map(|s| {
            let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .max()
}

/// An `/init` that prints an incrementing counter on hvc0 every ~0.2 s forever.
pub fn counter_init() -> String {
    format!(
        "#!/bin/sh\n/bin/busybox mount -t proc proc /proc\necho {INIT_MARKER}\ni=0\nwhile true; do i=$((i+1)); echo RXEN-COUNT-$i; /bin/busybox sleep 0.2; done\n"
    )
}

/// `xm shutdown -w` of Linux domain `name` must power it off; on a failure the panic
/// says what `control/shutdown` holds (still the request: Linux never took it; empty:
/// it took it and did not finish) and the last console and VMM lines.
pub fn shutdown_powers_off(env: &Env, name: &str) {
    let down = env.xm(&["shutdown", "-w", "--timeout", "180", name]);
    if !down.status.success() {
        let text = boot_text(&env.dir.join("state"));
        let domid = super::domid_of(env, name);
        let control = super::read_node(env, &format!("/local/domain/{domid}/control/shutdown"));
        panic!(
            "xm shutdown {name}: {}\ncontrol/shutdown now {control:?}\n{}\n--- the VMM's own lines:\n{}",
            String::from_utf8_lossy(&down.stderr),
            tail(&text, 40),
            tail(&vmm_lines(&text), 40)
        );
    }
    assert_powered_off(env, name);
}

/// What booting a root disk needs: Debian's kernel, busybox and the paths of
/// [`DISK_MODULES`]; `None` after a loud skip when one is missing.
pub fn root_disk_inputs(test: &str) -> Option<(PathBuf, PathBuf, Vec<PathBuf>)> {
    let kernel = kernel(test)?;
    let busybox = busybox(&kernel, test)?;
    let mut modules = Vec::new();
    for m in DISK_MODULES {
        modules.push(module(&kernel, m, test)?);
    }
    Some((kernel, busybox, modules))
}

/// Writes `initramfs.cpio` in `env`'s directory with the `rxen-mkinitramfs` tool, as a
/// user would: `busybox` and `modules`; returns its path.
pub fn mkinitramfs(env: &Env, busybox: &Path, modules: &[PathBuf]) -> PathBuf {
    let ramdisk = env.dir.join("initramfs.cpio");
    let mut mk = std::process::Command::new(rxen_testkit::bin("rxen-mkinitramfs"));
    mk.arg("--busybox").arg(busybox).arg("-o").arg(&ramdisk);
    for m in modules {
        mk.arg("--module").arg(m);
    }
    let made = mk
        .output()
        .expect("rxen-mkinitramfs (cargo build --workspace first)");
    assert!(made.status.success(), "rxen-mkinitramfs: {made:?}");
    ramdisk
}
