//! A small HTTP server over the SDK's netfront and smoltcp (`rxen_guest::net`), on
//! the domain's first vif. Command line (`key=value`):
//!
//! * `ip=A.B.C.D/N` (optional `gw=A.B.C.D`) or `ip=dhcp`: the interface's address.
//! * `port=N` (default 80): the port served.
//! * `get=IP[:PORT]/path`: also fetch that URL (retrying until it answers, for 60 s)
//!   and print `httpd: fetched STATUS BYTES bytes` (the body's length), or
//!   `httpd: fetch failed: why`; serving goes on either way.
//!
//! It serves `GET /` (a small HTML page), `GET /stats` (JSON: `requests` served
//! including this one, `rx_packets`, `rx_bytes`, `tx_packets`, `tx_bytes`,
//! `rx_dropped`, `tx_dropped`, `rx_errors`, `tx_errors`, `protocol_violations`,
//! `uptime_ms`), `GET /bytes/N` (N bytes of `x`, at most 1 GiB, generated as the
//! socket takes them: a bulk transfer for measurements) and 404 for any other path (405 for another method), on
//! [`SERVERS`] connections at once, with HTTP/1.1 keep-alive (`Connection: close`
//! and HTTP/1.0 close after the answer). Once the address is set it prints
//! `httpd: listening on IP:PORT`.
#![no_std]
#![no_main]

extern crate alloc;

mod fetch;
mod http;
mod serve;

use alloc::vec;
use alloc::vec::Vec;

use rxen_guest::abi::PAGE_SIZE;
use rxen_guest::grant::{GrantTable, FIRST_FREE_REF};
use rxen_guest::net::{Config, IpConfig, NetStack, Netfront};
use rxen_guest::xenstore::Xenstore;
use rxen_guest::{println, start, time};
use smoltcp::socket::tcp;

use fetch::{parse_target, Fetch};
use http::Server;
use serve::{serve, Conn};

rxen_guest::entry!(main);

#[repr(C, align(4096))]
struct Page([u8; PAGE_SIZE as usize]);

/// The grant table's frame.
static mut TABLE: Page = Page([0; PAGE_SIZE as usize]);

/// Connections served at once (listening sockets in the pool). smoltcp has no
/// backlog: a SYN that finds every socket busy is answered with a reset.
const SERVERS: usize = 16;
/// Socket buffers of a served connection: the send buffer bounds the bytes in
/// flight, so it is what limits a bulk answer's rate (measured on the test bridge: 16 KiB
/// about 20 MB/s, 256 KiB about 64 MB/s).
const SERVER_RX_BUFFER: usize = 16 * 1024;
const SERVER_TX_BUFFER: usize = 256 * 1024;

pub(crate) fn tcp_socket(rx: usize, tx: usize) -> tcp::Socket<'static> {
    tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; rx]),
        tcp::SocketBuffer::new(vec![0; tx]),
    )
}

fn main() {
    let port = match start::cmdline_value("port").map(str::parse::<u16>) {
        None => 80,
        Some(Ok(p)) if p > 0 => p,
        Some(_) => {
            println!("httpd: port= must be 1-65535");
            return;
        }
    };
    let ip = match IpConfig::from_cmdline() {
        Ok(ip) => ip,
        Err(e) => {
            println!("httpd: {e}");
            return;
        }
    };
    let target = match start::cmdline_value("get") {
        None => None,
        Some(t) => match parse_target(t) {
            Some(t) => Some(t),
            None => {
                println!("httpd: get={t}: expected IP[:PORT]/path");
                return;
            }
        },
    };
    // SAFETY: TABLE is a page of the image used for nothing else.
    let grants = match unsafe { GrantTable::setup(core::ptr::addr_of!(TABLE) as u64 / PAGE_SIZE) } {
        Ok(g) => g,
        Err(e) => {
            println!("httpd: grant table setup failed: {e:?}");
            return;
        }
    };
    let mut xs = Xenstore::new();
    let Some(&devid) = Netfront::devices(&mut xs).first() else {
        println!("httpd: no vif (add vif = [ '...' ] to the domain's configuration)");
        return;
    };
    let nf = match Netfront::connect(&mut xs, &grants, FIRST_FREE_REF, devid, Config::default()) {
        Ok(nf) => nf,
        Err(e) => {
            println!("httpd: connecting vif {devid}: {e}");
            return;
        }
    };
    let m = nf.mac();
    println!(
        "httpd: {} connected, mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        nf.path(),
        m[0],
        m[1],
        m[2],
        m[3],
        m[4],
        m[5]
    );
    let mut net = NetStack::new(nf, ip);
    let mut server = Server {
        port,
        requests: 0,
        started_ns: time::now_ns(),
    };
    let mut conns: Vec<Conn> = (0..SERVERS)
        .map(|_| {
            Conn::new(
                net.sockets
                    .add(tcp_socket(SERVER_RX_BUFFER, SERVER_TX_BUFFER)),
            )
        })
        .collect();
    let mut fetch = target.map(|t| Fetch::new(&mut net, t));
    let mut announced = false;
    loop {
        net.poll();
        if !announced {
            if let Some(a) = net.address() {
                println!("httpd: listening on {}:{}", a.address(), port);
                announced = true;
            }
        }
        let mut progress = false;
        for c in &mut conns {
            progress |= serve(&mut net, &mut server, c);
        }
        if let Some(f) = &mut fetch {
            progress |= f.step(&mut net);
        }
        if !progress {
            net.wait();
        }
    }
}
