//! Helpers of the KVM integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// True if `/dev/kvm` can be opened. If not, says loudly that the calling test is
/// skipped and why.
pub fn kvm_available(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            eprintln!("SKIPPED {test}: /dev/kvm is not usable here ({e}); this test needs KVM");
            false
        }
    }
}

pub fn guest(name: &str) -> PathBuf {
    rxen_guest_images::guest_path(name)
}

/// Runs `xen-vmm run` with `args`; returns its output.
pub fn xen_vmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xen-vmm"))
        .arg("run")
        .args(args)
        .output()
        .expect("running xen-vmm")
}

/// Runs guest `name` through `xen-vmm` and returns (exit code, stdout, stderr).
pub fn run_guest(name: &str, extra: &[&str]) -> (i32, String, String) {
    let g = guest(name);
    let mut args = vec!["--kernel", g.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    let out = xen_vmm(&args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
