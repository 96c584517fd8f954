//! Network devices driven as a Xen user would (issue 10's toolstack): bridges xend
//! creates when missing (and leaves), routed vifs (`script=vif-route`), vifs
//! hot-plugged into running domains with `xm network-attach`, listed with
//! `network-list`, removed with `network-detach` (Xen's Closing handshake, forced
//! after a deadline or with `-f`), clear errors for bad specs, and cleanup of TAPs,
//! routes and xenstore nodes on destroy and when the VMM is killed.
//!
//! Every bridge and TAP a test makes has a name unique to this run (bridges are
//! deleted by a Drop guard); routes are to TEST-NET-1 (192.0.2.0/24) addresses
//! through those TAPs only. No real network is touched.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::guests::{mini_os, mini_os_net};
use common::{domid_of, kvm_available, mini_os_cfg, read_node, rows, wait_until, xm_err, Env};
use rxen_hostnet::{bridge, link, route};
use rxen_testkit::net::{unique_ifname as unique, TestBridge as BridgeGuard};
use serde_json::Value;

/// A TEST-NET-1 address unique to this test run.
fn test_ip() -> Ipv4Addr {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    Ipv4Addr::new(192, 0, 2, (10 + (std::process::id() % 200) + n) as u8)
}

/// `vif = [ 'bridge=B,vifname=T' ]` with B missing: xend creates B and brings it up,
/// the VMM makes T one of its ports; the domain's end takes T (and the nodes) but
/// leaves B, as Xen does.
#[test]
fn xend_creates_a_missing_bridge_and_leaves_it() {
    let test = "xend_creates_a_missing_bridge_and_leaves_it";
    if !kvm_available(test) {
        return;
    }
    let Some(kernel) = mini_os(test) else { return };
    let env = Env::start("net-bridge");
    let br = BridgeGuard::new();
    let tap = unique("rxv");
    let cfg = mini_os_cfg(
        &env,
        &kernel,
        "nb",
        &format!("vif = [ 'bridge={},vifname={tap}' ]\n", br.0),
    );
    env.xm_ok(&["create", cfg.to_str().unwrap()]);
    let domid = domid_of(&env, "nb");
    assert!(bridge::is_bridge(&br.0), "{} was not created", br.0);
    assert!(link::is_up(&br.0), "{} is down", br.0);
    assert_eq!(bridge::master_of(&tap).as_deref(), Some(br.0.as_str()));
    assert!(link::is_up(&tap));
    let backend = format!("/local/domain/0/backend/vif/{domid}/0");
    assert_eq!(
        read_node(&env, &format!("{backend}/bridge")),
        Some(br.0.clone())
    );
    env.xm_ok(&["destroy", "nb"]);
    wait_until("the TAP and the vif nodes to go with the domain", || {
        !link::exists(&tap) && read_node(&env, &backend).is_none()
    });
    assert!(bridge::is_bridge(&br.0), "the bridge must stay");
}

/// With `--no-bridge-create`, a vif on a missing bridge is refused at create (and at
/// attach) with a message naming it; nothing is left behind.
#[test]
fn no_bridge_create_makes_a_missing_bridge_an_error() {
    let env = Env::start_with("net-nobridge", &["--no-bridge-create"]);
    let br = unique("rxn");
    let (s, v) = env.post(
        "/domains",
        &serde_json::json!({ "config": format!("name='nob'\nvif=['bridge={br}']") }),
    );
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["code"], "invalid_config", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("bridge {br} does not exist")) && msg.contains("--no-bridge-create"),
        "{msg}"
    );
    assert!(!link::exists(&br));
    let (_, doms) = env.get("/domains");
    assert!(
        !doms.to_string().contains("\"nob\""),
        "the failed domain is listed: {doms}"
    );
}

