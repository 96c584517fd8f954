//! Checksum and segmentation offload between a netif frontend and the host: what a
//! packet's checksum state and GSO details are ([`PacketMeta`]), how they travel on the
//! TAP (Linux's `struct virtio_net_hdr`, [`VnetHdr`], in front of every frame of a TAP
//! opened with `IFF_VNET_HDR`), and the header parsing and checksum arithmetic both
//! directions need.
//!
//! Frames here come from the guest (TX) or from the host (RX) and are parsed with
//! bounds checks only: a frame whose headers do not say where its TCP/UDP checksum is
//! yields [`OffloadError`], and the caller drops it.

use rxen_abi::netif::{XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6};

/// Bytes of `struct virtio_net_hdr` (no `num_buffers`: the TAP's default header size).
pub const VNET_HDR_LEN: usize = 10;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: checksum from `csum_start`, stored at `+csum_offset`.
pub const VNET_F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksum was verified.
pub const VNET_F_DATA_VALID: u8 = 2;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const VNET_GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const VNET_GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const VNET_GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_ECN`: a flag on the GSO type.
pub const VNET_GSO_ECN: u8 = 0x80;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// Why a frame's offload request cannot be honoured.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OffloadError {
    #[error("checksum offload asked for a frame that is not TCP or UDP over IPv4/IPv6")]
    NotTcpUdp,
    #[error("the frame is shorter than its headers say")]
    Truncated,
    #[error("GSO of type {0} is not supported")]
    GsoType(u8),
    #[error("GSO type {kind} does not match the frame's protocol")]
    GsoMismatch { kind: u8 },
    #[error("GSO segment size 0")]
    GsoSize,
    #[error("checksum start {start} + offset {offset} leaves the {len}-byte frame")]
    CsumRange { start: u16, offset: u16, len: usize },
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

fn be16(f: &[u8], at: usize) -> Result<u16, OffloadError> {
    f.get(at..at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or(OffloadError::Truncated)
}

/// Finds the TCP or UDP header of an Ethernet frame (one optional 802.1Q tag; IPv6
/// without extension headers).
pub fn parse_l4(frame: &[u8]) -> Result<L4Headers, OffloadError> {
    let mut ethertype = be16(frame, 12)?;
    let mut ip_start = 14;
    if ethertype == ETH_P_8021Q {
        ethertype = be16(frame, 16)?;
        ip_start = 18;
    }
    let (ip, l4_start, l4_len, proto) = match ethertype {
        ETH_P_IPV4 => {
            let vihl = *frame.get(ip_start).ok_or(OffloadError::Truncated)?;
            let ihl = usize::from(vihl & 0xf) * 4;
            if vihl >> 4 != 4 || ihl < 20 {
                return Err(OffloadError::NotTcpUdp);
            }
            let total = usize::from(be16(frame, ip_start + 2)?);
            let proto = *frame.get(ip_start + 9).ok_or(OffloadError::Truncated)?;
            let l4_len = total.checked_sub(ihl).ok_or(OffloadError::Truncated)?;
            (IpVersion::V4, ip_start + ihl, l4_len, proto)
        }
        ETH_P_IPV6 => {
            let payload = usize::from(be16(frame, ip_start + 4)?);
            let proto = *frame.get(ip_start + 6).ok_or(OffloadError::Truncated)?;
            (IpVersion::V6, ip_start + 40, payload, proto)
        }
        _ => return Err(OffloadError::NotTcpUdp),
    };
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Err(OffloadError::NotTcpUdp);
    }
    let min_header = if proto == IPPROTO_TCP { 20 } else { 8 };
    if l4_len < min_header || l4_start + l4_len > frame.len() {
        return Err(OffloadError::Truncated);
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
pub fn complete_checksum(frame: &mut [u8], start: u16, offset: u16) -> Result<(), OffloadError> {
    let (s, o) = (usize::from(start), usize::from(offset));
    let range_err = OffloadError::CsumRange {
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

/// A packet's checksum state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Checksum {
    /// Complete, or not known to be checked: the receiver verifies it.
    #[default]
    Unverified,
    /// Verified already (`NETRXF_data_validated`, `VIRTIO_NET_HDR_F_DATA_VALID`).
    Validated,
    /// Partial: the field at `start + offset` holds the pseudo-header sum and the sum of
    /// the bytes from `start` is still to be added (`csum_blank`, `NEEDS_CSUM`).
    Partial { start: u16, offset: u16 },
}

/// A TCP segmentation request: the packet is one large TCP segment to be cut into
/// `size`-byte ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gso {
    pub ip: IpVersion,
    /// Bytes of payload per segment (the MSS).
    pub size: u16,
    /// Bytes of headers (Ethernet, IP, TCP).
    pub hdr_len: u16,
}

/// What travels with a frame besides its bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketMeta {
    pub csum: Checksum,
    pub gso: Option<Gso>,
}

/// Linux's `struct virtio_net_hdr` (little-endian on x86, the TAP's default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn to_bytes(self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; VNET_HDR_LEN]) -> Self {
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
        }
    }

    /// The header for a frame with `meta`.
    pub fn from_meta(meta: &PacketMeta) -> Self {
        let mut h = Self::default();
        match meta.csum {
            Checksum::Unverified => {}
            Checksum::Validated => h.flags = VNET_F_DATA_VALID,
            Checksum::Partial { start, offset } => {
                h.flags = VNET_F_NEEDS_CSUM;
                h.csum_start = start;
                h.csum_offset = offset;
            }
        }
        if let Some(g) = meta.gso {
            h.gso_type = match g.ip {
                IpVersion::V4 => VNET_GSO_TCPV4,
                IpVersion::V6 => VNET_GSO_TCPV6,
            };
            h.gso_size = g.size;
            h.hdr_len = g.hdr_len;
        }
        h
    }

    /// What the host said of a frame; a GSO type other than TCP over IPv4/IPv6 (which
    /// the TAP was never told we take) is an error.
    pub fn to_meta(self) -> Result<PacketMeta, OffloadError> {
        let csum = if self.flags & VNET_F_NEEDS_CSUM != 0 {
            Checksum::Partial {
                start: self.csum_start,
                offset: self.csum_offset,
            }
        } else if self.flags & VNET_F_DATA_VALID != 0 {
            Checksum::Validated
        } else {
            Checksum::Unverified
        };
        let gso = match self.gso_type & !VNET_GSO_ECN {
            VNET_GSO_NONE => None,
            t @ (VNET_GSO_TCPV4 | VNET_GSO_TCPV6) => Some(Gso {
                ip: if t == VNET_GSO_TCPV4 {
                    IpVersion::V4
                } else {
                    IpVersion::V6
                },
                size: self.gso_size,
                hdr_len: self.hdr_len,
            }),
            t => return Err(OffloadError::GsoType(t)),
        };
        Ok(PacketMeta { csum, gso })
    }
}

/// The metadata of a TX packet from the guest: `csum_blank` asks for a checksum (the
/// pseudo-header sum is rewritten here, whatever the guest left in the field), a GSO
/// extra-info slot of `gso_type` and `gso_size` asks for segmentation (which needs a
/// partial checksum too; Xen's netback fixes up frontends that forget).
pub fn tx_meta(
    frame: &mut Vec<u8>,
    csum_blank: bool,
    validated: bool,
    gso: Option<(u8, u16)>,
) -> Result<PacketMeta, OffloadError> {
    if !csum_blank && gso.is_none() {
        let csum = if validated {
            Checksum::Validated
        } else {
            Checksum::Unverified
        };
        return Ok(PacketMeta { csum, gso: None });
    }
    let h = parse_l4(frame)?;
    // Ethernet padding after the IP packet would enter the host's checksum.
    frame.truncate(h.l4_start + h.l4_len);
    let (start, offset) = make_partial(frame, &h);
    let gso = match gso {
        None => None,
        Some((kind, size)) => {
            let ip = match kind {
                XEN_NETIF_GSO_TYPE_TCPV4 => IpVersion::V4,
                XEN_NETIF_GSO_TYPE_TCPV6 => IpVersion::V6,
                other => return Err(OffloadError::GsoType(other)),
            };
            if ip != h.ip || h.proto != IPPROTO_TCP {
                return Err(OffloadError::GsoMismatch { kind });
            }
            if size == 0 {
                return Err(OffloadError::GsoSize);
            }
            let doff = usize::from(frame[h.l4_start + 12] >> 4) * 4;
            if doff < 20 || h.l4_start + doff > frame.len() {
                return Err(OffloadError::Truncated);
            }
            Some(Gso {
                ip,
                size,
                hdr_len: (h.l4_start + doff) as u16,
            })
        }
    };
    Ok(PacketMeta {
        csum: Checksum::Partial { start, offset },
        gso,
    })
}

/// Test frames and checks shared with the data-path tests.
#[cfg(test)]
pub mod testing {
    use super::*;

    /// An Ethernet + IPv4 + TCP frame with `payload`, checksums left zero.
    pub fn tcp4(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
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

    /// Whether the TCP/UDP checksum of `frame` verifies (pseudo-header included).
    pub fn verifies(frame: &[u8]) -> bool {
        let Ok(h) = parse_l4(frame) else {
            return false;
        };
        let sum = u64::from(pseudo_header_sum(frame, &h));
        fold(add_words(sum, &frame[h.l4_start..h.l4_start + h.l4_len])) == 0xffff
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::testing::{tcp4, verifies};
    use super::*;

    #[test]
    fn partial_then_completed_checksum_verifies() {
        for len in [0, 1, 7, 1000, 1460] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let mut f = tcp4(&payload);
            let h = parse_l4(&f).unwrap();
            assert_eq!((h.l4_start, h.l4_len, h.proto), (34, 20 + len, 6));
            let (s, o) = make_partial(&mut f, &h);
            assert_eq!((s, o), (34, 16));
            complete_checksum(&mut f, s, o).unwrap();
            assert!(verifies(&f), "payload of {len}");
        }
    }

    #[test]
    fn tx_meta_for_csum_blank_and_gso() {
        let mut f = tcp4(&[1u8; 3000]);
        f[50] = 0xde; // garbage in the checksum field: replaced
        let m = tx_meta(&mut f, true, false, Some((XEN_NETIF_GSO_TYPE_TCPV4, 1448))).unwrap();
        assert_eq!(
            m,
            PacketMeta {
                csum: Checksum::Partial {
                    start: 34,
                    offset: 16
                },
                gso: Some(Gso {
                    ip: IpVersion::V4,
                    size: 1448,
                    hdr_len: 54
                })
            }
        );
        let v = VnetHdr::from_meta(&m);
        assert_eq!(VnetHdr::from_bytes(&v.to_bytes()), v);
        assert_eq!(v.to_meta().unwrap(), m);
        let mut f = tcp4(&[1u8; 10]);
        assert_eq!(
            tx_meta(&mut f, false, true, None).unwrap().csum,
            Checksum::Validated
        );
    }

    #[test]
    fn lies_are_errors() {
        // Not IP.
        let mut f = vec![0u8; 60];
        assert_eq!(
            tx_meta(&mut f, true, false, None),
            Err(OffloadError::NotTcpUdp)
        );
        // IP length beyond the frame.
        let mut f = tcp4(&[0; 10]);
        f[16..18].copy_from_slice(&9000u16.to_be_bytes());
        assert_eq!(
            tx_meta(&mut f, true, false, None),
            Err(OffloadError::Truncated)
        );
        // IHL below 5, GSO of UDP type, mismatched version, size 0.
        let mut f = tcp4(&[0; 10]);
        f[14] = 0x44;
        assert!(tx_meta(&mut f, true, false, None).is_err());
        let mut f = tcp4(&[0; 10]);
        assert_eq!(
            tx_meta(&mut f, true, false, Some((7, 100))),
            Err(OffloadError::GsoType(7))
        );
        assert_eq!(
            tx_meta(&mut f, true, false, Some((XEN_NETIF_GSO_TYPE_TCPV6, 100))),
            Err(OffloadError::GsoMismatch { kind: 2 })
        );
        assert_eq!(
            tx_meta(&mut f, true, false, Some((XEN_NETIF_GSO_TYPE_TCPV4, 0))),
            Err(OffloadError::GsoSize)
        );
        // A checksum range outside the frame.
        let mut f = tcp4(&[]);
        assert!(complete_checksum(&mut f, 60, 16).is_err());
        assert!(complete_checksum(&mut f, 0xffff, 0xffff).is_err());
        // Unknown host GSO types.
        let h = VnetHdr {
            gso_type: 3,
            ..Default::default()
        };
        assert_eq!(h.to_meta(), Err(OffloadError::GsoType(3)));
    }

    #[test]
    fn every_truncation_of_a_frame_is_an_error_not_a_panic() {
        let f = tcp4(&[9u8; 40]);
        for n in 0..f.len() {
            let mut g = f[..n].to_vec();
            assert!(tx_meta(&mut g, true, false, Some((1, 100))).is_err());
        }
    }
}
