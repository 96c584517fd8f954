//! The TCP/IP stack over the frontend: a smoltcp [`Interface`] on a [`Netfront`], its
//! socket set, the address from [`IpConfig`] (fixed, or leased by smoltcp's DHCPv4
//! socket), and the loop's two halves: [`NetStack::poll`] (run the stack, publish what
//! it queued with one notify) and [`NetStack::wait`] (block the vCPU on the event
//! channel, at most until the stack's next timer).

use alloc::vec::Vec;

use smoltcp::iface::{Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::socket::dhcpv4;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Cidr};

use super::config::IpConfig;
use super::netfront::Netfront;
use crate::{events, hypercall, time};

/// Egress passes one [`NetStack::poll`] makes at most (each sends up to one packet
/// per socket).
const MAX_EGRESS_PASSES: usize = 256;

/// Longest a [`NetStack::wait`] blocks when the stack has no timer pending.
const MAX_WAIT_NS: u64 = 1_000_000_000;

/// The stack's clock: system time since the domain started.
pub fn now() -> Instant {
    Instant::from_micros((time::now_ns() / 1000) as i64)
}

/// The interface, its device and its sockets.
pub struct NetStack<'g> {
    pub device: Netfront<'g>,
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    dhcp: Option<SocketHandle>,
    address: Option<Ipv4Cidr>,
    gateway: Option<core::net::Ipv4Addr>,
}

impl<'g> NetStack<'g> {
    /// Builds the interface on `device` with the device's MAC and configures it as
    /// `ip` says (a DHCP socket is added for [`IpConfig::Dhcp`]).
    pub fn new(mut device: Netfront<'g>, ip: IpConfig) -> Self {
        let mac = device.mac();
        let mut config =
            smoltcp::iface::Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        // SAFETY: rdtsc is allowed at CPL 3 and has no memory effects.
        let tsc = unsafe { core::arch::x86_64::_rdtsc() };
        config.random_seed =
            tsc ^ u64::from_le_bytes([mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], 0, 0]);
        let iface = Interface::new(config, &mut device, now());
        let mut stack = Self {
            device,
            iface,
            sockets: SocketSet::new(Vec::new()),
            dhcp: None,
            address: None,
            gateway: None,
        };
        match ip {
            IpConfig::Static { address, gateway } => stack.configure(Some(address), gateway),
            IpConfig::Dhcp => {
                let h = stack.sockets.add(dhcpv4::Socket::new());
                stack.dhcp = Some(h);
            }
        }
        stack
    }

    fn configure(&mut self, address: Option<Ipv4Cidr>, gateway: Option<core::net::Ipv4Addr>) {
        self.iface.update_ip_addrs(|addrs| {
            addrs.clear();
            if let Some(a) = address {
                let _ = addrs.push(IpCidr::Ipv4(a));
            }
        });
        match gateway {
            Some(gw) => {
                let _ = self.iface.routes_mut().add_default_ipv4_route(gw);
            }
            None => {
                self.iface.routes_mut().remove_default_ipv4_route();
            }
        }
        self.address = address;
        self.gateway = gateway;
    }

    /// The interface's address, once it has one.
    pub fn address(&self) -> Option<Ipv4Cidr> {
        self.address
    }

    /// The default gateway, if any.
    pub fn gateway(&self) -> Option<core::net::Ipv4Addr> {
        self.gateway
    }

    /// Runs the stack once: received frames in, timers, frames out; then publishes
    /// the batch (one notify) and takes DHCP's news. True if sockets may have changed.
    pub fn poll(&mut self) -> bool {
        let mut result = self.iface.poll(now(), &mut self.device, &mut self.sockets);
        // smoltcp sends at most one packet per socket per egress pass: keep passing
        // while packets go out (and the TX ring has room), so that a batch of segments
        // is published with one notification instead of one each.
        for _ in 0..MAX_EGRESS_PASSES {
            if self
                .iface
                .poll_egress(now(), &mut self.device, &mut self.sockets)
                != PollResult::SocketStateChanged
            {
                break;
            }
            result = PollResult::SocketStateChanged;
        }
        self.device.push();
        if let Some(h) = self.dhcp {
            match self.sockets.get_mut::<dhcpv4::Socket>(h).poll() {
                Some(dhcpv4::Event::Configured(c)) => {
                    let (address, router) = (c.address, c.router);
                    self.configure(Some(address), router);
                }
                Some(dhcpv4::Event::Deconfigured) => self.configure(None, None),
                None => {}
            }
        }
        result == PollResult::SocketStateChanged
    }

    /// Blocks the vCPU until the device's event channel fires, responses wait, or the
    /// stack's next timer (`poll_delay`, at most a second) is due.
    pub fn wait(&mut self) {
        let delay_ns = self
            .iface
            .poll_delay(now(), &self.sockets)
            .map_or(MAX_WAIT_NS, |d| d.total_micros().saturating_mul(1000))
            .min(MAX_WAIT_NS);
        self.wait_ns(delay_ns);
    }

    /// Blocks the vCPU until the device's event channel fires, responses wait, or
    /// `ns` nanoseconds passed.
    pub fn wait_ns(&mut self, ns: u64) {
        let port = self.device.port();
        let deadline = time::now_ns().saturating_add(ns);
        loop {
            if events::take_fired(port) || self.device.responses_pending() {
                return;
            }
            if time::now_ns() >= deadline {
                return;
            }
            time::set_timer(deadline);
            hypercall::block();
            events::dispatch();
        }
    }
}