/// Hot-plug on a running guest that has no netfront (Mini-OS's block build): the vif
/// is listed (never connected), its TAP is a port of its bridge; a frontend that
/// closes when asked (played here through xenstore) is detached cleanly and the TAP
/// goes; one that never answers is cut with `-f`; bad specs are the client's
/// mistakes; hot-plugged vifs survive a xend restart.
#[test]
fn attach_list_detach_on_a_running_guest() {
    let test = "attach_list_detach_on_a_running_guest";
    if !kvm_available(test) {
        return;
    }
    let Some(kernel) = mini_os(test) else { return };
    let mut env = Env::start("net-attach");
    let br = BridgeGuard::new();
    let cfg = mini_os_cfg(&env, &kernel, "na", "");
    env.xm_ok(&["create", cfg.to_str().unwrap()]);
    let domid = domid_of(&env, "na");
    let (tap0, tap1) = (unique("rxv"), unique("rxv"));

    env.xm_ok(&[
        "network-attach",
        "na",
        &format!("bridge={}", br.0),
        "mac=00:16:3e:0a:0b:0c",
        &format!("vifname={tap0}"),
    ]);
    let (s, n) = env.post(
        "/domains/na/nics",
        &serde_json::json!({ "nic": format!("bridge={},vifname={tap1}", br.0) }),
    );
    assert_eq!(s, 201, "{n}");
    assert_eq!(n["devid"], 1, "{n}");
    let mac1 = n["mac"].as_str().unwrap().to_string();
    assert!(mac1.starts_with("00:16:3e:"), "{mac1}");
    for tap in [&tap0, &tap1] {
        assert_eq!(
            bridge::master_of(tap).as_deref(),
            Some(br.0.as_str()),
            "{tap}"
        );
    }
    let b0 = format!("/local/domain/0/backend/vif/{domid}/0");
    let f0 = format!("/local/domain/{domid}/device/vif/0");
    wait_until("both backends to wait for their frontends", || {
        read_node(&env, &format!("{b0}/state")).as_deref() == Some("2")
            && read_node(
                &env,
                &format!("/local/domain/0/backend/vif/{domid}/1/state"),
            )
            .as_deref()
                == Some("2")
    });
    let list = env.xm_ok(&["network-list", "na"]);
    let r = rows(&list);
    assert_eq!(
        r[0],
        [
            "Idx",
            "BE",
            "Mac",
            "Addr.",
            "handle",
            "state",
            "evt-ch",
            "tx-/rx-ring-ref",
            "BE-path"
        ],
        "{list}"
    );
    assert_eq!(
        r[1],
        [
            "0",
            "0",
            "00:16:3e:0a:0b:0c",
            "0",
            "1",
            "-1",
            "-1/-1",
            b0.as_str()
        ],
        "{list}"
    );
    assert_eq!(r[2][2], mac1, "{list}");

    // Taken device numbers and MACs, bad specs, unknown devices.
    for (spec, status, code) in [
        (format!("devid=0,bridge={}", br.0), 409, "device_in_use"),
        ("mac=00:16:3E:0A:0B:0C".to_string(), 409, "device_in_use"),
        ("colour=red".to_string(), 400, "bad_request"),
        ("mac=00:16:3e:0a:0b".to_string(), 400, "bad_request"),
        (
            "script=vif-nat,ip=192.0.2.1".to_string(),
            400,
            "bad_request",
        ),
        ("script=vif-magic".to_string(), 400, "bad_request"),
        ("script=vif-route".to_string(), 400, "bad_request"),
        ("bridge=a/b".to_string(), 400, "bad_request"),
        (
            format!("vifname={tap0},bridge={}", br.0),
            422,
            "device_refused",
        ),
    ] {
        let (s, v) = env.post("/domains/na/nics", &serde_json::json!({ "nic": spec }));
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (status, Some(code)),
            "{spec}: {v}"
        );
    }
    let e = xm_err(
        &env,
        &["network-attach", "na", "script=vif-nat", "ip=192.0.2.1"],
    );
    assert!(e.contains("vif-nat") && e.contains("not supported"), "{e}");
    let (s, v) = env.delete("/domains/na/nics/7");
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("no_device")),
        "{v}"
    );
    let (s, v) = env.post("/domains/nobody/nics", &serde_json::json!({ "nic": "" }));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{v}"
    );
    let e = xm_err(&env, &["network-detach", "na", "00:16:3e:99:99:99"]);
    assert!(e.contains("has no vif"), "{e}");
    // The refused attaches left nothing: still two vifs.
    let (_, nics) = env.get("/domains/na/nics");
    assert_eq!(nics.as_array().unwrap().len(), 2, "{nics}");

    env.restart_xend();
    let (s, nics) = env.get("/domains/na/nics");
    assert_eq!(s, 200, "{nics}");
    let macs: Vec<&str> = nics
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["mac"].as_str().unwrap())
        .collect();
    assert_eq!(macs, ["00:16:3e:0a:0b:0c", mac1.as_str()], "{nics}");

    // A frontend that is busy (Reconfiguring) and closes when the backend asks.
    let mut xs = env.xenstore();
    xs.write(0, &format!("{f0}/state"), b"7").unwrap();
    let closer = {
        let mut xs = env.xenstore();
        let (b0, f0) = (b0.clone(), f0.clone());
        std::thread::spawn(move || {
            rxen_testkit::wait_until("backend Closing", Duration::from_secs(15), || {
                xs.read(0, &format!("{b0}/state")).ok().as_deref() == Some(b"5")
            });
            xs.write(0, &format!("{f0}/state"), b"6").unwrap();
        })
    };
    let started = Instant::now();
    let out = env.xm_ok(&[
        "--json",
        "network-detach",
        "na",
        "00:16:3e:0a:0b:0c",
        "--timeout",
        "30",
    ]);
    closer.join().unwrap();
    let reply: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (reply["devid"].as_u64(), reply["forced"].as_bool()),
        (Some(0), Some(false)),
        "{reply}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    wait_until("the detached vif's TAP to go", || !link::exists(&tap0));
    assert_eq!(read_node(&env, &b0), None);
    assert_eq!(read_node(&env, &f0), None);

    // Forced, by device number: at once.
    let out = env.xm_ok(&["--json", "network-detach", "na", "1", "-f"]);
    let reply: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reply["forced"], true, "{reply}");
    wait_until("the forced vif's TAP to go", || !link::exists(&tap1));
    let (_, nics) = env.get("/domains/na/nics");
    assert_eq!(nics, serde_json::json!([]));
    assert!(bridge::is_bridge(&br.0));
    env.xm_ok(&["destroy", "na"]);
}

