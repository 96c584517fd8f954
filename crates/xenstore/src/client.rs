//! A small blocking xenstore client (for rxen's own tools, tests and benchmarks).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::wire::{Decoder, Message, MsgType, HEADER_LEN};

/// Errors of a client call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("xenstore I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("xenstored replied {0}")]
    Xs(String),
    #[error("protocol: {0}")]
    Protocol(String),
}

/// A connection to xenstored.
pub struct Client {
    stream: UnixStream,
    decoder: Decoder,
    events: VecDeque<(String, String)>,
    req_id: u32,
    /// Receive buffer, kept across replies: zeroing a fresh one for each reply was most
    /// of the client's work per request.
    rbuf: Vec<u8>,
}

/// Bytes one `read` of the socket may take.
const RECV_CHUNK: usize = 8192;

impl Client {
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        Ok(Client {
            stream: UnixStream::connect(path)?,
            decoder: Decoder::default(),
            events: VecDeque::new(),
            req_id: 0,
            rbuf: vec![0; RECV_CHUNK],
        })
    }

    fn read_message(&mut self) -> Result<Message, ClientError> {
        loop {
            if let Some(m) = self
                .decoder
                .next_message()
                .map_err(|e| ClientError::Protocol(e.to_string()))?
            {
                return Ok(m);
            }
            let n = self.stream.read(&mut self.rbuf)?;
            if n == 0 {
                return Err(ClientError::Protocol("connection closed".into()));
            }
            self.decoder.push(&self.rbuf[..n]);
        }
    }

    /// Sends a request and waits for its reply (queueing watch events that arrive).
    pub fn request(
        &mut self,
        t: MsgType,
        tx: u32,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, ClientError> {
        self.req_id = self.req_id.wrapping_add(1);
        let m = Message::new(t as u32, self.req_id, tx, payload);
        self.stream.write_all(&m.to_bytes())?;
        loop {
            let r = self.read_message()?;
            if r.header.msg_type == MsgType::WatchEvent as u32 {
                self.queue_event(&r);
                continue;
            }
            if r.header.req_id != self.req_id {
                return Err(ClientError::Protocol(format!(
                    "reply for request {} while waiting for {}",
                    r.header.req_id, self.req_id
                )));
            }
            if r.header.msg_type == MsgType::Error as u32 {
                return Err(ClientError::Xs(
                    String::from_utf8_lossy(&r.payload)
                        .trim_end_matches('\0')
                        .to_string(),
                ));
            }
            return Ok(r.payload);
        }
    }

    fn queue_event(&mut self, r: &Message) {
        let f = r.fields();
        let s = |i: usize| {
            f.get(i)
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        self.events.push_back((s(0), s(1)));
    }

    fn strings(parts: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for p in parts {
            v.extend_from_slice(p);
            v.push(0);
        }
        v
    }

    pub fn read(&mut self, tx: u32, path: &str) -> Result<Vec<u8>, ClientError> {
        self.request(MsgType::Read, tx, Self::strings(&[path.as_bytes()]))
    }

    pub fn write(&mut self, tx: u32, path: &str, value: &[u8]) -> Result<(), ClientError> {
        let mut p = path.as_bytes().to_vec();
        p.push(0);
        p.extend_from_slice(value);
        self.request(MsgType::Write, tx, p).map(|_| ())
    }

    pub fn mkdir(&mut self, tx: u32, path: &str) -> Result<(), ClientError> {
        self.request(MsgType::Mkdir, tx, Self::strings(&[path.as_bytes()]))
            .map(|_| ())
    }

    pub fn rm(&mut self, tx: u32, path: &str) -> Result<(), ClientError> {
        self.request(MsgType::Rm, tx, Self::strings(&[path.as_bytes()]))
            .map(|_| ())
    }

    pub fn directory(&mut self, tx: u32, path: &str) -> Result<Vec<String>, ClientError> {
        let r = self.request(MsgType::Directory, tx, Self::strings(&[path.as_bytes()]))?;
        Ok(crate::wire::split_fields(&r)
            .into_iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect())
    }

    pub fn set_perms(&mut self, tx: u32, path: &str, perms: &[&str]) -> Result<(), ClientError> {
        let mut parts: Vec<&[u8]> = vec![path.as_bytes()];
        parts.extend(perms.iter().map(|p| p.as_bytes()));
        self.request(MsgType::SetPerms, tx, Self::strings(&parts))
            .map(|_| ())
    }

    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), ClientError> {
        self.request(
            MsgType::Watch,
            0,
            Self::strings(&[path.as_bytes(), token.as_bytes()]),
        )
        .map(|_| ())
    }

    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<(), ClientError> {
        self.request(
            MsgType::Unwatch,
            0,
            Self::strings(&[path.as_bytes(), token.as_bytes()]),
        )
        .map(|_| ())
    }

    /// Starts a transaction; returns its id.
    pub fn transaction_start(&mut self) -> Result<u32, ClientError> {
        let r = self.request(MsgType::TransactionStart, 0, vec![0])?;
        String::from_utf8_lossy(&r)
            .trim_end_matches('\0')
            .parse()
            .map_err(|_| ClientError::Protocol("bad transaction id".into()))
    }

    /// Ends a transaction (commit or abort). A conflict is `Xs("EAGAIN")`.
    pub fn transaction_end(&mut self, tx: u32, commit: bool) -> Result<(), ClientError> {
        self.request(
            MsgType::TransactionEnd,
            tx,
            if commit {
                b"T\0".to_vec()
            } else {
                b"F\0".to_vec()
            },
        )
        .map(|_| ())
    }

    pub fn introduce(&mut self, domid: u32, mfn: u64, evtchn: u32) -> Result<(), ClientError> {
        let (d, m, e) = (domid.to_string(), mfn.to_string(), evtchn.to_string());
        self.request(
            MsgType::Introduce,
            0,
            Self::strings(&[d.as_bytes(), m.as_bytes(), e.as_bytes()]),
        )
        .map(|_| ())
    }

    pub fn release(&mut self, domid: u32) -> Result<(), ClientError> {
        self.request(
            MsgType::Release,
            0,
            Self::strings(&[domid.to_string().as_bytes()]),
        )
        .map(|_| ())
    }

    /// The next watch event `(path, token)`, waiting for one if none is queued.
    pub fn next_event(&mut self) -> Result<(String, String), ClientError> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(e);
            }
            let m = self.read_message()?;
            if m.header.msg_type == MsgType::WatchEvent as u32 {
                self.queue_event(&m);
            } else {
                return Err(ClientError::Protocol(format!(
                    "unexpected message type {}",
                    m.header.msg_type
                )));
            }
        }
    }

    /// Sends raw bytes (robustness tests).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// Reads one raw message (robustness tests).
    pub fn read_raw(&mut self) -> Result<Message, ClientError> {
        self.read_message()
    }

    /// Sets a read timeout.
    pub fn set_timeout(&self, t: Option<std::time::Duration>) -> Result<(), ClientError> {
        self.stream.set_read_timeout(t)?;
        Ok(())
    }
}

const _: () = assert!(HEADER_LEN == 16);
