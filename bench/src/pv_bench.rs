//! Benchmarks of unmodified Xen PV guests (issue 8): how long Debian's PV-GRUB takes
//! from domain creation to its `grub>` prompt, and Xen's Mini-OS to its first clock
//! line, each against rxen's own smallest guest (create to its first console write)
//! measured in the same run.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rxen_vmm::console::ConsoleSink;
use rxen_vmm::{BootKind, Domain, DomainConfig};

use crate::Figure;

/// How long a guest may take to show its marker before the benchmark fails.
const BOOT_LIMIT: Duration = Duration::from_secs(60);

/// Collects console output and signals when `marker` first appears.
struct Watch {
    marker: &'static str,
    state: Arc<(Mutex<(String, Option<Instant>)>, Condvar)>,
}

impl ConsoleSink for Watch {
    fn write(&mut self, bytes: &[u8]) {
        let (lock, cond) = &*self.state;
        if let Ok(mut s) = lock.lock() {
            if s.1.is_none() {
                s.0.push_str(&String::from_utf8_lossy(bytes));
                if s.0.contains(self.marker) {
                    s.1 = Some(Instant::now());
                    cond.notify_all();
                }
            }
        }
    }
}

/// Milliseconds from `Domain::create_as` to `marker` on the console of `image`.
fn boot_to_marker_ms(
    image: &[u8],
    kind: BootKind,
    memory_mib: u64,
    marker: &'static str,
    i: usize,
) -> Result<f64, String> {
    let state = Arc::new((Mutex::new((String::new(), None)), Condvar::new()));
    let sink = Watch {
        marker,
        state: state.clone(),
    };
    let cfg = DomainConfig {
        name: format!("pvbench{i}"),
        memory_mib,
        ..Default::default()
    };
    let t0 = Instant::now();
    let d = Domain::create_as(cfg, image, Box::new(sink), kind).map_err(|e| e.to_string())?;
    let (lock, cond) = &*state;
    let mut s = lock.lock().map_err(|_| "poisoned")?;
    while s.1.is_none() && t0.elapsed() < BOOT_LIMIT {
        s = cond
            .wait_timeout(s, Duration::from_millis(100))
            .map_err(|_| "poisoned")?
            .0;
    }
    let at = s.1;
    let out = s.0.clone();
    drop(s);
    d.destroy();
    d.wait();
    let at = at.ok_or_else(|| format!("no {marker:?} within {BOOT_LIMIT:?}; console: {out}"))?;
    Ok((at - t0).as_secs_f64() * 1e3)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

/// The same-run baseline: rxen's `hello` guest from create to its first output.
fn hello_ms(n: usize) -> Result<f64, String> {
    let p = rxen_guest_images::guest_path("hello");
    let img = std::fs::read(&p).map_err(|e| format!("reading {}: {e}", p.display()))?;
    let runs = (0..n)
        .map(|i| boot_to_marker_ms(&img, BootKind::Rxen, 32, "", 1000 + i))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(median(runs))
}

fn pv_boot(
    quick: bool,
    name: &str,
    image: PathBuf,
    memory_mib: u64,
    marker: &'static str,
) -> Result<Figure, String> {
    let img = std::fs::read(&image).map_err(|e| format!("reading {}: {e}", image.display()))?;
    let n = if quick { 3 } else { 15 };
    let ours = (0..n)
        .map(|i| boot_to_marker_ms(&img, BootKind::XenPv, memory_mib, marker, i))
        .collect::<Result<Vec<_>, _>>()?;
    let (v, b) = (median(ours), hello_ms(n)?);
    Ok(Figure {
        name: name.into(),
        value: v,
        unit: "ms".into(),
        baseline: b,
        ratio: v / b,
        note: format!(
            "create to {marker:?} ({memory_mib} MiB) vs rxen's hello guest create to first output"
        ),
    })
}

fn pv_grub_path() -> PathBuf {
    std::env::var_os("RXEN_PVGRUB")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/grub-xen/grub-x86_64-xen.bin"))
}

fn pv_grub(quick: bool) -> Result<Figure, String> {
    pv_boot(
        quick,
        "pv_grub_boot_to_prompt_ms",
        pv_grub_path(),
        64,
        "grub> ",
    )
}

type Bench = fn(bool) -> Result<Figure, String>;

pub fn run(wants: &dyn Fn(&str) -> bool, quick: bool) -> Result<Vec<Figure>, String> {
    let benches: [(&str, Bench); 1] = [("pv_grub_boot_to_prompt_ms", pv_grub)];
    let mut out = Vec::new();
    for (name, f) in benches {
        if wants(name) {
            out.push(f(quick)?);
        }
    }
    Ok(out)
}
