//! Issue 9's data path end to end: the SDK's blkfront (`blkbench` in verify mode)
//! against the VMM's blkback on a temporary file, created through xend as a user
//! would (`disk = [ 'file:IMG,xvda,w' ]`): indirect 1 MiB requests, direct multi-page
//! and 4 KiB requests at queue depth 32, persistent grants, flush, discard, a read
//! past the end refused, everything read back and compared; over two queues (rings)
//! when the host has two CPUs or more (multi-queue).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{kvm_available, Env};

fn console(env: &Env, name: &str) -> String {
    match env.get(&format!("/domains/{name}/console")) {
        (200, serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

#[test]
fn blkbench_verifies_through_blkback() {
    if !kvm_available("blkbench_verifies_through_blkback") {
        return;
    }
    // blkbench asks for 2 queues; the backend offers min(4, host CPUs).
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    verify("blkbench", "mode=verify queues=2", cpus.clamp(1, 2));
}

/// The single-ring layout (flat `ring-ref`, `event-channel`) still works.
#[test]
fn blkbench_verifies_over_one_queue() {
    if !kvm_available("blkbench_verifies_over_one_queue") {
        return;
    }
    verify("blkbench1q", "mode=verify queues=1", 1);
}

/// Runs blkbench with `extra` on a fresh disk; it must verify with `queues` queues.
fn verify(tag: &str, extra: &str, queues: usize) {
    let env = Env::start(tag);
    let img = env.dir.join("disk.img");
    std::fs::write(&img, vec![0x42u8; 16 << 20]).unwrap();
    let kernel = rxen_testkit::guest("blkbench");
    let cfg = format!(
        "name = \"blkv\"\nkernel = \"{}\"\nmemory = 64\nextra = \"{extra}\"\ndisk = [ 'file:{},xvda,w' ]\non_poweroff = \"preserve\"\non_crash = \"preserve\"\n",
        kernel.display(),
        img.display()
    );
    env.create(&cfg);
    rxen_testkit::wait_until(
        "blkbench's verdict",
        std::time::Duration::from_secs(120),
        || {
            let t = console(&env, "blkv");
            t.contains("verify ok") || t.contains("FAILED") || t.contains("guest panic")
        },
    );
    let text = console(&env, "blkv");
    assert!(text.contains("blkbench: verify ok"), "{text}");
    // The features were negotiated, not fallen back from.
    for feature in [
        "persistent=1",
        "indirect=256",
        "max_request_pages=256",
        "discard=1",
    ] {
        assert!(text.contains(feature), "missing {feature} in:\n{text}");
    }
    let queues = format!("queues={queues}");
    assert!(text.contains(&queues), "missing {queues} in:\n{text}");
}

/// A frontend asking for 0 queues, or more than offered, is refused: the backend goes
/// Closing (5) and blkbench's connect fails.
#[test]
fn bad_queue_counts_are_refused() {
    if !kvm_available("bad_queue_counts_are_refused") {
        return;
    }
    for (tag, lie) in [("blkq0", 0), ("blkq5", 5)] {
        let env = Env::start(tag);
        let img = env.dir.join("disk.img");
        std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
        let cfg = format!(
            "name = \"blkv\"\nkernel = \"{}\"\nmemory = 64\nextra = \"mode=verify queues=1 lie_num_queues={lie}\"\ndisk = [ 'file:{},xvda,w' ]\non_poweroff = \"preserve\"\non_crash = \"preserve\"\n",
            rxen_testkit::guest("blkbench").display(),
            img.display()
        );
        env.create(&cfg);
        rxen_testkit::wait_until(
            "blkbench's connect",
            std::time::Duration::from_secs(60),
            || {
                let t = console(&env, "blkv");
                t.contains("blkbench: connect")
                    || t.contains("sectors=")
                    || t.contains("guest panic")
            },
        );
        let text = console(&env, "blkv");
        assert!(
            text.contains("blkbench: connect") && text.contains("backend state 5"),
            "multi-queue-num-queues={lie} was not refused:\n{text}"
        );
    }
}
