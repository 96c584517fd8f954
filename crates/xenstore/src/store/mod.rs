//! The store: a tree of nodes with permissions and generation counts, transactions
//! with conflict detection, watches, domains and quotas. [`Store::handle`] executes one
//! request of one connection and returns what to send to whom; it never blocks and
//! never panics on client input.
//!
//! Modules by concern: [`tree`] (nodes, generations, permission checks, node
//! requests), [`transactions`], [`watches`], [`domains`] (introduce/release, targets,
//! quotas), [`control`] (`XS_CONTROL`), [`journal`] (committed changes for the
//! daemon's log, their replay, and the watches of domain connections that outlive the
//! connection), and [`wire_funcs`], the per-message-type table (handler and flags, as
//! Xen's `wire_funcs[]`) that [`Store::handle`] dispatches by.

mod control;
mod domains;
pub mod journal;
mod transactions;
mod tree;
mod watches;
mod wire_funcs;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

pub use domains::{DomainInfo, Quota};
pub use journal::Change;
pub use transactions::MAX_TRANSACTIONS_PER_CONN;
pub use tree::Node;
pub use watches::{Watch, MAX_WATCHES_PER_CONN};

use crate::path;
use crate::perms::Perms;
use crate::wire::{Message, MsgType, XsError};
use transactions::Txn;
use watches::Event;
use wire_funcs::{wire_func, NOTID, PRIV, TX};

/// Identifies a client connection.
pub type ConnId = u64;

/// A connection's identity and state.
#[derive(Debug)]
pub struct Conn {
    pub domid: u32,
    pub privileged: bool,
    pub watches: Vec<Watch>,
    txns: HashMap<u32, Txn>,
}

/// What the caller must do after a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send a message on a connection.
    Send(ConnId, Message),
    /// A domain was introduced (the daemon offers its connection socket).
    DomainIntroduced(u32),
    /// A domain was released (the daemon closes its connections).
    DomainReleased(u32),
}

/// The whole store.
pub struct Store {
    nodes: HashMap<String, Node>,
    generation: u64,
    conns: BTreeMap<ConnId, Conn>,
    domains: BTreeMap<u32, DomainInfo>,
    /// Nodes owned per domain.
    owned: HashMap<u32, usize>,
    next_txid: u32,
    /// Watches of domain connections that went away with the daemon, given back when
    /// the domain connects again ([`Store::restore_parked_watches`]).
    parked_watches: BTreeMap<u32, Vec<Watch>>,
    /// Changes committed since [`Store::take_changes`] (`None`: not journaling).
    journal: Option<Vec<Change>>,
    pub quota: Quota,
    /// Requests handled, by outcome.
    pub stats: Stats,
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub requests: u64,
    pub errors: u64,
    pub watch_events: u64,
    pub conflicts: u64,
}

/// Who sends a request: the domain a connection acts for.
#[derive(Clone, Copy, Debug)]
struct Caller {
    domid: u32,
    privileged: bool,
}

/// One request while it runs: who sent it, its arguments, its transaction (taken out
/// of the connection meanwhile) and what it causes.
struct Request<'a> {
    id: ConnId,
    domid: u32,
    privileged: bool,
    msg: &'a Message,
    fields: Vec<&'a [u8]>,
    tx: Option<Txn>,
    /// Events to fire after the reply.
    events: Vec<Event>,
    /// Effects to return after the reply and the events.
    effects: Vec<Effect>,
}

impl<'a> Request<'a> {
    fn caller(&self) -> Caller {
        Caller {
            domid: self.domid,
            privileged: self.privileged,
        }
    }

    /// Argument `i` (a NUL-terminated field of the payload).
    fn arg(&self, i: usize) -> Result<&'a [u8], XsError> {
        self.fields.get(i).copied().ok_or(XsError::EINVAL)
    }

    /// Argument `i` as a canonical absolute path.
    fn path_arg(&self, i: usize) -> Result<String, XsError> {
        path::canonicalize(self.arg(i)?, self.domid)
    }

    /// Records an event; events of a transaction wait for its commit.
    fn emit(&mut self, e: Event) {
        match self.tx.as_mut() {
            Some(t) => t.events.push(e),
            None => self.events.push(e),
        }
    }
}

