//! The host side of a vif: a Linux TAP device (`/dev/net/tun`, `IFF_TAP | IFF_NO_PI |
//! IFF_VNET_HDR`: whole Ethernet frames, each behind a `virtio_net_hdr` carrying its
//! checksum and segmentation state, see [`super::offload`]), brought up and, when the
//! named bridge exists, made one of its ports, or routed to the guest's addresses (the
//! interface, bridge and route ioctls are `rxen_hostnet`'s). What the host may hand us
//! partially checksummed or unsegmented is set per frontend ([`Tap::set_offload`]).
//! The device is not persistent: it goes away when the VMM closes it (the vif is
//! detached or the domain ends, however it ends), and its bridge port and routes with
//! it.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

use rxen_hostnet::NetError;

use super::offload::{PacketMeta, VnetHdr, VNET_HDR_LEN};

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
    #[error("setting the offloads of {name}: {source}")]
    Offload {
        name: String,
        source: std::io::Error,
    },
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
        req.ifr_ifru.ifru_flags =
            (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
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

    /// Tells the host what it may hand over unfinished: partial checksums (`csum`),
    /// unsegmented TCP over IPv4 (`tso4`) and IPv6 (`tso6`); segmentation needs `csum`.
    /// Everything not allowed here the host completes before the frame is read.
    pub fn set_offload(&self, csum: bool, tso4: bool, tso6: bool) -> Result<(), TapError> {
        let mut flags: libc::c_uint = 0;
        if csum {
            flags |= libc::TUN_F_CSUM;
            if tso4 {
                flags |= libc::TUN_F_TSO4;
            }
            if tso6 {
                flags |= libc::TUN_F_TSO6;
            }
            if tso4 || tso6 {
                flags |= libc::TUN_F_TSO_ECN;
            }
        }
        // SAFETY: TUNSETOFFLOAD takes its argument by value; the descriptor is the
        // TAP's.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if r < 0 {
            return Err(TapError::Offload {
                name: self.name.clone(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
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
    fn send(&mut self, meta: &PacketMeta, frame: &[u8]);
    /// Reads one frame into `buf`; `None` when there is none now.
    fn recv(&mut self, buf: &mut [u8]) -> Option<(usize, PacketMeta)>;
}

fn iovec(ptr: *mut u8, len: usize) -> libc::iovec {
    libc::iovec {
        iov_base: ptr.cast(),
        iov_len: len,
    }
}

impl FrameIo for Tap {
    fn send(&mut self, meta: &PacketMeta, frame: &[u8]) {
        let mut hdr = VnetHdr::from_meta(meta).to_bytes();
        let iov = [
            iovec(hdr.as_mut_ptr(), hdr.len()),
            iovec(frame.as_ptr().cast_mut(), frame.len()),
        ];
        // SAFETY: writev only reads the two buffers, which live for the call; the
        // descriptor is the TAP's.
        let n = unsafe { libc::writev(self.file.as_raw_fd(), iov.as_ptr(), 2) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            tracing::debug!(tap = %self.name, "netback: frame dropped by the host: {e}");
        }
    }

    fn recv(&mut self, buf: &mut [u8]) -> Option<(usize, PacketMeta)> {
        loop {
            let mut hdr = [0u8; VNET_HDR_LEN];
            let iov = [
                iovec(hdr.as_mut_ptr(), hdr.len()),
                iovec(buf.as_mut_ptr(), buf.len()),
            ];
            // SAFETY: readv writes at most each buffer's length into it; both live
            // for the call and nothing else uses them; the descriptor is the TAP's.
            let n = unsafe { libc::readv(self.file.as_raw_fd(), iov.as_ptr(), 2) };
            let len = usize::try_from(n)
                .ok()
                .and_then(|n| n.checked_sub(VNET_HDR_LEN))
                .filter(|&len| len > 0)?;
            match VnetHdr::from_bytes(&hdr).to_meta() {
                Ok(meta) => return Some((len, meta)),
                Err(e) => {
                    tracing::debug!(tap = %self.name, "netback: host frame dropped: {e}")
                }
            }
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
