//! The netif frontend device: xenbus negotiation with the backend (netif.h "Frontend
//! XenBus Nodes") and the two rings, one event channel for both.
//!
//! [`Netfront::connect`] reads `backend`, `backend-id` and `mac` from
//! `device/vif/<devid>`, waits for the backend's InitWait, grants both ring pages
//! (read-write) and the buffers (RX read-write, TX read-only), allocates the event
//! channel, posts every RX buffer, writes `tx-ring-ref`, `rx-ring-ref`,
//! `event-channel`, `request-rx-copy`=1, `feature-rx-notify`=1 and what it takes on
//! RX, enters Initialised, waits for Connected and enters Connected. With
//! [`Config::rx_offload`] (the default) it takes frames over several buffers
//! (`feature-sg`=1), partial checksums (`feature-no-csum-offload`=0) and unsegmented
//! TCP over IPv4 (`feature-gso-tcpv4`=1): the host then hands over up to 64 KiB per
//! frame, and [`super::rx`] completes partial checksums before the stack sees them.
//! Without it, `feature-no-csum-offload`=1 and every frame arrives finished.

use alloc::format;
use alloc::string::{String, ToString};

use rxen_abi::netif::{NETIF_RX_SLOT_SIZE, NETIF_TX_SLOT_SIZE, NET_RX_RING_SIZE, NET_TX_RING_SIZE};

use super::ring::FrontRing;
use super::rx::{RxQueue, RxStats};
use super::tx::{TxQueue, TxStats};
use super::PAGE;
use crate::events::{self, Port};
use crate::frontend::{pfn_of, STATE_CONNECTED, STATE_INITIALISED, STATE_INIT_WAIT};
use crate::grant::GrantTable;
use crate::xenstore::Xenstore;

/// Why the device could not be brought up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetError {
    /// xenstore failed, or a node is missing or garbled.
    Store(String),
    /// The backend did not reach a state in time, or closed.
    Backend(String),
    /// A hypercall failed (errno).
    Hypercall(i32),
    /// No memory for the rings or the buffers.
    NoMemory,
    /// The configuration asks for something impossible.
    BadConfig(&'static str),
}

impl core::fmt::Display for NetError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            NetError::Store(s) => write!(f, "xenstore: {s}"),
            NetError::Backend(s) => write!(f, "backend: {s}"),
            NetError::Hypercall(e) => write!(f, "hypercall failed: errno {e}"),
            NetError::NoMemory => write!(f, "out of memory"),
            NetError::BadConfig(s) => write!(f, "bad configuration: {s}"),
        }
    }
}

/// Buffers of the device.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// RX pages kept posted: a power of two, at most 256 (the ring's slots).
    pub rx_buffers: u32,
    /// TX pages (frames in flight at most), at most 256.
    pub tx_buffers: u32,
    /// Ask for checksum and segmentation offload on RX (large frames, partial
    /// checksums completed by the frontend).
    pub rx_offload: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            rx_buffers: 128,
            tx_buffers: 128,
            rx_offload: true,
        }
    }
}

impl Config {
    /// Grant references the device uses from its `first_ref` on (2 rings + buffers).
    pub fn grant_refs(&self) -> u32 {
        2 + self.rx_buffers + self.tx_buffers
    }
}

/// Counters of the device.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetStats {
    pub rx: RxStats,
    pub tx: TxStats,
}

/// A connected virtual network interface.
pub struct Netfront<'g> {
    pub(crate) rx: RxQueue,
    pub(crate) tx: TxQueue,
    port: Port,
    mac: [u8; 6],
    path: String,
    _grants: &'g GrantTable,
}

fn store_err(what: &str, e: impl core::fmt::Debug) -> NetError {
    NetError::Store(format!("{what}: {e:?}"))
}

