//! The store: a tree of nodes with permissions and generation counts, transactions
//! with conflict detection, watches, domains and quotas. [`Store::handle`] executes one
//! request of one connection and returns what to send to whom; it never blocks and
//! never panics on client input.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::path::{self, INTRODUCE_DOMAIN, RELEASE_DOMAIN};
use crate::perms::{Access, Perm, Perms};
use crate::wire::{Message, MsgType, XsError, PAYLOAD_MAX};

/// Identifies a client connection.
pub type ConnId = u64;

/// Limits for unprivileged domains (domain 0 is not limited).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Quota {
    /// Nodes a domain may own.
    pub nodes: usize,
    /// Bytes of one node's value.
    pub node_size: usize,
    /// Watches per connection.
    pub watches: usize,
    /// Open transactions per connection.
    pub transactions: usize,
    /// Nodes one transaction may touch.
    pub transaction_nodes: usize,
    /// Permission entries per node.
    pub perms: usize,
}

impl Default for Quota {
    fn default() -> Self {
        Quota {
            nodes: 1000,
            node_size: 2048,
            watches: 128,
            transactions: 10,
            transaction_nodes: 1024,
            perms: 5,
        }
    }
}

/// Hard limits that apply to every connection, privileged or not.
pub const MAX_WATCHES_PER_CONN: usize = 65536;
pub const MAX_TRANSACTIONS_PER_CONN: usize = 1024;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Node {
    pub value: Vec<u8>,
    pub perms: Perms,
    pub children: BTreeSet<String>,
    pub generation: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watch {
    /// Absolute path or special `@` path.
    pub path: String,
    pub token: Vec<u8>,
    /// Registered with a relative path: events are reported relative too.
    pub relative: bool,
}

#[derive(Default, Debug)]
struct Txn {
    /// Modified nodes (None = deleted).
    overlay: HashMap<String, Option<Node>>,
    /// Nodes as first read, so that reads repeat inside the transaction.
    reads: HashMap<String, Option<Node>>,
    /// Generation of every node the transaction read or wrote, when first accessed
    /// (0 = did not exist).
    seen: HashMap<String, u64>,
    /// Events to fire if the transaction commits.
    events: Vec<Event>,
    /// New nodes per owning domain created in this transaction (for quotas).
    created: HashMap<u32, isize>,
}

/// A connection's identity and state.
#[derive(Debug)]
pub struct Conn {
    pub domid: u32,
    pub privileged: bool,
    pub watches: Vec<Watch>,
    txns: HashMap<u32, Txn>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DomainInfo {
    pub mfn: u64,
    pub evtchn: u32,
    pub target: Option<u32>,
}

#[derive(Clone, Debug)]
enum Event {
    /// Node written, created, or its permissions changed (perms used for the read check).
    Changed {
        path: String,
        perms: Perms,
    },
    /// Subtree removed.
    Removed {
        path: String,
        perms: Perms,
    },
    Special(&'static str),
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
        self.conns.remove(&id);
    }

    /// Watches of a connection (for persistence).
    pub fn watches_of(&self, id: ConnId) -> Vec<Watch> {
        self.conns
            .get(&id)
            .map(|c| c.watches.clone())
            .unwrap_or_default()
    }

    /// Restores watches of a connection (after a daemon restart).
    pub fn restore_watches(&mut self, id: ConnId, watches: Vec<Watch>) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.watches = watches;
        }
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

    // ---------------------------------------------------------------- node access

    fn read(&mut self, tx: &mut Option<Txn>, p: &str) -> Option<Node> {
        if let Some(t) = tx.as_mut() {
            if let Some(n) = t.overlay.get(p) {
                return n.clone();
            }
            if let Some(n) = t.reads.get(p) {
                return n.clone();
            }
            let n = self.nodes.get(p).cloned();
            t.seen
                .entry(p.to_string())
                .or_insert(n.as_ref().map(|n| n.generation).unwrap_or(0));
            t.reads.insert(p.to_string(), n.clone());
            return n;
        }
        self.nodes.get(p).cloned()
    }

    fn put(
        &mut self,
        tx: &mut Option<Txn>,
        p: &str,
        mut node: Node,
        quota: bool,
    ) -> Result<(), XsError> {
        if let Some(t) = tx.as_mut() {
            let base_gen = self.nodes.get(p).map(|n| n.generation).unwrap_or(0);
            t.seen.entry(p.to_string()).or_insert(base_gen);
            if quota
                && !t.overlay.contains_key(p)
                && t.overlay.len() >= self.quota.transaction_nodes
            {
                return Err(XsError::ENOSPC);
            }
            t.overlay.insert(p.to_string(), Some(node));
            return Ok(());
        }
        self.generation += 1;
        node.generation = self.generation;
        let new_owner = node.perms.owner();
        if let Some(old) = self.nodes.insert(p.to_string(), node) {
            let old_owner = old.perms.owner();
            if old_owner != new_owner {
                self.count_owned(old_owner, -1);
                self.count_owned(new_owner, 1);
            }
        } else {
            self.count_owned(new_owner, 1);
        }
        Ok(())
    }

    fn delete(&mut self, tx: &mut Option<Txn>, p: &str) {
        if let Some(t) = tx.as_mut() {
            let base_gen = self.nodes.get(p).map(|n| n.generation).unwrap_or(0);
            t.seen.entry(p.to_string()).or_insert(base_gen);
            t.overlay.insert(p.to_string(), None);
            return;
        }
        if let Some(old) = self.nodes.remove(p) {
            self.count_owned(old.perms.owner(), -1);
        }
    }

    fn count_owned(&mut self, domid: u32, delta: isize) {
        let e = self.owned.entry(domid).or_insert(0);
        *e = (*e as isize + delta).max(0) as usize;
    }

    fn access(&self, conn: &Conn, perms: &Perms) -> Access {
        let a = perms.access_for(conn.domid, conn.privileged);
        if a == Access::Both {
            return a;
        }
        // A domain with a target (a device model) acts for its target as well.
        match self.domains.get(&conn.domid).and_then(|d| d.target) {
            Some(t) if perms.owner() == t => Access::Both,
            Some(t) => {
                let b = perms.access_for(t, false);
                match (a.can_read() || b.can_read(), a.can_write() || b.can_write()) {
                    (true, true) => Access::Both,
                    (true, false) => Access::Read,
                    (false, true) => Access::Write,
                    _ => Access::None,
                }
            }
            None => a,
        }
    }

    fn readable(&mut self, conn: &Conn, tx: &mut Option<Txn>, p: &str) -> Result<Node, XsError> {
        let n = self.read(tx, p).ok_or(XsError::ENOENT)?;
        if !self.access(conn, &n.perms).can_read() {
            return Err(XsError::EACCES);
        }
        Ok(n)
    }

    /// Creates `p` and its missing ancestors; returns the (new or existing) node.
    fn create(&mut self, conn: &Conn, tx: &mut Option<Txn>, p: &str) -> Result<Node, XsError> {
        if let Some(n) = self.read(tx, p) {
            return Ok(n);
        }
        let mut missing = vec![p.to_string()];
        let mut anc = path::parent(p);
        let parent_node = loop {
            let a = anc.ok_or(XsError::ENOENT)?;
            match self.read(tx, a) {
                Some(n) => break (a.to_string(), n),
                None => {
                    missing.push(a.to_string());
                    anc = path::parent(a);
                }
            }
        };
        let (mut parent_path, mut parent) = parent_node;
        if !self.access(conn, &parent.perms).can_write() {
            return Err(XsError::EACCES);
        }
        if !conn.privileged {
            let already = self.owned.get(&conn.domid).copied().unwrap_or(0) as isize
                + tx.as_ref()
                    .and_then(|t| t.created.get(&conn.domid))
                    .copied()
                    .unwrap_or(0);
            if already + missing.len() as isize > self.quota.nodes as isize {
                return Err(XsError::ENOSPC);
            }
        }
        let mut created = None;
        for m in missing.into_iter().rev() {
            let mut perms = parent.perms.clone();
            if !conn.privileged {
                if let Some(first) = perms.0.first_mut() {
                    first.domid = conn.domid;
                }
            }
            let node = Node {
                value: Vec::new(),
                perms,
                children: BTreeSet::new(),
                generation: 0,
            };
            parent.children.insert(path::basename(&m).to_string());
            self.put(tx, &parent_path, parent, true)?;
            if let Some(t) = tx.as_mut() {
                *t.created.entry(node.perms.owner()).or_insert(0) += 1;
            }
            self.put(tx, &m, node.clone(), true)?;
            parent_path = m;
            parent = node.clone();
            created = Some(node);
        }
        created.ok_or(XsError::ENOENT)
    }

    fn remove_subtree(&mut self, tx: &mut Option<Txn>, p: &str) {
        if let Some(n) = self.read(tx, p) {
            for c in &n.children {
                let cp = path::join(p, c);
                self.remove_subtree(tx, &cp);
            }
            self.delete(tx, p);
        }
    }

    // ---------------------------------------------------------------- requests

    /// Executes one request of connection `id`.
    pub fn handle(&mut self, id: ConnId, msg: &Message) -> Vec<Effect> {
        self.stats.requests += 1;
        let Some(conn) = self.conns.get(&id) else {
            return Vec::new();
        };
        let conn = Conn {
            domid: conn.domid,
            privileged: conn.privileged,
            watches: Vec::new(),
            txns: HashMap::new(),
        };
        let txid = msg.header.tx_id;
        let mtype = MsgType::from_u32(msg.header.msg_type);
        // Take the transaction out of the connection while the request runs.
        let mut tx = None;
        // WATCH and UNWATCH ignore the transaction id, as Xen's (XS_FLAG_NOTID).
        let uses_txid = !matches!(
            mtype,
            Some(MsgType::TransactionStart | MsgType::Watch | MsgType::Unwatch)
        );
        if txid != 0 && uses_txid {
            match self.conns.get_mut(&id).and_then(|c| c.txns.remove(&txid)) {
                Some(t) => tx = Some(t),
                None => return vec![self.error(id, msg, XsError::ENOENT)],
            }
        }
        let mut effects = Vec::new();
        let mut events = Vec::new();
        let result = match mtype {
            Some(t) => self.dispatch(id, &conn, t, msg, &mut tx, &mut events, &mut effects),
            None => Err(XsError::EINVAL),
        };
        // A transaction that was not ended goes back to its connection.
        let ended = matches!(mtype, Some(MsgType::TransactionEnd)) && result.is_ok();
        if let (Some(t), false) = (tx, ended) {
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
        for e in events {
            self.fire(&e, &mut out);
        }
        out.extend(effects);
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

    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        &mut self,
        id: ConnId,
        conn: &Conn,
        t: MsgType,
        msg: &Message,
        tx: &mut Option<Txn>,
        events: &mut Vec<Event>,
        effects: &mut Vec<Effect>,
    ) -> Result<Vec<u8>, XsError> {
        let f = msg.fields();
        let arg = |i: usize| f.get(i).copied().ok_or(XsError::EINVAL);
        let path_arg = |i: usize| arg(i).and_then(|a| path::canonicalize(a, conn.domid));
        // Events of a transaction wait for its commit.
        fn emit(e: Event, tx: &mut Option<Txn>, events: &mut Vec<Event>) {
            match tx.as_mut() {
                Some(t) => t.events.push(e),
                None => events.push(e),
            }
        }
        match t {
            MsgType::Read => {
                let p = path_arg(0)?;
                Ok(self.readable(conn, tx, &p)?.value)
            }
            MsgType::Directory => {
                let p = path_arg(0)?;
                let n = self.readable(conn, tx, &p)?;
                let mut v = Vec::new();
                for c in &n.children {
                    v.extend_from_slice(c.as_bytes());
                    v.push(0);
                }
                if v.len() > PAYLOAD_MAX {
                    return Err(XsError::E2BIG);
                }
                Ok(v)
            }
            MsgType::DirectoryPart => {
                let p = path_arg(0)?;
                let offset: usize = num_arg(arg(1)?)?;
                let n = self.readable(conn, tx, &p)?;
                let mut all = Vec::new();
                for c in &n.children {
                    all.extend_from_slice(c.as_bytes());
                    all.push(0);
                }
                if offset > all.len() {
                    return Err(XsError::EINVAL);
                }
                let mut out = format!("{}", n.generation).into_bytes();
                out.push(0);
                let room = PAYLOAD_MAX - out.len() - 1;
                let rest = &all[offset..];
                if rest.len() <= room {
                    out.extend_from_slice(rest);
                    out.push(0);
                } else {
                    // Cut at the last child boundary that fits.
                    let cut = rest[..room]
                        .iter()
                        .rposition(|&b| b == 0)
                        .map(|i| i + 1)
                        .unwrap_or(0);
                    out.extend_from_slice(&rest[..cut]);
                }
                Ok(out)
            }
            MsgType::GetPerms => {
                let p = path_arg(0)?;
                Ok(self.readable(conn, tx, &p)?.perms.to_wire())
            }
            MsgType::Write => {
                let p = path_arg(0)?;
                // The value is everything after the path's NUL (it may contain NULs).
                let plen = arg(0)?.len();
                let value = msg.payload.get(plen + 1..).unwrap_or(&[]).to_vec();
                if !conn.privileged && value.len() > self.quota.node_size {
                    return Err(XsError::ENOSPC);
                }
                let mut n = match self.read(tx, &p) {
                    Some(n) => {
                        if !self.access(conn, &n.perms).can_write() {
                            return Err(XsError::EACCES);
                        }
                        n
                    }
                    None => self.create(conn, tx, &p)?,
                };
                n.value = value;
                let perms = n.perms.clone();
                self.put(tx, &p, n, true)?;
                emit(Event::Changed { path: p, perms }, tx, events);
                Ok(ok())
            }
            MsgType::Mkdir => {
                let p = path_arg(0)?;
                if self.read(tx, &p).is_some() {
                    return Ok(ok());
                }
                let n = self.create(conn, tx, &p)?;
                emit(
                    Event::Changed {
                        path: p,
                        perms: n.perms,
                    },
                    tx,
                    events,
                );
                Ok(ok())
            }
            MsgType::Rm => {
                let p = path_arg(0)?;
                if p == "/" {
                    return Err(XsError::EINVAL);
                }
                let Some(n) = self.read(tx, &p) else {
                    // Xen: removing a missing node is fine if its parent exists.
                    let parent = path::parent(&p).ok_or(XsError::EINVAL)?;
                    return match self.read(tx, parent) {
                        Some(_) => Ok(ok()),
                        None => Err(XsError::ENOENT),
                    };
                };
                if !self.access(conn, &n.perms).can_write() {
                    return Err(XsError::EACCES);
                }
                let parent_path = path::parent(&p).ok_or(XsError::EINVAL)?.to_string();
                let mut parent = self.read(tx, &parent_path).ok_or(XsError::ENOENT)?;
                self.remove_subtree(tx, &p);
                parent.children.remove(path::basename(&p));
                self.put(tx, &parent_path, parent, false)?;
                emit(
                    Event::Removed {
                        path: p,
                        perms: n.perms,
                    },
                    tx,
                    events,
                );
                Ok(ok())
            }
            MsgType::SetPerms => {
                let p = path_arg(0)?;
                let list: Result<Vec<Perm>, XsError> =
                    f.iter().skip(1).map(|e| Perm::parse(e)).collect();
                let list = list?;
                if list.is_empty() || (!conn.privileged && list.len() > self.quota.perms) {
                    return Err(XsError::EINVAL);
                }
                let mut n = self.read(tx, &p).ok_or(XsError::ENOENT)?;
                if !conn.privileged && n.perms.owner() != conn.domid {
                    return Err(XsError::EACCES);
                }
                n.perms = Perms(list);
                let perms = n.perms.clone();
                self.put(tx, &p, n, true)?;
                emit(Event::Changed { path: p, perms }, tx, events);
                Ok(ok())
            }
            MsgType::Watch => {
                let (p, relative) = path::canonicalize_watch(arg(0)?, conn.domid)?;
                let token = arg(1)?.to_vec();
                let c = self.conns.get_mut(&id).ok_or(XsError::EINVAL)?;
                if c.watches.iter().any(|w| w.path == p && w.token == token) {
                    return Err(XsError::EEXIST);
                }
                let limit = if conn.privileged {
                    MAX_WATCHES_PER_CONN
                } else {
                    self.quota.watches
                };
                if c.watches.len() >= limit {
                    return Err(XsError::E2BIG);
                }
                let w = Watch {
                    path: p,
                    token,
                    relative,
                };
                c.watches.push(w.clone());
                // The initial event, as Xen sends it.
                let shown = if w.relative {
                    relative_path(&w.path, conn.domid)
                } else {
                    w.path.clone()
                };
                effects.push(Effect::Send(id, watch_event(&shown, &w.token)));
                self.stats.watch_events += 1;
                Ok(ok())
            }
            MsgType::Unwatch => {
                let (p, _) = path::canonicalize_watch(arg(0)?, conn.domid)?;
                let token = arg(1)?;
                let c = self.conns.get_mut(&id).ok_or(XsError::EINVAL)?;
                let before = c.watches.len();
                c.watches.retain(|w| !(w.path == p && w.token == token));
                if c.watches.len() == before {
                    return Err(XsError::ENOENT);
                }
                Ok(ok())
            }
            MsgType::ResetWatches => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.watches.clear();
                    c.txns.clear();
                }
                *tx = None;
                Ok(ok())
            }
            MsgType::TransactionStart => {
                if msg.header.tx_id != 0 {
                    return Err(XsError::EBUSY);
                }
                let limit = if conn.privileged {
                    MAX_TRANSACTIONS_PER_CONN
                } else {
                    self.quota.transactions
                };
                let txid = self.next_txid.max(1);
                let c = self.conns.get_mut(&id).ok_or(XsError::EINVAL)?;
                if c.txns.len() >= limit {
                    return Err(XsError::ENOSPC);
                }
                c.txns.insert(txid, Txn::default());
                self.next_txid = txid.wrapping_add(1).max(1);
                let mut v = txid.to_string().into_bytes();
                v.push(0);
                Ok(v)
            }
            MsgType::TransactionEnd => {
                let commit = match arg(0)? {
                    b"T" => true,
                    b"F" => false,
                    _ => return Err(XsError::EINVAL),
                };
                let t = tx.take().ok_or(XsError::ENOENT)?;
                if commit {
                    self.commit(t, events)?;
                }
                Ok(ok())
            }
            MsgType::Introduce => {
                self.need_privilege(conn)?;
                let domid: u32 = num_arg(arg(0)?)?;
                let mfn: u64 = num_arg(arg(1)?)?;
                let evtchn: u32 = num_arg(arg(2)?)?;
                if domid == 0 || domid >= 0x7FF0 {
                    return Err(XsError::EINVAL);
                }
                if let Some(d) = self.domains.get(&domid) {
                    return if d.mfn == mfn && d.evtchn == evtchn {
                        Ok(ok())
                    } else {
                        Err(XsError::EEXIST)
                    };
                }
                self.domains.insert(
                    domid,
                    DomainInfo {
                        mfn,
                        evtchn,
                        target: None,
                    },
                );
                events.push(Event::Special(INTRODUCE_DOMAIN));
                effects.push(Effect::DomainIntroduced(domid));
                Ok(ok())
            }
            MsgType::Release => {
                self.need_privilege(conn)?;
                let domid: u32 = num_arg(arg(0)?)?;
                if self.domains.remove(&domid).is_none() {
                    return Err(XsError::ENOENT);
                }
                let gone: Vec<ConnId> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.domid == domid && !c.privileged)
                    .map(|(k, _)| *k)
                    .collect();
                for g in gone {
                    self.conns.remove(&g);
                }
                events.push(Event::Special(RELEASE_DOMAIN));
                effects.push(Effect::DomainReleased(domid));
                Ok(ok())
            }
            MsgType::GetDomainPath => {
                let domid: u32 = num_arg(arg(0)?)?;
                let mut v = path::domain_path(domid).into_bytes();
                v.push(0);
                Ok(v)
            }
            MsgType::IsDomainIntroduced => {
                let domid: u32 = num_arg(arg(0)?)?;
                let yes = domid == 0 || self.domains.contains_key(&domid);
                Ok(if yes {
                    b"T\0".to_vec()
                } else {
                    b"F\0".to_vec()
                })
            }
            MsgType::Resume => {
                self.need_privilege(conn)?;
                let domid: u32 = num_arg(arg(0)?)?;
                if !self.domains.contains_key(&domid) {
                    return Err(XsError::ENOENT);
                }
                Ok(ok())
            }
            MsgType::SetTarget => {
                self.need_privilege(conn)?;
                let domid: u32 = num_arg(arg(0)?)?;
                let target: u32 = num_arg(arg(1)?)?;
                if !self.domains.contains_key(&target) {
                    return Err(XsError::ENOENT);
                }
                let d = self.domains.get_mut(&domid).ok_or(XsError::ENOENT)?;
                d.target = Some(target);
                Ok(ok())
            }
            MsgType::Control => {
                self.need_privilege(conn)?;
                self.control(&f)
            }
            MsgType::GetFeature | MsgType::SetFeature | MsgType::GetQuota | MsgType::SetQuota => {
                Err(XsError::ENOSYS)
            }
            MsgType::WatchEvent | MsgType::Error => Err(XsError::EINVAL),
        }
    }

    fn need_privilege(&self, conn: &Conn) -> Result<(), XsError> {
        if conn.privileged {
            Ok(())
        } else {
            Err(XsError::EACCES)
        }
    }

    fn commit(&mut self, t: Txn, events: &mut Vec<Event>) -> Result<(), XsError> {
        for (p, g) in &t.seen {
            let now = self.nodes.get(p).map(|n| n.generation).unwrap_or(0);
            if now != *g {
                self.stats.conflicts += 1;
                return Err(XsError::EAGAIN);
            }
        }
        let mut none = None;
        // Parents before children, so every node's parent exists when it lands.
        let mut changes: Vec<_> = t.overlay.into_iter().collect();
        changes.sort_by(|a, b| a.0.cmp(&b.0));
        for (p, n) in changes {
            match n {
                Some(n) => {
                    let _ = self.put(&mut none, &p, n, false);
                }
                None => self.delete(&mut none, &p),
            }
        }
        events.extend(t.events);
        Ok(())
    }

    fn control(&mut self, f: &[&[u8]]) -> Result<Vec<u8>, XsError> {
        let cmd = f.first().map(|c| str_arg(c)).transpose()?.unwrap_or("help");
        let text = match cmd {
            "check" => self.check_consistency(),
            "quota" => {
                let mut s = format!(
                    "limits: nodes={} node_size={} watches={} transactions={} transaction_nodes={} perms={}\n",
                    self.quota.nodes, self.quota.node_size, self.quota.watches, self.quota.transactions, self.quota.transaction_nodes, self.quota.perms
                );
                let mut owned: Vec<_> = self.owned.iter().filter(|(_, n)| **n > 0).collect();
                owned.sort();
                for (d, n) in owned {
                    s.push_str(&format!("domain {d}: nodes={n}\n"));
                }
                s
            }
            "stats" => format!(
                "nodes={} connections={} domains={} watches={} requests={} errors={} watch_events={} conflicts={} transactions={}\n",
                self.nodes.len(),
                self.conns.len(),
                self.domains.len(),
                self.conns.values().map(|c| c.watches.len()).sum::<usize>(),
                self.stats.requests,
                self.stats.errors,
                self.stats.watch_events,
                self.stats.conflicts,
                self.conns.values().map(|c| c.txns.len()).sum::<usize>()
            ),
            "help" => "commands: check (consistency check), quota (limits and usage), stats (counters), help\n".to_string(),
            _ => return Err(XsError::EINVAL),
        };
        let mut v = text.into_bytes();
        v.truncate(PAYLOAD_MAX - 1);
        v.push(0);
        Ok(v)
    }

    /// Verifies that every node's parent lists it and every listed child exists.
    pub fn check_consistency(&self) -> String {
        let mut problems = Vec::new();
        for (p, n) in &self.nodes {
            if let Some(par) = path::parent(p) {
                match self.nodes.get(par) {
                    Some(pn) if pn.children.contains(path::basename(p)) => {}
                    _ => problems.push(format!("{p}: not listed by its parent")),
                }
            }
            for c in &n.children {
                if !self.nodes.contains_key(&path::join(p, c)) {
                    problems.push(format!("{p}: child {c} missing"));
                }
            }
        }
        if problems.is_empty() {
            "OK\n".into()
        } else {
            problems.truncate(50);
            problems.join("\n") + "\n"
        }
    }

    fn fire(&mut self, e: &Event, out: &mut Vec<Effect>) {
        let mut sends = Vec::new();
        for (cid, c) in &self.conns {
            for w in &c.watches {
                let hit = match e {
                    Event::Special(s) => (w.path == *s && c.privileged).then(|| s.to_string()),
                    Event::Changed { path: p, perms } => (path::is_within(p, &w.path)
                        && self.access(c, perms).can_read())
                    .then(|| p.clone()),
                    Event::Removed { path: p, perms } => {
                        if !self.access(c, perms).can_read() {
                            None
                        } else if path::is_within(p, &w.path) {
                            Some(p.clone())
                        } else if path::is_within(&w.path, p) {
                            Some(w.path.clone())
                        } else {
                            None
                        }
                    }
                };
                if let Some(p) = hit {
                    let shown = if w.relative {
                        relative_path(&p, c.domid)
                    } else {
                        p
                    };
                    sends.push(Effect::Send(*cid, watch_event(&shown, &w.token)));
                }
            }
        }
        self.stats.watch_events += sends.len() as u64;
        out.extend(sends);
    }

    // ---------------------------------------------------------------- persistence

    /// The persistent part of the store.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            nodes: self.nodes.clone(),
            domains: self.domains.clone(),
            generation: self.generation,
            quota: self.quota.clone(),
            domain_watches: BTreeMap::new(),
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
}

fn relative_path(p: &str, domid: u32) -> String {
    let home = path::domain_path(domid);
    match p.strip_prefix(&home).and_then(|r| r.strip_prefix('/')) {
        Some(r) => r.to_string(),
        None => p.to_string(),
    }
}

fn watch_event(p: &str, token: &[u8]) -> Message {
    let mut v = p.as_bytes().to_vec();
    v.push(0);
    v.extend_from_slice(token);
    v.push(0);
    Message::new(MsgType::WatchEvent as u32, 0, 0, v)
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
