//! The server's HTTP: the request head's line and `Connection`, the answers to
//! `/`, `/stats`, `/bytes/N` and the rest.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use rxen_guest::net::NetStack;
use rxen_guest::time;

/// Largest `/bytes/N` answer (1 GiB).
pub(crate) const MAX_STREAM: u64 = 1 << 30;

/// What the server counted.
pub(crate) struct Server {
    pub(crate) port: u16,
    pub(crate) requests: u64,
    pub(crate) started_ns: u64,
}

/// A request's line and whether the connection stays open after the answer.
pub(crate) struct Request<'a> {
    method: &'a str,
    path: &'a str,
    keep_alive: bool,
}

pub(crate) fn parse_head(head: &str) -> Option<Request<'_>> {
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

pub(crate) fn head(status: &str, content_type: &str, length: u64, keep_alive: bool) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\nConnection: {}\r\nServer: rxen-httpd\r\n\r\n",
        if keep_alive { "keep-alive" } else { "close" }
    )
}

pub(crate) fn answer(status: &str, content_type: &str, body: &str, keep_alive: bool) -> Vec<u8> {
    let mut a = head(status, content_type, body.len() as u64, keep_alive).into_bytes();
    a.extend_from_slice(body.as_bytes());
    a
}

pub(crate) fn page(net: &NetStack) -> String {
    let addr = net
        .address()
        .map(|a| format!("{}", a.address()))
        .unwrap_or_default();
    format!(
        "<!DOCTYPE html>\n<html><head><title>rxen httpd</title></head><body>\n<h1>Hello from an rxen guest</h1>\n<p>This page was served by <code>httpd</code>, a unikernel on rxen's guest SDK: Xen's netfront and smoltcp, at {addr}.</p>\n<p>Counters: <a href=\"/stats\">/stats</a></p>\n</body></html>\n"
    )
}

pub(crate) fn stats_json(net: &NetStack, server: &Server) -> String {
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
pub(crate) struct Answer {
    pub(crate) bytes: Vec<u8>,
    pub(crate) keep_alive: bool,
    pub(crate) stream: u64,
}

/// Builds the answer to the request head `request_head`.
pub(crate) fn respond(net: &NetStack, server: &mut Server, request_head: &str) -> Answer {
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
