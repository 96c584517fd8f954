//! Benchmarks of unmodified Xen PV guests (issue 8), as a user meets them: through
//! xend (`POST /domains` with the kernel) until the guest's console shows its marker —
//! Debian's PV-GRUB its `grub>` prompt, Xen's Mini-OS its first clock line. The
//! baseline, in the same run and the same way, is rxen's default guest until its
//! first console output.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::xend_bench::{create_config, start, Daemons};
use crate::Figure;

/// How long a guest may take to show its marker before the benchmark fails.
const BOOT_LIMIT: Duration = Duration::from_secs(60);

const NAMES: [&str; 3] = [
    "pv_grub_boot_to_prompt_ms",
    "minios_boot_to_clock_ms",
    "mmu_update_batch_us",
];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

fn console(d: &Daemons, name: &str) -> String {
    d.agent
        .get(format!("{}/domains/{name}/console", d.url))
        .call()
        .ok()
        .filter(|r| r.status().as_u16() == 200)
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .unwrap_or_default()
}

/// Milliseconds from the create request to `marker` on the domain's console.
fn boot_ms(d: &Daemons, name: &str, config: &str, marker: &str) -> Result<f64, String> {
    let t0 = Instant::now();
    create_config(d, name, config)?;
    let result = loop {
        let text = console(d, name);
        if !text.is_empty() && text.contains(marker) {
            break Ok(t0.elapsed().as_secs_f64() * 1e3);
        }
        if t0.elapsed() > BOOT_LIMIT {
            break Err(format!(
                "{name}: no {marker:?} within {BOOT_LIMIT:?}: {text}"
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let _ = d.agent.delete(format!("{}/domains/{name}", d.url)).call();
    result
}

fn guest(name: &str, kernel: Option<&PathBuf>, memory: u32) -> String {
    match kernel {
        Some(k) => format!("name='{name}'\nmemory={memory}\nkernel='{}'\n", k.display()),
        None => format!("name='{name}'\nmemory={memory}\n"),
    }
}

fn pv_grub_path() -> PathBuf {
    std::env::var_os("RXEN_PVGRUB")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/grub-xen/grub-x86_64-xen.bin"))
}

fn mini_os_path() -> PathBuf {
    std::env::var_os("RXEN_GUESTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../shared/guests"))
        .join("mini-os-blk")
}

/// Host TSC ticks per microsecond (the guest's TSC runs at the host's rate).
fn tsc_per_us() -> f64 {
    // SAFETY: rdtsc has no memory effects.
    let tsc = || unsafe { core::arch::x86_64::_rdtsc() };
    let (t0, c0) = (Instant::now(), tsc());
    std::thread::sleep(Duration::from_millis(200));
    let (c1, dt) = (tsc(), t0.elapsed());
    (c1 - c0) as f64 / (dt.as_secs_f64() * 1e6)
}

fn value_of(out: &str, key: &str) -> Result<f64, String> {
    out.split(&format!("{key}="))
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no {key}= in mmubench output: {out}"))
}

/// `mmu_update` per entry (the `mmubench` PV guest: batches of 256 entries that
/// remap mapped frames) against a hypercall that does nothing, in one run.
fn mmu_update_batch(quick: bool) -> Result<Figure, String> {
    let vmm = crate::xend_bench::sibling("xen-vmm");
    let guest = rxen_guest_images::guest_path("mmubench");
    let rounds = if quick { "rounds=50" } else { "rounds=1000" };
    let out = std::process::Command::new(&vmm)
        .args(["run", "--kernel"])
        .arg(&guest)
        .args(["--cmdline", &format!("batch=256 {rounds}")])
        // The SDK's PV path may print through console_io, Xen's hypervisor console,
        // which rxen logs: read both streams.
        .env("RXEN_LOG", "warn,rxen_vmm::hypervisor_console=info")
        .env("NO_COLOR", "1")
        .output()
        .map_err(|e| format!("{}: {e}", vmm.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.contains("mmubench: batch="))
        .ok_or_else(|| format!("mmubench printed no result ({}): {text}", out.status))?;
    let per_us = tsc_per_us();
    let entry = value_of(line, "entry_cycles")? / per_us;
    let nop = value_of(line, "hypercall_cycles")? / per_us;
    Ok(Figure {
        name: NAMES[2].into(),
        value: entry,
        unit: "us".into(),
        baseline: nop,
        ratio: entry / nop,
        note: "per entry of a 256-entry mmu_update remapping mapped frames vs one empty hypercall"
            .into(),
    })
}

pub fn run(wants: &dyn Fn(&str) -> bool, quick: bool) -> Result<Vec<Figure>, String> {
    let mut out = Vec::new();
    if wants(NAMES[2]) {
        out.push(mmu_update_batch(quick)?);
    }
    if !NAMES[..2].iter().any(|n| wants(n)) {
        return Ok(out);
    }
    let d = start()?;
    let n = if quick { 3 } else { 15 };
    let baseline = median(
        (0..n)
            .map(|i| {
                boot_ms(
                    &d,
                    &format!("base{i}"),
                    &guest(&format!("base{i}"), None, 32),
                    "",
                )
            })
            .collect::<Result<Vec<_>, _>>()?,
    );
    for (name, path, memory, marker) in [
        (NAMES[0], pv_grub_path(), 64, "grub> "),
        (NAMES[1], mini_os_path(), 32, "T(s="),
    ] {
        if !wants(name) {
            continue;
        }
        if !path.exists() {
            return Err(format!("{name}: {} is missing", path.display()));
        }
        let path = path.canonicalize().map_err(|e| e.to_string())?;
        let v = median(
            (0..n)
                .map(|i| {
                    let dom = format!("pv{i}");
                    boot_ms(&d, &dom, &guest(&dom, Some(&path), memory), marker)
                })
                .collect::<Result<Vec<_>, _>>()?,
        );
        out.push(Figure {
            name: name.into(),
            value: v,
            unit: "ms".into(),
            baseline,
            ratio: v / baseline,
            note: format!(
                "xend create to {marker:?} ({memory} MiB) vs rxen's default guest to its first output"
            ),
        });
    }
    Ok(out)
}
