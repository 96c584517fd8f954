//! Linux bridges: create one (and bring it up) if missing, delete one, add a port
//! (`SIOCBRADDBR`, `SIOCBRDELBR`, `SIOCBRADDIF` of linux/sockios.h).

use std::os::fd::AsRawFd;

use crate::ifname::{c_name, ifreq, ioctl_socket, valid_ifname};
use crate::{link, NetError};

/// `SIOCBRADDBR`: create the bridge named by the argument (a C string).
const SIOCBRADDBR: libc::c_ulong = 0x89a0;
/// `SIOCBRDELBR`: delete the (down) bridge named by the argument.
const SIOCBRDELBR: libc::c_ulong = 0x89a1;
/// `SIOCBRADDIF`: add interface `ifr_ifindex` to the bridge named by `ifr_name`.
const SIOCBRADDIF: libc::c_ulong = 0x89a2;

/// What [`ensure`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ensured {
    /// The bridge was there already (it was brought up if it was down).
    Existed,
    /// The bridge was created and brought up.
    Created,
}

/// Whether `name` is a Linux bridge (sysfs has `/sys/class/net/<name>/bridge`).
pub fn is_bridge(name: &str) -> bool {
    valid_ifname(name) && std::path::Path::new(&format!("/sys/class/net/{name}/bridge")).is_dir()
}

/// Creates bridge `name` unless it exists, and brings it up. An interface of that
/// name that is not a bridge is an error.
pub fn ensure(name: &str) -> Result<Ensured, NetError> {
    let cname = c_name(name)?;
    let how = if link::exists(name) {
        if !is_bridge(name) {
            return Err(NetError::NotABridge {
                name: name.to_string(),
            });
        }
        Ensured::Existed
    } else {
        let sock = ioctl_socket()?;
        // SAFETY: SIOCBRADDBR reads the NUL-terminated name, which lives for the call.
        if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCBRADDBR, cname.as_ptr()) } < 0 {
            let e = std::io::Error::last_os_error();
            // Another caller made it in between: fine.
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(NetError::Ioctl {
                    what: "creating bridge",
                    name: name.to_string(),
                    source: e,
                });
            }
        }
        tracing::info!(bridge = name, "hostnet: bridge created");
        Ensured::Created
    };
    if !link::is_up(name) {
        link::set_up(name, true)?;
    }
    Ok(how)
}

/// Deletes bridge `name` (brought down first). Not an error when it is gone.
pub fn delete(name: &str) -> Result<(), NetError> {
    let cname = c_name(name)?;
    if !link::exists(name) {
        return Ok(());
    }
    if !is_bridge(name) {
        return Err(NetError::NotABridge {
            name: name.to_string(),
        });
    }
    link::set_up(name, false)?;
    let sock = ioctl_socket()?;
    // SAFETY: SIOCBRDELBR reads the NUL-terminated name, which lives for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCBRDELBR, cname.as_ptr()) } < 0 {
        return Err(NetError::ioctl("deleting bridge", name));
    }
    Ok(())
}

/// Makes interface `port` a port of bridge `bridge`.
pub fn add_port(bridge: &str, port: &str) -> Result<(), NetError> {
    let index = link::index(port).ok_or_else(|| NetError::NoSuchInterface(port.to_string()))?;
    let mut req = ifreq(bridge)?;
    req.ifr_ifru.ifru_ifindex = index as libc::c_int;
    let sock = ioctl_socket()?;
    // SAFETY: SIOCBRADDIF reads the ifreq, which lives for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCBRADDIF, &mut req) } < 0 {
        return Err(NetError::Ioctl {
            what: "adding a port to bridge",
            name: bridge.to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The bridge `port` is a port of, if any (sysfs `brport/bridge`).
pub fn master_of(port: &str) -> Option<String> {
    if !valid_ifname(port) {
        return None;
    }
    let link = std::fs::read_link(format!("/sys/class/net/{port}/brport/bridge")).ok()?;
    link.file_name()?.to_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_first() {
        assert!(matches!(ensure("a/b"), Err(NetError::Name(_))));
        assert!(matches!(delete(""), Err(NetError::Name(_))));
        assert!(!is_bridge("lo"));
        assert!(matches!(ensure("lo"), Err(NetError::NotABridge { .. })));
        assert_eq!(master_of("lo"), None);
    }
}
