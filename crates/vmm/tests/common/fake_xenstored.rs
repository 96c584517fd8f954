//! A fake xenstored domain socket for relay tests: answers `XS_READ` with a fixed
//! value and every other request with `XS_ERROR "ENOSYS"`; can swallow a request and
//! hang up halfway through its reply, like a xenstored that dies mid-request.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;

pub const XS_READ: u32 = 2;
pub const XS_ERROR: u32 = 16;

/// A listening fake xenstored; closed (socket removed, connections shut) on drop.
pub struct FakeXenstored {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    /// Requests answered so far.
    pub answered: Arc<AtomicU64>,
    conns: Arc<std::sync::Mutex<Vec<UnixStream>>>,
}

fn reply(t: u32, req: u32, tx: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    for v in [t, req, tx, payload.len() as u32] {
        m.extend_from_slice(&v.to_le_bytes());
    }
    m.extend_from_slice(payload);
    m
}

impl FakeXenstored {
    /// Listens at `path`. With `die_after = Some(n)`, the (n+1)th request gets half a
    /// reply header and then the connection is closed.
    pub fn start(path: &Path, value: &'static str, die_after: Option<u64>) -> FakeXenstored {
        let _ = std::fs::remove_file(path);
        let l = UnixListener::bind(path).expect("bind fake xenstored");
        l.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let conns = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s2, a2, c2) = (stop.clone(), answered.clone(), conns.clone());
        std::thread::spawn(move || {
            while !s2.load(SeqCst) {
                match l.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).expect("blocking");
                        c2.lock().unwrap().push(s.try_clone().expect("clone"));
                        let a3 = a2.clone();
                        std::thread::spawn(move || serve(s, value, die_after, a3));
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(2)),
                }
            }
        });
        FakeXenstored {
            path: path.to_path_buf(),
            stop,
            answered,
            conns,
        }
    }
}

fn serve(mut s: UnixStream, value: &str, die_after: Option<u64>, answered: Arc<AtomicU64>) {
    loop {
        let mut h = [0u8; 16];
        if s.read_exact(&mut h).is_err() {
            return;
        }
        let w = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let (t, req, tx, len) = (w(0), w(4), w(8), w(12) as usize);
        let mut p = vec![0u8; len];
        if s.read_exact(&mut p).is_err() {
            return;
        }
        if die_after.is_some_and(|n| answered.load(SeqCst) >= n) {
            let half = reply(t, req, tx, value.as_bytes());
            let _ = s.write_all(&half[..8]);
            let _ = s.shutdown(std::net::Shutdown::Both);
            return;
        }
        let r = if t == XS_READ {
            reply(t, req, tx, value.as_bytes())
        } else {
            reply(XS_ERROR, req, tx, b"ENOSYS\0")
        };
        if s.write_all(&r).is_err() {
            return;
        }
        answered.fetch_add(1, SeqCst);
    }
}

impl Drop for FakeXenstored {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        let _ = std::fs::remove_file(&self.path);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}
