//! The `xenstored` daemon: serves the store on a Unix socket (connections act for
//! privileged domain 0) and on one socket per introduced domain (connections act for
//! that unprivileged domain; see `docs/xenstore.md`).
//!
//! Threads: one reader per connection executes requests under the store lock and
//! sends replies at once when the client's socket has room; a flusher per connection
//! drains what did not fit. A client that lets more than [`MAX_OUTBOX`] bytes pile up
//! (it never reads its watch events) is disconnected.
//!
//! With a state file, every change is logged ([`crate::persist`]) before its reply and
//! its watch events are sent; a change that cannot be logged stops the daemon rather
//! than being acknowledged.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::persist::{Persistence, SyncPolicy};
use crate::store::{ConnId, Effect, Store};
use crate::wire::{Decoder, Message, MsgType};

/// Bytes of unsent output a connection may accumulate before it is dropped.
pub const MAX_OUTBOX: usize = 1 << 20;
/// Most simultaneous connections.
pub const MAX_CONNECTIONS: usize = 8192;

/// Daemon settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub socket: PathBuf,
    pub domain_socket_dir: PathBuf,
    pub state_file: Option<PathBuf>,
    pub access_log: Option<PathBuf>,
    /// When logged changes must be on disk (with a state file).
    pub sync: SyncPolicy,
    /// Log size that triggers a new snapshot.
    pub log_max_bytes: u64,
}

#[derive(Default)]
struct Outbox {
    queue: VecDeque<Vec<u8>>,
    bytes: usize,
    in_flight: bool,
}

struct ConnHandle {
    domid: u32,
    stream: UnixStream,
    outbox: Mutex<Outbox>,
    cond: Condvar,
    closed: AtomicBool,
}

impl ConnHandle {
    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `bytes`; sends at once without blocking when nothing is queued.
    fn send(&self, mut bytes: Vec<u8>) {
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let mut ob = self.outbox();
        if ob.queue.is_empty() && !ob.in_flight {
            // SAFETY: send(2) on our socket fd with a valid buffer; MSG_DONTWAIT keeps
            // this thread from blocking on a client that does not read.
            let n = unsafe {
                libc::send(
                    self.stream.as_raw_fd(),
                    bytes.as_ptr() as *const libc::c_void,
                    bytes.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n as usize == bytes.len() {
                return;
            }
            if n > 0 {
                bytes.drain(..n as usize);
            }
        }
        ob.bytes += bytes.len();
        ob.queue.push_back(bytes);
        if ob.bytes > MAX_OUTBOX {
            drop(ob);
            tracing::warn!(
                domid = self.domid,
                "client does not read its replies or watch events; disconnecting"
            );
            self.close();
            return;
        }
        self.cond.notify_one();
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        self.cond.notify_all();
    }

    fn flush_loop(&self) {
        let mut w = match self.stream.try_clone() {
            Ok(w) => w,
            Err(_) => return,
        };
        loop {
            let chunk = {
                let mut ob = self.outbox();
                loop {
                    if self.closed.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Some(c) = ob.queue.pop_front() {
                        ob.bytes -= c.len();
                        ob.in_flight = true;
                        break c;
                    }
                    ob = self.cond.wait(ob).unwrap_or_else(|e| e.into_inner());
                }
            };
            let ok = w.write_all(&chunk).is_ok();
            self.outbox().in_flight = false;
            if !ok {
                self.close();
                return;
            }
        }
    }
}

/// The running daemon.
pub struct Daemon {
    store: Mutex<Store>,
    conns: Mutex<HashMap<ConnId, Arc<ConnHandle>>>,
    next_id: AtomicU64,
    config: Config,
    access_log: Option<Mutex<File>>,
    domain_listeners: Mutex<HashMap<u32, Arc<AtomicBool>>>,
    /// The state file and its log (with `--state-file`).
    persistence: Option<Persistence>,
}

impl Daemon {
    /// Loads the state file and replays its log (if any) and prepares the daemon.
    pub fn new(config: Config) -> Result<Arc<Self>, String> {
        let (store, persistence) = match &config.state_file {
            Some(p) => {
                let (store, persistence, recovery) =
                    Persistence::open(p, config.sync, config.log_max_bytes)?;
                tracing::info!(
                    state_file = %p.display(),
                    replayed = recovery.replayed,
                    torn_tail = recovery.torn_tail,
                    nodes = store.node_count(),
                    domains = store.domains().len(),
                    "state loaded"
                );
                (store, Some(persistence))
            }
            None => (Store::new(), None),
        };
        let access_log = match &config.access_log {
            Some(p) => Some(Mutex::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| format!("opening access log {}: {e}", p.display()))?,
            )),
            None => None,
        };
        Ok(Arc::new(Daemon {
            store: Mutex::new(store),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            config,
            access_log,
            domain_listeners: Mutex::new(HashMap::new()),
            persistence,
        }))
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn conns(&self) -> MutexGuard<'_, HashMap<ConnId, Arc<ConnHandle>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Binds the main socket and serves it (and the domain sockets) until the process
    /// ends. Returns only on a bind error.
    pub fn serve(self: &Arc<Self>) -> Result<(), String> {
        let listener = bind(&self.config.socket)?;
        std::fs::create_dir_all(&self.config.domain_socket_dir)
            .map_err(|e| format!("creating {}: {e}", self.config.domain_socket_dir.display()))?;
        let domains: Vec<u32> = self.store().domains().keys().copied().collect();
        self.remove_stale_domain_sockets(&domains);
        for d in domains {
            self.open_domain_socket(d);
        }
        tracing::info!(socket = %self.config.socket.display(), "xenstored listening");
        for stream in listener.incoming() {
            match stream {
                Ok(s) => self.clone().spawn_connection(s, 0, true),
                Err(e) => tracing::warn!("accept: {e}"),
            }
        }
        Ok(())
    }

    fn spawn_connection(self: Arc<Self>, stream: UnixStream, domid: u32, privileged: bool) {
        if self.conns().len() >= MAX_CONNECTIONS {
            tracing::warn!("too many connections; refusing one");
            return;
        }
        let write_half = match stream.try_clone() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("connection: {e}");
                return;
            }
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let handle = Arc::new(ConnHandle {
            domid,
            stream: write_half,
            outbox: Mutex::default(),
            cond: Condvar::new(),
            closed: AtomicBool::new(false),
        });
        let restored = {
            let mut store = self.store();
            store.connect(id, domid, privileged);
            // A domain's watches from before a restart come back with its first
            // connection (each fires once).
            store.restore_parked_watches(id)
        };
        self.conns().insert(id, handle.clone());
        for e in restored {
            if let Effect::Send(_, m) = e {
                handle.send(m.to_bytes());
            }
        }
        let flusher = handle.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("xs-flush-{id}"))
            .spawn(move || flusher.flush_loop())
            .and_then(|_| {
                let me = self.clone();
                std::thread::Builder::new()
                    .name(format!("xs-conn-{id}"))
                    .spawn(move || me.read_loop(id, stream, handle))
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start connection threads: {e}");
            self.drop_connection(id);
        }
    }

