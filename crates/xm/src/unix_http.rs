//! A minimal HTTP/1.1 client for xend's API on a Unix socket (`XEND_URL=unix:///path`):
//! one request per connection (`Connection: close`), replies framed by
//! `Content-Length`, `Transfer-Encoding: chunked` or the end of the connection.
//!
//! It owns the wire format only; what the requests mean is `client`'s business.

use std::io::{self, BufRead, Read, Write};

/// Longest status or header line accepted.
const MAX_LINE: u64 = 16 * 1024;
/// Most header lines accepted in one reply.
const MAX_HEADERS: usize = 100;

/// Why a reply could not be understood.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("bad HTTP status line {0:?}")]
    BadStatusLine(String),
    #[error("bad HTTP header line {0:?}")]
    BadHeader(String),
    #[error("HTTP header line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("more than {MAX_HEADERS} HTTP header lines")]
    TooManyHeaders,
    #[error("bad Content-Length {0:?}")]
    BadContentLength(String),
    #[error("the connection closed before the reply's headers ended")]
    Truncated,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Writes one request; `body` is sent with a `Content-Length`.
pub fn write_request(
    w: &mut impl Write,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<()> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    w.write_all(body)?;
    w.flush()
}

/// One line without its CRLF (or LF); `None` at a clean end of the stream.
fn read_line(r: &mut impl BufRead) -> Result<Option<String>, HttpError> {
    let mut line = Vec::new();
    let n = r.by_ref().take(MAX_LINE + 1).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(if n as u64 > MAX_LINE {
            HttpError::LineTooLong
        } else {
            HttpError::Truncated
        });
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(Some(String::from_utf8_lossy(&line).into_owned()))
}

/// Reads a reply's status line and headers; the body is left in the returned reader.
pub fn read_response<R: BufRead>(mut r: R) -> Result<(u16, BodyReader<R>), HttpError> {
    let status_line = read_line(&mut r)?.ok_or(HttpError::Truncated)?;
    let mut parts = status_line.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let status: u16 = match (version.starts_with("HTTP/1."), code.parse()) {
        (true, Ok(s)) if (100..600).contains(&s) => s,
        _ => return Err(HttpError::BadStatusLine(status_line)),
    };
    let mut chunked = false;
    let mut length: Option<u64> = None;
    let mut count = 0;
    loop {
        let line = read_line(&mut r)?.ok_or(HttpError::Truncated)?;
        if line.is_empty() {
            break;
        }
        count += 1;
        if count > MAX_HEADERS {
            return Err(HttpError::TooManyHeaders);
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| HttpError::BadHeader(line.clone()))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse()
                    .map_err(|_| HttpError::BadContentLength(value.to_string()))?,
            );
        }
    }
    let body = if status == 204 || status == 304 || status < 200 {
        BodyReader::Length { inner: r, left: 0 }
    } else if chunked {
        BodyReader::Chunked(ChunkedReader::new(r))
    } else if let Some(left) = length {
        BodyReader::Length { inner: r, left }
    } else {
        BodyReader::ToEof(r)
    };
    Ok((status, body))
}

/// A reply's body, however it is framed.
pub enum BodyReader<R> {
    /// `Content-Length`: exactly `left` more bytes; an early end is an error.
    Length {
        inner: R,
        left: u64,
    },
    Chunked(ChunkedReader<R>),
    /// Neither: the body ends with the connection.
    ToEof(R),
}

impl<R: BufRead> Read for BodyReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            BodyReader::Length { inner, left } => {
                if *left == 0 || buf.is_empty() {
                    return Ok(0);
                }
                let max = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                let n = inner.read(&mut buf[..max])?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the reply ended {left} bytes before its Content-Length"),
                    ));
                }
                *left -= n as u64;
                Ok(n)
            }
            BodyReader::Chunked(c) => c.read(buf),
            BodyReader::ToEof(r) => r.read(buf),
        }
    }
}

