//! System calls and CPU-bound work in a Linux guest against the same on the host, in
//! one run: `linux_syscall_us` (µs per raw `getpid`) and `linux_cpu_workload_ratio`
//! (a fixed CRC-32 workload's time in the guest over its time natively).
//!
//! Both run `rxen-linux-probe` (`bench/linux-probe`), built here static for the host
//! target (`RXEN_LINUX_PROBE` names a prebuilt one instead): put in the initramfs as
//! `/bin/probe`, which `/init` runs before powering off, the results read from hvc0;
//! then run natively with the same work. The guest's counters are printed as for the
//! boot benchmark. Skipped with a message without the kernel or busybox.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::linux_bench::{inputs, linux_config, print_stats, run_linux, AfterMarker};
use crate::xend_bench::start;
use crate::Figure;

const SYSCALL: &str = "linux_syscall_us";
const CPU: &str = "linux_cpu_workload_ratio";

/// `getpid` calls in the guest (tens of µs each there) and on the host.
const GUEST_GETPIDS: u64 = 20_000;
const HOST_GETPIDS: u64 = 2_000_000;
/// CRC-32 passes over 256 KiB: about 1-2 s natively on the project's hosts.
const CPU_PASSES: u64 = 3_000;

/// What `/init` prints after the probes.
const DONE: &str = "RXEN-PROBE-DONE";

/// The static probe: `RXEN_LINUX_PROBE`, else built with cargo into
/// `target/linux-probe` (its own target directory, static flags).
fn probe_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("RXEN_LINUX_PROBE") {
        return Ok(PathBuf::from(p));
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("linux-probe/Cargo.toml");
    let target_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/linux-probe");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target = "x86_64-unknown-linux-gnu";
    let out = Command::new(cargo)
        .args(["build", "--release", "--quiet", "--target", target])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .output()
        .map_err(|e| format!("cargo build of rxen-linux-probe: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo build of rxen-linux-probe failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(target_dir.join(target).join("release/rxen-linux-probe"))
}

/// The probe's results in `text`: (getpid ns, CPU seconds, CPU checksum).
fn parse(text: &str) -> Result<(f64, f64, String), String> {
    let mut getpid = None;
    let mut cpu = None;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["RXEN-PROBE", "getpid_ns", ns] => getpid = ns.parse::<f64>().ok(),
            ["RXEN-PROBE", "cpu_s", s, sum] => {
                cpu = s.parse::<f64>().ok().map(|s| (s, sum.to_string()))
            }
            _ => {}
        }
    }
    match (getpid, cpu) {
        (Some(g), Some((s, sum))) => Ok((g, s, sum)),
        _ => Err(format!("no probe results in:\n{text}")),
    }
}

/// Runs the probe natively with `args`; its output.
fn native(probe: &Path, args: &[String]) -> Result<String, String> {
    let out = Command::new(probe)
        .args(args)
        .output()
        .map_err(|e| format!("{}: {e}", probe.display()))?;
    if !out.status.success() {
        return Err(format!("{} {args:?}: {}", probe.display(), out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn run(wants: &dyn Fn(&str) -> bool, _quick: bool) -> Result<Vec<Figure>, String> {
    if !wants(SYSCALL) && !wants(CPU) {
        return Ok(Vec::new());
    }
    let (kernel, busybox) = match inputs() {
        Ok(found) => found,
        Err(why) => {
            eprintln!("rxen-bench: {SYSCALL}, {CPU} skipped: {why}");
            return Ok(Vec::new());
        }
    };
    let probe = probe_binary()?;
    let probe_bytes = std::fs::read(&probe).map_err(|e| format!("{}: {e}", probe.display()))?;
    let bb = std::fs::read(&busybox).map_err(|e| format!("{}: {e}", busybox.display()))?;
    let init = format!(
        "#!/bin/sh\n/bin/probe getpid {GUEST_GETPIDS}\n/bin/probe cpu {CPU_PASSES}\necho {DONE}\n/bin/busybox poweroff -f\n"
    );
    let ramdisk = std::env::temp_dir().join(format!(
        "rxen-bench-probe-initramfs-{}.cpio",
        std::process::id()
    ));
    std::fs::write(
        &ramdisk,
        rxen_initramfs::busybox_initramfs(&bb, &init, &[("bin/probe", probe_bytes)]),
    )
    .map_err(|e| e.to_string())?;
    let guest = (|| {
        let d = start()?;
        let config = linux_config("lprobe", &kernel, &ramdisk);
        run_linux(&d, "lprobe", &config, DONE, AfterMarker::AwaitPoweroff)
    })();
    let _ = std::fs::remove_file(&ramdisk);
    let guest = guest?;
    if let Some(stats) = &guest.stats {
        print_stats("Linux boot, probes and poweroff", stats);
    }
    let (guest_ns, guest_cpu, guest_sum) = parse(&guest.console)?;
    let host_getpid = native(&probe, &["getpid".into(), HOST_GETPIDS.to_string()])?;
    let host_cpu = native(&probe, &["cpu".into(), CPU_PASSES.to_string()])?;
    let (host_ns, host_cpu, host_sum) = parse(&format!("{host_getpid}{host_cpu}"))?;
    if guest_sum != host_sum {
        return Err(format!(
            "the CPU workload's checksum differs: guest {guest_sum}, host {host_sum}"
        ));
    }
    let mut figures = Vec::new();
    if wants(SYSCALL) {
        figures.push(Figure {
            name: SYSCALL.into(),
            value: guest_ns / 1000.0,
            unit: "us".into(),
            baseline: host_ns / 1000.0,
            ratio: guest_ns / host_ns,
            note: format!(
                "raw getpid in the Linux guest's user mode ({GUEST_GETPIDS} calls) vs on the host"
            ),
        });
    }
    if wants(CPU) {
        figures.push(Figure {
            name: CPU.into(),
            value: guest_cpu,
            unit: "s".into(),
            baseline: host_cpu,
            ratio: guest_cpu / host_cpu,
            note: format!(
                "{CPU_PASSES} CRC-32 passes over 256 KiB in the Linux guest vs natively (ratio: guest/native)"
            ),
        });
    }
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_lines_are_found_among_console_noise() {
        let text = "[    1.0] Run /init\r\nRXEN-PROBE getpid_ns 41234.5\r\nRXEN-PROBE cpu_s 1.500000 deadbeef\r\nRXEN-PROBE-DONE\r\n";
        assert_eq!(parse(text).unwrap(), (41234.5, 1.5, "deadbeef".into()));
        assert!(parse("RXEN-PROBE getpid_ns 1\n").is_err());
    }
}
