//! Debian's kernel as a PV guest: what a process in guest user mode may not do.
//!
//! The user program is a static Rust binary compiled here with `rustc` (the toolchain
//! that builds the tests) and put in the initramfs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::linux::{self, boot_text};
use common::{kvm_available, Env};

/// `xen_version(XENVER_version)` by `out` to rxen's hypercall port (0xCA: `eax` = the
/// hypercall number, the result in `rax`) from a user process; prints the result.
const USER_HYPERCALL: &str = r#"
fn main() {
    let mut rax: u64 = 17; // __HYPERVISOR_xen_version
    // SAFETY: an `out` to rxen's hypercall port; the VMM writes only `rax`.
    unsafe {
        std::arch::asm!("out 0xca, eax", inout("rax") rax, in("rdi") 0u64, in("rsi") 0u64,
            options(nostack));
    }
    println!("RXEN-USER-HYPERCALL {}", rax as i64);
}
"#;

/// Compiles [`USER_HYPERCALL`] static into `dir`.
fn user_program(dir: &Path) -> PathBuf {
    let src = dir.join("user_hypercall.rs");
    std::fs::write(&src, USER_HYPERCALL).unwrap();
    let out = dir.join("user_hypercall");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let status = Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "-O",
            "-C",
            "target-feature=+crt-static",
            "-o",
        ])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("run rustc");
    assert!(status.success(), "rustc failed on the user program");
    out
}

/// The port is open to every CPL-3 `out`, so before the fix a user process's
/// `out 0xca` ran the hypercall (`xen_version` answered 0x40013: 262163). Hypercalls
/// are the guest kernel's: it now gets `-EPERM`.
#[test]
fn a_user_process_cannot_make_hypercalls() {
    let test = "a_user_process_cannot_make_hypercalls";
    if !kvm_available(test) {
        return;
    }
    let Some(kernel) = linux::kernel(test) else {
        return;
    };
    let Some(busybox) = linux::busybox(&kernel, test) else {
        return;
    };
    let env = Env::start("linuxuserhc");
    let program = std::fs::read(user_program(&env.dir)).unwrap();
    let ramdisk = env.dir.join("initramfs.cpio");
    let init = "#!/bin/sh\n/bin/user_hypercall\n/bin/busybox poweroff -f\n";
    let files = [("bin/user_hypercall", program)];
    std::fs::write(&ramdisk, linux::initramfs(&busybox, init, &files)).unwrap();
    let cfg = env.dir.join("linuxuserhc.cfg");
    std::fs::write(&cfg, linux::config("linuxuserhc", &kernel, &ramdisk, "")).unwrap();
    env.xm_ok(&["create", cfg.to_str().unwrap()]);
    let state = env.dir.join("state");
    linux::wait_for_text(&state, "the program's result and the poweroff", |t| {
        t.contains("RXEN-USER-HYPERCALL ") && t.contains("reboot: ")
    });
    let text = boot_text(&state);
    let result = text
        .lines()
        .find_map(|l| l.split("RXEN-USER-HYPERCALL ").nth(1))
        .map(str::trim);
    assert_eq!(
        result,
        Some("-1"),
        "a hypercall from guest user mode must fail with -EPERM:\n{}",
        linux::tail(&text, 20)
    );
}
