//! Transactions: an overlay of written nodes and a first-read cache per transaction;
//! commit checks the generation of every node touched (Xen's conflict rule), applies
//! the overlay and fires the transaction's events.

use std::collections::HashMap;

use super::tree::Node;
use super::watches::Event;
use super::{ok, Request, Store};
use crate::wire::XsError;

/// Open transactions one connection may hold, privileged or not.
pub const MAX_TRANSACTIONS_PER_CONN: usize = 1024;

#[derive(Default, Debug)]
pub(super) struct Txn {
    /// Modified nodes (None = deleted).
    pub overlay: HashMap<String, Option<Node>>,
    /// Nodes as first read, so that reads repeat inside the transaction.
    pub reads: HashMap<String, Option<Node>>,
    /// Generation of every node the transaction read or wrote, when first accessed
    /// (0 = did not exist).
    pub seen: HashMap<String, u64>,
    /// Events to fire if the transaction commits.
    pub events: Vec<Event>,
    /// New nodes per owning domain created in this transaction (for quotas).
    pub created: HashMap<u32, isize>,
}

/// `TRANSACTION_START`: a new transaction id. Not inside a transaction (`EBUSY`).
pub(super) fn start(s: &mut Store, r: &mut Request<'_>) -> Result<Vec<u8>, XsError> {
    if r.msg.header.tx_id != 0 {
        return Err(XsError::EBUSY);
    }
    let limit = if r.privileged {
        MAX_TRANSACTIONS_PER_CONN
    } else {
        s.quota.transactions
    };
    let txid = s.next_txid.max(1);
    let c = s.conns.get_mut(&r.id).ok_or(XsError::EINVAL)?;
    if c.txns.len() >= limit {
        return Err(XsError::ENOSPC);
    }
    c.txns.insert(txid, Txn::default());
    s.next_txid = txid.wrapping_add(1).max(1);
    let mut v = txid.to_string().into_bytes();
    v.push(0);
    Ok(v)
}

/// `TRANSACTION_END(T|F)`: commit or abort; `EAGAIN` on a conflict. Either way the
/// transaction is over (unless the argument was invalid).
pub(super) fn end(s: &mut Store, r: &mut Request<'_>) -> Result<Vec<u8>, XsError> {
    let commit = match r.arg(0)? {
        b"T" => true,
        b"F" => false,
        _ => return Err(XsError::EINVAL),
    };
    let t = r.tx.take().ok_or(XsError::ENOENT)?;
    if commit {
        s.commit(t, &mut r.events)?;
    }
    Ok(ok())
}

impl Store {
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

    /// Open transactions of all connections.
    pub fn transaction_count(&self) -> usize {
        self.conns.values().map(|c| c.txns.len()).sum()
    }
}
