//! Measures the round trip of a null hypercall (`xen_version(XENVER_version)` through
//! the hypercall page) and of a bare `out` to the VMM's null port, in the same domain.
//! Prints `exitbench hypercall_ns=.. raw_exit_ns=..`.
//!
//! With `console_kib=K`, measures console output instead: K KiB through the console
//! ring (2 KiB per notify, timed until the backend took all of it) and K KiB through
//! `console_io` (2 KiB per call). Prints `consolebench ring_ns=.. io_ns=.. bytes=..`.
#![no_std]
#![no_main]

use rxen_guest::abi::layout::NULL_PORT;
use rxen_guest::{hypercall, println, start, time};

rxen_guest::entry!(main);

fn raw_exit() {
    // SAFETY: the VMM allows and discards writes to the null port.
    unsafe {
        core::arch::asm!("out {port}, eax", port = const NULL_PORT, in("eax") 0u32, options(nostack, nomem))
    };
}

fn console_bench(kib: u64) {
    let chunk = [b'x'; 2048];
    let rounds = (kib / 2).max(1);
    let t0 = time::now_ns();
    for _ in 0..rounds {
        rxen_guest::console::write_bytes(&chunk);
    }
    rxen_guest::console::flush();
    let t1 = time::now_ns();
    for _ in 0..rounds {
        hypercall::console_write(&chunk);
    }
    let t2 = time::now_ns();
    println!(
        "\nconsolebench ring_ns={} io_ns={} bytes={}",
        t1 - t0,
        t2 - t1,
        rounds * 2048
    );
}

fn main() {
    if let Some(kib) = start::cmdline_value("console_kib").and_then(|v| v.parse().ok()) {
        console_bench(kib);
        return;
    }
    let n: u64 = start::cmdline_value("n")
        .and_then(|v| v.parse().ok())
        .unwrap_or(20000);
    let mut best_h = u64::MAX;
    let mut best_r = u64::MAX;
    // Interleave the two measurements so both see the same host conditions.
    for _ in 0..5 {
        let t0 = time::now_ns();
        for _ in 0..n / 5 {
            raw_exit();
        }
        let t1 = time::now_ns();
        for _ in 0..n / 5 {
            hypercall::xen_version::<()>(0, None);
        }
        let t2 = time::now_ns();
        best_r = best_r.min((t1 - t0) * 5 / n);
        best_h = best_h.min((t2 - t1) * 5 / n);
    }
    println!("exitbench hypercall_ns={} raw_exit_ns={}", best_h, best_r);
}
