//! Benchmarks of unmodified Xen PV guests (issue 8), as a user meets them: through
//! xend (`POST /domains` with the kernel) until the guest's console shows its marker —
//! Debian's PV-GRUB its `grub>` prompt, Xen's Mini-OS its first clock line. The
//! baseline, in the same run and the same way, is rxen's default guest until its
//! first console output.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::xend_bench::{start, Daemons};
use crate::Figure;

/// How long a guest may take to show its marker before the benchmark fails.
const BOOT_LIMIT: Duration = Duration::from_secs(60);

const NAMES: [&str; 2] = ["pv_grub_boot_to_prompt_ms", "minios_boot_to_clock_ms"];

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
    let body = serde_json::to_string(&rxen_xend_api::CreateRequest {
        config: Some(config.to_string()),
        ..Default::default()
    })
    .map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let mut r = d
        .agent
        .post(format!("{}/domains", d.url))
        .header("Content-Type", "application/json")
        .send(body)
        .map_err(|e| e.to_string())?;
    if r.status().as_u16() != 201 {
        let text = r.body_mut().read_to_string().unwrap_or_default();
        return Err(format!("create {name}: {text}"));
    }
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

pub fn run(wants: &dyn Fn(&str) -> bool, quick: bool) -> Result<Vec<Figure>, String> {
    if !NAMES.iter().any(|n| wants(n)) {
        return Ok(Vec::new());
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
    let mut out = Vec::new();
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
