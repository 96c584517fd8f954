//! The tree: nodes with values, permissions, children and generation counts; node
//! access through a transaction or directly; permission checks; node ownership counts
//! for quotas; and the requests that read and change nodes.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::journal::Change;
use super::transactions::Txn;
use super::watches::Event;
use super::{num_arg, ok, Caller, Request, Store};
use crate::path;
use crate::perms::{Access, Perm, Perms};
use crate::wire::{XsError, PAYLOAD_MAX};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub value: Vec<u8>,
    pub perms: Perms,
    pub children: BTreeSet<String>,
    pub generation: u64,
}

impl Store {
    /// Node `p` as the request sees it: through its transaction (first read cached so
    /// that reads repeat), or the committed tree.
    pub(super) fn read(&mut self, tx: &mut Option<Txn>, p: &str) -> Option<Node> {
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

    /// Stores `node` at `p` (in the transaction's overlay, or in the tree with a new
    /// generation). `quota` applies the transaction's node limit.
    pub(super) fn put(
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
        if self.journal.is_some() {
            self.journal(Change::Node {
                path: p.to_string(),
                node: Some(node.clone()),
            });
        }
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

    pub(super) fn delete(&mut self, tx: &mut Option<Txn>, p: &str) {
        if let Some(t) = tx.as_mut() {
            let base_gen = self.nodes.get(p).map(|n| n.generation).unwrap_or(0);
            t.seen.entry(p.to_string()).or_insert(base_gen);
            t.overlay.insert(p.to_string(), None);
            return;
        }
        if let Some(old) = self.nodes.remove(p) {
            self.count_owned(old.perms.owner(), -1);
            self.journal(Change::Node {
                path: p.to_string(),
                node: None,
            });
        }
    }

    pub(super) fn count_owned(&mut self, domid: u32, delta: isize) {
        let e = self.owned.entry(domid).or_insert(0);
        *e = (*e as isize + delta).max(0) as usize;
    }

    /// What `who` may do with a node of permissions `perms`.
    pub(super) fn access(&self, who: Caller, perms: &Perms) -> Access {
        let a = perms.access_for(who.domid, who.privileged);
        if a == Access::Both {
            return a;
        }
        // A domain with a target (a device model) acts for its target as well.
        match self.domains.get(&who.domid).and_then(|d| d.target) {
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

    fn readable(&mut self, who: Caller, tx: &mut Option<Txn>, p: &str) -> Result<Node, XsError> {
        let n = self.read(tx, p).ok_or(XsError::ENOENT)?;
        if !self.access(who, &n.perms).can_read() {
            return Err(XsError::EACCES);
        }
        Ok(n)
    }

    /// Creates `p` and its missing ancestors; returns the (new or existing) node.
    fn create(&mut self, who: Caller, tx: &mut Option<Txn>, p: &str) -> Result<Node, XsError> {
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
        if !self.access(who, &parent.perms).can_write() {
            return Err(XsError::EACCES);
        }
        if !who.privileged {
            let already = self.owned.get(&who.domid).copied().unwrap_or(0) as isize
                + tx.as_ref()
                    .and_then(|t| t.created.get(&who.domid))
                    .copied()
                    .unwrap_or(0);
            if already + missing.len() as isize > self.quota.nodes as isize {
                return Err(XsError::ENOSPC);
            }
        }
        let mut created = None;
        for m in missing.into_iter().rev() {
            let mut perms = parent.perms.clone();
            if !who.privileged {
                if let Some(first) = perms.0.first_mut() {
                    first.domid = who.domid;
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
}

// ---------------------------------------------------------------- requests

pub(super) fn read(s: &mut Store, r: &mut Request<'_>) -> Result<Vec<u8>, XsError> {
    let p = r.path_arg(0)?;
    Ok(s.readable(r.caller(), &mut r.tx, &p)?.value)
}

fn children_bytes(n: &Node) -> Vec<u8> {
    let mut v = Vec::new();
    for c in &n.children {
        v.extend_from_slice(c.as_bytes());
        v.push(0);
    }
    v
}

pub(super) fn directory(s: &mut Store, r: &mut Request<'_>) -> Result<Vec<u8>, XsError> {
    let p = r.path_arg(0)?;
    let n = s.readable(r.caller(), &mut r.tx, &p)?;
    let v = children_bytes(&n);
    if v.len() > PAYLOAD_MAX {
        return Err(XsError::E2BIG);
    }
    Ok(v)
}

pub(super) fn directory_part(s: &mut Store, r: &mut Request<'_>) -> Result<Vec<u8>, XsError> {
    let p = r.path_arg(0)?;
    let offset: usize = num_arg(r.arg(1)?)?;
    let n = s.readable(r.caller(), &mut r.tx, &p)?;
    let all = children_bytes(&n);
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

pub(super) fn get_perms(s: &mut Store, r: &mut Request<'_>) -> Result<Vec<u8>, XsError> {
    let p = r.path_arg(0)?;
    Ok(s.readable(r.caller(), &mut r.tx, &p)?.perms.to_wire())
}

pub(super) fn write(s: &mut Store, r: &mut Request<'_>) -> Result<Vec<u8>, XsError> {
    let p = r.path_arg(0)?;
    let who = r.caller();
    // The value is everything after the path's NUL (it may contain NULs).
    let plen = r.arg(0)?.len();
    let value = r.msg.payload.get(plen + 1..).unwrap_or(&[]).to_vec();
    if !who.privileged && value.len() > s.quota.node_size {
        return Err(XsError::ENOSPC);
    }
    let mut n = match s.read(&mut r.tx, &p) {
        Some(n) => {
            if !s.access(who, &n.perms).can_write() {
                return Err(XsError::EACCES);
            }
            n
        }
        None => s.create(who, &mut r.tx, &p)?,
    };
    n.value = value;
    let perms = n.perms.clone();
    s.put(&mut r.tx, &p, n, true)?;
    r.emit(Event::Changed { path: p, perms });
    Ok(ok())
}

pub(super) fn mkdir(s: &mut Store, r: &mut Request<'_>) -> Result<Vec<u8>, XsError> {
    let p = r.path_arg(0)?;
    if s.read(&mut r.tx, &p).is_some() {
        return Ok(ok());
    }
    let n = s.create(r.caller(), &mut r.tx, &p)?;
    r.emit(Event::Changed {
        path: p,
        perms: n.perms,
    });
    Ok(ok())
}

pub(super) fn rm(s: &mut Store, r: &mut Request<'_>) -> Result<Vec<u8>, XsError> {
    let p = r.path_arg(0)?;
    if p == "/" {
        return Err(XsError::EINVAL);
    }
    let Some(n) = s.read(&mut r.tx, &p) else {
        // Xen: removing a missing node is fine if its parent exists.
        let parent = path::parent(&p).ok_or(XsError::EINVAL)?;
        return match s.read(&mut r.tx, parent) {
            Some(_) => Ok(ok()),
            None => Err(XsError::ENOENT),
        };
    };
    if !s.access(r.caller(), &n.perms).can_write() {
        return Err(XsError::EACCES);
    }
    let parent_path = path::parent(&p).ok_or(XsError::EINVAL)?.to_string();
    let mut parent = s.read(&mut r.tx, &parent_path).ok_or(XsError::ENOENT)?;
    s.remove_subtree(&mut r.tx, &p);
    parent.children.remove(path::basename(&p));
    s.put(&mut r.tx, &parent_path, parent, false)?;
    r.emit(Event::Removed {
        path: p,
        perms: n.perms,
    });
    Ok(ok())
}

pub(super) fn set_perms(s: &mut Store, r: &mut Request<'_>) -> Result<Vec<u8>, XsError> {
    let p = r.path_arg(0)?;
    let who = r.caller();
    let list: Result<Vec<Perm>, XsError> =
        r.fields.iter().skip(1).map(|e| Perm::parse(e)).collect();
    let list = list?;
    if list.is_empty() || (!who.privileged && list.len() > s.quota.perms) {
        return Err(XsError::EINVAL);
    }
    let mut n = s.read(&mut r.tx, &p).ok_or(XsError::ENOENT)?;
    if !who.privileged && n.perms.owner() != who.domid {
        return Err(XsError::EACCES);
    }
    // Xen (`do_set_perms`): an unprivileged connection may not change the owner. The
    // owner is charged for the node in the node quota, so giving nodes away would
    // escape one's own quota and exhaust another domain's.
    let new_perms = Perms(list);
    if !who.privileged && new_perms.owner() != n.perms.owner() {
        return Err(XsError::EPERM);
    }
    // A change of owner (domain 0 only) moves the node's charge to the new owner
    // (`put`, at once or at the transaction's commit).
    n.perms = new_perms;
    let perms = n.perms.clone();
    s.put(&mut r.tx, &p, n, true)?;
    r.emit(Event::Changed { path: p, perms });
    Ok(ok())
}