/// Mini-OS's netfront connects to a vif given at create; `network-list` shows the
/// rings; Mini-OS never answers the backend's Closing, so `network-detach` cuts the
/// connected vif after its deadline, and its TAP goes.
#[test]
fn a_connected_vif_is_detached_and_its_tap_goes() {
    let test = "a_connected_vif_is_detached_and_its_tap_goes";
    if !kvm_available(test) {
        return;
    }
    let Some(kernel) = mini_os_net(test) else {
        return;
    };
    let env = Env::start("net-connected");
    let br = BridgeGuard::new();
    let tap = unique("rxv");
    let cfg = mini_os_cfg(
        &env,
        &kernel,
        "nc",
        &format!("vif = [ 'bridge={},vifname={tap}' ]\n", br.0),
    );
    env.xm_ok(&["create", cfg.to_str().unwrap()]);
    let domid = domid_of(&env, "nc");
    let backend = format!("/local/domain/0/backend/vif/{domid}/0");
    wait_until("Mini-OS's netfront to connect", || {
        read_node(&env, &format!("{backend}/state")).as_deref() == Some("4")
    });
    let list = env.xm_ok(&["network-list", "nc"]);
    let r = rows(&list);
    assert_eq!(r[1][4], "4", "{list}");
    assert_ne!(r[1][5], "-1", "no event channel: {list}");
    assert!(!r[1][6].contains("-1"), "no ring refs: {list}");
    let out = env.xm_ok(&["--json", "network-detach", "nc", "0", "--timeout", "2"]);
    let reply: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reply["devid"], 0, "{reply}");
    wait_until("the connected vif's TAP to go", || !link::exists(&tap));
    assert_eq!(read_node(&env, &backend), None);
    env.xm_ok(&["destroy", "nc"]);
}

/// `script=vif-route,ip=A` (at create and hot-plugged): no bridge; a host route to A
/// through the TAP, proxy ARP and forwarding on it; all gone with the TAP on detach
/// and destroy.
#[test]
fn routed_mode_sets_the_route() {
    let test = "routed_mode_sets_the_route";
    if !kvm_available(test) {
        return;
    }
    let Some(kernel) = mini_os(test) else { return };
    let env = Env::start("net-route");
    let (tap0, tap1) = (unique("rxr"), unique("rxr"));
    let (ip0, ip1, ip2) = (test_ip(), test_ip(), test_ip());
    let cfg = mini_os_cfg(
        &env,
        &kernel,
        "nr",
        &format!("vif = [ 'script=vif-route,ip={ip0},vifname={tap0}' ]\n"),
    );
    env.xm_ok(&["create", cfg.to_str().unwrap()]);
    let domid = domid_of(&env, "nr");
    assert_eq!(route::host_routes_via(&tap0), vec![ip0]);
    assert!(route::conf_enabled(&tap0, "proxy_arp"));
    assert!(route::conf_enabled(&tap0, "forwarding"));
    assert_eq!(bridge::master_of(&tap0), None);
    let backend = format!("/local/domain/0/backend/vif/{domid}/0");
    assert_eq!(
        read_node(&env, &format!("{backend}/script")).as_deref(),
        Some("vif-route")
    );
    assert_eq!(read_node(&env, &format!("{backend}/bridge")), None);

    env.xm_ok(&[
        "network-attach",
        "nr",
        "script=vif-route",
        &format!("ip={ip1} {ip2}"),
        &format!("vifname={tap1}"),
    ]);
    let mut routes = route::host_routes_via(&tap1);
    routes.sort();
    assert_eq!(routes, vec![ip1, ip2]);
    let (_, nics) = env.get("/domains/nr/nics");
    assert_eq!(nics[1]["mode"], "route", "{nics}");
    assert_eq!(nics[1]["bridge"], Value::Null, "{nics}");
    env.xm_ok(&["network-detach", "nr", "1", "-f"]);
    wait_until("the routes to go with the hot-plugged TAP", || {
        !link::exists(&tap1) && route::host_routes_via(&tap1).is_empty()
    });
    env.xm_ok(&["destroy", "nr"]);
    wait_until("the route to go with the domain", || {
        !link::exists(&tap0) && route::host_routes_via(&tap0).is_empty()
    });
}

