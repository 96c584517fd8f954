//! A hostile guest: attacks the VMM from inside the domain so that tests can check the
//! VMM stays healthy (answers its control socket, bounded memory and disk, destroyable).
//! Never powers off by itself. The first command-line word picks the attack:
//!
//! - `console-flood`: 64 KiB console writes in a loop on every vCPU: through the
//!   console ring (`console::write_bytes`, 2 KiB per notify) for a PV kernel, whose
//!   `console_io` is rxen's hypervisor log; `console_io(write)` on rxen's old layout.
//! - `event-flood`: `alloc_unbound` until it fails, then `EVTCHNOP_send` on an IPI, the
//!   unbound ports and the xenstore channel in a tight loop.
//! - `xs-ring-garbage`: random xenstore ring indices (producer far ahead of the
//!   consumer, consumer past the producer, ...) with a notification after each.
//! - `console-ring-garbage`: the same on the console ring page.
//! - `spin`: every vCPU spins without making hypercalls.
//! - `xs-read-loop`: not an attack but the well-behaved control: reads the xenstore
//!   node `name` every 20 ms and prints `xs-read-loop: ok VALUE` or
//!   `xs-read-loop: error E` for each read.
//!
//! `vcpus=N` (default 1) says how many vCPUs the domain has. Random hypercall
//! arguments are the `hcall-fuzz` guest's job. Each attack first prints
//! `hostile: ATTACK started`.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering::SeqCst};

use rxen_guest::abi::ring::{XS_REQ_CONS, XS_REQ_PROD, XS_RSP_CONS, XS_RSP_PROD};
use rxen_guest::{events, hypercall, println, smp, start, time};
use rxen_workloads::XorShift;

rxen_guest::entry!(main);

fn vcpus() -> u32 {
    start::cmdline_value("vcpus")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// Runs `f` on every vCPU (the secondaries first, then vCPU 0); never returns.
fn on_all_vcpus(f: fn(u32)) -> ! {
    for id in 1..vcpus() {
        if let Err(e) = smp::start_vcpu(id, f) {
            println!("hostile: starting vCPU {id}: {e:?}");
        }
    }
    f(0);
    loop {
        hypercall::block();
    }
}

static FLOOD: [u8; 65536] = {
    let mut b = [b'A'; 65536];
    let mut i = 63;
    while i < b.len() {
        b[i] = b'\n';
        i += 64;
    }
    b
};

fn console_flood(_: u32) {
    loop {
        if start::is_pv() {
            rxen_guest::console::write_bytes(&FLOOD);
        } else {
            hypercall::console_write(&FLOOD);
        }
    }
}

fn spin(_: u32) {
    let mut x = 0u64;
    loop {
        x = core::hint::black_box(x.wrapping_add(1));
    }
}

fn event_flood() -> ! {
    let mut unbound = 0u32;
    let mut first = None;
    while let Ok(p) = events::alloc_unbound(0) {
        first.get_or_insert(p);
        unbound += 1;
        if unbound > 1_000_000 {
            break;
        }
    }
    println!("hostile: {unbound} unbound ports allocated");
    let ipi = events::bind_ipi(0);
    let store = start::start_info().store_evtchn;
    let first = first.unwrap_or(0);
    let mut n = 0u32;
    loop {
        if let Ok(p) = ipi {
            let _ = events::send(p);
        }
        let _ = events::send(store);
        let _ = events::send(first + n % unbound.max(1));
        n = n.wrapping_add(1);
    }
}

/// The 32-bit word at `offset` of the page at `page`.
fn word(page: u64, offset: u64) -> &'static AtomicU32 {
    // SAFETY: the xenstore and console pages are mapped, writable guest pages for the
    // life of the domain, and `offset` is 4-byte aligned inside them.
    unsafe { AtomicU32::from_ptr((page + offset) as *mut u32) }
}

fn garbage(r: &mut XorShift, current: u32) -> u32 {
    let x = r.next_u64();
    match x % 5 {
        0 => current.wrapping_add(0x8000_0000),
        1 => current.wrapping_add(1025 + (x >> 32) as u32 % 4096),
        2 => current.wrapping_sub(1 + (x >> 32) as u32 % 64),
        3 => u32::MAX,
        _ => (x >> 32) as u32,
    }
}

fn ring_garbage(page: u64, indices: &[u64], port: u32) -> ! {
    let mut r = XorShift(0x6a7b_a9e1 | 1);
    let mut n = 0u64;
    loop {
        for &off in indices {
            let w = word(page, off);
            w.store(garbage(&mut r, w.load(SeqCst)), SeqCst);
        }
        let _ = events::send(port);
        n += 1;
        if n.is_multiple_of(4096) {
            // Let the other side look at the page between rounds.
            hypercall::yield_now();
        }
    }
}

fn xs_read_loop() -> ! {
    let mut xs = rxen_guest::xenstore::Xenstore::new();
    loop {
        match xs.read("name") {
            Ok(v) => println!("xs-read-loop: ok {v}"),
            Err(e) => println!("xs-read-loop: error {}", e.0),
        }
        time::sleep_ms(20);
    }
}

fn main() {
    let attack = start::cmdline().split_whitespace().next().unwrap_or("");
    let si = start::start_info();
    println!("hostile: {attack} started");
    // The line above must reach the log before the attack floods the console's rate
    // limit or breaks the ring it travels in.
    rxen_guest::console::flush();
    match attack {
        "console-flood" => on_all_vcpus(console_flood),
        "spin" => on_all_vcpus(spin),
        "event-flood" => event_flood(),
        "xs-ring-garbage" => ring_garbage(
            si.store_mfn << 12,
            &[XS_REQ_CONS, XS_REQ_PROD, XS_RSP_CONS, XS_RSP_PROD],
            si.store_evtchn,
        ),
        "console-ring-garbage" => {
            // xencons_interface: in_cons, in_prod, out_cons, out_prod at 3072..3088.
            ring_garbage(
                si.console_mfn << 12,
                &[3072, 3076, 3080, 3084],
                si.console_evtchn,
            )
        }
        "xs-read-loop" => xs_read_loop(),
        other => println!("hostile: unknown attack {other:?}"),
    }
}
