//! Checks timer accuracy: sleeps of several lengths (blocking `sleep`, and concurrent
//! sleeps on the executor), and prints the lateness of each wake-up.
//! Prints `timer_error_us p50=.. p99=.. max=..` and `timers: ok` on success.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use rxen_guest::{executor, println, start, time};

rxen_guest::entry!(main);

fn main() {
    let rounds: usize = start::cmdline_value("rounds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut errors = Vec::with_capacity(rounds);
    let durations = [50_000u64, 200_000, 1_000_000, 3_000_000];
    for i in 0..rounds {
        let d = durations[i % durations.len()];
        let deadline = time::now_ns() + d;
        time::sleep_until(deadline);
        let late = time::now_ns() as i64 - deadline as i64;
        if late < 0 {
            println!("timers: woke {} ns early", -late);
            rxen_guest::hypercall::shutdown(rxen_guest::abi::sched::SHUTDOWN_CRASH);
        }
        errors.push(late as u64);
    }
    errors.sort_unstable();
    let pct = |p: usize| errors[(errors.len() - 1) * p / 100] / 1000;
    println!(
        "timer_error_us p50={} p99={} max={}",
        pct(50),
        pct(99),
        errors[errors.len() - 1] / 1000
    );

    // Concurrent sleepers on the executor must finish in deadline order.
    static ORDER: spin::Mutex<Vec<u32>> = spin::Mutex::new(Vec::new());
    let mut ex = executor::Executor::new();
    for (id, ms) in [(3u32, 30u64), (1, 10), (2, 20)] {
        ex.spawn(async move {
            executor::sleep_ns(ms * 1_000_000).await;
            ORDER.lock().push(id);
        });
    }
    let t0 = time::now_ns();
    ex.run();
    let took_ms = (time::now_ns() - t0) / 1_000_000;
    let order = ORDER.lock().clone();
    println!("executor: order {:?} in {} ms", order, took_ms);
    if order != [1, 2, 3] || !(30..60).contains(&took_ms) {
        panic!("executor timers misbehaved");
    }
    println!("timers: ok");
}
