//! The data path against a synthetic frontend (no KVM, no TAP): a real guest RAM and
//! grant table, TX and RX ring pages and data pages granted to domain 0, and a
//! recording stand-in for the TAP. Honest packets go both ways; lying ones (pages
//! left, sizes, chains, grants, indices) are dropped with error responses or stop the
//! vif, never a panic.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;

use rxen_abi::grant_table::{GTF_PERMIT_ACCESS, GTF_READONLY};
use rxen_abi::netif::*;
use rxen_abi::PAGE_SIZE;
use zerocopy::{FromBytes, IntoBytes};

use super::connection::Io;
use super::offload::testing::{tcp4, verifies};
use super::offload::{Checksum, Gso, IpVersion, PacketMeta};
use super::ring::RingError;
use super::rx::{RxOffload, RxQueue, RxRing};
use super::tap::FrameIo;
use super::tx::TxRing;
use crate::grant::{GrantTable, DOM0};
use crate::memory::GuestRam;

const GUEST: u16 = 9;
const TABLE_PFN: u64 = 0x600;
const TX_PFN: u64 = 0x700;
const RX_PFN: u64 = 0x701;
const DATA_PFN: u64 = 0x710;
const TX_GREF: u32 = 1;
const RX_GREF: u32 = 2;
/// gref `DATA_GREF + i` grants page `DATA_PFN + i` (i < 20).
const DATA_GREF: u32 = 10;
const RO_GREF: u32 = 40;

#[derive(Default)]
struct Host {
    sent: Vec<Vec<u8>>,
    sent_meta: Vec<PacketMeta>,
    incoming: VecDeque<(PacketMeta, Vec<u8>)>,
}

impl Host {
    fn incoming(&mut self, frame: Vec<u8>) {
        self.incoming.push_back((PacketMeta::default(), frame));
    }
}

impl FrameIo for Host {
    fn send(&mut self, meta: &PacketMeta, frame: &[u8]) {
        self.sent.push(frame.to_vec());
        self.sent_meta.push(*meta);
    }
    fn recv(&mut self, buf: &mut [u8]) -> Option<(usize, PacketMeta)> {
        let (meta, f) = self.incoming.pop_front()?;
        buf[..f.len()].copy_from_slice(&f);
        Some((f.len(), meta))
    }
}

struct Front {
    ram: Arc<GuestRam>,
    grants: GrantTable,
    tx_prod: u32,
    rx_prod: u32,
}

fn grant(ram: &GuestRam, gref: u32, frame: u64, flags: u16) {
    let at = TABLE_PFN * PAGE_SIZE + u64::from(gref) * 8;
    ram.atomic_u32(at + 4).unwrap().store(frame as u32, SeqCst);
    ram.atomic_u32(at)
        .unwrap()
        .store(u32::from(flags) | u32::from(DOM0) << 16, SeqCst);
}

fn setup() -> Front {
    let ram = Arc::new(GuestRam::new("net", 16 << 20).unwrap());
    let grants = GrantTable::new(ram.clone(), GUEST);
    grants.place_frame(0, TABLE_PFN).unwrap();
    grant(&ram, TX_GREF, TX_PFN, GTF_PERMIT_ACCESS);
    grant(&ram, RX_GREF, RX_PFN, GTF_PERMIT_ACCESS);
    for i in 0..20 {
        grant(
            &ram,
            DATA_GREF + i,
            DATA_PFN + u64::from(i),
            GTF_PERMIT_ACCESS,
        );
    }
    grant(
        &ram,
        RO_GREF,
        DATA_PFN + 20,
        GTF_PERMIT_ACCESS | GTF_READONLY,
    );
    for pfn in [TX_PFN, RX_PFN] {
        // SHARED_RING_INIT: indices 0, events 1.
        ram.atomic_u32(pfn * PAGE_SIZE + 4)
            .unwrap()
            .store(1, SeqCst);
        ram.atomic_u32(pfn * PAGE_SIZE + 12)
            .unwrap()
            .store(1, SeqCst);
    }
    Front {
        ram,
        grants,
        tx_prod: 0,
        rx_prod: 0,
    }
}

impl Front {
    fn io(&self, rx_sg: bool) -> Io {
        self.io_with(RxOffload {
            sg: rx_sg,
            ..RxOffload::default()
        })
    }