fn read_str(xs: &mut Xenstore, path: &str) -> Result<String, NetError> {
    xs.read(path)
        .map(|v| v.trim_end_matches('\0').trim().to_string())
        .map_err(|e| store_err(path, e))
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

impl<'g> Netfront<'g> {
    /// The device numbers under `device/vif`.
    pub fn devices(xs: &mut Xenstore) -> alloc::vec::Vec<u32> {
        xs.directory("device/vif")
            .unwrap_or_default()
            .iter()
            .filter_map(|d| d.parse().ok())
            .collect()
    }

    /// Connects vif `devid`, using grant refs `first_ref ..
    /// first_ref + cfg.grant_refs()`.
    pub fn connect(
        xs: &mut Xenstore,
        grants: &'g GrantTable,
        first_ref: u32,
        devid: u32,
        cfg: Config,
    ) -> Result<Self, NetError> {
        if !cfg.rx_buffers.is_power_of_two() || cfg.rx_buffers > NET_RX_RING_SIZE as u32 {
            return Err(NetError::BadConfig("rx_buffers: a power of two up to 256"));
        }
        if cfg.tx_buffers == 0 || cfg.tx_buffers > NET_TX_RING_SIZE as u32 {
            return Err(NetError::BadConfig("tx_buffers: 1 to 256"));
        }
        let path = format!("device/vif/{devid}");
        let backend = read_str(xs, &format!("{path}/backend"))?;
        let backend_id: u16 = read_str(xs, &format!("{path}/backend-id"))?
            .parse()
            .map_err(|e| store_err("backend-id", e))?;
        let mac_text = read_str(xs, &format!("{path}/mac"))?;
        let mac = parse_mac(&mac_text)
            .ok_or_else(|| NetError::Store(format!("mac: {mac_text:?} is not a MAC")))?;
        frontend_wait(xs, &backend, STATE_INIT_WAIT)?;

        let tx_ref = first_ref;
        let rx_ref = first_ref + 1;
        let tx_page = frontend_alloc(1)?;
        let rx_page = frontend_alloc(1)?;
        // SAFETY: fresh zeroed pages, owned by the rings from here on.
        let (tx_ring, rx_ring) = unsafe {
            (
                FrontRing::init(tx_page, NETIF_TX_SLOT_SIZE, NET_TX_RING_SIZE as u32),
                FrontRing::init(rx_page, NETIF_RX_SLOT_SIZE, NET_RX_RING_SIZE as u32),
            )
        };
        grants.grant_access(tx_ref, backend_id, pfn_of(tx_page), false);
        grants.grant_access(rx_ref, backend_id, pfn_of(rx_page), false);

        let rx_buf_ref = first_ref + 2;
        let rx_bufs = frontend_alloc(cfg.rx_buffers as usize)?;
        for i in 0..cfg.rx_buffers {
            // SAFETY: page i of the RX buffer allocation.
            let p = unsafe { rx_bufs.add(i as usize * PAGE) };
            grants.grant_access(rx_buf_ref + i, backend_id, pfn_of(p), false);
        }
        let tx_buf_ref = rx_buf_ref + cfg.rx_buffers;
        let tx_bufs = frontend_alloc(cfg.tx_buffers as usize)?;
        for i in 0..cfg.tx_buffers {
            // SAFETY: page i of the TX buffer allocation.
            let p = unsafe { tx_bufs.add(i as usize * PAGE) };
            grants.grant_access(tx_buf_ref + i, backend_id, pfn_of(p), true);
        }
        let port = events::alloc_unbound(backend_id).map_err(|e| NetError::Hypercall(e.0))?;
        let mut rx = RxQueue::new(rx_ring, rx_bufs, cfg.rx_buffers, rx_buf_ref);
        let tx = TxQueue::new(tx_ring, tx_bufs, cfg.tx_buffers, tx_buf_ref);
        rx.refill();
        rx.publish();

        let nodes = [
            ("tx-ring-ref", tx_ref.to_string()),
            ("rx-ring-ref", rx_ref.to_string()),
            ("event-channel", port.to_string()),
            ("request-rx-copy", "1".to_string()),
            ("feature-rx-notify", "1".to_string()),
        ];
        let offload: &[(&str, &str)] = if cfg.rx_offload {
            &[
                ("feature-sg", "1"),
                ("feature-no-csum-offload", "0"),
                ("feature-gso-tcpv4", "1"),
            ]
        } else {
            &[("feature-no-csum-offload", "1")]
        };
        let nodes = nodes
            .into_iter()
            .chain(offload.iter().map(|(k, v)| (*k, v.to_string())));
        for (k, v) in nodes {
            xs.write(&format!("{path}/{k}"), &v)
                .map_err(|e| store_err(k, e))?;
        }
        xs.write(&format!("{path}/state"), &STATE_INITIALISED.to_string())
            .map_err(|e| store_err("state", e))?;
        frontend_wait(xs, &backend, STATE_CONNECTED)?;
        xs.write(&format!("{path}/state"), &STATE_CONNECTED.to_string())
            .map_err(|e| store_err("state", e))?;
        let mut nf = Self {
            rx,
            tx,
            port,
            mac,
            path,
            _grants: grants,
        };
        // The backend may have looked at the RX ring before it was bound: tell it.
        let _ = events::send(nf.port);
        nf.push();
        Ok(nf)
    }

    /// The interface's MAC address (from xenstore).
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The frontend's xenstore directory.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The event channel shared by both rings.
    pub fn port(&self) -> Port {
        self.port
    }

    /// Counters so far.
    pub fn stats(&self) -> NetStats {
        NetStats {
            rx: self.rx.stats,
            tx: self.tx.stats,
        }
    }

    /// Reposts consumed RX buffers and publishes both rings' new requests, with one
    /// notification for the batch if the backend asked for it.
    pub fn push(&mut self) {
        self.rx.refill();
        let notify_rx = self.rx.publish();
        let notify_tx = self.tx.publish();
        if notify_rx || notify_tx {
            let _ = events::send(self.port);
        }
    }

    /// Re-arms both rings' response events; true if responses already wait (then
    /// the caller must not block).
    pub fn responses_pending(&mut self) -> bool {
        let rx = self.rx.arm();
        let tx = self.tx.arm();
        rx || tx
    }

    /// Copies the next received frame into `out` (cleared first); false if none.
    pub fn receive_into(&mut self, out: &mut alloc::vec::Vec<u8>) -> bool {
        out.clear();
        if !self.rx.next_frame() {
            return false;
        }
        out.extend_from_slice(self.rx.frame());
        true
    }

    /// Queues `frame` for sending (published by [`push`](Self::push)); false when it
    /// was dropped (no free buffer, or larger than a page).
    pub fn send(&mut self, frame: &[u8]) -> bool {
        self.tx.reclaim();
        if frame.len() > PAGE || !self.tx.has_space() {
            self.tx.stats.dropped += 1;
            return false;
        }
        self.tx.send(frame.len(), |buf| buf.copy_from_slice(frame));
        true
    }
}

fn frontend_alloc(n: usize) -> Result<*mut u8, NetError> {
    crate::frontend::alloc_pages(n).ok_or(NetError::NoMemory)
}

fn frontend_wait(xs: &mut Xenstore, backend: &str, want: u32) -> Result<(), NetError> {
    crate::frontend::wait_state(xs, backend, want).map_err(NetError::Backend)
}
