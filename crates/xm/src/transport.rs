//! How requests reach xend: HTTP over TCP (`http://host:port`, through ureq) or HTTP
//! over a Unix socket (`unix:///path/to/socket`, through [`crate::unix_http`]).
//! Both give the same [`Reply`]; nothing above this module knows which one is used.

use std::io::{BufReader, Read};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use crate::error::{XmError, XmResult};
use crate::unix_http;

/// Where xend listens, from `--url`/`XEND_URL`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `http://` or `https://` base URL, without a trailing `/`.
    Http(String),
    /// Path of xend's Unix socket.
    Unix(PathBuf),
}

impl Endpoint {
    pub fn parse(url: &str) -> XmResult<Endpoint> {
        let bad = |reason: &str| XmError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if let Some(path) = url.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(bad(
                    "unix:// needs a socket path, as in unix:///run/xend.sock",
                ));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if url.starts_with("unix:") {
            return Err(bad("write a Unix socket as unix:///path/to/socket"));
        }
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .ok_or_else(|| bad("expected http://HOST:PORT or unix:///path/to/socket"))?;
        if rest.trim_end_matches('/').is_empty() {
            return Err(bad("no host"));
        }
        Ok(Endpoint::Http(url.trim_end_matches('/').to_string()))
    }

    /// How to name it in messages.
    pub fn describe(&self) -> String {
        match self {
            Endpoint::Http(base) => base.clone(),
            Endpoint::Unix(p) => format!("unix://{}", p.display()),
        }
    }
}

/// A reply: status and a body still to be read (the event stream never ends).
pub struct Reply {
    pub status: u16,
    pub body: Box<dyn Read + Send>,
}

impl Reply {
    /// The whole body.
    pub fn bytes(mut self) -> XmResult<Vec<u8>> {
        let mut out = Vec::new();
        self.body
            .read_to_end(&mut out)
            .map_err(|e| XmError::BadReply(format!("reading the reply: {e}")))?;
        Ok(out)
    }
}

/// Sends requests to one endpoint.
#[derive(Clone)]
pub struct Transport {
    endpoint: Endpoint,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Transport {
    pub fn new(endpoint: Endpoint, token: Option<String>) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(None)
            .build()
            .into();
        Transport {
            endpoint,
            token,
            agent,
        }
    }

    fn connect_error(&self, reason: impl std::fmt::Display) -> XmError {
        XmError::Connect {
            url: self.endpoint.describe(),
            reason: reason.to_string(),
        }
    }

    /// Sends `method path` with an optional body of `content_type`.
    pub fn send(&self, method: &str, path: &str, body: Option<(&str, Vec<u8>)>) -> XmResult<Reply> {
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        match &self.endpoint {
            Endpoint::Http(base) => {
                let url = format!("{base}{path}");
                let result = match (method, body) {
                    ("GET", _) | ("DELETE", _) => {
                        let mut r = if method == "GET" {
                            self.agent.get(&url)
                        } else {
                            self.agent.delete(&url)
                        };
                        if let Some(a) = &auth {
                            r = r.header("Authorization", a);
                        }
                        r.call()
                    }
                    (_, body) => {
                        let (ctype, bytes) = body.unwrap_or(("application/json", b"{}".to_vec()));
                        let mut r = self.agent.post(&url).header("Content-Type", ctype);
                        if let Some(a) = &auth {
                            r = r.header("Authorization", a);
                        }
                        r.send(&bytes[..])
                    }
                };
                let resp = result.map_err(|e| self.connect_error(e))?;
                Ok(Reply {
                    status: resp.status().as_u16(),
                    body: Box::new(resp.into_body().into_reader()),
                })
            }
            Endpoint::Unix(sock) => {
                let mut stream = UnixStream::connect(sock)
                    .map_err(|e| self.connect_error(format!("connecting to the socket: {e}")))?;
                let (ctype, bytes) = match (method, body) {
                    ("GET" | "DELETE", None) => (None, Vec::new()),
                    (_, Some((c, b))) => (Some(c), b),
                    (_, None) => (Some("application/json"), b"{}".to_vec()),
                };
                let mut headers: Vec<(&str, &str)> = Vec::new();
                if let Some(c) = ctype {
                    headers.push(("Content-Type", c));
                }
                if let Some(a) = &auth {
                    headers.push(("Authorization", a));
                }
                unix_http::write_request(&mut stream, method, path, &headers, &bytes)
                    .map_err(|e| self.connect_error(format!("sending the request: {e}")))?;
                let (status, body) = unix_http::read_response(BufReader::new(stream))
                    .map_err(|e| self.connect_error(format!("reading the reply: {e}")))?;
                Ok(Reply {
                    status,
                    body: Box::new(body),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_endpoints() {
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:8000/").unwrap(),
            Endpoint::Http("http://127.0.0.1:8000".into())
        );
        assert_eq!(
            Endpoint::parse("unix:///run/rxen/xend.sock").unwrap(),
            Endpoint::Unix("/run/rxen/xend.sock".into())
        );
        assert_eq!(
            Endpoint::parse("unix://rel/xend.sock").unwrap(),
            Endpoint::Unix("rel/xend.sock".into())
        );
        for bad in [
            "unix://",
            "unix:/run/x.sock",
            "ftp://x",
            "127.0.0.1:8000",
            "http://",
            "",
        ] {
            assert!(
                matches!(Endpoint::parse(bad), Err(XmError::BadUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_missing_unix_socket_is_a_clear_error() {
        let t = Transport::new(Endpoint::Unix("/nonexistent/xend.sock".into()), None);
        let e = t.send("GET", "/domains", None).err().unwrap().to_string();
        assert!(e.contains("unix:///nonexistent/xend.sock"), "{e}");
    }

    #[test]
    fn unix_requests_round_trip_through_a_socket() {
        use std::io::{BufRead, Write};
        let dir = std::env::temp_dir().join(format!("xm-transport-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let sock = dir.join("s");
        let _ = std::fs::remove_file(&sock);
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut head = Vec::new();
            loop {
                let mut l = String::new();
                r.read_line(&mut l).unwrap();
                if l == "\r\n" {
                    break;
                }
                head.push(l);
            }
            let mut body = [0u8; 2];
            r.read_exact(&mut body).unwrap();
            let mut w = conn;
            w.write_all(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n3\r\n\":1\r\n1\r\n}\r\n0\r\n\r\n").unwrap();
            (head, body)
        });
        let t = Transport::new(Endpoint::Unix(sock.clone()), Some("tok".into()));
        let reply = t
            .send(
                "POST",
                "/domains",
                Some(("application/json", b"{}".to_vec())),
            )
            .unwrap();
        assert_eq!(reply.status, 201);
        assert_eq!(reply.bytes().unwrap(), b"{\"a\":1}");
        let (head, body) = server.join().unwrap();
        assert_eq!(head[0], "POST /domains HTTP/1.1\r\n");
        assert!(head.contains(&"Authorization: Bearer tok\r\n".to_string()));
        assert_eq!(&body, b"{}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
