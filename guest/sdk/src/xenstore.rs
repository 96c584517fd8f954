//! A xenstore client over the domain's xenstore ring (`start_info.store_mfn` and
//! `store_evtchn`): read, write, mkdir, rm, directory, watches and transactions,
//! with Xen's wire protocol. Paths without a leading `/` are relative to
//! `/local/domain/<domid>`. Calls block the vCPU (in `SCHEDOP_block`) while waiting.

use alloc::collections::VecDeque;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::sync::atomic::{fence, AtomicU32, Ordering::SeqCst};

use rxen_abi::xs_wire::{
    XenstoreDomainInterface, XENSTORE_PAYLOAD_MAX, XENSTORE_RING_SIZE, XSD_SOCKMSG_LEN,
    XS_DIRECTORY, XS_ERROR, XS_MKDIR, XS_READ, XS_RM, XS_TRANSACTION_END, XS_TRANSACTION_START,
    XS_UNWATCH, XS_WATCH, XS_WATCH_EVENT, XS_WRITE,
};

/// xenstored's answer was an error (`"ENOENT"`, `"EACCES"`, ...), or the ring broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XsError(pub String);

/// The client. Use one per domain (it owns the ring).
pub struct Xenstore {
    port: u32,
    req_id: u32,
    events: VecDeque<(String, String)>,
}

fn iface() -> *mut XenstoreDomainInterface {
    crate::start::store_page() as *mut XenstoreDomainInterface
}

fn word(f: fn(*mut XenstoreDomainInterface) -> *mut u32) -> &'static AtomicU32 {
    // SAFETY: the ring page is mapped for the life of the domain; index words are
    // 4-byte aligned and shared with the hypervisor, so they are accessed atomically.
    unsafe { AtomicU32::from_ptr(f(iface())) }
}

fn req_cons() -> &'static AtomicU32 {
    // SAFETY: field projection of the mapped page.
    word(|p| unsafe { core::ptr::addr_of_mut!((*p).req_cons) })
}
fn req_prod() -> &'static AtomicU32 {
    // SAFETY: field projection of the mapped page.
    word(|p| unsafe { core::ptr::addr_of_mut!((*p).req_prod) })
}
fn rsp_cons() -> &'static AtomicU32 {
    // SAFETY: field projection of the mapped page.
    word(|p| unsafe { core::ptr::addr_of_mut!((*p).rsp_cons) })
}
fn rsp_prod() -> &'static AtomicU32 {
    // SAFETY: field projection of the mapped page.
    word(|p| unsafe { core::ptr::addr_of_mut!((*p).rsp_prod) })
}

const RING: u32 = XENSTORE_RING_SIZE as u32;

impl Default for Xenstore {
    fn default() -> Self {
        Self::new()
    }
}

impl Xenstore {
    /// The client of this domain's ring.
    pub fn new() -> Self {
        Xenstore {
            port: crate::start::start_info().store_evtchn,
            req_id: 0,
            events: VecDeque::new(),
        }
    }

    fn wait(&self) {
        crate::events::wait_and_dispatch();
    }

