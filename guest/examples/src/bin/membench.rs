//! Runs the shared memory-bandwidth workload and prints `membench ns=.. bytes=.. sum=..`.
#![no_std]
#![no_main]

extern crate alloc;

use rxen_guest::{println, start, time};

rxen_guest::entry!(main);

fn main() {
    let mib: usize = start::cmdline_value("mib")
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let passes: u32 = start::cmdline_value("passes")
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let mut buf = alloc::vec![0u64; mib * 1024 * 1024 / 8];
    rxen_workloads::mem_work(&mut buf, 1); // fault everything in
    let t0 = time::now_ns();
    let sum = rxen_workloads::mem_work(&mut buf, passes);
    let ns = time::now_ns() - t0;
    println!(
        "membench ns={} bytes={} sum={}",
        ns,
        passes as u64 * 2 * (buf.len() as u64 * 8),
        sum
    );
}
