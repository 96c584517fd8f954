//! Runs the shared CPU workload and prints `cpubench ns=.. iters=.. sum=..`.
#![no_std]
#![no_main]

use rxen_guest::{println, start, time};

rxen_guest::entry!(main);

fn main() {
    let iters: u64 = start::cmdline_value("iters")
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000_000);
    rxen_workloads::cpu_work(iters / 100, 1); // warm-up
    let t0 = time::now_ns();
    let sum = rxen_workloads::cpu_work(iters, 7);
    let ns = time::now_ns() - t0;
    println!("cpubench ns={} iters={} sum={}", ns, iters, sum);
}
