//! The interface's IPv4 configuration from the kernel command line (`extra = "..."`
//! in the domain's configuration): `ip=A.B.C.D/N` (prefix length 24 when `/N` is
//! left out) with an optional `gw=A.B.C.D`, or `ip=dhcp`.

use core::net::Ipv4Addr;
use core::str::FromStr;

use smoltcp::wire::Ipv4Cidr;

/// How the interface gets its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpConfig {
    /// A fixed address and, optionally, a default gateway.
    Static {
        address: Ipv4Cidr,
        gateway: Option<Ipv4Addr>,
    },
    /// An address leased by a DHCP server on the link.
    Dhcp,
}

/// The command line does not say how to configure the interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpConfigError {
    /// No `ip=`.
    Missing,
    /// `ip=` is neither `dhcp` nor `A.B.C.D[/N]` with N <= 32.
    BadAddress(&'static str),
    /// `gw=` is not `A.B.C.D`.
    BadGateway(&'static str),
}

impl core::fmt::Display for IpConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            IpConfigError::Missing => write!(f, "no ip= on the command line"),
            IpConfigError::BadAddress(s) => {
                write!(f, "ip={s}: expected dhcp or A.B.C.D/N")
            }
            IpConfigError::BadGateway(s) => write!(f, "gw={s}: expected A.B.C.D"),
        }
    }
}

/// Prefix length used when `ip=` has no `/N`.
pub const DEFAULT_PREFIX_LEN: u8 = 24;

impl IpConfig {
    /// Reads `ip=` and `gw=` from `cmdline` (whitespace-separated `key=value`).
    pub fn parse(cmdline: &'static str) -> Result<Self, IpConfigError> {
        let value = |key: &str| {
            cmdline
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        };
        let ip = value("ip").ok_or(IpConfigError::Missing)?;
        if ip == "dhcp" {
            return Ok(IpConfig::Dhcp);
        }
        let (addr, prefix) = match ip.split_once('/') {
            Some((a, n)) => (
                a,
                n.parse::<u8>().map_err(|_| IpConfigError::BadAddress(ip))?,
            ),
            None => (ip, DEFAULT_PREFIX_LEN),
        };
        if prefix > 32 {
            return Err(IpConfigError::BadAddress(ip));
        }
        let addr = Ipv4Addr::from_str(addr).map_err(|_| IpConfigError::BadAddress(ip))?;
        let gateway = match value("gw") {
            Some(g) => Some(Ipv4Addr::from_str(g).map_err(|_| IpConfigError::BadGateway(g))?),
            None => None,
        };
        Ok(IpConfig::Static {
            address: Ipv4Cidr::new(addr, prefix),
            gateway,
        })
    }

    /// From this domain's command line.
    pub fn from_cmdline() -> Result<Self, IpConfigError> {
        Self::parse(crate::start::cmdline())
    }
}