    fn drop_connection(&self, id: ConnId) {
        if let Some(h) = self.conns().remove(&id) {
            h.close();
        }
        let mut store = self.store();
        store.disconnect(id);
        // Its watches are no longer the domain's.
        self.log_changes(&mut store);
    }

    /// Logs the changes the last request made (with the store locked, so that the
    /// log's order is the store's); returns the record a reply must wait for. A change
    /// that cannot be logged must never be acknowledged: the daemon stops, and starts
    /// again from what was logged.
    fn log_changes(&self, store: &mut Store) -> u64 {
        let Some(p) = &self.persistence else {
            return 0;
        };
        let changes = store.take_changes();
        if changes.is_empty() {
            // A reply may still show earlier changes: it waits for them too.
            return p.written_seq();
        }
        match p.append(store, changes) {
            Ok(seq) => seq,
            Err(e) => fatal(&e),
        }
    }

    fn wait_durable(&self, seq: u64) {
        if let Some(p) = &self.persistence {
            if let Err(e) = p.wait_durable(seq) {
                fatal(&e);
            }
        }
    }

    fn read_loop(self: Arc<Self>, id: ConnId, mut stream: UnixStream, handle: Arc<ConnHandle>) {
        let mut dec = Decoder::default();
        let mut buf = vec![0u8; 65536];
        'outer: loop {
            let n = match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if handle.closed.load(Ordering::SeqCst) {
                break;
            }
            dec.push(&buf[..n]);
            loop {
                match dec.next_message() {
                    Ok(Some(msg)) => self.execute(id, &msg),
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(
                            conn = id,
                            domid = handle.domid,
                            "protocol error: {e}; disconnecting"
                        );
                        break 'outer;
                    }
                }
            }
        }
        self.drop_connection(id);
    }

    fn execute(self: &Arc<Self>, id: ConnId, msg: &Message) {
        if let Some(log) = &self.access_log {
            let first = msg.payload.split(|&b| b == 0).next().unwrap_or(&[]);
            let line = format!(
                "conn={id} type={} req={} tx={} arg={}\n",
                MsgType::from_u32(msg.header.msg_type)
                    .map(|t| format!("{t:?}"))
                    .unwrap_or_else(|| msg.header.msg_type.to_string()),
                msg.header.req_id,
                msg.header.tx_id,
                String::from_utf8_lossy(&first[..first.len().min(256)])
            );
            let _ = log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .write_all(line.as_bytes());
        }
        let (effects, seq) = {
            let mut store = self.store();
            let effects = store.handle(id, msg);
            let seq = self.log_changes(&mut store);
            (effects, seq)
        };
        // Nothing is acknowledged, and no watch event tells of a change, before the
        // change is durable.
        self.wait_durable(seq);
        // Domain sockets change before the reply goes out, so a client that sees the
        // reply to INTRODUCE can connect at once.
        let mut messages = Vec::with_capacity(effects.len());
        for e in effects {
            match e {
                Effect::Send(to, m) => messages.push((to, m)),
                Effect::DomainIntroduced(d) => self.open_domain_socket(d),
                Effect::DomainReleased(d) => self.close_domain(d),
            }
        }
        let conns = self.conns();
        for (to, m) in messages {
            if let Some(h) = conns.get(&to) {
                h.send(m.to_bytes());
            }
        }
    }

    /// Path of domain `d`'s connection socket.
    pub fn domain_socket_path(&self, d: u32) -> PathBuf {
        self.config.domain_socket_dir.join(d.to_string())
    }

    /// Removes sockets of a previous run for domains that are not introduced (those
    /// that are get theirs bound again).
    fn remove_stale_domain_sockets(&self, introduced: &[u32]) {
        use std::os::unix::fs::FileTypeExt;
        let Ok(entries) = std::fs::read_dir(&self.config.domain_socket_dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(domid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let is_socket = e.file_type().map(|t| t.is_socket()).unwrap_or(false);
            if is_socket && !introduced.contains(&domid) {
                tracing::info!(domid, "removing a stale domain socket");
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    fn open_domain_socket(self: &Arc<Self>, d: u32) {
        let path = self.domain_socket_path(d);
        // Introduced again (e.g. by a toolstack after a restart): the socket is there.
        if self
            .domain_listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&d)
            && path.exists()
        {
            return;
        }
        let listener = match bind(&path) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(domid = d, "cannot open domain socket: {e}");
                return;
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        self.domain_listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(d, stop.clone());
        let me = self.clone();
        let _ = std::thread::Builder::new()
            .name(format!("xs-dom{d}"))
            .spawn(move || {
                for s in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(s) = s {
                        me.clone().spawn_connection(s, d, false);
                    }
                }
            });
    }

    fn close_domain(&self, d: u32) {
        if let Some(stop) = self
            .domain_listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&d)
        {
            stop.store(true, Ordering::SeqCst);
            let path = self.domain_socket_path(d);
            // Wake the accept loop so that it sees the stop flag.
            let _ = UnixStream::connect(&path);
            let _ = std::fs::remove_file(&path);
        }
        let gone: Vec<ConnId> = self
            .conns()
            .iter()
            .filter(|(_, h)| h.domid == d)
            .map(|(k, _)| *k)
            .collect();
        for id in gone {
            self.drop_connection(id);
        }
    }

    /// Writes the state file (nodes, domains, watches of domain connections) and
    /// empties the log.
    pub fn save_state(&self) -> Result<(), String> {
        let Some(p) = &self.persistence else {
            return Ok(());
        };
        let store = self.store();
        p.snapshot(&store)
    }

    /// Removes the sockets (at shutdown).
    pub fn remove_sockets(&self) {
        let _ = std::fs::remove_file(&self.config.socket);
        for d in self
            .domain_listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
        {
            let _ = std::fs::remove_file(self.domain_socket_path(*d));
        }
    }
}

/// Stops the daemon when a change cannot be made durable: it was not acknowledged,
/// and a restart loads what was.
fn fatal(e: &str) -> ! {
    tracing::error!("cannot make a change durable: {e}; stopping");
    eprintln!("xenstored: cannot make a change durable: {e}; stopping");
    std::process::exit(1)
}

/// Binds a Unix socket at `path` (replacing a stale one), readable and writable by
/// its owner only.
fn bind(path: &Path) -> Result<UnixListener, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(format!("{} is in use by a running daemon", path.display()));
        }
        let _ = std::fs::remove_file(path);
    }
    let l = UnixListener::bind(path).map_err(|e| format!("binding {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("chmod {}: {e}", path.display()))?;
    Ok(l)
}
