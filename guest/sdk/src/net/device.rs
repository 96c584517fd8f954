//! smoltcp's `phy::Device` over [`Netfront`]: a received frame is lent to the stack
//! straight from the frontend's reassembly buffer, a frame to send is built in a
//! granted TX page. Nothing is published here: [`Netfront::push`] after each poll of
//! the interface publishes the batch with one notification.

use smoltcp::phy::{Checksum, Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant;

use super::netfront::Netfront;
use super::rx::RxQueue;
use super::tx::TxQueue;

/// The largest Ethernet frame sent: a 1500-byte MTU and the 14-byte header.
pub const MAX_FRAME: usize = 1514;

/// A received frame lent to the stack.
pub struct NetRxToken<'a> {
    rx: &'a RxQueue,
}

/// A TX buffer for one frame.
pub struct NetTxToken<'a> {
    tx: &'a mut TxQueue,
}

impl RxToken for NetRxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(self.rx.frame())
    }
}

impl TxToken for NetTxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        self.tx.send(len, f)
    }
}

impl Device for Netfront<'_> {
    type RxToken<'a>
        = NetRxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = NetTxToken<'a>
    where
        Self: 'a;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        self.tx.reclaim();
        if !self.rx.next_frame() {
            return None;
        }
        Some((NetRxToken { rx: &self.rx }, NetTxToken { tx: &mut self.tx }))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        self.tx.reclaim();
        if !self.tx.has_space() {
            return None;
        }
        Some(NetTxToken { tx: &mut self.tx })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MAX_FRAME;
        // TCP and UDP checksums of received frames are completed, trusted or verified
        // by the frontend (rx.rs), which knows the backend's flags; the stack computes
        // them for what it sends.
        caps.checksum.tcp = Checksum::Tx;
        caps.checksum.udp = Checksum::Tx;
        caps
    }
}
