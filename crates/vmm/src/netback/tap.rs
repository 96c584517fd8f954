//! The host side of a vif: a Linux TAP device (`/dev/net/tun`, `IFF_TAP | IFF_NO_PI`:
//! whole Ethernet frames, no packet-information header), brought up and, when the named
//! bridge exists, made one of its ports, or routed to the guest's addresses (the
//! interface, bridge and route ioctls are `rxen_hostnet`'s). The device is not
//! persistent: it goes away when the VMM closes it (the vif is detached or the domain
//! ends, however it ends), and its bridge port and routes with it.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};

use rxen_hostnet::NetError;

/// Why a TAP device could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("interface name {0:?} must be 1 to 15 bytes of letters, digits, '.', '-' or '_'")]
    Name(String),
    #[error("opening /dev/net/tun: {0}")]
    Open(std::io::Error),
    #[error("creating TAP {name}: {source}")]
    Create {
        name: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Up(NetError),
    #[error("{0}")]
    Bridge(NetError),
    #[error("routing to the guest: {0}")]
    Route(NetError),
}

pub use rxen_hostnet::valid_ifname;

fn ifreq(name: &str) -> Result<libc::ifreq, TapError> {
    rxen_hostnet::ifname::ifreq(name).map_err(|_| TapError::Name(name.to_string()))
}

/// An open TAP device.
#[derive(Debug)]
pub struct Tap {
    name: String,
    file: File,
}

impl Tap {
    /// Creates TAP `name` (non-blocking), brings it up and joins it to `bridge` when
    /// that bridge exists (a missing bridge is logged, the TAP stays alone).
    pub fn create(name: &str, bridge: Option<&str>) -> Result<Self, TapError> {
        let mut req = ifreq(name)?;
        let path = c"/dev/net/tun";
        // SAFETY: open(2) of a constant NUL-terminated path; the result is checked.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(TapError::Open(std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh descriptor; File owns and closes it.
        let file = unsafe { File::from_raw_fd(fd) };
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes the ifreq, which lives for the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            return Err(TapError::Create {
                name: name.to_string(),
                source: std::io::Error::last_os_error(),
            });
        }
        let tap = Tap {
            name: name.to_string(),
            file,
        };
        tap.up()?;
        if let Some(b) = bridge {
            match tap.join_bridge(b) {
                Ok(()) => tracing::info!(tap = name, bridge = b, "netback: TAP added to bridge"),
                Err(e) => tracing::warn!("netback: {e}; the TAP is not bridged"),
            }
        }
        Ok(tap)
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn up(&self) -> Result<(), TapError> {
        rxen_hostnet::link::set_up(&self.name, true).map_err(TapError::Up)
    }

    fn join_bridge(&self, bridge: &str) -> Result<(), TapError> {
        rxen_hostnet::bridge::add_port(bridge, &self.name).map_err(TapError::Bridge)
    }

    /// Routes `ips` to the guest through this TAP (Xen's `vif-route`: host routes,
    /// proxy ARP, forwarding; see `rxen_hostnet::route`). The routes go with the TAP.
    pub fn route_to(&self, ips: &[std::net::Ipv4Addr]) -> Result<(), TapError> {
        rxen_hostnet::route::route_to(&self.name, ips).map_err(TapError::Route)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}

/// Where frames go to and come from: the TAP, or a test's stand-in.
pub trait FrameIo: Send {
    /// Sends one frame to the host; a frame the host cannot take is dropped.
    fn send(&mut self, frame: &[u8]);
    /// Reads one frame into `buf`; `None` when there is none now.
    fn recv(&mut self, buf: &mut [u8]) -> Option<usize>;
}

impl FrameIo for Tap {
    fn send(&mut self, frame: &[u8]) {
        if let Err(e) = self.file.write(frame) {
            tracing::debug!(tap = %self.name, "netback: frame dropped by the host: {e}");
        }
    }

    fn recv(&mut self, buf: &mut [u8]) -> Option<usize> {
        match self.file.read(buf) {
            Ok(n) if n > 0 => Some(n),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        assert!(valid_ifname("vif1.0"));
        assert!(valid_ifname("vif32751.15"));
        assert!(valid_ifname("vif32751.12345"));
        assert!(!valid_ifname("vif32751.1234567"));
        assert!(!valid_ifname(""));
        assert!(!valid_ifname("a/b"));
        assert!(!valid_ifname("a b"));
    }
}
