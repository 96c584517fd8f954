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

    /// `curl -s --max-time 5 URL` from the namespace: the body when it worked.
    pub fn curl(&self, url: &str) -> Option<String> {
        let out = self.exec("curl", &["-s", "--max-time", "5", url]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// The Internet checksum (RFC 1071) of `data`.
fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl TestNet {
    /// Sends one ICMP echo request to `addr` from inside the namespace and waits up to
    /// `timeout` for the matching reply (a raw socket made on a thread moved into the
    /// namespace with `setns`: no `ping` binary needed).
    pub fn ping(&self, addr: &str, timeout: std::time::Duration) -> Result<(), String> {
        let ns_path = format!("/run/netns/{}", self.namespace);
        let addr: std::net::Ipv4Addr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
        std::thread::spawn(move || ping_from(&ns_path, addr, timeout))
            .join()
            .map_err(|_| "the ping thread panicked".to_string())?
    }
}

fn ping_from(
    ns_path: &str,
    addr: std::net::Ipv4Addr,
    timeout: std::time::Duration,
) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let ns = std::fs::File::open(ns_path).map_err(|e| format!("{ns_path}: {e}"))?;
    // SAFETY: setns on a namespace file descriptor that lives for the call; it moves
    // only this thread, which exists for this ping.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!("setns: {}", std::io::Error::last_os_error()));
    }
    let ident = (std::process::id() & 0xffff) as u16;
    let mut request = vec![8u8, 0, 0, 0];
    request.extend_from_slice(&ident.to_be_bytes());
    request.extend_from_slice(&1u16.to_be_bytes());
    request.extend_from_slice(b"rxen ping payload");
    let sum = inet_checksum(&request);
    request[2..4].copy_from_slice(&sum.to_be_bytes());
    // SAFETY: plain socket calls on a fresh descriptor, with buffers and addresses
    // that live for each call; the descriptor is closed before returning.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP);
        if fd < 0 {
            return Err(format!("raw socket: {}", std::io::Error::last_os_error()));
        }
        let result = (|| {
            let mut to: libc::sockaddr_in = std::mem::zeroed();
            to.sin_family = libc::AF_INET as u16;
            to.sin_addr.s_addr = u32::from_ne_bytes(addr.octets());
            let n = libc::sendto(
                fd,
                request.as_ptr().cast(),
                request.len(),
                0,
                (&to as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            );
            if n != request.len() as isize {
                return Err(format!("sendto: {}", std::io::Error::last_os_error()));
            }
            let deadline = std::time::Instant::now() + timeout;
            let mut buf = [0u8; 2048];
            loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Err(format!("no echo reply from {addr} in {timeout:?}"));
                }
                let tv = libc::timeval {
                    tv_sec: left.as_secs() as libc::time_t,
                    tv_usec: left.subsec_micros().max(1) as libc::suseconds_t,
                };
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as u32,
                );
                let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
                if n <= 0 {
                    continue;
                }
                // An IPv4 header (IHL words), then ICMP: type 0 = echo reply.
                let packet = &buf[..n as usize];
                let ihl = usize::from(packet[0] & 0xf) * 4;
                let Some(icmp) = packet.get(ihl..) else {
                    continue;
                };
                if icmp.len() >= request.len()
                    && packet[12..16] == addr.octets()
                    && icmp[0] == 0
                    && icmp[4..8] == request[4..8]
                    && icmp[8..request.len()] == request[8..]
                {
                    return Ok(());
                }
            }
        })();
        libc::close(fd);
        result
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