    fn io_with(&self, rx_offload: RxOffload) -> Io {
        Io {
            tx: TxRing::new(self.grants.map(DOM0, TX_GREF, false).unwrap()),
            rx: RxRing::new(self.grants.map(DOM0, RX_GREF, false).unwrap()),
            queue: RxQueue::default(),
            rx_offload,
            name: "test-vif".into(),
            tx_dropped: 0,
        }
    }

    fn push_tx(&mut self, req: &NetifTxRequest) {
        let slot = TX_PFN * PAGE_SIZE + 64 + u64::from(self.tx_prod % 256) * 12;
        self.ram.write(slot, req.as_bytes()).unwrap();
        self.tx_prod = self.tx_prod.wrapping_add(1);
    }

    fn publish_tx(&self) {
        self.ram
            .atomic_u32(TX_PFN * PAGE_SIZE)
            .unwrap()
            .store(self.tx_prod, SeqCst);
    }

    fn tx_response(&self, idx: u32) -> NetifTxResponse {
        let mut b = [0u8; 4];
        self.ram
            .read(TX_PFN * PAGE_SIZE + 64 + u64::from(idx % 256) * 12, &mut b)
            .unwrap();
        NetifTxResponse::read_from_bytes(&b).unwrap()
    }

    fn post_rx(&mut self, id: u16, gref: u32) {
        let req = NetifRxRequest { id, pad: 0, gref };
        let slot = RX_PFN * PAGE_SIZE + 64 + u64::from(self.rx_prod % 256) * 8;
        self.ram.write(slot, req.as_bytes()).unwrap();
        self.rx_prod = self.rx_prod.wrapping_add(1);
        self.ram
            .atomic_u32(RX_PFN * PAGE_SIZE)
            .unwrap()
            .store(self.rx_prod, SeqCst);
    }

    fn rx_response(&self, idx: u32) -> NetifRxResponse {
        let mut b = [0u8; 8];
        self.ram
            .read(RX_PFN * PAGE_SIZE + 64 + u64::from(idx % 256) * 8, &mut b)
            .unwrap();
        NetifRxResponse::read_from_bytes(&b).unwrap()
    }

    fn rsp_prod(&self, pfn: u64) -> u32 {
        self.ram
            .atomic_u32(pfn * PAGE_SIZE + 8)
            .unwrap()
            .load(SeqCst)
    }

    fn page(&self, i: u64, off: u64, data: &[u8]) {
        self.ram
            .write((DATA_PFN + i) * PAGE_SIZE + off, data)
            .unwrap();
    }

