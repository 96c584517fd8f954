//! Starts vCPU 1 and plays IPI ping-pong with it over two IPI event channels; checks
//! `VCPUOP_is_up` and runstate. Prints `ipi_pingpong_us=..` and `smp: ok`.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering::SeqCst};

use rxen_guest::{events, hypercall, println, smp, start, time};

rxen_guest::entry!(main);

static PORT_TO_0: AtomicU32 = AtomicU32::new(0);
static PORT_TO_1: AtomicU32 = AtomicU32::new(0);
static ROUNDS: AtomicU32 = AtomicU32::new(0);
static DONE: AtomicU32 = AtomicU32::new(0);

fn wait_for(port: u32) {
    while !events::take_fired(port) {
        events::wait_and_dispatch();
    }
}

fn secondary(id: u32) {
    println!("vcpu {id}: up");
    let mine = events::bind_ipi(1).expect("bind ipi on vcpu 1");
    PORT_TO_1.store(mine, SeqCst);
    while PORT_TO_0.load(SeqCst) == 0 {
        core::hint::spin_loop();
    }
    for _ in 0..ROUNDS.load(SeqCst) {
        wait_for(mine);
        events::send(PORT_TO_0.load(SeqCst)).expect("send to vcpu 0");
    }
    DONE.store(1, SeqCst);
}

fn main() {
    let rounds: u32 = start::cmdline_value("rounds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    ROUNDS.store(rounds, SeqCst);
    assert_eq!(smp::is_up(1), Ok(false));
    smp::start_vcpu(1, secondary).expect("start vcpu 1");
    assert_eq!(smp::is_up(1), Ok(true));
    let to0 = events::bind_ipi(0).expect("bind ipi on vcpu 0");
    PORT_TO_0.store(to0, SeqCst);
    while PORT_TO_1.load(SeqCst) == 0 {
        hypercall::yield_now();
    }
    let to1 = PORT_TO_1.load(SeqCst);
    let t0 = time::now_ns();
    for _ in 0..rounds {
        events::send(to1).expect("send to vcpu 1");
        wait_for(to0);
    }
    let per = (time::now_ns() - t0) / rounds as u64;
    println!("ipi_pingpong_us={}.{:03}", per / 1000, per % 1000);
    while DONE.load(SeqCst) == 0 {
        hypercall::yield_now();
    }
    // vCPU 1 takes itself down after its function returns.
    let t = time::now_ns();
    while smp::is_up(1) == Ok(true) && time::now_ns() - t < 1_000_000_000 {
        hypercall::yield_now();
    }
    let rs = smp::runstate(1).expect("runstate");
    println!(
        "vcpu 1: up={:?} runstate={} blocked_ns={}",
        smp::is_up(1),
        rs.state,
        rs.time[2]
    );
    assert_eq!(smp::is_up(1), Ok(false));
    println!("smp: ok");
}
