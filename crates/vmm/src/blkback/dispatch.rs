//! Turns a ring slot into a [`Job`] on the ring's thread: validation
//! ([`request::parse`]), the indirect pages read (by persistent mapping or grant copy)
//! and checked, and each segment's page resolved (persistently mapped when
//! `feature-persistent` was negotiated, else by grant copy). A refusal becomes the
//! response at once; nothing is executed here.

use rxen_abi::blkif::{BlkifRequest, BlkifResponse};
use rxen_abi::PAGE_SIZE;

use super::io::{self, Job, Page};
use super::persistent::PersistentGrants;
use super::request::{self, Limits, Parsed, Refusal};
use crate::grant::{GrantTable, DOM0};

/// The ring's request preparer.
pub struct Dispatcher {
    pub limits: Limits,
    grants: GrantTable,
    /// `Some` when `feature-persistent` was negotiated.
    persistent: Option<PersistentGrants>,
}

impl Dispatcher {
    pub fn new(limits: Limits, grants: GrantTable, persistent: bool) -> Self {
        Self {
            limits,
            grants,
            persistent: persistent.then(PersistentGrants::default),
        }
    }

    /// Grants kept mapped (0 without `feature-persistent`).
    /// The persistent grants mapped now.
    pub fn persistent_refs(&self) -> Vec<u32> {
        self.persistent.as_ref().map_or(Vec::new(), |p| p.refs())
    }

    pub fn persistent_grants(&self) -> usize {
        self.persistent.as_ref().map_or(0, |p| p.len())
    }

    fn page(&mut self, gref: u32) -> Page {
        match self
            .persistent
            .as_mut()
            .and_then(|p| p.get(&self.grants, gref))
        {
            Some(m) => Page::Mapped(m),
            None => Page::Granted(gref),
        }
    }

    fn read_indirect_page(&mut self, gref: u32) -> Result<[u8; PAGE_SIZE as usize], String> {
        let mut buf = [0u8; PAGE_SIZE as usize];
        let r = match self.page(gref) {
            Page::Mapped(m) => m.read(0, &mut buf),
            Page::Granted(g) => self.grants.copy_from_grant(DOM0, g, 0, &mut buf),
        };
        r.map_err(|e| format!("grant {gref}: {e}"))?;
        Ok(buf)
    }

    /// The job of `raw`, or its refusal as a response.
    pub fn prepare(&mut self, raw: &BlkifRequest) -> Result<Job, BlkifResponse> {
        let refuse = |operation: u8, why: Refusal| {
            tracing::debug!(
                id = raw.id,
                op = raw.operation,
                "blkback: request refused: {why}"
            );
            io::response(raw.id, operation, why.status())
        };
        let req = match request::parse(raw, &self.limits) {
            Err(why) => return Err(refuse(raw.operation, why)),
            Ok(Parsed::Ready(r)) => r,
            Ok(Parsed::Indirect(h)) => {
                let mut pages = Vec::with_capacity(h.pages.len());
                for (i, gref) in h.pages.iter().enumerate() {
                    match self.read_indirect_page(*gref) {
                        Ok(p) => pages.push(p),
                        Err(e) => return Err(refuse(h.operation, Refusal::IndirectPage(i, e))),
                    }
                }
                request::complete_indirect(&h, &pages, &self.limits)
                    .map_err(|why| refuse(h.operation, why))?
            }
        };
        let pages = req.segments.iter().map(|s| self.page(s.gref)).collect();
        Ok(Job { req, pages })
    }
}

/// Prepares and runs `raw` at once (the synchronous path, for tests and tools).
pub fn handle_now(
    d: &mut Dispatcher,
    store: &io::Store,
    bounce: &mut io::Bounce,
    raw: &BlkifRequest,
) -> BlkifResponse {
    match d.prepare(raw) {
        Ok(job) => io::run(&job, store, &d.grants, bounce),
        Err(rsp) => rsp,
    }
}
