//! The netback's offload parsing over arbitrary frames: a guest's TX packet with any
//! `csum_blank`/`data_validated` flags and GSO slot, a host frame's `virtio_net_hdr`,
//! and completing a partial checksum at any start and offset: nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rxen_vmm::netback::offload::{complete_checksum, tx_meta, VnetHdr, VNET_HDR_LEN};

fuzz_target!(|data: &[u8]| {
    if data.len() < VNET_HDR_LEN + 6 {
        return;
    }
    let (head, frame) = data.split_at(VNET_HDR_LEN + 6);
    let mut hdr = [0u8; VNET_HDR_LEN];
    hdr.copy_from_slice(&head[..VNET_HDR_LEN]);
    let h = VnetHdr::from_bytes(&hdr);
    let _ = h.to_meta();
    let flags = head[VNET_HDR_LEN];
    let gso = (flags & 4 != 0).then(|| {
        (
            head[VNET_HDR_LEN + 1],
            u16::from_le_bytes([head[VNET_HDR_LEN + 2], head[VNET_HDR_LEN + 3]]),
        )
    });
    let mut f = frame.to_vec();
    let _ = tx_meta(&mut f, flags & 1 != 0, flags & 2 != 0, gso);
    let mut g = frame.to_vec();
    let _ = complete_checksum(&mut g, h.csum_start, h.csum_offset);
});
