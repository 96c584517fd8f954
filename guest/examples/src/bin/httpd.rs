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

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::net::Ipv4Addr;
use core::str::FromStr;

use rxen_guest::abi::PAGE_SIZE;
use rxen_guest::grant::{GrantTable, FIRST_FREE_REF};
use rxen_guest::net::{Config, IpConfig, NetStack, Netfront};
use rxen_guest::xenstore::Xenstore;
use rxen_guest::{println, start, time};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;

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
/// A request head longer than this is refused (431) and the connection closed.
const MAX_REQUEST_HEAD: usize = 8192;
/// Largest `/bytes/N` answer (1 GiB).
const MAX_STREAM: u64 = 1 << 30;
/// How long the `get=` client keeps trying.
const FETCH_DEADLINE_NS: u64 = 60_000_000_000;
/// How long one connection attempt of the client may take.
const ATTEMPT_NS: u64 = 2_000_000_000;

fn tcp_socket(rx: usize, tx: usize) -> tcp::Socket<'static> {
    tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; rx]),
        tcp::SocketBuffer::new(vec![0; tx]),
    )
}

/// One served connection: the request bytes read so far and the answer being sent.
struct Conn {
    handle: SocketHandle,
    request: Vec<u8>,
    answer: Vec<u8>,
    sent: usize,
    /// Body bytes of a `/bytes/N` answer still to generate after `answer`.
    stream_left: u64,
    close_after: bool,
}

impl Conn {
    fn reset(&mut self) {
        self.request.clear();
        self.answer.clear();
        self.sent = 0;
        self.stream_left = 0;
        self.close_after = false;
    }
}

/// What the server counted.
struct Server {
    port: u16,
    requests: u64,
    started_ns: u64,
}

/// A request's line and whether the connection stays open after the answer.
struct Request<'a> {
    method: &'a str,
    path: &'a str,
    keep_alive: bool,
}

fn parse_head(head: &str) -> Option<Request<'_>> {
    let mut lines = head.split("\r\n");
    let mut words = lines.next()?.split(' ');
    let (method, path, version) = (words.next()?, words.next()?, words.next()?);
    let mut keep_alive = version == "HTTP/1.1";
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("connection") {
                let value = value.trim();
                if value.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if value.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    Some(Request {
        method,
        path,
        keep_alive,
    })
}

fn head(status: &str, content_type: &str, length: u64, keep_alive: bool) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\nConnection: {}\r\nServer: rxen-httpd\r\n\r\n",
        if keep_alive { "keep-alive" } else { "close" }
    )
}

fn answer(status: &str, content_type: &str, body: &str, keep_alive: bool) -> Vec<u8> {
    let mut a = head(status, content_type, body.len() as u64, keep_alive).into_bytes();
    a.extend_from_slice(body.as_bytes());
    a
}

fn page(net: &NetStack) -> String {
    let addr = net
        .address()
        .map(|a| format!("{}", a.address()))
        .unwrap_or_default();
    format!(
        "<!DOCTYPE html>\n<html><head><title>rxen httpd</title></head><body>\n<h1>Hello from an rxen guest</h1>\n<p>This page was served by <code>httpd</code>, a unikernel on rxen's guest SDK: Xen's netfront and smoltcp, at {addr}.</p>\n<p>Counters: <a href=\"/stats\">/stats</a></p>\n</body></html>\n"
    )
}

fn stats_json(net: &NetStack, server: &Server) -> String {
    let s = net.device.stats();
    format!(
        "{{\"requests\":{},\"rx_packets\":{},\"rx_bytes\":{},\"tx_packets\":{},\"tx_bytes\":{},\"rx_dropped\":{},\"tx_dropped\":{},\"rx_errors\":{},\"tx_errors\":{},\"protocol_violations\":{},\"uptime_ms\":{}}}\n",
        server.requests,
        s.rx.packets,
        s.rx.bytes,
        s.tx.packets,
        s.tx.bytes,
        s.rx.dropped,
        s.tx.dropped,
        s.rx.errors,
        s.tx.errors,
        s.rx.protocol_violations + s.tx.protocol_violations,
        time::now_ns().saturating_sub(server.started_ns) / 1_000_000
    )
}

