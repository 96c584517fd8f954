//! Internet checksums (RFC 1071) and the header parsing that checksum offload needs:
//! where a frame's TCP or UDP header and checksum field are, the pseudo-header sum a
//! partial checksum starts from, completing a partial checksum and verifying a full
//! one.
//!
//! Shared by the VMM's netback (crates/vmm/src/netback/offload.rs) and the guest SDK's
//! netfront, so both sides of a vif agree byte for byte. It owns arithmetic and bounds
//! checks only: no I/O, no allocation, no knowledge of rings or offload flags. Every
//! function takes untrusted frames: a frame that does not parse is an error, never a
//! panic.
#![no_std]
#![forbid(unsafe_code)]

use core::fmt;

impl core::error::Error for ChecksumError {}

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u8 = 6;
/// `IPPROTO_UDP`.
pub const IPPROTO_UDP: u8 = 17;

/// Why a frame's checksum cannot be located or completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChecksumError {
    /// Not TCP or UDP over IPv4/IPv6 (no extension headers).
    NotTcpUdp,
    /// Shorter than its headers say.
    Truncated,
    /// A checksum start and offset outside the frame.
    Range { start: u16, offset: u16, len: usize },
}

impl fmt::Display for ChecksumError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotTcpUdp => f.write_str("not TCP or UDP over IPv4/IPv6"),
            Self::Truncated => f.write_str("the frame is shorter than its headers say"),
            Self::Range { start, offset, len } => write!(
                f,
                "checksum start {start} + offset {offset} leaves the {len}-byte frame"
            ),
        }
    }
}

/// The IP version of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpVersion {
    V4,
    V6,
}

/// Where a TCP or UDP frame's headers are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L4Headers {
    pub ip: IpVersion,
    /// Offset of the IP header.
    pub ip_start: usize,
    /// Offset of the TCP/UDP header.
    pub l4_start: usize,
    /// Bytes of TCP/UDP header and payload the IP header announces.
    pub l4_len: usize,
    pub proto: u8,
}

impl L4Headers {
    /// Offset of the checksum field within the L4 header.
    pub fn csum_offset(&self) -> usize {
        if self.proto == IPPROTO_TCP {
            16
        } else {
            6
        }
    }
}

fn be16(f: &[u8], at: usize) -> Result<u16, ChecksumError> {
    f.get(at..at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or(ChecksumError::Truncated)
}

/// Finds the TCP or UDP header of an Ethernet frame (one optional 802.1Q tag; IPv6
/// without extension headers).
pub fn parse_l4(frame: &[u8]) -> Result<L4Headers, ChecksumError> {
    let mut ethertype = be16(frame, 12)?;
    let mut ip_start = 14;
    if ethertype == ETH_P_8021Q {
        ethertype = be16(frame, 16)?;
        ip_start = 18;
    }
    let (ip, l4_start, l4_len, proto) = match ethertype {
        ETH_P_IPV4 => {
            let vihl = *frame.get(ip_start).ok_or(ChecksumError::Truncated)?;
            let ihl = usize::from(vihl & 0xf) * 4;
            if vihl >> 4 != 4 || ihl < 20 {
                return Err(ChecksumError::NotTcpUdp);
            }
            let total = usize::from(be16(frame, ip_start + 2)?);
            let proto = *frame.get(ip_start + 9).ok_or(ChecksumError::Truncated)?;
            let l4_len = total.checked_sub(ihl).ok_or(ChecksumError::Truncated)?;
            (IpVersion::V4, ip_start + ihl, l4_len, proto)
        }
        ETH_P_IPV6 => {
            let payload = usize::from(be16(frame, ip_start + 4)?);
            let proto = *frame.get(ip_start + 6).ok_or(ChecksumError::Truncated)?;
            (IpVersion::V6, ip_start + 40, payload, proto)
        }
        _ => return Err(ChecksumError::NotTcpUdp),
    };
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Err(ChecksumError::NotTcpUdp);
    }
    let min_header = if proto == IPPROTO_TCP { 20 } else { 8 };
    if l4_len < min_header || l4_start + l4_len > frame.len() {
        return Err(ChecksumError::Truncated);
    }
    Ok(L4Headers {
        ip,
        ip_start,
        l4_start,
        l4_len,
        proto,
    })
}

