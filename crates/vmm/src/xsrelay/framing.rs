//! Message boundaries of the xenstore wire protocol (xs_wire.h: a 16-byte header of
//! type, request id, transaction id and payload length, then at most
//! `XENSTORE_PAYLOAD_MAX` bytes), just enough for the relay to know which requests
//! xenstored has not answered when its connection is lost.

/// Bytes of `struct xsd_sockmsg`.
pub const HEADER: usize = 16;
/// `XENSTORE_PAYLOAD_MAX`.
pub const PAYLOAD_MAX: usize = 4096;
/// `XS_WATCH_EVENT`: sent by xenstored unasked, answers no request.
pub const XS_WATCH_EVENT: u32 = 15;
/// `XS_ERROR`: the reply carrying an errno name.
pub const XS_ERROR: u32 = 16;

/// The header of one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: u32,
    pub req_id: u32,
    pub tx_id: u32,
    pub len: u32,
}

/// A header announcing more than [`PAYLOAD_MAX`] bytes: the stream cannot be trusted.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("message of {0} bytes is over the {PAYLOAD_MAX}-byte limit")]
pub struct Oversized(pub u32);

/// Splits a byte stream into whole messages; bytes of an incomplete one wait.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
}

impl Framer {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes waiting (of messages not yet whole).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Forgets an incomplete message.
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// The next whole message (header and its bytes, header included), if any.
    pub fn next_message(&mut self) -> Result<Option<(Header, Vec<u8>)>, Oversized> {
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        let w = |i: usize| {
            u32::from_le_bytes([
                self.buf[i],
                self.buf[i + 1],
                self.buf[i + 2],
                self.buf[i + 3],
            ])
        };
        let h = Header {
            kind: w(0),
            req_id: w(4),
            tx_id: w(8),
            len: w(12),
        };
        if h.len as usize > PAYLOAD_MAX {
            return Err(Oversized(h.len));
        }
        let total = HEADER + h.len as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        let msg: Vec<u8> = self.buf.drain(..total).collect();
        Ok(Some((h, msg)))
    }
}

/// An `XS_ERROR` reply to request `to` carrying `errno` (e.g. `"EIO"`).
pub fn error_reply(to: &Header, errno: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEADER + errno.len() + 1);
    for v in [XS_ERROR, to.req_id, to.tx_id, errno.len() as u32 + 1] {
        m.extend_from_slice(&v.to_le_bytes());
    }
    m.extend_from_slice(errno.as_bytes());
    m.push(0);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: u32, req: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        for v in [kind, req, 7, payload.len() as u32] {
            m.extend_from_slice(&v.to_le_bytes());
        }
        m.extend_from_slice(payload);
        m
    }

    #[test]
    fn splits_messages_across_pushes() {
        let mut f = Framer::default();
        let a = msg(2, 1, b"name\0");
        let b = msg(11, 2, b"data/x\0v");
        let mut all = a.clone();
        all.extend(&b);
        f.push(&all[..10]);
        assert_eq!(f.next_message(), Ok(None));
        f.push(&all[10..a.len() + 3]);
        let (h, m) = f.next_message().unwrap().unwrap();
        assert_eq!((h.kind, h.req_id, h.tx_id, m), (2, 1, 7, a.clone()));
        assert_eq!(f.next_message(), Ok(None));
        assert_eq!(f.pending(), 3);
        f.push(&all[a.len() + 3..]);
        assert_eq!(f.next_message().unwrap().unwrap().1, b);
        f.push(&msg(2, 3, &[0; PAYLOAD_MAX + 1])[..HEADER]);
        assert_eq!(f.next_message(), Err(Oversized(PAYLOAD_MAX as u32 + 1)));
    }

    #[test]
    fn error_replies_answer_their_request() {
        let h = Header {
            kind: 2,
            req_id: 9,
            tx_id: 4,
            len: 5,
        };
        let mut f = Framer::default();
        f.push(&error_reply(&h, "EIO"));
        let (r, m) = f.next_message().unwrap().unwrap();
        assert_eq!((r.kind, r.req_id, r.tx_id, r.len), (XS_ERROR, 9, 4, 4));
        assert_eq!(&m[HEADER..], b"EIO\0");
    }
}
