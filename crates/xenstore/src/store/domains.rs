//! Domains: introduction and release (with the `@introduceDomain`/`@releaseDomain`
//! events and the daemon's domain sockets), targets of device-model domains, domain
//! paths, and the quotas that limit unprivileged domains.

use serde::{Deserialize, Serialize};

use super::journal::Change;
use super::watches::Event;
use super::{num_arg, ok, ConnId, Effect, Request, Store};
use crate::path::{self, INTRODUCE_DOMAIN, RELEASE_DOMAIN};
use crate::wire::XsError;

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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainInfo {
    pub mfn: u64,
    pub evtchn: u32,
    pub target: Option<u32>,
}

/// `INTRODUCE(domid, mfn, evtchn)`; repeating it with the same values is fine (after
/// a daemon restart the toolstack introduces its domains again): no event, but the
/// daemon makes sure the domain's socket is there.
pub(super) fn introduce(s: &mut Store, r: &mut Request<'_>) -> Result<Vec<u8>, XsError> {
    let domid: u32 = num_arg(r.arg(0)?)?;
    let mfn: u64 = num_arg(r.arg(1)?)?;
    let evtchn: u32 = num_arg(r.arg(2)?)?;
    if domid == 0 || domid >= 0x7FF0 {
        return Err(XsError::EINVAL);
    }
    if let Some(d) = s.domains.get(&domid) {
        return if d.mfn == mfn && d.evtchn == evtchn {
            r.effects.push(Effect::DomainIntroduced(domid));
            Ok(ok())
        } else {
            Err(XsError::EEXIST)
        };
    }
    let info = DomainInfo {
        mfn,
        evtchn,
        target: None,
    };
    s.domains.insert(domid, info.clone());
    s.journal(Change::Domain {
        domid,
        info: Some(info),
    });
    r.events.push(Event::Special(INTRODUCE_DOMAIN));
    r.effects.push(Effect::DomainIntroduced(domid));
    Ok(ok())
}

/// `RELEASE(domid)`: forgets the domain and closes its connections.
pub(super) fn release(s: &mut Store, r: &mut Request<'_>) -> Result<Vec<u8>, XsError> {
    let domid: u32 = num_arg(r.arg(0)?)?;
    if s.domains.remove(&domid).is_none() {
        return Err(XsError::ENOENT);
    }
    let gone: Vec<ConnId> = s
        .conns
        .iter()
        .filter(|(_, c)| c.domid == domid && !c.privileged)
        .map(|(k, _)| *k)
        .collect();
    for g in gone {
        s.conns.remove(&g);
    }
    s.parked_watches.remove(&domid);
    s.journal(Change::Domain { domid, info: None });
    s.journal_domain_watches(domid);
    r.events.push(Event::Special(RELEASE_DOMAIN));
    r.effects.push(Effect::DomainReleased(domid));
    Ok(ok())
}

pub(super) fn get_domain_path(_: &mut Store, r: &mut Request<'_>) -> Result<Vec<u8>, XsError> {
    let domid: u32 = num_arg(r.arg(0)?)?;
    let mut v = path::domain_path(domid).into_bytes();
    v.push(0);
    Ok(v)
}

pub(super) fn is_domain_introduced(s: &mut Store, r: &mut Request<'_>) -> Result<Vec<u8>, XsError> {
    let domid: u32 = num_arg(r.arg(0)?)?;
    let yes = domid == 0 || s.domains.contains_key(&domid);
    Ok(if yes {
        b"T\0".to_vec()
    } else {
        b"F\0".to_vec()
    })
}

pub(super) fn resume(s: &mut Store, r: &mut Request<'_>) -> Result<Vec<u8>, XsError> {
    let domid: u32 = num_arg(r.arg(0)?)?;
    if !s.domains.contains_key(&domid) {
        return Err(XsError::ENOENT);
    }
    Ok(ok())
}

/// `SET_TARGET(domid, target)`: `domid` (a device model) acts for `target` too.
pub(super) fn set_target(s: &mut Store, r: &mut Request<'_>) -> Result<Vec<u8>, XsError> {
    let domid: u32 = num_arg(r.arg(0)?)?;
    let target: u32 = num_arg(r.arg(1)?)?;
    if !s.domains.contains_key(&target) {
        return Err(XsError::ENOENT);
    }
    let d = s.domains.get_mut(&domid).ok_or(XsError::ENOENT)?;
    d.target = Some(target);
    let info = Some(d.clone());
    s.journal(Change::Domain { domid, info });
    Ok(ok())
}
