//! What an emulated M2P read costs a PV guest: a minimal Xen PV kernel (built here:
//! an ELF with Xen's notes) loads `machine_to_phys_mapping[5]` N times in a loop and
//! then executes `ud2` without a trap table, which ends the domain with its registers.
//! Every load faults (L4 slot 256 is the host's), exits through rxen's IDT and trap
//! stub and is emulated (`traps::m2p`). The per-read cost is the difference of the
//! run times of two loop counts divided by the difference of the counts; the test
//! prints it as `m2p_read_us` and checks the loaded value (mfn 5 -> pfn 5).
// A test fails by panicking: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::pv_kernel::pv_kernel;
use common::*;

use std::process::Command;
use std::time::{Duration, Instant};

const M2P: u64 = 0xffff_8000_0000_0000;

/// The kernel: `mov ecx, n; movabs rax, M2P+40; 1: mov rdx, [rax]; dec ecx; jnz 1b; ud2`.
fn kernel(n: u32) -> Vec<u8> {
    let mut code = vec![0xb9];
    code.extend_from_slice(&n.to_le_bytes());
    code.extend_from_slice(&[0x48, 0xb8]);
    code.extend_from_slice(&(M2P + 5 * 8).to_le_bytes());
    code.extend_from_slice(&[0x48, 0x8b, 0x10, 0xff, 0xc9, 0x75, 0xf9, 0x0f, 0x0b]);
    pv_kernel(&code)
}

/// Runs the kernel with `n` reads; returns (wall time, stderr).
fn run(dir: &std::path::Path, n: u32) -> (Duration, String) {
    let path = dir.join(format!("m2p-{n}"));
    std::fs::write(&path, kernel(n)).unwrap();
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_xen-vmm"))
        .args(["run", "--pv", "--kernel"])
        .arg(&path)
        .env("RXEN_LOG", "warn")
        .output()
        .expect("running xen-vmm");
    (
        t.elapsed(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn emulated_m2p_read_cost() {
    let test = "emulated_m2p_read_cost";
    if !kvm_available(test) {
        return;
    }
    let dir = TempDir::new(test);
    let (few, many) = (1u32, 2001u32);
    let best = |n| {
        (0..3)
            .map(|_| {
                let (t, err) = run(&dir.0, n);
                assert!(err.contains("rdx=0x5 "), "the load's value: {err}");
                assert!(err.contains("vector 6"), "ends at its ud2: {err}");
                t
            })
            .min()
            .unwrap()
    };
    let (t_few, t_many) = (best(few), best(many));
    let per_read = (t_many.as_secs_f64() - t_few.as_secs_f64()) / f64::from(many - few);
    println!("m2p_read_us {:.1}", per_read * 1e6);
    eprintln!(
        "m2p_read_us {:.1} ({few} reads: {t_few:?}, {many}: {t_many:?})",
        per_read * 1e6
    );
    assert!(t_many > t_few);
}
