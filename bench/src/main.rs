//! `rxen-bench`: measures rxen against baselines taken in the same run and prints a
//! table (or JSON with `--json`). Every figure has a baseline and a ratio, so results
//! from noisy machines stay comparable.
//!
//! Owns measurement only; it must not contain VMM or guest logic.

mod blk_bench;
mod debian_bench;
mod linux_bench;
mod linux_probe_bench;
mod migrate_bench;
mod net_bench;
mod pv_bench;
mod vmm_bench;
mod xend_bench;
mod xenstore_bench;

use clap::Parser;
use serde::Serialize;

#[derive(Parser)]
#[command(
    name = "rxen-bench",
    version,
    about = "rxen benchmarks: figures with same-run baselines"
)]
struct Cli {
    /// Print a JSON array of {name, value, unit, baseline, ratio} instead of a table.
    #[arg(long)]
    json: bool,
    /// Run only benchmarks whose name contains this string.
    #[arg(long)]
    filter: Option<String>,
    /// Fewer iterations (for smoke tests); figures are noisier.
    #[arg(long)]
    quick: bool,
}

/// One measured figure.
#[derive(Serialize, Clone, Debug)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: String,
    /// What the value is compared with, measured in the same run.
    pub baseline: f64,
    /// `value / baseline`, or for throughput-style figures `baseline / value` as
    /// documented per figure, so that the ratio reads the same way as the goal.
    pub ratio: f64,
    #[serde(skip)]
    pub note: String,
}

fn main() {
    let cli = Cli::parse();
    let wants = |n: &str| cli.filter.as_deref().is_none_or(|f| n.contains(f));
    let mut figures = Vec::new();
    for (what, result) in [
        ("domains", vmm_bench::run(&wants, cli.quick)),
        ("PV guests", pv_bench::run(&wants, cli.quick)),
        ("xenstore", xenstore_bench::run(&wants, cli.quick)),
        ("xend", xend_bench::run(&wants, cli.quick)),
        ("block devices", blk_bench::run(&wants, cli.quick)),
        ("Linux guests", linux_bench::run(&wants, cli.quick)),
        (
            "Linux guests against the host",
            linux_probe_bench::run(&wants, cli.quick),
        ),
        ("Debian userland", debian_bench::run(&wants, cli.quick)),
        ("network", net_bench::run(&wants, cli.quick)),
        (
            "save, restore, migration",
            migrate_bench::run(&wants, cli.quick),
        ),
    ] {
        match result {
            Ok(f) => figures.extend(f),
            Err(e) => {
                eprintln!("rxen-bench: {what}: {e}");
                std::process::exit(1);
            }
        }
    }
    if cli.json {
        match serde_json::to_string_pretty(&figures) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("rxen-bench: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    println!(
        "{:<30} {:>12} {:<6} {:>12} {:>9}  (baseline; goal)",
        "name", "value", "unit", "baseline", "ratio"
    );
    for f in &figures {
        println!(
            "{:<30} {:>12.3} {:<6} {:>12.3} {:>9.3}  {}",
            f.name, f.value, f.unit, f.baseline, f.ratio, f.note
        );
    }
}