    fn read_page(&self, i: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.ram.read((DATA_PFN + i) * PAGE_SIZE, &mut b).unwrap();
        b
    }
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

fn tx(gref: u32, offset: u16, flags: u16, id: u16, size: u16) -> NetifTxRequest {
    NetifTxRequest {
        gref,
        offset,
        flags,
        id,
        size,
    }
}

#[test]
fn tx_single_and_chained_packets_reach_the_host() {
    let mut f = setup();
    let mut io = f.io(false);
    let mut host = Host::default();
    let mut buf = vec![0u8; super::rx::MAX_FRAME];
    let a = frame(60, 1);
    f.page(0, 100, &a);
    f.push_tx(&tx(DATA_GREF, 100, 0, 7, 60));
    // A 5000-byte packet in three fragments: 3000 + 1500 + 500.
    let b = frame(5000, 2);
    f.page(1, 96, &b[..3000]);
    f.page(2, 0, &b[3000..4500]);
    f.page(3, 2000, &b[4500..]);
    f.push_tx(&tx(DATA_GREF + 1, 96, NETTXF_MORE_DATA, 8, 5000));
    f.push_tx(&tx(DATA_GREF + 2, 0, NETTXF_MORE_DATA, 9, 1500));
    f.push_tx(&tx(DATA_GREF + 3, 2000, 0, 10, 500));
    f.publish_tx();
    let (tx_notify, _) = io.pass(&f.grants, &mut host, &mut buf).unwrap();
    assert!(tx_notify);
    assert_eq!(host.sent, vec![a, b]);
    assert_eq!(f.rsp_prod(TX_PFN), 4);
    for (i, id) in [7, 8, 9, 10].into_iter().enumerate() {
        assert_eq!(
            f.tx_response(i as u32),
            NetifTxResponse {
                id,
                status: NETIF_RSP_OKAY
            }
        );
    }
}

#[test]
fn tx_chain_is_left_until_complete() {
    let mut f = setup();
    let mut io = f.io(false);
    let mut host = Host::default();
    let mut buf = vec![0u8; super::rx::MAX_FRAME];
    f.page(0, 0, &frame(100, 3));
    f.page(1, 0, &frame(100, 4));
    f.push_tx(&tx(DATA_GREF, 0, NETTXF_MORE_DATA, 1, 200));
    f.publish_tx();
    io.pass(&f.grants, &mut host, &mut buf).unwrap();
    assert!(host.sent.is_empty());
    assert_eq!(f.rsp_prod(TX_PFN), 0);
    f.push_tx(&tx(DATA_GREF + 1, 0, 0, 2, 100));
    f.publish_tx();
    io.pass(&f.grants, &mut host, &mut buf).unwrap();
    assert_eq!(host.sent.len(), 1);
    assert_eq!(host.sent[0].len(), 200);
}

#[test]
fn tx_lies_drop_the_packet_only() {
    let mut f = setup();
    let mut io = f.io(false);
    let mut host = Host::default();
    let mut buf = vec![0u8; super::rx::MAX_FRAME];
    // Leaves its page.
    f.push_tx(&tx(DATA_GREF, 4000, 0, 1, 200));
    // Fragments larger than the packet.
    f.push_tx(&tx(DATA_GREF, 0, NETTXF_MORE_DATA, 2, 100));
    f.push_tx(&tx(DATA_GREF + 1, 0, 0, 3, 200));
    // A grant the guest never made.
    f.push_tx(&tx(999, 0, 0, 4, 60));
    // Shorter than an Ethernet header.
    f.push_tx(&tx(DATA_GREF, 0, 0, 5, 10));
    // An honest one after all that.
    f.page(4, 0, &frame(64, 9));
    f.push_tx(&tx(DATA_GREF + 4, 0, 0, 6, 64));
    f.publish_tx();
    io.pass(&f.grants, &mut host, &mut buf).unwrap();
    assert_eq!(host.sent, vec![frame(64, 9)]);
    // Four packets: ids 2 and 3 are one chain.
    assert_eq!(io.tx_dropped, 4);
    let st: Vec<(u16, i16)> = (0..6)
        .map(|i| {
            let r = f.tx_response(i);
            (r.id, r.status)
        })
        .collect();
    assert_eq!(
        st,
        vec![
            (1, NETIF_RSP_ERROR),
            (2, NETIF_RSP_ERROR),
            (3, NETIF_RSP_ERROR),
            (4, NETIF_RSP_ERROR),
            (5, NETIF_RSP_ERROR),
            (6, NETIF_RSP_OKAY)
        ]
    );
}

#[test]
fn tx_overlong_chain_and_extra_info() {
    let mut f = setup();
    let mut io = f.io(false);
    let mut host = Host::default();
    let mut buf = vec![0u8; super::rx::MAX_FRAME];
    for i in 0..30u16 {
        f.push_tx(&tx(DATA_GREF, 0, NETTXF_MORE_DATA, i, 64));
    }
    f.push_tx(&tx(DATA_GREF, 0, 0, 30, 64));
    // A packet with one extra-info slot (answered NETIF_RSP_NULL).
    f.page(5, 0, &frame(80, 5));
    f.push_tx(&tx(DATA_GREF + 5, 0, NETTXF_EXTRA_INFO, 40, 80));
    f.push_tx(&tx(0, 0, 0, 0, 0));
    f.publish_tx();
    io.pass(&f.grants, &mut host, &mut buf).unwrap();
    // Nothing of the 31-slot chain goes out (its tail parts are bogus packets).
    assert_eq!(host.sent, vec![frame(80, 5)]);
    assert_eq!(f.rsp_prod(TX_PFN), 33);
    assert_eq!(f.tx_response(0).status, NETIF_RSP_ERROR);
    assert_eq!(f.tx_response(31).id, 40);
    assert_eq!(f.tx_response(31).status, NETIF_RSP_OKAY);
    assert_eq!(f.tx_response(32).status, NETIF_RSP_NULL);
}

#[test]
fn tx_ring_overflow_stops_the_vif() {
    let mut f = setup();
    let mut io = f.io(false);
    let mut host = Host::default();
    let mut buf = vec![0u8; super::rx::MAX_FRAME];
    f.tx_prod = 1000;
    f.publish_tx();
    assert!(matches!(
        io.pass(&f.grants, &mut host, &mut buf),
        Err(RingError::Overflow { .. })
    ));
}

#[test]
fn rx_frames_fill_posted_buffers() {
    let mut f = setup();
    let mut io = f.io(true);
    let mut host = Host::default();
    let mut buf = vec![0u8; super::rx::MAX_FRAME];
    let small = frame(60, 1);
    let big = frame(6000, 2);
    host.incoming(small.clone());
    host.incoming(big.clone());
    // No buffers yet: the frames wait, and req_event asks for one.
    let (_, rx_notify) = io.pass(&f.grants, &mut host, &mut buf).unwrap();
    assert!(!rx_notify);
    assert_eq!(io.queue.len(), 2);
    let req_event = f
        .ram
        .atomic_u32(RX_PFN * PAGE_SIZE + 4)
        .unwrap()
        .load(SeqCst);
    assert_eq!(req_event, 1);
    f.post_rx(100, DATA_GREF);
    f.post_rx(101, DATA_GREF + 1);
    // The big frame needs two buffers: after the first frame it waits again.
    let (_, rx_notify) = io.pass(&f.grants, &mut host, &mut buf).unwrap();
    assert!(rx_notify);
    assert_eq!(io.queue.len(), 1);
    assert_eq!(
        f.rx_response(0),
        NetifRxResponse {
            id: 100,
            offset: 0,
            flags: 0,
            status: 60
        }
    );
    assert_eq!(f.read_page(0, 60), small);
    f.post_rx(102, DATA_GREF + 2);
    io.pass(&f.grants, &mut host, &mut buf).unwrap();
    assert!(io.queue.is_empty());
    assert_eq!(f.rsp_prod(RX_PFN), 3);
    let r1 = f.rx_response(1);
    let r2 = f.rx_response(2);
    assert_eq!((r1.id, r1.flags, r1.status), (101, NETRXF_MORE_DATA, 4096));
    assert_eq!((r2.id, r2.flags, r2.status), (102, 0, 6000 - 4096));
    let mut got = f.read_page(1, 4096);
    got.extend(f.read_page(2, 6000 - 4096));
    assert_eq!(got, big);
}

#[test]
fn rx_without_sg_drops_big_frames_and_bad_grants_error() {
    let mut f = setup();
    let mut io = f.io(false);
    let mut host = Host::default();
    let mut buf = vec![0u8; super::rx::MAX_FRAME];
    host.incoming(frame(5000, 1));
    host.incoming(frame(60, 2));
    host.incoming(frame(60, 3));
    f.post_rx(1, RO_GREF);
    f.post_rx(2, DATA_GREF);
    io.pass(&f.grants, &mut host, &mut buf).unwrap();
    assert_eq!(f.rsp_prod(RX_PFN), 2);
    assert_eq!(f.rx_response(0).status, NETIF_RSP_ERROR);
    assert_eq!(f.rx_response(1).status, 60);
    assert_eq!(f.read_page(0, 60), frame(60, 3));
    assert_eq!(io.queue.dropped, 2);
    assert_eq!(io.queue.delivered, 1);
}

/// A 3000-byte TCP packet in two fragments, `csum_blank` and a GSO extra-info slot: the
/// host gets it with a partial checksum (the pseudo-header sum rewritten, whatever the
/// guest left) and the segmentation request; the extra slot is answered NETIF_RSP_NULL.
#[test]
fn tx_checksum_and_segmentation_offload_reach_the_host() {
    let mut f = setup();
    let mut io = f.io(false);
    let mut host = Host::default();
    let mut buf = vec![0u8; super::rx::MAX_FRAME];
    let mut p = tcp4(&frame(3000 - 54, 3));
    p[50] = 0xaa; // garbage in the checksum field
    f.page(0, 0, &p[..2000]);
    f.page(1, 0, &p[2000..]);
    f.push_tx(&tx(
        DATA_GREF,
        0,
        NETTXF_CSUM_BLANK | NETTXF_MORE_DATA | NETTXF_EXTRA_INFO,
        1,
        3000,
    ));
    let gso = NetifExtraInfo::gso(1448, XEN_NETIF_GSO_TYPE_TCPV4, 0);
    let mut slot = NetifTxRequest::default();
    slot.as_mut_bytes()[..8].copy_from_slice(gso.as_bytes());
    f.push_tx(&slot);
    f.push_tx(&tx(DATA_GREF + 1, 0, 0, 2, 1000));
    // A csum_blank packet that is not TCP/UDP: dropped.
    f.page(2, 0, &frame(100, 1));
    f.push_tx(&tx(DATA_GREF + 2, 0, NETTXF_CSUM_BLANK, 3, 100));
    // A checked one.
    let q = tcp4(b"hello");
    f.page(3, 0, &q);
    f.push_tx(&tx(
        DATA_GREF + 3,
        0,
        NETTXF_DATA_VALIDATED,
        4,
        q.len() as u16,
    ));
    f.publish_tx();
    io.pass(&f.grants, &mut host, &mut buf).unwrap();
    assert_eq!(host.sent.len(), 2);
    assert_eq!(
        host.sent_meta[0],
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
    let mut sent = host.sent[0].clone();
    assert_ne!(sent[50], 0xaa);
    super::offload::complete_checksum(&mut sent, 34, 16).unwrap();
    assert!(verifies(&sent));
    assert_eq!(host.sent_meta[1].csum, Checksum::Validated);
    let st: Vec<(u16, i16)> = (0..5)
        .map(|i| {
            let r = f.tx_response(i);
            (r.id, r.status)
        })
        .collect();
    assert_eq!(
        st,
        vec![
            (1, NETIF_RSP_OKAY),
            (0, NETIF_RSP_NULL),
            (2, NETIF_RSP_OKAY),
            (3, NETIF_RSP_ERROR),
            (4, NETIF_RSP_OKAY)
        ]
    );
    assert_eq!(io.tx_dropped, 1);
}

fn partial(frame: &mut [u8]) -> PacketMeta {
    let h = super::offload::parse_l4(frame).unwrap();
    let (start, offset) = super::offload::make_partial(frame, &h);
    PacketMeta {
        csum: Checksum::Partial { start, offset },
        gso: None,
    }
}

/// A partially checksummed host frame goes as is, flagged csum_blank, to a frontend
/// that takes partial checksums, and completed (and flagged validated) to one that
/// does not.
#[test]
fn rx_partial_checksums_flagged_or_completed() {
    for takes_partial in [true, false] {
        let mut f = setup();
        let mut io = f.io_with(RxOffload {
            csum_v4: takes_partial,
            ..RxOffload::default()
        });
        let mut host = Host::default();
        let mut buf = vec![0u8; super::rx::MAX_FRAME];
        let mut p = tcp4(&frame(500, 8));
        let meta = partial(&mut p);
        host.incoming.push_back((meta, p.clone()));
        f.post_rx(1, DATA_GREF);
        io.pass(&f.grants, &mut host, &mut buf).unwrap();
        let r = f.rx_response(0);
        let got = f.read_page(0, p.len());
        if takes_partial {
            assert_eq!(r.flags, NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED);
            assert_eq!(got, p);
        } else {
            assert_eq!(r.flags, NETRXF_DATA_VALIDATED);
            assert!(verifies(&got));
        }
    }
}

/// An unsegmented 6000-byte TCP frame goes to a GSO frontend as data, the GSO extra
/// slot, data; a frontend without GSO never gets it (dropped, counted).
#[test]
fn rx_gso_frames_carry_an_extra_info_slot() {
    let gso_front = RxOffload {
        sg: true,
        csum_v4: true,
        gso_v4: true,
        ..RxOffload::default()
    };
    for offload in [
        gso_front,
        RxOffload {
            gso_v4: false,
            ..gso_front
        },
    ] {
        let mut f = setup();
        let mut io = f.io_with(offload);
        let mut host = Host::default();
        let mut buf = vec![0u8; super::rx::MAX_FRAME];
        let mut p = tcp4(&frame(6000 - 54, 4));
        let mut meta = partial(&mut p);
        meta.gso = Some(Gso {
            ip: IpVersion::V4,
            size: 1448,
            hdr_len: 54,
        });
        host.incoming.push_back((meta, p.clone()));
        host.incoming(frame(60, 1));
        for i in 0..4 {
            f.post_rx(10 + i, DATA_GREF + u32::from(i));
        }
        io.pass(&f.grants, &mut host, &mut buf).unwrap();
        if !offload.gso_v4 {
            assert_eq!(io.queue.dropped, 1);
            assert_eq!(f.rx_response(0).status, 60);
            continue;
        }
        assert_eq!(f.rsp_prod(RX_PFN), 4);
        let r0 = f.rx_response(0);
        assert_eq!(
            (r0.id, r0.flags, r0.status),
            (
                10,
                NETRXF_MORE_DATA | NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED | NETRXF_EXTRA_INFO,
                4096
            )
        );
        let extra = NetifExtraInfo::read_from_bytes(f.rx_response(1).as_bytes()).unwrap();
        assert_eq!(extra.kind, XEN_NETIF_EXTRA_TYPE_GSO);
        assert_eq!(extra.gso_fields(), (1448, XEN_NETIF_GSO_TYPE_TCPV4));
        let r2 = f.rx_response(2);
        assert_eq!((r2.id, r2.flags, r2.status), (12, 0, 6000 - 4096));
        let mut got = f.read_page(0, 4096);
        got.extend(f.read_page(2, 6000 - 4096));
        assert_eq!(got, p);
        assert_eq!(f.rx_response(3).status, 60);
    }
}

fn any_meta() -> impl proptest::strategy::Strategy<Value = PacketMeta> {
    use proptest::prelude::*;
    (
        0u8..3,
        any::<u16>(),
        any::<u16>(),
        proptest::option::of((any::<bool>(), any::<u16>(), any::<u16>())),
    )
        .prop_map(|(c, start, offset, gso)| PacketMeta {
            csum: match c {
                0 => Checksum::Unverified,
                1 => Checksum::Validated,
                _ => Checksum::Partial { start, offset },
            },
            gso: gso.map(|(v6, size, hdr_len)| Gso {
                ip: if v6 { IpVersion::V6 } else { IpVersion::V4 },
                size,
                hdr_len,
            }),
        })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Garbage on both rings (any slots, any producer index, any grant refs, flags and
    /// extra-info slots) and any host frames with any offload state: the data path
    /// answers, drops or stops the vif, and never panics.
    #[test]
    fn any_ring_contents_and_host_frames_never_panic(
        tx_slots in proptest::collection::vec(proptest::prelude::any::<[u8; 12]>(), 0..40),
        // Never the ring pages themselves (grefs 1 and 2): a guest that posts its own
        // ring page as a buffer garbles only its own ring, which the last check reads.
        rx_slots in proptest::collection::vec((proptest::prelude::any::<u16>(), 3u32..48), 0..40),
        frames in proptest::collection::vec(
            (any_meta(), proptest::collection::vec(proptest::prelude::any::<u8>(), 0..9000)),
            0..6,
        ),
        tcp_payload in 0usize..6000,
        offload in (proptest::prelude::any::<[bool; 5]>()),
    ) {
        let mut f = setup();
        let mut io = f.io_with(RxOffload {
            sg: offload[0],
            csum_v4: offload[1],
            csum_v6: offload[2],
            gso_v4: offload[3],
            gso_v6: offload[4],
        });
        let mut host = Host::default();
        let mut buf = vec![0u8; super::rx::MAX_FRAME];
        for (i, s) in tx_slots.iter().enumerate() {
            f.page((i % 20) as u64, 0, &tcp4(&frame(tcp_payload.min(4000), i as u8)));
            let req = NetifTxRequest::read_from_bytes(s).unwrap();
            // Mostly grants that exist, so that packets get past the copy.
            let req = NetifTxRequest {
                gref: if req.gref % 4 == 0 { req.gref } else { DATA_GREF + req.gref % 20 },
                ..req
            };
            f.push_tx(&req);
        }
        f.publish_tx();
        for (id, gref) in rx_slots {
            f.post_rx(id, gref);
        }
        for (meta, bytes) in frames {
            host.incoming.push_back((meta, bytes));
        }
        let mut p = tcp4(&frame(tcp_payload, 1));
        let meta = partial(&mut p);
        host.incoming.push_back((meta, p));
        for _ in 0..3 {
            if io.pass(&f.grants, &mut host, &mut buf).is_err() {
                break;
            }
        }
        let done = f.rsp_prod(TX_PFN).min(40);
        for i in 0..done {
            let st = f.tx_response(i).status;
            proptest::prop_assert!([NETIF_RSP_OKAY, NETIF_RSP_ERROR, NETIF_RSP_NULL].contains(&st));
        }
    }
}