    fn send_bytes(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let (cons, prod) = (req_cons().load(SeqCst), req_prod().load(SeqCst));
            let used = prod.wrapping_sub(cons);
            if used >= RING {
                self.wait();
                continue;
            }
            let n = ((RING - used) as usize).min(data.len());
            for (i, b) in data[..n].iter().enumerate() {
                let at = (prod.wrapping_add(i as u32) % RING) as usize;
                // SAFETY: `at` < ring size; the request ring is ours to fill up to cons.
                unsafe {
                    core::ptr::write_volatile(core::ptr::addr_of_mut!((*iface()).req[at]), *b)
                };
            }
            fence(SeqCst);
            req_prod().store(prod.wrapping_add(n as u32), SeqCst);
            let _ = crate::events::send(self.port);
            data = &data[n..];
        }
    }

    fn recv_bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let (cons, prod) = (rsp_cons().load(SeqCst), rsp_prod().load(SeqCst));
            let avail = prod.wrapping_sub(cons).min(RING) as usize;
            if avail == 0 {
                self.wait();
                continue;
            }
            let k = avail.min(n - out.len());
            fence(SeqCst);
            for i in 0..k {
                let at = (cons.wrapping_add(i as u32) % RING) as usize;
                // SAFETY: `at` < ring size; bytes between cons and prod are ours to read.
                out.push(unsafe {
                    core::ptr::read_volatile(core::ptr::addr_of!((*iface()).rsp[at]))
                });
            }
            fence(SeqCst);
            rsp_cons().store(cons.wrapping_add(k as u32), SeqCst);
            let _ = crate::events::send(self.port);
        }
        out
    }

    fn read_message(&mut self) -> Result<(u32, u32, Vec<u8>), XsError> {
        let h = self.recv_bytes(XSD_SOCKMSG_LEN);
        let w = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let (t, req, len) = (w(0), w(4), w(12) as usize);
        if len > XENSTORE_PAYLOAD_MAX {
            return Err(XsError("reply longer than 4096 bytes".into()));
        }
        Ok((t, req, self.recv_bytes(len)))
    }

    fn queue_event(&mut self, payload: &[u8]) {
        let mut parts = payload
            .split(|&b| b == 0)
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let path = parts.next().unwrap_or_default();
        let token = parts.next().unwrap_or_default();
        self.events.push_back((path, token));
    }

    /// Sends a request and returns the reply payload.
    pub fn request(&mut self, t: u32, tx: u32, payload: &[u8]) -> Result<Vec<u8>, XsError> {
        if payload.len() > XENSTORE_PAYLOAD_MAX {
            return Err(XsError("E2BIG".into()));
        }
        self.req_id = self.req_id.wrapping_add(1);
        let mut msg = Vec::with_capacity(XSD_SOCKMSG_LEN + payload.len());
        for v in [t, self.req_id, tx, payload.len() as u32] {
            msg.extend_from_slice(&v.to_le_bytes());
        }
        msg.extend_from_slice(payload);
        self.send_bytes(&msg);
        loop {
            let (rt, rid, p) = self.read_message()?;
            if rt == XS_WATCH_EVENT {
                self.queue_event(&p);
                continue;
            }
            if rid != self.req_id {
                continue;
            }
            if rt == XS_ERROR {
                return Err(XsError(
                    String::from_utf8_lossy(&p)
                        .trim_end_matches('\0')
                        .to_string(),
                ));
            }
            return Ok(p);
        }
    }

    fn path_req(&mut self, t: u32, tx: u32, path: &str) -> Result<Vec<u8>, XsError> {
        let mut p = Vec::from(path.as_bytes());
        p.push(0);
        self.request(t, tx, &p)
    }

    /// Reads a node.
    pub fn read(&mut self, path: &str) -> Result<String, XsError> {
        self.read_tx(0, path)
    }

    /// Reads a node inside transaction `tx`.
    pub fn read_tx(&mut self, tx: u32, path: &str) -> Result<String, XsError> {
        self.path_req(XS_READ, tx, path)
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    /// Writes a node (creating it and its parents).
    pub fn write(&mut self, path: &str, value: &str) -> Result<(), XsError> {
        self.write_tx(0, path, value)
    }

    /// Writes inside transaction `tx`.
    pub fn write_tx(&mut self, tx: u32, path: &str, value: &str) -> Result<(), XsError> {
        let mut p = Vec::from(path.as_bytes());
        p.push(0);
        p.extend_from_slice(value.as_bytes());
        self.request(XS_WRITE, tx, &p).map(|_| ())
    }

    pub fn mkdir(&mut self, path: &str) -> Result<(), XsError> {
        self.path_req(XS_MKDIR, 0, path).map(|_| ())
    }

    pub fn rm(&mut self, path: &str) -> Result<(), XsError> {
        self.path_req(XS_RM, 0, path).map(|_| ())
    }

    /// Lists the children of a node.
    pub fn directory(&mut self, path: &str) -> Result<Vec<String>, XsError> {
        let v = self.path_req(XS_DIRECTORY, 0, path)?;
        Ok(v.split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect())
    }

    /// Watches `path` (and below); events come from [`Xenstore::next_event`].
    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        let mut p = Vec::from(path.as_bytes());
        p.push(0);
        p.extend_from_slice(token.as_bytes());
        p.push(0);
        self.request(XS_WATCH, 0, &p).map(|_| ())
    }

    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        let mut p = Vec::from(path.as_bytes());
        p.push(0);
        p.extend_from_slice(token.as_bytes());
        p.push(0);
        self.request(XS_UNWATCH, 0, &p).map(|_| ())
    }

    /// Starts a transaction.
    pub fn transaction_start(&mut self) -> Result<u32, XsError> {
        let v = self.request(XS_TRANSACTION_START, 0, b"\0")?;
        String::from_utf8_lossy(&v)
            .trim_end_matches('\0')
            .parse()
            .map_err(|_| XsError("bad transaction id".into()))
    }

    /// Ends a transaction; `Err(XsError("EAGAIN"))` means retry.
    pub fn transaction_end(&mut self, tx: u32, commit: bool) -> Result<(), XsError> {
        self.request(XS_TRANSACTION_END, tx, if commit { b"T\0" } else { b"F\0" })
            .map(|_| ())
    }

    /// The next watch event `(path, token)`, blocking until one arrives.
    pub fn next_event(&mut self) -> Result<(String, String), XsError> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(e);
            }
            let (t, _, p) = self.read_message()?;
            if t == XS_WATCH_EVENT {
                self.queue_event(&p);
            }
        }
    }
}

