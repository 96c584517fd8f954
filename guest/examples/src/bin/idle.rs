//! The default guest: reports itself, connects to xenstore, publishes its features,
//! and runs until the toolstack shuts it down through `control/shutdown` (or the VMM
//! is stopped). Console input is echoed.
#![no_std]
#![no_main]

use rxen_guest::xenstore::{serve_control_shutdown, Xenstore};
use rxen_guest::{println, start};

rxen_guest::entry!(main);

fn main() {
    let si = start::start_info();
    println!(
        "rxen idle guest: {} MiB, cmdline {:?}",
        si.nr_pages / 256,
        start::cmdline()
    );
    let mut xs = Xenstore::new();
    match xs.read("name") {
        Ok(name) => println!("xenstore: I am {name}"),
        Err(e) => println!("xenstore: name unavailable ({})", e.0),
    }
    let _ = xs.write("data/state", "running");
    // Echo console input (xm console), line by line.
    rxen_guest::console::on_event(|_| {
        let mut buf = [0u8; 512];
        let n = rxen_guest::console::read(&mut buf);
        if n > 0 {
            let text = core::str::from_utf8(&buf[..n]).unwrap_or("?");
            println!("console input: {}", text.trim_end());
        }
    });
    serve_control_shutdown(&mut xs)
}
