//! A network benchmark peer over the SDK's netfront and smoltcp (`rxen_guest::net`),
//! driven from the host by `rxen-bench` (bench/src/net_bench.rs). Command line:
//! `ip=A.B.C.D/N` (optional `gw=`) or `ip=dhcp`; `offload=0` turns the netfront's RX
//! offloads off (every frame arrives segmented and checksummed).
//!
//! Three TCP services, one connection each at a time:
//!
//! * port 5201, **sink**: reads everything; when the peer half-closes, answers the
//!   number of bytes it received (8 bytes, little-endian) and closes;
//! * port 5202, **source**: sends a pattern as fast as the peer takes it;
//! * port 5203, **echo**: sends back every byte it receives.
//!
//! Prints `netbench: ready on IP` once the address is set, and for every finished sink
//! stream `netbench: sink N bytes in F frames (B bytes per frame, E checksum errors)`
//! (large frames: the host hands over unsegmented TCP, see the SDK's RX offloads).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;

use rxen_guest::abi::PAGE_SIZE;
use rxen_guest::grant::{GrantTable, FIRST_FREE_REF};
use rxen_guest::net::{Config, IpConfig, NetStack, Netfront};
use rxen_guest::println;
use rxen_guest::xenstore::Xenstore;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;

rxen_guest::entry!(main);

#[repr(C, align(4096))]
struct Page([u8; PAGE_SIZE as usize]);

/// The grant table's frame.
static mut TABLE: Page = Page([0; PAGE_SIZE as usize]);

const SINK_PORT: u16 = 5201;
const SOURCE_PORT: u16 = 5202;
const ECHO_PORT: u16 = 5203;
/// Socket buffers of the bulk services (the TCP window).
const BULK_BUFFER: usize = 1 << 20;
/// The source's send buffer.
const SOURCE_BUFFER: usize = 256 << 10;

fn socket(rx: usize, tx: usize) -> tcp::Socket<'static> {
    tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; rx]),
        tcp::SocketBuffer::new(vec![0; tx]),
    )
}

/// Listens again once the previous connection is over.
fn relisten(s: &mut tcp::Socket, port: u16) {
    if !s.is_open() {
        s.abort();
        if let Err(e) = s.listen(port) {
            println!("netbench: listen {port}: {e:?}");
        }
    }
}

/// The sink's state: bytes received in the current stream, and whether the count
/// has been answered.
struct Sink {
    handle: SocketHandle,
    received: u64,
    answered: bool,
    /// RX frames and bytes counted by the device when the stream began.
    frames_at_start: (u64, u64),
}

impl Sink {
    fn step(&mut self, net: &mut NetStack) -> bool {
        let rx = net.device.stats().rx;
        let s = net.sockets.get_mut::<tcp::Socket>(self.handle);
        if !s.is_open() {
            self.received = 0;
            self.answered = false;
            self.frames_at_start = (rx.packets, rx.bytes);
            relisten(s, SINK_PORT);
            return false;
        }
        let mut progress = false;
        while s.can_recv() {
            match s.recv(|b| (b.len(), b.len())) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    self.received += n as u64;
                    progress = true;
                }
            }
        }
        if !s.may_recv()
            && s.state() == tcp::State::CloseWait
            && !self.answered
            && s.send_slice(&self.received.to_le_bytes()) == Ok(8)
        {
            let frames = rx.packets - self.frames_at_start.0;
            let bytes = rx.bytes - self.frames_at_start.1;
            println!(
                "netbench: sink {} bytes in {frames} frames ({} bytes per frame, {} checksum errors)",
                self.received,
                bytes / frames.max(1),
                rx.checksum_errors
            );
            self.answered = true;
            s.close();
            progress = true;
        }
        progress
    }
}

fn source(net: &mut NetStack, h: SocketHandle, pattern: &[u8]) -> bool {
    let s = net.sockets.get_mut::<tcp::Socket>(h);
    if !s.is_open() {
        relisten(s, SOURCE_PORT);
        return false;
    }
    if !s.may_recv() && s.state() == tcp::State::CloseWait {
        s.close();
        return true;
    }
    let mut progress = false;
    while s.can_send() {
        match s.send_slice(pattern) {
            Ok(0) | Err(_) => break,
            Ok(_) => progress = true,
        }
    }
    progress
}

fn echo(net: &mut NetStack, h: SocketHandle) -> bool {
    let s = net.sockets.get_mut::<tcp::Socket>(h);
    if !s.is_open() {
        relisten(s, ECHO_PORT);
        return false;
    }
    if !s.may_recv() && s.state() == tcp::State::CloseWait {
        s.close();
        return true;
    }
    let mut buf = [0u8; 2048];
    let room = s.send_capacity() - s.send_queue();
    let want = room.min(buf.len());
    match s.recv_slice(&mut buf[..want]) {
        Ok(n) if n > 0 => {
            let _ = s.send_slice(&buf[..n]);
            true
        }
        _ => false,
    }
}

fn main() {
    let ip = match IpConfig::from_cmdline() {
        Ok(ip) => ip,
        Err(e) => {
            println!("netbench: {e}");
            return;
        }
    };
    // SAFETY: TABLE is a page of the image used for nothing else.
    let grants = match unsafe { GrantTable::setup(core::ptr::addr_of!(TABLE) as u64 / PAGE_SIZE) } {
        Ok(g) => g,
        Err(e) => {
            println!("netbench: grant table setup failed: {e:?}");
            return;
        }
    };
    let mut xs = Xenstore::new();
    let Some(&devid) = Netfront::devices(&mut xs).first() else {
        println!("netbench: no vif (add vif = [ '...' ] to the domain's configuration)");
        return;
    };
    let config = Config {
        rx_offload: rxen_guest::start::cmdline_value("offload") != Some("0"),
        ..Config::default()
    };
    let nf = match Netfront::connect(&mut xs, &grants, FIRST_FREE_REF, devid, config) {
        Ok(nf) => nf,
        Err(e) => {
            println!("netbench: connecting vif {devid}: {e}");
            return;
        }
    };
    let mut net = NetStack::new(nf, ip);
    let mut sink = Sink {
        handle: net.sockets.add(socket(BULK_BUFFER, 64)),
        received: 0,
        answered: false,
        frames_at_start: (0, 0),
    };
    let source_h = net.sockets.add(socket(4096, SOURCE_BUFFER));
    let echo_h = net.sockets.add(socket(4096, 4096));
    let pattern: alloc::vec::Vec<u8> = (0..65536u32).map(|i| (i * 31 + 7) as u8).collect();
    let mut announced = false;
    loop {
        net.poll();
        if !announced {
            if let Some(a) = net.address() {
                println!("netbench: ready on {}", a.address());
                announced = true;
            }
        }
        let mut progress = sink.step(&mut net);
        progress |= source(&mut net, source_h, &pattern);
        progress |= echo(&mut net, echo_h);
        if !progress {
            net.wait();
        }
    }
}
