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
pub use rxen_netcsum::{
    add_words, complete_checksum, fold, make_partial, parse_l4, pseudo_header_sum, IpVersion,
    L4Headers,
};
use rxen_netcsum::{ChecksumError, IPPROTO_TCP};

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

/// Why a frame's offload request cannot be honoured.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OffloadError {
    #[error("checksum offload: {0}")]
    Checksum(#[from] ChecksumError),
    #[error("GSO of type {0} is not supported")]
    GsoType(u8),
    #[error("GSO type {kind} does not match the frame's protocol")]
    GsoMismatch { kind: u8 },
    #[error("GSO segment size 0")]
    GsoSize,
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
                return Err(ChecksumError::Truncated.into());
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
    pub use rxen_netcsum::testing::tcp4;

    /// Whether the TCP/UDP checksum of `frame` verifies (pseudo-header included).
    pub fn verifies(frame: &[u8]) -> bool {
        rxen_netcsum::verify(frame) == Ok(true)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::testing::tcp4;
    use super::*;

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
            Err(OffloadError::Checksum(ChecksumError::NotTcpUdp))
        );
        // IP length beyond the frame.
        let mut f = tcp4(&[0; 10]);
        f[16..18].copy_from_slice(&9000u16.to_be_bytes());
        assert_eq!(
            tx_meta(&mut f, true, false, None),
            Err(OffloadError::Checksum(ChecksumError::Truncated))
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