/// Waits for the toolstack's `control/shutdown` request and acts on it the way Xen
/// guests do: `poweroff`/`halt` and `reboot` clear the node and shut down with that
/// reason; `suspend` clears it and suspends ([`crate::suspend`]; this guest has no
/// frontends, so in a new domain it binds its timers and its watch again); other
/// values are acknowledged by clearing. Advertises `feature-poweroff`,
/// `feature-reboot` and `feature-suspend`. Never returns.
pub fn serve_control_shutdown(xs: &mut Xenstore) -> ! {
    use rxen_abi::sched::{SHUTDOWN_POWEROFF, SHUTDOWN_REBOOT};
    let _ = xs.write("control/feature-poweroff", "1");
    let _ = xs.write("control/feature-reboot", "1");
    let _ = xs.write("control/feature-suspend", "1");
    if xs.watch("control/shutdown", "shutdown").is_err() {
        crate::println!("xenstore: cannot watch control/shutdown");
    }
    loop {
        let Ok((path, _)) = xs.next_event() else {
            continue;
        };
        if path != "control/shutdown" {
            continue;
        }
        let what = xs.read("control/shutdown").unwrap_or_default();
        if what == "suspend" {
            let _ = xs.write("control/shutdown", "");
            crate::println!("control/shutdown: suspend");
            match crate::suspend::suspend() {
                crate::suspend::Resumed::NewDomain => {
                    crate::suspend::resume_in_new_domain(rxen_abi::layout::MAX_VCPUS);
                    *xs = Xenstore::new();
                    if xs.watch("control/shutdown", "shutdown").is_err() {
                        crate::println!("xenstore: cannot watch control/shutdown");
                    }
                    crate::println!("suspend: resumed in a new domain");
                }
                crate::suspend::Resumed::Cancelled => crate::println!("suspend: cancelled"),
                crate::suspend::Resumed::Refused(e) => crate::println!("suspend: refused ({e})"),
            }
            continue;
        }
        let reason = match what.as_str() {
            "poweroff" | "halt" => Some(SHUTDOWN_POWEROFF),
            "reboot" => Some(SHUTDOWN_REBOOT),
            _ => None,
        };
        if let Some(r) = reason {
            crate::println!("control/shutdown: {what}");
            let _ = xs.write("control/shutdown", "");
            crate::hypercall::shutdown(r);
        }
    }
}
