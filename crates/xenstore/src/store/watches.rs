//! Watches: registration per connection (with quotas), the events that changes cause,
//! and who receives them (only watchers that may read the node; `@` events only for
//! privileged connections; relative watches get relative paths).

use serde::{Deserialize, Serialize};

use super::{ok, Caller, Effect, Request, Store};
use crate::path;
use crate::perms::Perms;
use crate::wire::{Message, MsgType, XsError};

/// Watches one connection may hold, privileged or not.
pub const MAX_WATCHES_PER_CONN: usize = 65536;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watch {
    /// Absolute path or special `@` path.
    pub path: String,
    pub token: Vec<u8>,
    /// Registered with a relative path: events are reported relative too.
    pub relative: bool,
}

#[derive(Clone, Debug)]
pub(super) enum Event {
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

/// `WATCH(path, token)`: registers the watch and sends its initial event.
pub(super) fn watch(s: &mut Store, r: &mut Request<'_>) -> Result<Vec<u8>, XsError> {
    let (p, relative) = path::canonicalize_watch(r.arg(0)?, r.domid)?;
    let token = r.arg(1)?.to_vec();
    let limit = if r.privileged {
        MAX_WATCHES_PER_CONN
    } else {
        s.quota.watches
    };
    let c = s.conns.get_mut(&r.id).ok_or(XsError::EINVAL)?;
    if c.watches.iter().any(|w| w.path == p && w.token == token) {
        return Err(XsError::EEXIST);
    }
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
    r.effects
        .push(Effect::Send(r.id, watch_event_for(&w, r.domid)));
    s.stats.watch_events += 1;
    Ok(ok())
}

/// `UNWATCH(path, token)`.
pub(super) fn unwatch(s: &mut Store, r: &mut Request<'_>) -> Result<Vec<u8>, XsError> {
    let (p, _) = path::canonicalize_watch(r.arg(0)?, r.domid)?;
    let token = r.arg(1)?;
    let c = s.conns.get_mut(&r.id).ok_or(XsError::EINVAL)?;
    let before = c.watches.len();
    c.watches.retain(|w| !(w.path == p && w.token == token));
    if c.watches.len() == before {
        return Err(XsError::ENOENT);
    }
    Ok(ok())
}

/// `RESET_WATCHES`: drops the connection's watches and transactions.
pub(super) fn reset_watches(s: &mut Store, r: &mut Request<'_>) -> Result<Vec<u8>, XsError> {
    if let Some(c) = s.conns.get_mut(&r.id) {
        c.watches.clear();
        c.txns.clear();
    }
    r.tx = None;
    Ok(ok())
}

impl Store {
    /// The watch events `e` causes, appended to `out`.
    pub(super) fn fire(&mut self, e: &Event, out: &mut Vec<Effect>) {
        let mut sends = Vec::new();
        for (cid, c) in &self.conns {
            let who = Caller {
                domid: c.domid,
                privileged: c.privileged,
            };
            for w in &c.watches {
                let hit = match e {
                    Event::Special(s) => (w.path == *s && c.privileged).then(|| s.to_string()),
                    Event::Changed { path: p, perms } => (path::is_within(p, &w.path)
                        && self.access(who, perms).can_read())
                    .then(|| p.clone()),
                    Event::Removed { path: p, perms } => {
                        if !self.access(who, perms).can_read() {
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

    /// Watches of all connections.
    pub fn watch_count(&self) -> usize {
        self.conns.values().map(|c| c.watches.len()).sum()
    }
}

/// The event a watch fires at registration (and at its restoration).
pub(super) fn watch_event_for(w: &Watch, domid: u32) -> Message {
    let shown = if w.relative {
        relative_path(&w.path, domid)
    } else {
        w.path.clone()
    };
    watch_event(&shown, &w.token)
}

/// `p` relative to domain `domid`'s home, if it is inside it.
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
