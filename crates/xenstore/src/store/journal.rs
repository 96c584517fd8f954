//! The store's journal: every committed change as a [`Change`] (the new state of a
//! node, a domain, or the watch set of a domain's connections), collected while a
//! request runs so that the daemon can log it durably before the reply goes out, and
//! applied again at start ([`Store::apply`]) to replay the log over a snapshot.
//!
//! Changes carry whole new states, never deltas, so applying one twice gives the same
//! store: replaying a record that a snapshot already holds is harmless.
//!
//! Also here: the watches of domain connections that survive the connection
//! ("parked" until the domain connects again, e.g. after a daemon restart), because
//! they are part of what the journal keeps.

use serde::{Deserialize, Serialize};

use super::domains::DomainInfo;
use super::tree::Node;
use super::watches::{watch_event_for, Watch};
use super::{ConnId, Effect, Store};

/// One committed change, as the new state of what changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Change {
    /// Node `path` now is `node` (`None`: removed).
    Node { path: String, node: Option<Node> },
    /// Domain `domid` is now introduced with `info` (`None`: released).
    Domain {
        domid: u32,
        info: Option<DomainInfo>,
    },
    /// The watches of domain `domid`'s connections are now `watches`.
    DomainWatches { domid: u32, watches: Vec<Watch> },
}

impl Store {
    /// Starts collecting changes for [`Store::take_changes`] (the daemon does when it
    /// keeps a log).
    pub fn enable_journal(&mut self) {
        self.journal.get_or_insert_with(Vec::new);
    }

    /// The changes committed since the last call (empty unless journaling).
    pub fn take_changes(&mut self) -> Vec<Change> {
        match self.journal.as_mut() {
            Some(j) => std::mem::take(j),
            None => Vec::new(),
        }
    }

    /// The store's generation counter (kept with logged changes).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub(super) fn journal(&mut self, c: Change) {
        if let Some(j) = self.journal.as_mut() {
            j.push(c);
        }
    }

    /// Records the current watch set of domain `domid` (after it changed).
    pub(super) fn journal_domain_watches(&mut self, domid: u32) {
        if self.journal.is_some() {
            let watches = self.domain_watches(domid);
            self.journal(Change::DomainWatches { domid, watches });
        }
    }

    /// Applies logged changes (replay at start); `generation` is the store's
    /// generation after them.
    pub fn apply(&mut self, changes: Vec<Change>, generation: u64) {
        for c in changes {
            match c {
                Change::Node { path, node } => {
                    let new_owner = node.as_ref().map(|n| n.perms.owner());
                    let old = match node {
                        Some(n) => self.nodes.insert(path, n),
                        None => self.nodes.remove(&path),
                    };
                    if let Some(o) = old {
                        self.count_owned(o.perms.owner(), -1);
                    }
                    if let Some(o) = new_owner {
                        self.count_owned(o, 1);
                    }
                }
                Change::Domain { domid, info } => match info {
                    Some(i) => {
                        self.domains.insert(domid, i);
                    }
                    None => {
                        self.domains.remove(&domid);
                    }
                },
                Change::DomainWatches { domid, watches } => {
                    if watches.is_empty() {
                        self.parked_watches.remove(&domid);
                    } else {
                        self.parked_watches.insert(domid, watches);
                    }
                }
            }
        }
        self.generation = self.generation.max(generation);
    }

    /// Watches of domain `domid`: those of its live connections and those waiting
    /// for it to connect again.
    pub fn domain_watches(&self, domid: u32) -> Vec<Watch> {
        let mut all = self.parked_watches.get(&domid).cloned().unwrap_or_default();
        for c in self.conns.values() {
            if c.domid == domid && !c.privileged {
                all.extend(c.watches.iter().cloned());
            }
        }
        all
    }

    /// Gives a new connection of a domain the watches its domain held before (across a
    /// daemon restart). Each restored watch fires once, as at registration, so that
    /// the watcher re-reads what may have changed while nobody could tell it.
    pub fn restore_parked_watches(&mut self, id: ConnId) -> Vec<Effect> {
        let Some(c) = self.conns.get_mut(&id) else {
            return Vec::new();
        };
        if c.privileged {
            return Vec::new();
        }
        let Some(watches) = self.parked_watches.remove(&c.domid) else {
            return Vec::new();
        };
        let domid = c.domid;
        let mut out = Vec::with_capacity(watches.len());
        for w in &watches {
            if !c.watches.contains(w) {
                out.push(Effect::Send(id, watch_event_for(w, domid)));
            }
        }
        for w in watches {
            if !c.watches.contains(&w) {
                c.watches.push(w);
            }
        }
        self.stats.watch_events += out.len() as u64;
        out
    }
}
