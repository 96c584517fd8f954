//! The in-process domain API: pause/unpause, destroy, console input, event channels to
//! the domain-0 endpoint, and state of a live domain.
// A test fails by panicking: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::time::Duration;

use rxen_vmm::console::CaptureSink;
use rxen_vmm::{Domain, DomainConfig, DomainExit};

fn start(cmdline: &str) -> (Domain, CaptureSink) {
    let image = std::fs::read(guest("hello")).expect("hello guest");
    let sink = CaptureSink::default();
    let cfg = DomainConfig {
        name: "api".into(),
        cmdline: cmdline.into(),
        ..Default::default()
    };
    (
        Domain::create(cfg, &image, Box::new(sink.clone())).expect("create"),
        sink,
    )
}

#[test]
fn pause_unpause_destroy() {
    if !kvm_available("pause_unpause_destroy") {
        return;
    }
    let (d, sink) = start("forever");
    wait_until("the guest to be up", Duration::from_secs(10), || {
        sink.text().contains("heap free").then_some(())
    });
    d.shared().pause();
    for v in &d.shared().vcpus {
        assert!(!v.lock().may_run(), "paused vCPU does not run");
    }
    d.shared().unpause();
    assert!(d.shared().exit_reason().is_none());
    d.destroy();
    assert_eq!(d.wait(), DomainExit::Destroyed);
}

#[test]
fn dom0_endpoint_reaches_a_live_guest() {
    if !kvm_available("dom0_endpoint_reaches_a_live_guest") {
        return;
    }
    let (d, sink) = start("forever");
    wait_until("the guest to be up", Duration::from_secs(10), || {
        sink.text().contains("heap free").then_some(())
    });
    let shared = d.shared().clone();
    // The builder allocated the xenstore port for domain 0 (in-process domains have no
    // xenstore relay, while the console ring backend holds the console port).
    let store_port = 1;
    let dom0 = shared
        .evtchn
        .lock()
        .unwrap()
        .dom0_bind_interdomain(store_port)
        .expect("bind");
    shared
        .evtchn
        .lock()
        .unwrap()
        .dom0_notify(dom0.port)
        .expect("notify");
    // The guest blocks in SCHEDOP_block and dispatches: the pending bit gets cleared.
    wait_until(
        "the guest to handle the event from the dom0 endpoint",
        Duration::from_secs(10),
        || (!shared.shared_info.is_pending(store_port)).then_some(()),
    );
    d.destroy();
    assert_eq!(d.wait(), DomainExit::Destroyed);
}

#[test]
fn many_domains_in_one_process() {
    if !kvm_available("many_domains_in_one_process") {
        return;
    }
    let image = std::fs::read(guest("hello")).expect("hello guest");
    let domains: Vec<_> = (0..20)
        .map(|i| {
            let cfg = DomainConfig {
                name: format!("d{i}"),
                domid: i + 1,
                ..Default::default()
            };
            Domain::create(cfg, &image, Box::new(CaptureSink::default())).expect("create")
        })
        .collect();
    for d in domains {
        assert_eq!(d.wait(), DomainExit::Poweroff);
    }
}