/// An answer: its head (and small body), whether the connection stays open, and
/// the length of a generated body that follows.
struct Answer {
    bytes: Vec<u8>,
    keep_alive: bool,
    stream: u64,
}

/// Builds the answer to the request head `request_head`.
fn respond(net: &NetStack, server: &mut Server, request_head: &str) -> Answer {
    let Some(req) = parse_head(request_head) else {
        return Answer {
            bytes: answer("400 Bad Request", "text/plain", "bad request\n", false),
            keep_alive: false,
            stream: 0,
        };
    };
    if req.method != "GET" {
        return Answer {
            bytes: answer(
                "405 Method Not Allowed",
                "text/plain",
                "only GET\n",
                req.keep_alive,
            ),
            keep_alive: req.keep_alive,
            stream: 0,
        };
    }
    server.requests += 1;
    let path = req.path.split('?').next().unwrap_or("");
    if let Some(n) = path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|&n| n <= MAX_STREAM)
    {
        return Answer {
            bytes: head("200 OK", "application/octet-stream", n, req.keep_alive).into_bytes(),
            keep_alive: req.keep_alive,
            stream: n,
        };
    }
    let bytes = match path {
        "/" => answer("200 OK", "text/html", &page(net), req.keep_alive),
        "/stats" => answer(
            "200 OK",
            "application/json",
            &stats_json(net, server),
            req.keep_alive,
        ),
        _ => answer("404 Not Found", "text/plain", "not found\n", req.keep_alive),
    };
    Answer {
        bytes,
        keep_alive: req.keep_alive,
        stream: 0,
    }
}

/// Moves one served connection on; true if it did anything.
fn serve(net: &mut NetStack, server: &mut Server, c: &mut Conn) -> bool {
    let mut progress = false;
    let sock = net.sockets.get_mut::<tcp::Socket>(c.handle);
    if !sock.is_open() {
        c.reset();
        if sock.listen(server.port).is_err() {
            println!("httpd: cannot listen on port {}", server.port);
        }
        return false;
    }
    if sock.can_recv() && c.answer.is_empty() {
        let room = MAX_REQUEST_HEAD + 1 - c.request.len().min(MAX_REQUEST_HEAD);
        let request = &mut c.request;
        let _ = sock.recv(|buf| {
            let n = buf.len().min(room);
            request.extend_from_slice(&buf[..n]);
            (n, ())
        });
        progress = true;
    }
    if c.answer.is_empty() {
        if let Some(end) = c.request.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&c.request[..end]).into_owned();
            c.request.drain(..end + 4);
            let a = respond(net, server, &head);
            c.answer = a.bytes;
            c.stream_left = a.stream;
            c.close_after = !a.keep_alive;
            progress = true;
        } else if c.request.len() > MAX_REQUEST_HEAD {
            c.answer = answer(
                "431 Request Header Fields Too Large",
                "text/plain",
                "request head too large\n",
                false,
            );
            c.close_after = true;
            c.request.clear();
        }
    }
    let sock = net.sockets.get_mut::<tcp::Socket>(c.handle);
    if !c.answer.is_empty() && sock.can_send() {
        if c.sent < c.answer.len() {
            if let Ok(n) = sock.send_slice(&c.answer[c.sent..]) {
                c.sent += n;
                progress |= n > 0;
            }
        }
        if c.sent == c.answer.len() && c.stream_left > 0 {
            let left = c.stream_left;
            if let Ok(n) = sock.send(|buf| {
                let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                buf[..n].fill(b'x');
                (n, n)
            }) {
                c.stream_left -= n as u64;
                progress |= n > 0;
            }
        }
        if c.sent == c.answer.len() && c.stream_left == 0 {
            c.answer.clear();
            c.sent = 0;
            if c.close_after {
                sock.close();
            }
        }
    }
    // The client closed its side: close ours once everything is answered.
    if c.answer.is_empty() && !sock.may_recv() && sock.state() == tcp::State::CloseWait {
        sock.close();
    }
    progress
}

/// Where `get=` fetches from.
struct Target {
    ip: Ipv4Addr,
    port: u16,
    path: String,
}

