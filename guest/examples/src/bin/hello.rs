//! Prints what `start_info` and the hypervisor say about this domain, then powers off.
//! Command-line words select other endings for tests: `panic`, `reboot`, `fault`,
//! `crash`, `forever` (wait for events until shut down from outside, echoing console
//! input from the console ring; with `virq-console` also given, bind `VIRQ_CONSOLE`
//! and read input through `console_io` instead, as a dom0-style console reader does).
#![no_std]
#![no_main]

use rxen_guest::abi::version::*;
use rxen_guest::hypercall::{shutdown, xen_version};
use rxen_guest::{println, start, time};

rxen_guest::entry!(main);

fn cstr(b: &[u8]) -> &str {
    let n = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    core::str::from_utf8(&b[..n]).unwrap_or("?")
}

fn main() {
    println!("hello from rxen guest");
    let si = start::start_info();
    println!("start_info.magic: {}", cstr(&si.magic));
    println!("start_info.nr_pages: {}", si.nr_pages);
    println!("start_info.shared_info: {:#x}", si.shared_info);
    println!(
        "start_info.store: mfn {:#x} evtchn {}",
        si.store_mfn, si.store_evtchn
    );
    println!(
        "start_info.console: mfn {:#x} evtchn {}",
        si.console_mfn, si.console_evtchn
    );
    println!(
        "start_info.pt_base: {:#x} nr_pt_frames {}",
        si.pt_base, si.nr_pt_frames
    );
    println!("start_info.cmd_line: {}", start::cmdline());
    let v = xen_version::<()>(XENVER_VERSION, None);
    let mut extra = [0u8; EXTRAVERSION_LEN];
    xen_version(XENVER_EXTRAVERSION, Some(&mut extra));
    let mut caps = [0u8; CAPABILITIES_LEN];
    xen_version(XENVER_CAPABILITIES, Some(&mut caps));
    println!(
        "xen_version: {}.{}{} caps {}",
        v >> 16,
        v & 0xffff,
        cstr(&extra),
        cstr(&caps)
    );
    let mut fi = FeatureInfo {
        submap_idx: 0,
        submap: 0,
    };
    xen_version(XENVER_GET_FEATURES, Some(&mut fi));
    println!("features[0]: {:#x}", fi.submap);
    let (sec, _) = time::wallclock();
    println!("system time: {} ns, wallclock: {} s", time::now_ns(), sec);
    println!("heap free: {} KiB", rxen_guest::heap::free_bytes() / 1024);
    let words = start::cmdline();
    for w in words.split_whitespace() {
        match w {
            "panic" => panic!("requested by the command line"),
            "reboot" => shutdown(rxen_guest::abi::sched::SHUTDOWN_REBOOT),
            "crash" => shutdown(rxen_guest::abi::sched::SHUTDOWN_CRASH),
            "fault" => {
                // An address in the unmapped null page (not a dangling-pointer idiom:
                // this is the point of the test).
                let null_page = core::ptr::without_provenance::<u64>(8);
                // SAFETY: deliberately touches the unmapped page 0 to test fault handling.
                unsafe { core::ptr::read_volatile(null_page) };
            }
            "forever" => {
                // Echo console input and report the debug key until shut down from outside.
                use rxen_guest::abi::event_channel::VIRQ_DEBUG;
                use rxen_guest::events;
                fn echo(_: events::Port) {
                    let mut buf = [0u8; 256];
                    let n = rxen_guest::console::read(&mut buf);
                    if n > 0 {
                        let text = core::str::from_utf8(&buf[..n]).unwrap_or("?");
                        println!("console input: {}", text.trim_end());
                    }
                }
                if words.split_whitespace().any(|w| w == "virq-console") {
                    use rxen_guest::abi::event_channel::VIRQ_CONSOLE;
                    if let Ok(p) = events::bind_virq(VIRQ_CONSOLE, 0) {
                        events::set_handler(p, echo);
                    }
                } else {
                    rxen_guest::console::on_event(echo);
                }
                if let Ok(p) = events::bind_virq(VIRQ_DEBUG, 0) {
                    events::set_handler(p, |_| println!("VIRQ_DEBUG received"));
                }
                println!("waiting for events");
                loop {
                    events::wait_and_dispatch();
                }
            }
            _ => {}
        }
    }
    println!("goodbye");
}