fn ok() -> Vec<u8> {
    b"OK\0".to_vec()
}

fn str_arg(f: &[u8]) -> Result<&str, XsError> {
    std::str::from_utf8(f).map_err(|_| XsError::EINVAL)
}

fn num_arg<T: std::str::FromStr>(f: &[u8]) -> Result<T, XsError> {
    let s = str_arg(f)?;
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return Err(XsError::EINVAL);
    }
    s.parse().map_err(|_| XsError::EINVAL)
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    /// A store holding only the root node (owned by domain 0, readable by nobody else).
    pub fn new() -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(
            "/".to_string(),
            Node {
                value: Vec::new(),
                perms: Perms::owned_by(0),
                children: BTreeSet::new(),
                generation: 1,
            },
        );
        let mut s = Store {
            nodes,
            generation: 1,
            conns: BTreeMap::new(),
            domains: BTreeMap::new(),
            owned: HashMap::new(),
            next_txid: 1,
            parked_watches: BTreeMap::new(),
            journal: None,
            quota: Quota::default(),
            stats: Stats::default(),
        };
        s.owned.insert(0, 1);
        s
    }

    /// Registers a connection acting for `domid`.
    pub fn connect(&mut self, id: ConnId, domid: u32, privileged: bool) {
        self.conns.insert(
            id,
            Conn {
                domid,
                privileged,
                watches: Vec::new(),
                txns: HashMap::new(),
            },
        );
    }

    /// Forgets a connection: its watches and open transactions go away.
    pub fn disconnect(&mut self, id: ConnId) {
        if let Some(c) = self.conns.remove(&id) {
            if !c.privileged && !c.watches.is_empty() {
                self.journal_domain_watches(c.domid);
            }
        }
    }

    /// Watches of a connection.
    pub fn watches_of(&self, id: ConnId) -> Vec<Watch> {
        self.conns
            .get(&id)
            .map(|c| c.watches.clone())
            .unwrap_or_default()
    }

    pub fn domains(&self) -> &BTreeMap<u32, DomainInfo> {
        &self.domains
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Reads a node directly (for tests and tools inside the daemon).
    pub fn get(&self, p: &str) -> Option<&Node> {
        self.nodes.get(p)
    }

    /// Executes one request of connection `id`: looks its type up in the
    /// [`wire_funcs`] table, finds its transaction unless the type ignores the id
    /// (`NOTID`), checks privilege (`PRIV`), runs the handler, then returns the reply,
    /// the watch events it caused and its other effects.
    pub fn handle(&mut self, id: ConnId, msg: &Message) -> Vec<Effect> {
        self.stats.requests += 1;
        let Some(conn) = self.conns.get(&id) else {
            return Vec::new();
        };
        let (domid, privileged) = (conn.domid, conn.privileged);
        let txid = msg.header.tx_id;
        let func = MsgType::from_u32(msg.header.msg_type).map(wire_func);
        let has = |flag| func.as_ref().is_some_and(|f| f.has(flag));
        // Take the transaction out of the connection while the request runs.
        let mut tx = None;
        if txid != 0 && !has(NOTID) {
            match self.conns.get_mut(&id).and_then(|c| c.txns.remove(&txid)) {
                Some(t) => tx = Some(t),
                None => return vec![self.error(id, msg, XsError::ENOENT)],
            }
        }
        let mut req = Request {
            id,
            domid,
            privileged,
            msg,
            fields: msg.fields(),
            tx: None,
            events: Vec::new(),
            effects: Vec::new(),
        };
        // Only handlers that work in the transaction see it; for the others the id
        // was only checked.
        let mut parked = None;
        if has(TX) {
            req.tx = tx;
        } else {
            parked = tx;
        }
        let result = match func.as_ref().and_then(|f| f.handler) {
            None => Err(XsError::EINVAL),
            Some(_) if has(PRIV) && !privileged => Err(XsError::EACCES),
            Some(handler) => handler(self, &mut req),
        };
        // The watches of a domain's connections are part of the persistent state.
        if !privileged
            && result.is_ok()
            && matches!(
                MsgType::from_u32(msg.header.msg_type),
                Some(MsgType::Watch | MsgType::Unwatch | MsgType::ResetWatches)
            )
        {
            self.journal_domain_watches(domid);
        }
        // A transaction that did not end goes back to its connection.
        if let Some(t) = req.tx.take().or(parked) {
            if let Some(c) = self.conns.get_mut(&id) {
                c.txns.insert(txid, t);
            }
        }
        let mut out = vec![match result {
            Ok(payload) => Effect::Send(
                id,
                Message::new(msg.header.msg_type, msg.header.req_id, txid, payload),
            ),
            Err(e) => self.error(id, msg, e),
        }];
        for e in &req.events {
            self.fire(e, &mut out);
        }
        out.extend(req.effects);
        out
    }

    fn error(&mut self, id: ConnId, msg: &Message, e: XsError) -> Effect {
        self.stats.errors += 1;
        let mut p = e.as_str().as_bytes().to_vec();
        p.push(0);
        Effect::Send(
            id,
            Message::new(
                MsgType::Error as u32,
                msg.header.req_id,
                msg.header.tx_id,
                p,
            ),
        )
    }

    // ---------------------------------------------------------------- persistence

    /// The persistent part of the store, with the watches of domain connections.
    pub fn snapshot(&self) -> Snapshot {
        let mut domain_watches = BTreeMap::new();
        let domids: BTreeSet<u32> = self
            .parked_watches
            .keys()
            .copied()
            .chain(
                self.conns
                    .values()
                    .filter(|c| !c.privileged)
                    .map(|c| c.domid),
            )
            .collect();
        for d in domids {
            let w = self.domain_watches(d);
            if !w.is_empty() {
                domain_watches.insert(d, w);
            }
        }
        Snapshot {
            nodes: self.nodes.clone(),
            domains: self.domains.clone(),
            generation: self.generation,
            quota: self.quota.clone(),
            domain_watches,
            log_seq: 0,
        }
    }

    /// A store from a snapshot.
    pub fn from_snapshot(s: Snapshot) -> Result<Self, String> {
        if !s.nodes.contains_key("/") {
            return Err("state has no root node".into());
        }
        let mut store = Store::new();
        store.nodes = s.nodes;
        store.domains = s.domains;
        store.generation = s.generation;
        store.quota = s.quota;
        store.parked_watches = s.domain_watches;
        store.owned.clear();
        let owners: Vec<u32> = store.nodes.values().map(|n| n.perms.owner()).collect();
        for o in owners {
            store.count_owned(o, 1);
        }
        let check = store.check_consistency();
        if check != "OK\n" {
            return Err(format!("state is inconsistent: {check}"));
        }
        Ok(store)
    }
}