/// The ones'-complement sum of `data` (big-endian 16-bit words, odd byte padded),
/// added to `sum`, not folded.
pub fn add_words(mut sum: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// Folds a sum to 16 bits (ones' complement addition).
pub fn fold(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The TCP/UDP pseudo-header sum of `h` in `frame` (addresses, protocol, L4 length),
/// folded, not complemented: what a checksum field holds while the checksum is partial.
pub fn pseudo_header_sum(frame: &[u8], h: &L4Headers) -> u16 {
    let addrs = match h.ip {
        IpVersion::V4 => &frame[h.ip_start + 12..h.ip_start + 20],
        IpVersion::V6 => &frame[h.ip_start + 8..h.ip_start + 40],
    };
    let sum = add_words(0, addrs) + u64::from(h.proto) + h.l4_len as u64;
    fold(sum)
}

/// Writes the pseudo-header sum into the checksum field of `h` (the state Linux keeps a
/// partially checksummed frame in). Returns the `(csum_start, csum_offset)` pair.
pub fn make_partial(frame: &mut [u8], h: &L4Headers) -> (u16, u16) {
    let at = h.l4_start + h.csum_offset();
    let sum = pseudo_header_sum(frame, h);
    frame[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    (h.l4_start as u16, h.csum_offset() as u16)
}

/// Completes a partial checksum: sums from `start` to the end of the frame (the field
/// holds the pseudo-header sum) and stores the complement at `start + offset`.
pub fn complete_checksum(frame: &mut [u8], start: u16, offset: u16) -> Result<(), ChecksumError> {
    let (s, o) = (usize::from(start), usize::from(offset));
    let range_err = ChecksumError::Range {
        start,
        offset,
        len: frame.len(),
    };
    if s + o + 2 > frame.len() {
        return Err(range_err);
    }
    let mut sum = !fold(add_words(0, &frame[s..]));
    if sum == 0 && o == 6 {
        // UDP sends a computed zero as all ones (zero means "no checksum").
        sum = 0xffff;
    }
    frame[s + o..s + o + 2].copy_from_slice(&sum.to_be_bytes());
    Ok(())
}

/// Whether the TCP/UDP checksum of `frame` verifies (pseudo-header included; a UDP
/// checksum of zero means "none" and passes).
pub fn verify(frame: &[u8]) -> Result<bool, ChecksumError> {
    let h = parse_l4(frame)?;
    let at = h.l4_start + h.csum_offset();
    if h.proto == IPPROTO_UDP && h.ip == IpVersion::V4 && frame[at..at + 2] == [0, 0] {
        return Ok(true);
    }
    let sum = u64::from(pseudo_header_sum(frame, &h));
    Ok(fold(add_words(sum, &frame[h.l4_start..h.l4_start + h.l4_len])) == 0xffff)
}

/// Test frames shared with the users' tests.
pub mod testing {
    extern crate alloc;
    use alloc::vec::Vec;

    use super::*;

    /// An Ethernet + IPv4 + TCP frame (10.0.0.1:80 to 10.0.0.2:4321) with `payload`,
    /// checksums left zero.
    pub fn tcp4(payload: &[u8]) -> Vec<u8> {
        let mut f = alloc::vec![0u8; 14 + 20 + 20];
        f[12..14].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
        f[14] = 0x45;
        let total = (20 + 20 + payload.len()) as u16;
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f[22] = 64;
        f[23] = IPPROTO_TCP;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        f[34..36].copy_from_slice(&80u16.to_be_bytes());
        f[36..38].copy_from_slice(&4321u16.to_be_bytes());
        f[46] = 5 << 4;
        f.extend_from_slice(payload);
        f
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::testing::tcp4;
    use super::*;
    extern crate alloc;
    use alloc::vec::Vec;

    #[test]
    fn partial_then_completed_checksum_verifies() {
        for len in [0usize, 1, 7, 1000, 1460] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let mut f = tcp4(&payload);
            let h = parse_l4(&f).unwrap();
            assert_eq!((h.l4_start, h.l4_len, h.proto), (34, 20 + len, 6));
            let (s, o) = make_partial(&mut f, &h);
            assert_eq!((s, o), (34, 16));
            complete_checksum(&mut f, s, o).unwrap();
            assert_eq!(verify(&f), Ok(true), "payload of {len}");
            let last = f.len() - 1;
            f[last.min(60)] ^= 1;
            assert_eq!(verify(&f), Ok(false));
        }
    }

    #[test]
    fn bad_frames_are_errors() {
        assert_eq!(parse_l4(&[0u8; 60]), Err(ChecksumError::NotTcpUdp));
        let mut f = tcp4(&[0; 10]);
        f[16..18].copy_from_slice(&9000u16.to_be_bytes());
        assert_eq!(parse_l4(&f), Err(ChecksumError::Truncated));
        let mut f = tcp4(&[]);
        assert!(complete_checksum(&mut f, 60, 16).is_err());
        assert!(complete_checksum(&mut f, 0xffff, 0xffff).is_err());
        let f = tcp4(&[9u8; 40]);
        for n in 0..f.len() {
            let _ = verify(&f[..n]);
        }
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_never_panic(
            frame in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000),
            start in proptest::prelude::any::<u16>(),
            offset in proptest::prelude::any::<u16>(),
        ) {
            let _ = verify(&frame);
            if let Ok(h) = parse_l4(&frame) {
                let mut g = frame.clone();
                let (s, o) = make_partial(&mut g, &h);
                complete_checksum(&mut g, s, o).unwrap();
                proptest::prop_assert_eq!(verify(&g), Ok(true));
            }
            let mut g = frame.clone();
            let _ = complete_checksum(&mut g, start, offset);
        }
    }
}
