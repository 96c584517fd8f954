//! A private network for tests: a network namespace, a Linux bridge and a veth pair
//! (one end a port of the bridge, the other in the namespace with `.1` of a private
//! /24), all with names unique to the process and the fixture, all removed on drop.
//! Domains join the bridge with `vif = [ 'bridge=NAME' ]`; the host side talks to
//! them from inside the namespace ([`TestNet::exec`]), so no real network is touched.
#![allow(dead_code)]

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The namespace, bridge and veth pair of one test.
pub struct TestNet {
    pub namespace: String,
    pub bridge: String,
    veth_bridge: String,
    veth_ns: String,
    /// `10.A.B` of the /24.
    prefix: String,
    /// Unique part of the names (TAP names of the test's domains derive from it).
    id: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl TestNet {
    /// Creates the namespace, bridge and veth pair; `Err` says why they could not be
    /// made (no `ip`, no permission, no bridge or veth support), with nothing left.
    pub fn create() -> Result<TestNet, String> {
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // Interface names are at most 15 bytes: "rxbr" + up to 7 + up to 2 digits,
        // and TAPs one more.
        let id = format!("{pid}{}", n % 100);
        let net = TestNet {
            namespace: format!("rxen-test-{pid}-{n}"),
            bridge: format!("rxbr{id}"),
            veth_bridge: format!("rxvb{id}"),
            veth_ns: format!("rxvn{id}"),
            prefix: format!("10.{}.{}", 100 + n % 100, pid % 250 + 1),
            id,
        };
        net.build()?;
        Ok(net)
    }

    fn build(&self) -> Result<(), String> {
        let ns = self.namespace.as_str();
        let host_addr = format!("{}/24", self.addr(1));
        ip(&["netns", "add", ns])?;
        ip(&["link", "add", &self.bridge, "type", "bridge"])?;
        ip(&["link", "set", &self.bridge, "up"])?;
        ip(&[
            "link",
            "add",
            &self.veth_bridge,
            "type",
            "veth",
            "peer",
            "name",
            &self.veth_ns,
        ])?;
        ip(&["link", "set", &self.veth_bridge, "master", &self.bridge])?;
        ip(&["link", "set", &self.veth_bridge, "up"])?;
        ip(&["link", "set", &self.veth_ns, "netns", ns])?;
        ip(&["-n", ns, "addr", "add", &host_addr, "dev", &self.veth_ns])?;
        ip(&["-n", ns, "link", "set", &self.veth_ns, "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Address `10.A.B.host` of the test's /24 (`.1` is the namespace's end).
    pub fn addr(&self, host: u8) -> String {
        format!("{}.{host}", self.prefix)
    }

    /// A TAP name unique to this fixture, for domain `k`'s `vifname=` (the default
    /// `vif<domid>.<devid>` collides between xends running at once, which all
    /// number their domains from 1).
    pub fn tap_name(&self, k: u8) -> String {
        format!("rxvt{}{k}", self.id)
    }

    /// Runs `program ARGS` inside the namespace.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.namespace, program])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running ip netns exec")
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        // Each may not exist (a half-built fixture); deleting the namespace removes
        // its veth end, and with it the pair.
        let _ = ip(&["link", "del", &self.veth_bridge]);
        let _ = ip(&["link", "del", &self.bridge]);
        let _ = ip(&["netns", "del", &self.namespace]);
    }
}

/// A test network, or None after saying loudly why the test is skipped (missing
/// `ip`, `curl`, namespaces or bridges are a property of the host, not a failure,
/// even under `RXEN_REQUIRE_KVM`).
pub fn test_net(test: &str) -> Option<TestNet> {
    let curl = Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !curl.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED {test}: curl is not installed");
        return None;
    }
    match TestNet::create() {
        Ok(net) => Some(net),
        Err(why) => {
            eprintln!("SKIPPED {test}: cannot make a network namespace and bridge: {why}");
            None
        }
    }
}
