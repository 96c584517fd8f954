//! Debian's stock kernel as a Xen PV guest (issue 12): `linux_boot_to_init_s`, from
//! the xend create request to the marker its `/init` prints on hvc0, against rxen's
//! default guest from create to its first console output, both in this run.
//!
//! The kernel is `RXEN_LINUX_KERNEL`, else `target/linux-kernel/boot/vmlinuz-*` (run
//! `scripts/fetch-linux-kernel.sh` when missing); busybox is `RXEN_BUSYBOX`, else
//! `target/linux-kernel/busybox`. Without them the figure is skipped with a message.
//! The initramfs (`rxen_initramfs`: busybox, `/init` printing the marker and powering
//! off) is written here. The first Linux boot is kept until it powers off, and the
//! top of its counters (`rxen_vmm::stats`, the table its VMM logs when the domain
//! ends) is printed on stderr: where the boot's time went.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::xend_bench::{console, create_config, create_reply, start, Daemons};
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
pub(crate) fn inputs() -> Result<(PathBuf, PathBuf), String> {
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

fn initramfs(busybox: &Path) -> Result<Vec<u8>, String> {
    let bb = std::fs::read(busybox).map_err(|e| format!("{}: {e}", busybox.display()))?;
    let init = format!("#!/bin/sh\necho {MARKER}\n/bin/busybox poweroff -f\n");
    Ok(rxen_initramfs::busybox_initramfs(&bb, &init, &[]))
}

/// How many counters of a boot are printed.
const TOP_COUNTS: usize = 25;

/// What [`run_linux`] does once the marker is on the console, before it deletes the
/// domain.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterMarker {
    /// Nothing: no counters.
    Delete,
    /// Waits for the domain to power off by itself (`on_poweroff='preserve'`) and
    /// reads its VMM's counter table.
    AwaitPoweroff,
    /// Asks the guest to shut down (xend's `shutdown`, Linux's `control/shutdown`),
    /// then as [`AfterMarker::AwaitPoweroff`].
    ShutDown,
}

/// A Linux domain booted under xend: seconds from create to `marker` on its console,
/// its console text then, and its counters unless [`AfterMarker::Delete`].
pub(crate) struct LinuxRun {
    pub(crate) secs: f64,
    pub(crate) console: String,
    pub(crate) stats: Option<rxen_vmm_api::DomainStats>,
}

/// The xl.cfg text of a Linux domain with `ramdisk`.
pub(crate) fn linux_config(name: &str, kernel: &Path, ramdisk: &Path) -> String {
    format!(
        "name='{name}'\nmemory=256\nkernel='{}'\nramdisk='{}'\nextra='console=hvc0'\non_poweroff='preserve'\n",
        kernel.display(),
        ramdisk.display()
    )
}

/// Boots `config` and waits for `marker` on its console, then does `after` (see
/// [`LinuxRun`]). Deletes the domain.
pub(crate) fn run_linux(
    d: &Daemons,
    name: &str,
    config: &str,
    marker: &str,
    after: AfterMarker,
) -> Result<LinuxRun, String> {
    let t0 = Instant::now();
    let reply = create_reply(d, name, config)?;
    let result = (|| {
        let (secs, console_text) = loop {
            let text = console(d, name);
            if text.contains(marker) {
                break (t0.elapsed().as_secs_f64(), text);
            }
            if t0.elapsed() > BOOT_LIMIT {
                return Err(format!(
                    "{name}: no {marker:?} within {BOOT_LIMIT:?}; console ends:\n{}",
                    tail(&text, 20)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if after == AfterMarker::ShutDown {
            request_shutdown(d, name)?;
        }
        let stats = match (after, reply.domain.domid) {
            (AfterMarker::Delete, _) | (_, None) => None,
            (_, Some(domid)) => Some(logged_stats(&d.domain_dir(domid).join("vmm.log"))?),
        };
        Ok(LinuxRun {
            secs,
            console: console_text,
            stats,
        })
    })();
    let _ = d.agent.delete(format!("{}/domains/{name}", d.url)).call();
    result
}

/// `POST /domains/{name}/shutdown` (without waiting: the caller waits for the end).
fn request_shutdown(d: &Daemons, name: &str) -> Result<(), String> {
    let r = d
        .agent
        .post(format!("{}/domains/{name}/shutdown", d.url))
        .send_empty()
        .map_err(|e| format!("{name}: shutdown: {e}"))?;
    match r.status().as_u16() {
        200..=299 => Ok(()),
        code => Err(format!("{name}: shutdown: HTTP {code}")),
    }
}

/// The counter table the VMM logs at `log` when its domain ends (waits for it).
fn logged_stats(log: &Path) -> Result<rxen_vmm_api::DomainStats, String> {
    let header = rxen_vmm_api::DomainStats::TABLE_HEADER;
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(at) = text.find(header) {
            let after = &text[at + header.len()..];
            return Ok(rxen_vmm_api::DomainStats::parse_table(
                after.lines().skip(1),
            ));
        }
        if t0.elapsed() > BOOT_LIMIT {
            return Err(format!(
                "{}: no counter table within {BOOT_LIMIT:?} (did the domain power off?)",
                log.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Prints the top of `stats` on stderr under `title`.
pub(crate) fn print_stats(title: &str, stats: &rxen_vmm_api::DomainStats) {
    eprintln!(
        "rxen-bench: {title}: top counts (of {}):",
        stats.counts.len()
    );
    for line in stats.table(TOP_COUNTS).lines().skip(1) {
        eprintln!("rxen-bench: {line}");
    }
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

/// The median, over `n` boots, of rxen's default guest from the create request to
/// its first console output: the Linux figures' baseline.
pub(crate) fn default_guest_first_output_s(d: &Daemons, n: usize) -> Result<f64, String> {
    Ok(median(
        (0..n)
            .map(|i| {
                let name = format!("lbase{i}");
                boot_s(d, &name, &format!("name='{name}'\nmemory=32\n"), "")
            })
            .collect::<Result<Vec<_>, _>>()?,
    ))
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
        let baseline = default_guest_first_output_s(&d, n)?;
        let value = median(
            (0..n)
                .map(|i| {
                    let name = format!("linux{i}");
                    let config = linux_config(&name, &kernel, &ramdisk);
                    let after = if i == 0 {
                        AfterMarker::AwaitPoweroff
                    } else {
                        AfterMarker::Delete
                    };
                    let run = run_linux(&d, &name, &config, MARKER, after)?;
                    if let Some(stats) = &run.stats {
                        print_stats("Linux boot to poweroff", stats);
                    }
                    Ok(run.secs)
                })
                .collect::<Result<Vec<_>, String>>()?,
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
