//! The default guest: reports itself, connects to xenstore, publishes its features,
//! and runs until the toolstack shuts it down through `control/shutdown` (or the VMM
//! is stopped). Memory-target changes are logged.
#![no_std]
#![no_main]

use rxen_guest::xenstore::{serve_control_shutdown, Xenstore};
use rxen_guest::{println, start};

rxen_guest::entry!(main);

fn main() {
    let si = start::start_info();
    println!("rxen idle guest: {} MiB, cmdline {:?}", si.nr_pages / 256, start::cmdline());
    let mut xs = Xenstore::new();
    match xs.read("name") {
        Ok(name) => println!("xenstore: I am {name}"),
        Err(e) => println!("xenstore: name unavailable ({})", e.0),
    }
    let _ = xs.write("data/state", "running");
    serve_control_shutdown(&mut xs)
}
