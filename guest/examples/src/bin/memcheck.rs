//! Save/restore check: fills `mib=` MiB (default 4) with a pattern, then every
//! `tick_ms=` ms (default 50) bumps a counter, checks every word of the pattern and
//! prints `memcheck: tick=N sum=HEX ok`; a word that changed prints
//! `memcheck: FAILED ...` and crashes the domain. A saved and restored guest must go
//! on counting from where it was, with the same sum, and never print FAILED.
//!
//! With `dirty_kib=N` it also rewrites N KiB of the region every tick (page after
//! page, round robin): each page holds the pattern plus its own generation, which is
//! bumped at every rewrite, so a live migration that misses a page the guest wrote is
//! caught at the target's next check. The printed `sum` is the pattern's (without the
//! generations), the same in both modes.
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
    const PAGE_WORDS: usize = 512;
    let words = mib * (1 << 20) / 8;
    let pages = words / PAGE_WORDS;
    let dirty_pages = (arg("dirty_kib", 0) as usize / 4).min(pages);
    let mut mem: Vec<u64> = Vec::with_capacity(words);
    mem.extend((0..words).map(pattern));
    let mut generation: Vec<u64> = alloc::vec![0; pages];
    let mut next_page = 0;
    let expected = mem.iter().fold(0u64, |a, &w| a.wrapping_add(w));
    println!("memcheck: {mib} MiB filled sum={expected:x}");
    let mut tick: u64 = 0;
    loop {
        time::sleep_ms(tick_ms);
        tick += 1;
        for _ in 0..dirty_pages {
            let p = next_page;
            next_page = (next_page + 1) % pages;
            generation[p] += 1;
            for (i, w) in mem[p * PAGE_WORDS..(p + 1) * PAGE_WORDS]
                .iter_mut()
                .enumerate()
            {
                *w = pattern(p * PAGE_WORDS + i).wrapping_add(generation[p]);
            }
        }
        let mut sum = 0u64;
        for (i, &w) in mem.iter().enumerate() {
            let want = pattern(i).wrapping_add(generation[i / PAGE_WORDS]);
            if w != want {
                println!("memcheck: FAILED at word {i}: {w:#x} != {want:#x}");
                rxen_guest::hypercall::shutdown(rxen_guest::abi::sched::SHUTDOWN_CRASH);
            }
            sum = sum.wrapping_add(w.wrapping_sub(generation[i / PAGE_WORDS]));
        }
        if sum != expected {
            println!("memcheck: FAILED sum {sum:x} != {expected:x}");
            rxen_guest::hypercall::shutdown(rxen_guest::abi::sched::SHUTDOWN_CRASH);
        }
        println!("memcheck: tick={tick} sum={sum:x} ok");
    }
}
