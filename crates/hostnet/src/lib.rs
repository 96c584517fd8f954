//! Host network plumbing shared by `xend` and the VMM: Linux interface names and
//! `ifreq`s ([`ifname`]), link state ([`link`]: exists, index, up), Linux bridges
//! ([`bridge`]: create, delete, add a port) and routed vifs ([`route`]: a host route
//! to a guest address through its TAP, proxy ARP and forwarding on the TAP), all by
//! ioctl and `/proc/sys` writes from Rust (no shell scripts, no `ip` binary).
//!
//! This crate owns *how* the host's network is changed, never *when*: it keeps no
//! state, knows nothing of domains, xenstore or TAP devices' data path (the VMM's
//! netback opens and serves TAPs), and must not touch an interface it was not named.
//! Every call works on the network namespace of the calling thread.

pub mod bridge;
pub mod ifname;
pub mod link;
pub mod route;

pub use ifname::valid_ifname;

/// Why a host network change failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("interface name {0:?} must be 1 to 15 bytes of letters, digits, '.', '-' or '_'")]
    Name(String),
    #[error("opening an ioctl socket: {0}")]
    Socket(std::io::Error),
    #[error("no interface {0}")]
    NoSuchInterface(String),
    #[error("{name} exists and is not a bridge")]
    NotABridge { name: String },
    #[error("{what} {name}: {source}")]
    Ioctl {
        what: &'static str,
        name: String,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Sysctl {
        path: String,
        source: std::io::Error,
    },
}

impl NetError {
    pub(crate) fn ioctl(what: &'static str, name: &str) -> Self {
        NetError::Ioctl {
            what,
            name: name.to_string(),
            source: std::io::Error::last_os_error(),
        }
    }
}
