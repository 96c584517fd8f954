// A build script reports failure by panicking with a message: expect is its error path.
#![allow(clippy::expect_used, clippy::unwrap_used)]
//! Builds the separate `guest/` workspace with the stable toolchain (its own
//! `.cargo/config.toml` makes freestanding static ELFs), installs every example guest
//! at `target/guests/NAME`, and copies the default guest into OUT_DIR for embedding.

use std::path::{Path, PathBuf};
use std::process::Command;

const GUESTS: &[&str] = &[
    "hello",
    "idle",
    "timers",
    "smp",
    "cpubench",
    "membench",
    "hcall-fuzz",
    "exitbench",
    "hostile",
    "pvsyscall",
    "granttest",
    "traps",
    "pvmmu",
    "mmubench",
    "blkbench",
    "httpd",
    "netbench",
    "memcheck",
];
const DEFAULT_GUEST: &str = "idle";

fn watch(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name == "target" {
            continue;
        }
        if p.is_dir() {
            watch(&p);
        } else {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
}

fn main() {
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest
        .join("../..")
        .canonicalize()
        .expect("workspace root");
    let guest_dir = root.join("guest");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    // OUT_DIR is <target>/<profile>/build/<pkg>/out.
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .expect("target dir above OUT_DIR")
        .to_path_buf();
    let guest_target = target_dir.join("guest-build");

    watch(&guest_dir);
    watch(&root.join("crates/abi"));
    watch(&root.join("crates/workloads"));

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&guest_dir)
        .args(["build", "--release", "--bins", "--target-dir"])
        .arg(&guest_target);
    // The outer build's flags and settings must not leak into the guest build.
    for (k, _) in std::env::vars() {
        if (k.starts_with("CARGO_")
            || k == "RUSTFLAGS"
            || k == "RUSTC_WRAPPER"
            || k == "RUSTC_WORKSPACE_WRAPPER")
            && k != "CARGO_HOME"
        {
            cmd.env_remove(&k);
        }
    }
    let status = cmd.status().expect("running cargo for the guest workspace");
    if !status.success() {
        panic!("building the guest workspace failed ({status})");
    }
    let built = guest_target.join("x86_64-unknown-linux-gnu/release");
    let install = target_dir.join("guests");
    std::fs::create_dir_all(&install).expect("create target/guests");
    for g in GUESTS {
        let from = built.join(g);
        std::fs::copy(&from, install.join(g))
            .unwrap_or_else(|e| panic!("installing {}: {e}", from.display()));
    }
    std::fs::copy(built.join(DEFAULT_GUEST), out_dir.join("default-guest.elf"))
        .expect("copy default guest");
    println!("cargo:rustc-env=RXEN_GUESTS_DIR={}", install.display());
    let list: Vec<String> = GUESTS.iter().map(|g| format!("{g:?}")).collect();
    std::fs::write(
        out_dir.join("guests.rs"),
        format!("pub const GUESTS: &[&str] = &[{}];\n", list.join(", ")),
    )
    .expect("write guests.rs");
}