/// Saved state of the store.
#[derive(Serialize, Deserialize)]
pub struct Snapshot {
    pub nodes: HashMap<String, Node>,
    pub domains: BTreeMap<u32, DomainInfo>,
    pub generation: u64,
    pub quota: Quota,
    /// Watches of domain connections, restored when the domain reconnects.
    pub domain_watches: BTreeMap<u32, Vec<Watch>>,
    /// The last log record this snapshot holds (records up to it are skipped at
    /// replay).
    #[serde(default)]
    pub log_seq: u64,
}

/// Test helpers for building requests.
pub mod request {
    use crate::wire::{Message, MsgType};

    /// A request of `t` whose payload is `parts` each followed by NUL.
    pub fn strings(t: MsgType, tx: u32, parts: &[&[u8]]) -> Message {
        let mut p = Vec::new();
        for s in parts {
            p.extend_from_slice(s);
            p.push(0);
        }
        Message::new(t as u32, 1, tx, p)
    }

    /// A WRITE request (the value is not NUL-terminated).
    pub fn write(tx: u32, path: &str, value: &[u8]) -> Message {
        let mut p = path.as_bytes().to_vec();
        p.push(0);
        p.extend_from_slice(value);
        Message::new(MsgType::Write as u32, 1, tx, p)
    }
}