/// Decodes `Transfer-Encoding: chunked` as the bytes arrive (xend's event stream is
/// an endless chunked reply).
pub struct ChunkedReader<R> {
    inner: R,
    /// Bytes left in the current chunk.
    left: u64,
    done: bool,
}

fn bad_chunk(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl<R: BufRead> ChunkedReader<R> {
    pub fn new(inner: R) -> Self {
        ChunkedReader {
            inner,
            left: 0,
            done: false,
        }
    }

    fn line(&mut self) -> io::Result<String> {
        match read_line(&mut self.inner) {
            Ok(Some(l)) => Ok(l),
            Ok(None) | Err(HttpError::Truncated) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the chunked reply ended early",
            )),
            Err(HttpError::Io(e)) => Err(e),
            Err(e) => Err(bad_chunk(e.to_string())),
        }
    }
}

impl<R: BufRead> Read for ChunkedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let line = self.line()?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(size, 16)
                .map_err(|_| bad_chunk(format!("bad chunk size line {line:?}")))?;
            if size == 0 {
                // Trailers, up to the empty line.
                while !self.line()?.is_empty() {}
                self.done = true;
                return Ok(0);
            }
            self.left = size;
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the chunked reply ended inside a chunk",
            ));
        }
        self.left -= n as u64;
        if self.left == 0 {
            let end = self.line()?;
            if !end.is_empty() {
                return Err(bad_chunk(format!("chunk not followed by CRLF: {end:?}")));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(raw: &[u8]) -> (u16, Result<Vec<u8>, io::Error>) {
        let (status, mut body) = read_response(raw).expect("headers");
        let mut out = Vec::new();
        let r = body.read_to_end(&mut out).map(|_| out);
        (status, r)
    }

    /// Feeds the reader one byte per read, as a slow socket would.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() || buf.is_empty() {
                return Ok(0);
            }
            buf[0] = self.0[0];
            self.0 = &self.0[1..];
            Ok(1)
        }
    }

    #[test]
    fn content_length_body() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}extra";
        let (s, b) = body_of(raw);
        assert_eq!(s, 200);
        assert_eq!(b.unwrap(), b"{\"a\":1}");
    }

    #[test]
    fn short_content_length_body_is_an_error() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 70\r\n\r\n{\"a\":1}";
        assert_eq!(
            body_of(raw).1.unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn chunked_body_with_extensions_and_trailers_over_a_trickle() {
        let raw = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n";
        let (s, mut body) = read_response(io::BufReader::with_capacity(3, Trickle(raw))).unwrap();
        assert_eq!(s, 404);
        let mut out = String::new();
        body.read_to_string(&mut out).unwrap();
        assert_eq!(out, "hello, world");
    }

    #[test]
    fn bad_chunks_are_errors_not_panics() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n",
        ] {
            assert!(
                body_of(raw).1.is_err(),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn body_without_framing_runs_to_the_end() {
        let (s, b) = body_of(b"HTTP/1.0 200 OK\r\n\r\nall of it");
        assert_eq!((s, b.unwrap()), (200, b"all of it".to_vec()));
    }

    #[test]
    fn no_content_has_no_body() {
        let (s, b) = body_of(b"HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!((s, b.unwrap()), (204, Vec::new()));
    }

    #[test]
    fn bad_heads_are_errors() {
        for raw in [
            &b""[..],
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n",
        ] {
            assert!(
                read_response(raw).is_err(),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        let long = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(20_000));
        assert!(matches!(
            read_response(long.as_bytes()),
            Err(HttpError::LineTooLong)
        ));
    }

    #[test]
    fn requests_carry_length_and_close() {
        let mut out = Vec::new();
        write_request(
            &mut out,
            "POST",
            "/domains",
            &[("Content-Type", "application/json")],
            b"{}",
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("POST /domains HTTP/1.1\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.contains("Content-Length: 2\r\n"));
        assert!(text.ends_with("\r\n\r\n{}"));
    }
}
