//! Networking for SDK guests: the frontend of Xen's split network driver
//! (xen/include/public/io/netif.h) and smoltcp as the TCP/IP stack over it.
//!
//! * [`netfront`]: xenbus negotiation and the device ([`Netfront`]): one TX and one RX
//!   ring, one event channel, RX pages kept posted (`request-rx-copy`), TX frames in
//!   granted pages, batches published with one notify.
//! * [`device`]: smoltcp's `phy::Device` for [`Netfront`].
//! * [`config`]: `ip=A.B.C.D/N gw=A.B.C.D` or `ip=dhcp` from the command line.
//! * [`stack`]: the interface, its sockets and the poll/wait loop ([`NetStack`]).
//!
//! Values read from the shared rings are read once and checked; a backend that lies
//! gets its frames dropped and counted ([`NetStats`]), never a crash.
//!
//! ```ignore
//! let mut xs = Xenstore::new();
//! let nf = Netfront::connect(&mut xs, &grants, FIRST_FREE_REF, 0, Config::default())?;
//! let mut net = NetStack::new(nf, IpConfig::from_cmdline()?);
//! loop {
//!     net.poll();
//!     // use net.sockets ...
//!     net.wait();
//! }
//! ```

pub mod config;
pub mod device;
pub mod netfront;
mod ring;
pub mod rx;
pub mod stack;
pub mod tx;

pub use config::{IpConfig, IpConfigError};
pub use netfront::{Config, NetError, NetStats, Netfront};
pub use stack::NetStack;

/// One page.
pub(crate) const PAGE: usize = rxen_abi::PAGE_SIZE as usize;
