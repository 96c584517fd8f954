//! Debian's stock kernel as a Xen PV guest (issue 12): `linux_boot_to_init_s`, from
//! the xend create request to the marker its `/init` prints on hvc0, against rxen's
//! default guest from create to its first console output, both in this run.
//!
//! The kernel is `RXEN_LINUX_KERNEL`, else `target/linux-kernel/boot/vmlinuz-*` (run
//! `scripts/fetch-linux-kernel.sh` when missing); busybox is `RXEN_BUSYBOX`, else
//! `target/linux-kernel/busybox`. Without them the figure is skipped with a message.
//! The initramfs (newc cpio: busybox, `/init` printing the marker and powering off) is
//! written here.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::xend_bench::{console, create_config, start, Daemons};
use crate::Figure;

const NAME: &str = "linux_boot_to_init_s";

/// What the initramfs's `/init` prints.
const MARKER: &str = "RXEN-BENCH-INIT";

/// How long a boot may take (a debug build on a busy host needs ~12 s).
const BOOT_LIMIT: Duration = Duration::from_secs(300);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

/// The cache `scripts/fetch-linux-kernel.sh` fills.
const CACHE: &str = "target/linux-kernel";

fn find_kernel() -> Option<PathBuf> {
    std::fs::read_dir(Path::new(CACHE).join("boot"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
}

/// The kernel and busybox, or why not.
fn inputs() -> Result<(PathBuf, PathBuf), String> {
    let kernel = match std::env::var_os("RXEN_LINUX_KERNEL") {
        Some(k) => PathBuf::from(k),
        None => match find_kernel() {
            Some(k) => k,
            None => {
                let fetched = std::process::Command::new("bash")
                    .args(["scripts/fetch-linux-kernel.sh", CACHE])
                    .status();
                match (fetched, find_kernel()) {
                    (Ok(s), Some(k)) if s.success() => k,
                    (r, _) => return Err(format!("no Debian kernel ({r:?}; run scripts/fetch-linux-kernel.sh or set RXEN_LINUX_KERNEL)")),
                }
            }
        },
    };
    let busybox = std::env::var_os("RXEN_BUSYBOX")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(CACHE).join("busybox"));
    if !busybox.is_file() {
        return Err(format!("no static busybox at {}", busybox.display()));
    }
    let kernel = kernel
        .canonicalize()
        .map_err(|e| format!("{}: {e}", kernel.display()))?;
    Ok((kernel, busybox))
}

/// One entry of a newc (`070701`) cpio archive.
fn cpio_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
    let size = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let name_len = u32::try_from(name.len() + 1).unwrap_or(u32::MAX);
    let fields = [
        ino, mode, 0, 0, 1, 0, size, 0, 0, rdev.0, rdev.1, name_len, 0,
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

fn initramfs(busybox: &Path) -> Result<Vec<u8>, String> {
    let bb = std::fs::read(busybox).map_err(|e| format!("{}: {e}", busybox.display()))?;
    let init = format!("#!/bin/sh\necho {MARKER}\n/bin/busybox poweroff -f\n");
    let mut out = Vec::new();
    cpio_entry(&mut out, 1, "bin", 0o040755, (0, 0), &[]);
    cpio_entry(&mut out, 2, "dev", 0o040755, (0, 0), &[]);
    cpio_entry(&mut out, 3, "dev/console", 0o020600, (5, 1), &[]);
    cpio_entry(&mut out, 4, "bin/busybox", 0o100755, (0, 0), &bb);
    cpio_entry(&mut out, 5, "bin/sh", 0o120777, (0, 0), b"busybox");
    cpio_entry(&mut out, 6, "init", 0o100755, (0, 0), init.as_bytes());
    cpio_entry(&mut out, 7, "TRAILER!!!", 0, (0, 0), &[]);
    Ok(out)
}

/// Seconds from the create request to `marker` on the console (any output when empty).
fn boot_s(d: &Daemons, name: &str, config: &str, marker: &str) -> Result<f64, String> {
    let t0 = Instant::now();
    create_config(d, name, config)?;
    let result = loop {
        let text = console(d, name);
        if !text.is_empty() && text.contains(marker) {
            break Ok(t0.elapsed().as_secs_f64());
        }
        if t0.elapsed() > BOOT_LIMIT {
            break Err(format!("{name}: no {marker:?} within {BOOT_LIMIT:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = d.agent.delete(format!("{}/domains/{name}", d.url)).call();
    result
}

pub fn run(wants: &dyn Fn(&str) -> bool, quick: bool) -> Result<Vec<Figure>, String> {
    if !wants(NAME) {
        return Ok(Vec::new());
    }
    let (kernel, busybox) = match inputs() {
        Ok(found) => found,
        Err(why) => {
            eprintln!("rxen-bench: {NAME} skipped: {why}");
            return Ok(Vec::new());
        }
    };
    let ramdisk =
        std::env::temp_dir().join(format!("rxen-bench-initramfs-{}.cpio", std::process::id()));
    std::fs::write(&ramdisk, initramfs(&busybox)?).map_err(|e| e.to_string())?;
    let d = start()?;
    let n = if quick { 1 } else { 3 };
    let measured = (|| -> Result<(f64, f64), String> {
        let baseline = median(
            (0..n)
                .map(|i| {
                    let name = format!("lbase{i}");
                    boot_s(&d, &name, &format!("name='{name}'\nmemory=32\n"), "")
                })
                .collect::<Result<Vec<_>, _>>()?,
        );
        let value = median(
            (0..n)
                .map(|i| {
                    let name = format!("linux{i}");
                    let config = format!(
                        "name='{name}'\nmemory=256\nkernel='{}'\nramdisk='{}'\nextra='console=hvc0'\n",
                        kernel.display(),
                        ramdisk.display()
                    );
                    boot_s(&d, &name, &config, MARKER)
                })
                .collect::<Result<Vec<_>, _>>()?,
        );
        Ok((value, baseline))
    })();
    let _ = std::fs::remove_file(&ramdisk);
    let (value, baseline) = measured?;
    Ok(vec![Figure {
        name: NAME.into(),
        value,
        unit: "s".into(),
        baseline,
        ratio: value / baseline,
        note: "xend create to /init's marker on hvc0 (Debian's kernel, 256 MiB) vs rxen's default guest to its first output".into(),
    }])
}
