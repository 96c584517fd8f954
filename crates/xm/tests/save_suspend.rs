//! Issue 11: Xen's suspend protocol. The `idle` SDK guest advertises
//! `control/feature-suspend`; `xm save` asks it to suspend (`control/shutdown` =
//! `suspend`), it calls `SCHEDOP_shutdown(SHUTDOWN_suspend)`, and the hypercall
//! returns 0 in the restored (new) domain, where the guest binds its timers and its
//! watch again, and 1 after `xm save -c` (cancelled). Both keep answering the
//! toolstack (`xm shutdown` through its watch).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{kvm_available, Env};
use serde_json::Value;

fn console(env: &Env, name: &str) -> String {
    match env.get(&format!("/domains/{name}/console")) {
        (200, Value::String(s)) => s,
        _ => String::new(),
    }
}

fn wait_console(env: &Env, name: &str, text: &str) {
    rxen_testkit::wait_until(
        &format!("{name} to print {text:?}"),
        Duration::from_secs(60),
        || console(env, name).contains(text),
    );
}

fn domid_of(env: &Env, name: &str) -> u64 {
    let (s, v) = env.get(&format!("/domains/{name}"));
    assert_eq!(s, 200, "{v}");
    v["domid"].as_u64().expect("domid")
}

/// The guest still follows `control/shutdown`: `xm shutdown` ends it.
fn shuts_down(env: &Env, name: &str) {
    env.xm_ok(&["shutdown", name]);
    rxen_testkit::wait_until(
        &format!("{name} to shut down"),
        Duration::from_secs(60),
        || env.get(&format!("/domains/{name}")).0 == 404,
    );
}

#[test]
fn a_guest_with_feature_suspend_suspends_for_save_and_resumes() {
    if !kvm_available("a_guest_with_feature_suspend_suspends_for_save_and_resumes") {
        return;
    }
    let env = Env::start("save-suspend");
    let kernel = rxen_testkit::guest("idle");
    let cfg = format!(
        "name = \"sus\"\nkernel = \"{}\"\nmemory = 32\non_crash = \"preserve\"\n",
        kernel.display()
    );
    env.create(&cfg);
    let domid = domid_of(&env, "sus");
    rxen_testkit::wait_until("control/feature-suspend", Duration::from_secs(60), || {
        env.xenstore()
            .read(0, &format!("/local/domain/{domid}/control/feature-suspend"))
            .is_ok_and(|v| v == b"1")
    });

    // Cancelled: `-c` keeps the domain, whose hypercall returns 1.
    let image = env.dir.join("sus-c.save");
    env.xm_ok(&["save", "-c", "sus", image.to_str().unwrap()]);
    wait_console(&env, "sus", "suspend: cancelled");
    assert_eq!(domid_of(&env, "sus"), domid);
    let text = console(&env, "sus");
    assert!(text.contains("control/shutdown: suspend"), "{text}");

    // A save: the guest suspends, the domain is gone; the restored one is a new
    // domain to the guest (the hypercall returns 0).
    let image = env.dir.join("sus.save");
    env.xm_ok(&["save", "sus", image.to_str().unwrap()]);
    assert_eq!(env.get("/domains/sus").0, 404);
    env.xm_ok(&["restore", image.to_str().unwrap()]);
    wait_console(&env, "sus", "suspend: resumed in a new domain");
    let text = console(&env, "sus");
    assert!(
        !text.contains("refused") && !text.contains("VIRQ_TIMER"),
        "{text}"
    );
    // Its watch was registered again in the new domain: it follows the toolstack.
    shuts_down(&env, "sus");

    // The checkpoint taken with -c restores too (suspended then, a new domain now).
    env.xm_ok(&["restore", image.to_str().unwrap()]);
    wait_console(&env, "sus", "suspend: resumed in a new domain");
    shuts_down(&env, "sus");
}
