//! One served connection: read the request head, answer it (keep-alive or close),
//! listen again once the connection is gone.

use alloc::string::String;
use alloc::vec::Vec;

use rxen_guest::net::NetStack;
use rxen_guest::println;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;

use crate::http::{answer, respond, Server};

/// A request head longer than this is refused (431) and the connection closed.
pub(crate) const MAX_REQUEST_HEAD: usize = 8192;

/// One served connection: the request bytes read so far and the answer being sent.
pub(crate) struct Conn {
    handle: SocketHandle,
    request: Vec<u8>,
    answer: Vec<u8>,
    sent: usize,
    /// Body bytes of a `/bytes/N` answer still to generate after `answer`.
    stream_left: u64,
    close_after: bool,
}

impl Conn {
    /// A connection served on socket `handle`.
    pub(crate) fn new(handle: SocketHandle) -> Self {
        Conn {
            handle,
            request: Vec::new(),
            answer: Vec::new(),
            sent: 0,
            stream_left: 0,
            close_after: false,
        }
    }

    fn reset(&mut self) {
        self.request.clear();
        self.answer.clear();
        self.sent = 0;
        self.stream_left = 0;
        self.close_after = false;
    }
}

/// Moves one served connection on; true if it did anything.
pub(crate) fn serve(net: &mut NetStack, server: &mut Server, c: &mut Conn) -> bool {
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
