//! The `blkbench` guest in soak mode: it rewrites and reads back `soak_blocks` 4 KiB
//! blocks of its disk in rounds and prints `blkbench: soak round=N ok` after each.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::Env;

/// 4 KiB blocks the guest rewrites each round.
pub const BLOCKS: u64 = 128;

/// The domain's console so far ("" when it cannot be read).
pub fn console(env: &Env, name: &str) -> String {
    match env.get(&format!("/domains/{name}/console")) {
        (200, Value::String(s)) => s,
        _ => String::new(),
    }
}

/// The round numbers of the complete `blkbench: soak round=N ok` lines.
pub fn rounds(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("blkbench: soak round="))
        .filter_map(|l| l.strip_suffix(" ok")?.parse().ok())
        .collect()
}

/// Waits until domain `name` finished round `at_least` (failing at once if the guest
/// reported an error); returns its console.
pub fn wait_for_round(env: &Env, name: &str, at_least: u64) -> String {
    rxen_testkit::wait_until(
        &format!("soak round >= {at_least}"),
        Duration::from_secs(90),
        || {
            let t = console(env, name);
            assert!(
                !t.contains("FAILED") && !t.contains("guest panic"),
                "blkbench failed:\n{t}"
            );
            rounds(&t).last().is_some_and(|&n| n >= at_least)
        },
    );
    console(env, name)
}

/// Creates domain `name`: blkbench soaking `disk` (a file) as xvda.
pub fn create(env: &Env, name: &str, disk: &Path) {
    let kernel = rxen_testkit::guest("blkbench");
    env.create(&format!(
        "name = \"{name}\"\nkernel = \"{}\"\nmemory = 64\nextra = \"mode=soak soak_blocks={BLOCKS} soak_ms=5\"\ndisk = [ 'file:{},xvda,w' ]\non_crash = \"preserve\"\n",
        kernel.display(),
        disk.display()
    ));
}

/// The end of every log of the environment (xend's, the VMMs'), for failure messages.
pub fn logs(env: &Env) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(env.dir.join("log"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = e.path();
        let files: Vec<std::path::PathBuf> = if p.is_dir() {
            std::fs::read_dir(&p)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .collect()
        } else {
            vec![p]
        };
        for f in files {
            let t = std::fs::read_to_string(&f).unwrap_or_default();
            let tail = &t[t.len().saturating_sub(4000)..];
            out.push_str(&format!("== {}\n{tail}\n", f.display()));
        }
    }
    out
}