fn parse_target(s: &str) -> Option<Target> {
    let (host, path) = match s.find('/') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "/"),
    };
    let (ip, port) = match host.split_once(':') {
        Some((ip, port)) => (ip, port.parse().ok()?),
        None => (host, 80),
    };
    Some(Target {
        ip: Ipv4Addr::from_str(ip).ok()?,
        port,
        path: String::from(path),
    })
}

#[derive(PartialEq, Eq)]
enum FetchState {
    Idle,
    Connecting,
    Reading,
    Done,
}

/// The `get=` client: one attempt at a time, until one gets an answer.
struct Fetch {
    target: Target,
    handle: SocketHandle,
    state: FetchState,
    response: Vec<u8>,
    local_port: u16,
    attempt_started: u64,
    next_try: u64,
    deadline: u64,
}

impl Fetch {
    fn new(net: &mut NetStack, target: Target) -> Self {
        let handle = net.sockets.add(tcp_socket(16384, 4096));
        let now = time::now_ns();
        Fetch {
            target,
            handle,
            state: FetchState::Idle,
            response: Vec::new(),
            local_port: 49152 + (now % 1000) as u16,
            attempt_started: 0,
            next_try: 0,
            deadline: now + FETCH_DEADLINE_NS,
        }
    }

    /// Gives up this attempt; the next starts in 200 ms.
    fn retry_later(&mut self, now: u64) {
        self.state = FetchState::Idle;
        self.response.clear();
        self.next_try = now + 200_000_000;
    }

    /// Moves the fetch on; true if it did anything.
    fn step(&mut self, net: &mut NetStack) -> bool {
        let now = time::now_ns();
        if self.state == FetchState::Done {
            return false;
        }
        if now > self.deadline {
            println!(
                "httpd: fetch failed: no answer from {}:{} in {} s",
                self.target.ip,
                self.target.port,
                FETCH_DEADLINE_NS / 1_000_000_000
            );
            net.sockets.get_mut::<tcp::Socket>(self.handle).abort();
            self.state = FetchState::Done;
            return true;
        }
        let configured = net.address().is_some();
        let cx = net.iface.context();
        let sock = net.sockets.get_mut::<tcp::Socket>(self.handle);
        match self.state {
            FetchState::Idle => {
                if !configured || now < self.next_try || sock.is_open() {
                    return false;
                }
                self.local_port = if self.local_port >= 65000 {
                    49152
                } else {
                    self.local_port + 1
                };
                if sock
                    .connect(cx, (self.target.ip, self.target.port), self.local_port)
                    .is_err()
                {
                    self.next_try = now + 200_000_000;
                    return false;
                }
                self.attempt_started = now;
                self.state = FetchState::Connecting;
                true
            }
            FetchState::Connecting => {
                if sock.may_send() {
                    let req = format!(
                        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                        self.target.path, self.target.ip
                    );
                    let _ = sock.send_slice(req.as_bytes());
                    self.state = FetchState::Reading;
                    true
                } else if !sock.is_open() || now - self.attempt_started > ATTEMPT_NS {
                    sock.abort();
                    self.retry_later(now);
                    true
                } else {
                    false
                }
            }
            FetchState::Reading => {
                let mut progress = false;
                while sock.can_recv() {
                    let response = &mut self.response;
                    let _ = sock.recv(|buf| {
                        response.extend_from_slice(buf);
                        (buf.len(), ())
                    });
                    progress = true;
                }
                if sock.may_recv() && sock.is_open() {
                    return progress;
                }
                // The server closed (or reset) the connection: the answer is whole.
                sock.close();
                match self.report() {
                    Some(line) => {
                        println!("{line}");
                        self.state = FetchState::Done;
                    }
                    None => self.retry_later(now),
                }
                true
            }
            FetchState::Done => false,
        }
    }

    /// `httpd: fetched STATUS BYTES bytes` for a whole answer, else None.
    fn report(&self) -> Option<String> {
        let end = self.response.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = core::str::from_utf8(&self.response[..end]).ok()?;
        let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
        let body = self.response.len() - end - 4;
        Some(format!("httpd: fetched {status} {body} bytes"))
    }
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
        .map(|_| Conn {
            handle: net
                .sockets
                .add(tcp_socket(SERVER_RX_BUFFER, SERVER_TX_BUFFER)),
            request: Vec::new(),
            answer: Vec::new(),
            sent: 0,
            stream_left: 0,
            close_after: false,
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
