//! Save/restore check: fills `mib=` MiB (default 4) with a pattern, then every
//! `tick_ms=` ms (default 50) bumps a counter, checks every word of the pattern and
//! prints `memcheck: tick=N sum=HEX ok`; a word that changed prints
//! `memcheck: FAILED ...` and crashes the domain. A saved and restored guest must go
//! on counting from where it was, with the same sum, and never print FAILED.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use rxen_guest::{println, start, time};

rxen_guest::entry!(main);

/// The pattern's word `i` (a 64-bit mix of the index).
fn pattern(i: usize) -> u64 {
    let mut x = (i as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn main() {
    let arg = |k: &str, d: u64| {
        start::cmdline_value(k)
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let mib = arg("mib", 4) as usize;
    let tick_ms = arg("tick_ms", 50);
    let words = mib * (1 << 20) / 8;
    let mut mem: Vec<u64> = Vec::with_capacity(words);
    mem.extend((0..words).map(pattern));
    let expected = mem.iter().fold(0u64, |a, &w| a.wrapping_add(w));
    println!("memcheck: {mib} MiB filled sum={expected:x}");
    let mut tick: u64 = 0;
    loop {
        time::sleep_ms(tick_ms);
        tick += 1;
        let mut sum = 0u64;
        for (i, &w) in mem.iter().enumerate() {
            if w != pattern(i) {
                println!("memcheck: FAILED at word {i}: {w:#x} != {:#x}", pattern(i));
                rxen_guest::hypercall::shutdown(rxen_guest::abi::sched::SHUTDOWN_CRASH);
            }
            sum = sum.wrapping_add(w);
        }
        if sum != expected {
            println!("memcheck: FAILED sum {sum:x} != {expected:x}");
            rxen_guest::hypercall::shutdown(rxen_guest::abi::sched::SHUTDOWN_CRASH);
        }
        println!("memcheck: tick={tick} sum={sum:x} ok");
    }
}
