//! The `get=IP[:PORT]/path` client: one connection attempt at a time until one
//! gets a whole answer or the deadline passes.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::net::Ipv4Addr;
use core::str::FromStr;

use rxen_guest::net::NetStack;
use rxen_guest::{println, time};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;

use crate::tcp_socket;

/// How long the `get=` client keeps trying.
const FETCH_DEADLINE_NS: u64 = 60_000_000_000;
/// How long one connection attempt of the client may take.
const ATTEMPT_NS: u64 = 2_000_000_000;

/// Where `get=` fetches from.
pub(crate) struct Target {
    ip: Ipv4Addr,
    port: u16,
    path: String,
}

pub(crate) fn parse_target(s: &str) -> Option<Target> {
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
pub(crate) enum FetchState {
    Idle,
    Connecting,
    Reading,
    Done,
}

/// The `get=` client: one attempt at a time, until one gets an answer.
pub(crate) struct Fetch {
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
    pub(crate) fn new(net: &mut NetStack, target: Target) -> Self {
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
    pub(crate) fn step(&mut self, net: &mut NetStack) -> bool {
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