/// Bug 5c: kicking a vCPU read a pointer into the vCPU thread's `kvm_run` mapping,
/// which joining the domain unmaps. Kickers now touch only what they own.
#[test]
fn kicking_vcpus_while_the_domain_is_joined_is_safe() {
    if !kvm_available("kicking_vcpus_while_the_domain_is_joined_is_safe") {
        return;
    }
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let image = std::fs::read(guest("cpubench")).expect("cpubench guest");
    for round in 0..50 {
        let cfg = DomainConfig {
            name: format!("kick{round}"),
            vcpus: 2,
            cmdline: "iters=1000000000000".into(),
            ..Default::default()
        };
        let d = Domain::create(cfg, &image, Box::new(CaptureSink::default())).expect("create");
        let stop = Arc::new(AtomicBool::new(false));
        let kicks = Arc::new(AtomicU64::new(0));
        let kickers: Vec<_> = (0..2)
            .map(|_| {
                let vcpus = d.shared().vcpus.clone();
                let (stop, kicks) = (stop.clone(), kicks.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        for v in &vcpus {
                            v.interrupt();
                            let _ = v.thread.cpu_ns();
                            let _ = v.thread.host_cpu();
                        }
                        kicks.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        // Let the guest run (and be kicked) for a moment, then join under the kicks.
        let shared = d.shared().clone();
        wait_until("the guest to run", Duration::from_secs(10), || {
            (shared.vcpus[0].thread.cpu_ns() > 2_000_000).then_some(())
        });
        d.destroy();
        assert_eq!(d.wait(), DomainExit::Destroyed, "round {round}");
        // Kicks after the join touch only what the kickers own.
        let after_join = kicks.load(Ordering::Relaxed);
        wait_until("kicks after the join", Duration::from_secs(10), || {
            (kicks.load(Ordering::Relaxed) > after_join + 50).then_some(())
        });
        stop.store(true, Ordering::Relaxed);
        for k in kickers {
            k.join().expect("kicker");
        }
    }
}

#[test]
fn control_requests_after_the_end_are_wrong_state() {
    if !kvm_available("control_requests_after_the_end_are_wrong_state") {
        return;
    }
    use rxen_vmm::control::answer;
    use rxen_vmm_api::{ErrorKind, Reply};
    let (d, _sink) = start("");
    let shared = d.shared().clone();
    assert_eq!(d.wait(), DomainExit::Poweroff);
    for op in ["pause", "unpause", "debug-key"] {
        let r = answer(&shared, &format!(r#"{{"op":"{op}"}}"#));
        assert!(
            matches!(
                r,
                Reply::Error {
                    kind: ErrorKind::WrongState,
                    ..
                }
            ),
            "{op}: {r:?}"
        );
    }
    assert!(matches!(
        answer(&shared, r#"{"op":"status"}"#),
        Reply::Status(_)
    ));
    assert_eq!(answer(&shared, r#"{"op":"destroy"}"#), Reply::Done);
}

/// `out_prod` and `in_prod` of the domain's console ring (`xencons_interface`).
fn ring_prods(d: &Domain) -> (u32, u32) {
    let s = d.shared();
    let page = s.boot.report.console_mfn << 12;
    let at = |off: u64| {
        s.ram
            .atomic_u32(page + off)
            .unwrap()
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    (at(3084), at(3076))
}

/// Issue 8 item 6: SDK output travels through the console ring to the same console
/// as `console_io` (sink, tail, counters), and console input goes into the ring.
#[test]
fn console_ring_carries_output_and_input() {
    if !kvm_available("console_ring_carries_output_and_input") {
        return;
    }
    let (d, sink) = start("forever");
    wait_until(
        "the guest to wait for events",
        Duration::from_secs(10),
        || sink.text().contains("waiting for events").then_some(()),
    );
    let (out_prod, in_prod) = ring_prods(&d);
    assert!(out_prod > 0, "the SDK printed through the ring");
    assert_eq!(in_prod, 0);
    let (tail, counters) = d.shared().console.tail(1 << 16);
    assert!(String::from_utf8_lossy(&tail).contains("waiting for events"));
    assert!(counters.total >= out_prod as u64);

    d.shared().console_input(b"ping\n");
    wait_until("the guest to echo", Duration::from_secs(10), || {
        sink.text().contains("console input: ping").then_some(())
    });
    assert_eq!(ring_prods(&d).1, 5, "the input went through the ring");
    d.destroy();
    assert_eq!(d.wait(), DomainExit::Destroyed);
}

/// A guest that bound `VIRQ_CONSOLE` reads its input through `console_io`: the input
/// goes there, not to the ring, so it is delivered once.
#[test]
fn console_input_goes_to_console_io_for_virq_console_readers() {
    if !kvm_available("console_input_goes_to_console_io_for_virq_console_readers") {
        return;
    }
    let (d, sink) = start("virq-console forever");
    wait_until(
        "the guest to wait for events",
        Duration::from_secs(10),
        || sink.text().contains("waiting for events").then_some(()),
    );
    d.shared().console_input(b"pong\n");
    wait_until("the guest to echo", Duration::from_secs(10), || {
        sink.text().contains("console input: pong").then_some(())
    });
    assert_eq!(ring_prods(&d).1, 0, "nothing went into the ring");
    assert_eq!(sink.text().matches("console input").count(), 1);
    d.destroy();
    assert_eq!(d.wait(), DomainExit::Destroyed);
}

/// Output the guest writes to the ring just before it powers off still reaches the
/// console: the backend drains the ring after the vCPUs stopped.
#[test]
fn console_ring_is_drained_when_the_domain_ends() {
    if !kvm_available("console_ring_is_drained_when_the_domain_ends") {
        return;
    }
    for _ in 0..5 {
        let (d, sink) = start("");
        assert_eq!(d.wait(), DomainExit::Poweroff);
        assert!(sink.text().ends_with("goodbye\n"), "{}", sink.text());
    }
}
