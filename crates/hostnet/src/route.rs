//! Routed vifs (what Xen's `vif-route` script does for a guest's addresses): a host
//! route to each address through the vif's host-side interface (`SIOCADDRT`, a /32
//! route with `RTF_UP | RTF_HOST`, scope link), and proxy ARP and IPv4 forwarding on
//! that interface (`/proc/sys/net/ipv4/conf/<dev>/{proxy_arp,forwarding}` = 1), so that
//! the host answers the guest's ARP requests and forwards its packets. No address is
//! given to the interface. The routes go with the interface: the kernel drops them
//! when it is deleted (the VMM closing the TAP), so nothing is left to clean up.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use crate::ifname::{c_name, ioctl_socket};
use crate::NetError;

/// Parses xl's `ip=` value: one or more IPv4 addresses separated by spaces.
pub fn parse_ips(s: &str) -> Result<Vec<Ipv4Addr>, String> {
    let ips: Vec<Ipv4Addr> = s
        .split_whitespace()
        .map(|a| {
            a.parse::<Ipv4Addr>()
                .map_err(|_| format!("ip {a:?} is not an IPv4 address (A.B.C.D)"))
        })
        .collect::<Result<_, _>>()?;
    if ips.is_empty() {
        return Err("ip= gives no address".into());
    }
    Ok(ips)
}

fn sockaddr_in(ip: Ipv4Addr) -> libc::sockaddr {
    // SAFETY: sockaddr_in is plain old data; all zeroes is a valid value.
    let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sin.sin_family = libc::AF_INET as libc::sa_family_t;
    sin.sin_addr.s_addr = u32::from(ip).to_be();
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes) and both are
    // plain old data; this is how the kernel's rtentry takes an IPv4 address.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Adds the host route `ip/32 dev <dev>` (an existing identical route is fine).
pub fn add_host_route(ip: Ipv4Addr, dev: &str) -> Result<(), NetError> {
    let mut name = c_name(dev)?;
    // SAFETY: rtentry is plain old data (addresses, integers and a pointer that may be
    // null); all zeroes is a valid value.
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr_in(ip);
    rt.rt_genmask = sockaddr_in(Ipv4Addr::BROADCAST);
    rt.rt_flags = libc::RTF_UP | libc::RTF_HOST;
    rt.rt_dev = name.as_mut_ptr();
    let sock = ioctl_socket()?;
    // SAFETY: SIOCADDRT reads the rtentry and the interface name it points to, both of
    // which live for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT, &mut rt) } < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(NetError::Ioctl {
                what: "adding a host route through",
                name: dev.to_string(),
                source: e,
            });
        }
    }
    Ok(())
}

fn write_conf(dev: &str, key: &str) -> Result<(), NetError> {
    let path = format!("/proc/sys/net/ipv4/conf/{dev}/{key}");
    std::fs::write(&path, b"1").map_err(|source| NetError::Sysctl { path, source })
}

/// Sets up `dev` as Xen's `vif-route` does: proxy ARP and forwarding on it, and a
/// host route to each of `ips` through it.
pub fn route_to(dev: &str, ips: &[Ipv4Addr]) -> Result<(), NetError> {
    c_name(dev)?;
    write_conf(dev, "proxy_arp")?;
    write_conf(dev, "forwarding")?;
    for ip in ips {
        add_host_route(*ip, dev)?;
    }
    tracing::info!(
        dev,
        ?ips,
        "hostnet: routed (host routes, proxy ARP, forwarding)"
    );
    Ok(())
}

/// The host routes (`/32`, main table) through `dev`, from `/proc/net/route`.
pub fn host_routes_via(dev: &str) -> Vec<Ipv4Addr> {
    let text = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    parse_proc_routes(&text, dev)
}

/// The `/32` destinations of `dev` in `/proc/net/route`'s text.
fn parse_proc_routes(text: &str, dev: &str) -> Vec<Ipv4Addr> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 8 || f[0] != dev || f[7] != "FFFFFFFF" {
                return None;
            }
            let raw = u32::from_str_radix(f[1], 16).ok()?;
            // The kernel prints the address's memory (network order) as a native u32.
            Some(Ipv4Addr::from(raw.to_ne_bytes()))
        })
        .collect()
}

/// Whether `/proc/sys/net/ipv4/conf/<dev>/<key>` is 1.
pub fn conf_enabled(dev: &str, key: &str) -> bool {
    crate::valid_ifname(dev)
        && std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{dev}/{key}"))
            .is_ok_and(|v| v.trim() == "1")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ips_are_xls() {
        assert_eq!(
            parse_ips("192.0.2.5").unwrap(),
            vec![Ipv4Addr::new(192, 0, 2, 5)]
        );
        assert_eq!(parse_ips("192.0.2.5  192.0.2.6").unwrap().len(), 2);
        for bad in ["", " ", "192.0.2", "192.0.2.5/24", "::1", "host"] {
            assert!(parse_ips(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn proc_routes() {
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                    eth0\t00000000\t0102A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                    vif3.0\t050200C0\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n\
                    vif3.0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(
            parse_proc_routes(text, "vif3.0"),
            vec![Ipv4Addr::new(192, 0, 2, 5)]
        );
        assert!(parse_proc_routes(text, "eth0").is_empty());
        assert!(route_to("a/b", &[]).is_err());
    }
}
