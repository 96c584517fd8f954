//! Linux interface names and the `ifreq` / socket of interface ioctls.

use std::os::fd::{FromRawFd, OwnedFd};

use crate::NetError;

/// Whether `name` can be a Linux interface name (`IFNAMSIZ` - 1 bytes, no separators).
pub fn valid_ifname(name: &str) -> bool {
    (1..libc::IFNAMSIZ).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// A zeroed `ifreq` naming interface `name` (checked).
pub fn ifreq(name: &str) -> Result<libc::ifreq, NetError> {
    if !valid_ifname(name) {
        return Err(NetError::Name(name.to_string()));
    }
    // SAFETY: ifreq is plain old data (a name array and a union of integers and
    // addresses); all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(req)
}

/// `name` as a NUL-terminated array of `IFNAMSIZ` bytes (checked).
pub fn c_name(name: &str) -> Result<[libc::c_char; libc::IFNAMSIZ], NetError> {
    if !valid_ifname(name) {
        return Err(NetError::Name(name.to_string()));
    }
    let mut out = [0 as libc::c_char; libc::IFNAMSIZ];
    for (d, s) in out.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(out)
}

/// An `AF_INET` datagram socket for interface ioctls.
pub fn ioctl_socket() -> Result<OwnedFd, NetError> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(NetError::Socket(std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn interface_names() {
        assert!(valid_ifname("vif1.0"));
        assert!(valid_ifname("xenbr0"));
        assert!(valid_ifname("vif32751.12345"));
        assert!(!valid_ifname("vif32751.1234567"));
        assert!(!valid_ifname(""));
        assert!(!valid_ifname("a/b"));
        assert!(!valid_ifname("a b"));
        assert!(ifreq("a/b").is_err());
        let n = c_name("br0").unwrap();
        assert_eq!(&n[..4], &[b'b' as libc::c_char, b'r' as _, b'0' as _, 0]);
    }
}
