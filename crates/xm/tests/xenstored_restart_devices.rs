//! Connected devices stay connected when xenstored restarts. xend's supervisor starts
//! a new xenstored and puts back what it lost; the guest's frontends wrote their
//! nodes (state Connected, ring references, event channels) once and never write them
//! again, so xend writes them back from what the VMM's backends serve, and the
//! backends keep serving while the store is without them. The `blkbench` guest in
//! soak mode keeps rewriting and reading back its disk across the restarts; the
//! `httpd` guest keeps answering curl on its vif.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::soak::{rounds, wait_for_round};
use common::{kvm_available, Env};

const NAME: &str = "xsr";
const VBD: u32 = 51712;

/// The frontend nodes the guest wrote to connect: `state`, every node naming a ring
/// or an event channel, and the features it asked for (an absent feature node and
/// one that is `0` say the same).
fn frontend_nodes(env: &Env, domid: u64) -> Vec<(String, String)> {
    device_nodes(env, &format!("/local/domain/{domid}/device/vbd/{VBD}"))
}

fn device_nodes(env: &Env, front: &str) -> Vec<(String, String)> {
    let mut xs = env.xenstore();
    let mut keys: Vec<String> = xs.directory(0, front).unwrap_or_default();
    keys.sort();
    keys.into_iter()
        .filter(|k| {
            k == "state"
                || k.contains("ring-ref")
                || k.starts_with("event-channel")
                || k.starts_with("feature-")
        })
        .map(|k| {
            let v = xs.read(0, &format!("{front}/{k}")).unwrap_or_default();
            (k, String::from_utf8_lossy(&v).into_owned())
        })
        .filter(|(k, v)| !(k.starts_with("feature-") && v == "0"))
        .collect()
}

fn backend_state(env: &Env, domid: u64) -> Option<String> {
    read(
        env,
        &format!("/local/domain/0/backend/vbd/{domid}/{VBD}/state"),
    )
}

fn read(env: &Env, path: &str) -> Option<String> {
    env.xenstore()
        .read(0, path)
        .ok()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

#[test]
fn a_connected_disk_survives_xenstored_restarts() {
    if !kvm_available("a_connected_disk_survives_xenstored_restarts") {
        return;
    }
    let mut env = Env::start("xs-restart-dev");
    let disk = env.dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 4 << 20]).unwrap();
    common::soak::create(&env, NAME, &disk);
    let (s, v) = env.get(&format!("/domains/{NAME}"));
    assert_eq!(s, 200, "{v}");
    let domid = v["domid"].as_u64().expect("domid");
    let mut seen = *rounds(&wait_for_round(&env, NAME, 3)).last().unwrap();
    let connected = frontend_nodes(&env, domid);
    assert!(
        connected.contains(&("state".into(), "4".into()))
            && connected.iter().any(|(k, _)| k.starts_with("ring-ref"))
            && connected
                .iter()
                .any(|(k, _)| k.starts_with("event-channel")),
        "the guest connected its disk: {connected:?}"
    );
    // First xenstored keeps its state file (the store survives), then one that lost
    // it (the store starts empty and xend writes everything back).
    for lose_store in [false, true] {
        let killed = env.kill_xenstored(lose_store);
        env.wait_xenstored_restarted(killed);
        let mut last = None;
        let back = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rxen_testkit::wait_until(
                "the disk's nodes to be back",
                std::time::Duration::from_secs(30),
                || {
                    let now = (frontend_nodes(&env, domid), backend_state(&env, domid));
                    let ok = now.0 == connected && now.1.as_deref() == Some("4");
                    last = Some(now);
                    ok
                },
            )
        }));
        if back.is_err() {
            panic!(
                "lose_store={lose_store}: frontend and backend state {last:?}, connected {connected:?}\nxend's log:\n{}",
                common::soak::logs(&env)
            );
        }
        // The guest's I/O goes on through the same rings, without an error.
        let after = wait_for_round(&env, NAME, seen + 5);
        let r = rounds(&after);
        assert!(
            r.windows(2).all(|w| w[1] == w[0] + 1),
            "lose_store={lose_store}: rounds jumped: {r:?}"
        );
        seen = *r.last().unwrap();
    }
    env.xm_ok(&["destroy", NAME]);
}

#[test]
fn a_connected_vif_survives_xenstored_restarts() {
    const TEST: &str = "a_connected_vif_survives_xenstored_restarts";
    if !kvm_available(TEST) {
        return;
    }
    let Some(net) = common::netns::test_net(TEST) else {
        return;
    };
    let mut env = Env::start("xs-restart-vif");
    let ip = net.addr(2);
    env.create(&format!(
        "name = \"web\"\nkernel = \"{}\"\nmemory = 64\nvif = [ 'bridge={},vifname={}' ]\nextra = \"ip={ip}/24\"\non_crash = \"preserve\"\n",
        rxen_testkit::guest("httpd").display(),
        net.bridge,
        net.tap_name(0)
    ));
    let (s, v) = env.get("/domains/web");
    assert_eq!(s, 200, "{v}");
    let domid = v["domid"].as_u64().expect("domid");
    let answers = || {
        let mut page = String::new();
        rxen_testkit::wait_until("curl to answer", std::time::Duration::from_secs(60), || {
            page = net.curl(&format!("http://{ip}/")).unwrap_or_default();
            !page.is_empty()
        });
        assert!(page.contains("Hello from an rxen guest"), "{page}");
    };
    answers();
    let front = format!("/local/domain/{domid}/device/vif/0");
    let backend = format!("/local/domain/0/backend/vif/{domid}/0/state");
    let connected = device_nodes(&env, &front);
    assert!(
        connected.contains(&("state".into(), "4".into()))
            && connected.iter().any(|(k, _)| k == "tx-ring-ref"),
        "the guest connected its vif: {connected:?}"
    );
    for lose_store in [false, true] {
        let killed = env.kill_xenstored(lose_store);
        env.wait_xenstored_restarted(killed);
        let mut last = None;
        let back = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rxen_testkit::wait_until(
                "the vif's nodes to be back",
                std::time::Duration::from_secs(30),
                || {
                    let now = (device_nodes(&env, &front), read(&env, &backend));
                    let ok = now.0 == connected && now.1.as_deref() == Some("4");
                    last = Some(now);
                    ok
                },
            )
        }));
        if back.is_err() {
            panic!(
                "lose_store={lose_store}: frontend and backend state {last:?}, connected {connected:?}\nlogs:\n{}",
                common::soak::logs(&env)
            );
        }
        answers();
    }
    env.xm_ok(&["destroy", "web"]);
}
