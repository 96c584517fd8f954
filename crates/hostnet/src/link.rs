//! Link state of an interface: whether it exists, its index, up and down.

use std::ffi::CString;
use std::os::fd::AsRawFd;

use crate::ifname::{ifreq, ioctl_socket, valid_ifname};
use crate::NetError;

/// The interface index of `name`; `None` when there is no such interface.
pub fn index(name: &str) -> Option<u32> {
    if !valid_ifname(name) {
        return None;
    }
    let c = CString::new(name).ok()?;
    // SAFETY: if_nametoindex reads a NUL-terminated string that lives for the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// Whether interface `name` exists.
pub fn exists(name: &str) -> bool {
    index(name).is_some()
}

/// Sets or clears `IFF_UP` on `name`.
pub fn set_up(name: &str, up: bool) -> Result<(), NetError> {
    let sock = ioctl_socket()?;
    let mut req = ifreq(name)?;
    // SAFETY: SIOCGIFFLAGS reads and writes the ifreq, which lives for the call; the
    // socket is valid.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(NetError::ioctl("reading the flags of", name));
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    let up_flag = libc::IFF_UP as libc::c_short;
    req.ifr_ifru.ifru_flags = if up {
        flags | up_flag
    } else {
        flags & !up_flag
    };
    // SAFETY: SIOCSIFFLAGS reads the ifreq, which lives for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req) } < 0 {
        return Err(NetError::ioctl(
            if up { "bringing up" } else { "bringing down" },
            name,
        ));
    }
    Ok(())
}

/// Whether `name` is up (`false` when it does not exist).
pub fn is_up(name: &str) -> bool {
    let Ok(sock) = ioctl_socket() else {
        return false;
    };
    let Ok(mut req) = ifreq(name) else {
        return false;
    };
    // SAFETY: SIOCGIFFLAGS reads and writes the ifreq, which lives for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return false;
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    flags & libc::IFF_UP as libc::c_short != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_exists_and_nonsense_does_not() {
        assert!(exists("lo"));
        assert!(!exists("rxen-no-such0"));
        assert!(!exists("a/b"));
        assert!(set_up("rxen-no-such0", true).is_err());
    }
}