/// A VMM killed with SIGKILL takes its TAPs (given at create and hot-plugged) and
/// their routes with it; xend removes the domain's xenstore nodes.
#[test]
fn cleanup_after_the_vmm_is_killed() {
    let test = "cleanup_after_the_vmm_is_killed";
    if !kvm_available(test) {
        return;
    }
    let Some(kernel) = mini_os(test) else { return };
    let env = Env::start("net-kill");
    let br = BridgeGuard::new();
    let (tap0, tap1) = (unique("rxk"), unique("rxk"));
    let ip = test_ip();
    let cfg = mini_os_cfg(
        &env,
        &kernel,
        "nk",
        &format!(
            "vif = [ 'bridge={},vifname={tap0}' ]\non_crash = \"destroy\"\n",
            br.0
        ),
    );
    env.xm_ok(&["create", cfg.to_str().unwrap()]);
    env.xm_ok(&[
        "network-attach",
        "nk",
        "script=vif-route",
        &format!("ip={ip}"),
        &format!("vifname={tap1}"),
    ]);
    let (_, dom) = env.get("/domains/nk");
    let domid = dom["domid"].as_u64().unwrap();
    let pid = dom["pid"].as_u64().unwrap();
    assert!(link::exists(&tap0) && link::exists(&tap1));
    assert_eq!(route::host_routes_via(&tap1), vec![ip]);
    // SAFETY: kill(2) of the VMM this test started through xend.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    wait_until("the TAPs, routes and vif nodes to go", || {
        !link::exists(&tap0)
            && !link::exists(&tap1)
            && route::host_routes_via(&tap1).is_empty()
            && read_node(&env, &format!("/local/domain/0/backend/vif/{domid}")).is_none()
            && read_node(&env, &format!("/local/domain/{domid}")).is_none()
    });
    assert!(bridge::is_bridge(&br.0));
}

/// A hot-plugged vif is part of the domain: a reboot (`on_reboot = "restart"`) brings
/// the new domain up with it (same MAC, same TAP name, on its bridge).
#[test]
fn a_hot_plugged_vif_survives_a_reboot() {
    let test = "a_hot_plugged_vif_survives_a_reboot";
    if !kvm_available(test) {
        return;
    }
    let env = Env::start("net-reboot");
    let br = BridgeGuard::new();
    let tap = unique("rxv");
    env.create("name='nrb'\nmemory=32\non_reboot='restart'");
    let old = domid_of(&env, "nrb");
    let (s, n) = env.post(
        "/domains/nrb/nics",
        &serde_json::json!({ "nic": format!("bridge={},vifname={tap}", br.0) }),
    );
    assert_eq!(s, 201, "{n}");
    let mac = n["mac"].as_str().unwrap().to_string();
    env.xm_ok(&["reboot", "nrb"]);
    wait_until("the restart", || {
        let (_, d) = env.get("/domains/nrb");
        d["domid"].as_u64().is_some_and(|d| d != old) && d["state"] == "running"
    });
    let new = domid_of(&env, "nrb");
    let (_, nics) = env.get("/domains/nrb/nics");
    assert_eq!(nics[0]["mac"], mac.as_str(), "{nics}");
    wait_until("the TAP to be back on its bridge", || {
        bridge::master_of(&tap).as_deref() == Some(br.0.as_str())
    });
    assert_eq!(
        read_node(&env, &format!("/local/domain/0/backend/vif/{new}/0/mac")),
        Some(mac)
    );
    env.xm_ok(&["destroy", "nrb"]);
    wait_until("the TAP to go", || !link::exists(&tap));
}
