//! The frontend of Xen's split block driver (xen/include/public/io/blkif.h) for SDK
//! guests: xenbus negotiation with the backend, one-page shared rings (one per queue),
//! and requests kept in flight up to a queue depth of 32 (one ring's size) in all.
//!
//! Negotiation (blkif.h "Frontend XenBus Nodes"): find the backend from
//! `device/vbd/<devid>/backend`, wait for its InitWait, read its features
//! (`feature-persistent`, `feature-max-indirect-segments`, `feature-flush-cache`,
//! `feature-discard`, `multi-queue-max-queues`), grant the rings and allocate their
//! event channels, write `ring-ref`, `event-channel` (one queue) or
//! `multi-queue-num-queues` and `queue-N/ring-ref`, `queue-N/event-channel` (several:
//! [`Config::queues`] capped by the backend's offer), `protocol` = `x86_64-abi` and
//! `feature-persistent`, enter Initialised, wait for Connected, read `sectors`, `info`,
//! `sector-size`, and enter Connected. Requests go to the queues in turn
//! (round-robin); completions are collected from all of them.
//!
//! Data lives in a pool of pages granted once to the backend, read-write, and reused
//! by every request: with `feature-persistent` the backend keeps them mapped (no grant
//! operation per request), without it the same grants are used by copy. A request
//! names a run of pool pages; up to 11 pages travel in the request itself, more (up to
//! the backend's `feature-max-indirect-segments`) as `BLKIF_OP_INDIRECT` with indirect
//! pages (also pooled, one per request slot). Requests are queued with [`Blkfront::queue`],
//! published with one notify per batch ([`Blkfront::push`], Xen's
//! `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`), and completions collected with
//! [`Blkfront::poll`] (`RING_FINAL_CHECK_FOR_RESPONSES`), [`Blkfront::wait`] (blocks
//! the vCPU) or [`Blkfront::wait_async`] (for the executor).

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::sync::atomic::{fence, AtomicU32, Ordering::SeqCst};

use rxen_abi::blkif::*;
use rxen_abi::PAGE_SIZE;

use crate::events::{self, Port};
use crate::frontend::{pfn_of, STATE_CONNECTED, STATE_INITIALISED, STATE_INIT_WAIT};
use crate::grant::GrantTable;
use crate::xenstore::Xenstore;

/// Slots of the one-page ring, and so the deepest queue.
pub const RING_SLOTS: u32 = BLKIF_RING_SIZE_1PAGE as u32;
const PAGE: usize = PAGE_SIZE as usize;

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlkError {
    /// xenstore failed or a node is missing/garbled.
    Store(String),
    /// The backend did not reach the state in time, or closed.
    Backend(String),
    /// A hypercall failed.
    Hypercall(i32),
    /// Out of memory for the ring or the pool.
    NoMemory,
    /// The request does not fit what was negotiated (pages, ring slots, features).
    Unsupported(&'static str),
}

/// What the backend offered and the disk it serves.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiskInfo {
    pub sectors: u64,
    pub sector_size: u32,
    pub readonly: bool,
    pub persistent: bool,
    /// `feature-max-indirect-segments` (0: no indirect requests).
    pub max_indirect_segments: u32,
    pub flush: bool,
    pub discard: bool,
    /// The queues (rings) in use: the fewer of [`Config::queues`] and the backend's
    /// `multi-queue-max-queues` (absent: 1).
    pub queues: u32,
}

/// An operation on the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlkOp {
    Read,
    Write,
    /// Make every completed write durable.
    Flush,
    /// Forget the sectors (they read back as zeroes on rxen's backend).
    Discard,
}

/// A finished request: the id [`Blkfront::queue`] returned and `BLKIF_RSP_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    pub id: u32,
    pub status: i16,
}

/// Sizes of the page pool.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Data pages granted once (request buffers are runs of them).
    pub pool_pages: u32,
    /// Largest request in pages (11 without indirect; capped by the backend's offer).
    pub max_request_pages: u32,
    /// Queues (rings) wanted, at most [`MAX_QUEUES`]; fewer if the backend offers fewer.
    /// Default 1 (as Linux's blkfront on one vCPU: a second ring of a one-vCPU guest
    /// only adds backend threads; measured slower for 4 KiB random reads on 2 cores).
    pub queues: u32,
    /// Writes this as `multi-queue-num-queues` whatever the number of queues used (a
    /// lying frontend, to test that a backend refuses it); `None` for the truth.
    pub num_queues_lie: Option<u32>,
}

/// Most queues the frontend uses.
pub const MAX_QUEUES: u32 = 4;

impl Default for Config {
    fn default() -> Self {
        Self {
            pool_pages: 64,
            max_request_pages: 11,
            queues: 1,
            num_queues_lie: None,
        }
    }
}

/// One queue: a one-page shared ring and its event channel.
struct Ring {
    port: Port,
    page: *mut u8,
    req_prod_pvt: u32,
    rsp_cons: u32,
}

impl Ring {
    fn word(&self, off: usize) -> &AtomicU32 {
        // SAFETY: a 4-byte-aligned header word of the ring page this value owns,
        // shared with the backend and only accessed atomically.
        unsafe { &*(self.page.add(off) as *const AtomicU32) }
    }

    fn slot(&self, idx: u32) -> *mut u8 {
        // SAFETY: slot idx % 32 lies within the ring page.
        unsafe {
            self.page
                .add(64 + (idx % RING_SLOTS) as usize * BLKIF_SLOT_SIZE)
        }
    }

    /// Publishes queued requests; notifies the backend if it asked.
    fn push(&mut self) {
        let old = self.word(0).load(SeqCst);
        let new = self.req_prod_pvt;
        if old == new {
            return;
        }
        fence(SeqCst);
        self.word(0).store(new, SeqCst);
        fence(SeqCst);
        let event = self.word(4).load(SeqCst);
        if rxen_abi::ring::need_notify(old, new, event) {
            let _ = events::send(self.port);
        }
    }

    /// Takes the published responses (raw) into `out`; with none, re-arms
    /// `rsp_event` (RING_FINAL_CHECK_FOR_RESPONSES) and says if more came meanwhile.
    fn take(&mut self, out: &mut Vec<BlkifResponse>) -> bool {
        let prod = self.word(8).load(SeqCst);
        fence(SeqCst);
        let before = out.len();
        while self.rsp_cons != prod {
            let slot = self.slot(self.rsp_cons);
            let mut b = [0u8; 16];
            // SAFETY: a response slot the backend published (16 bytes).
            unsafe { core::ptr::copy_nonoverlapping(slot, b.as_mut_ptr(), 16) };
            self.rsp_cons = self.rsp_cons.wrapping_add(1);
            if let Ok(r) = <BlkifResponse as zerocopy::FromBytes>::read_from_bytes(&b) {
                out.push(r);
            }
        }
        if out.len() > before {
            return true;
        }
        self.word(12).store(self.rsp_cons.wrapping_add(1), SeqCst);
        fence(SeqCst);
        self.word(8).load(SeqCst) != self.rsp_cons
    }
}

/// A connected virtual block device.
pub struct Blkfront<'g> {
    grants: &'g GrantTable,
    rings: Vec<Ring>,
    /// The queue the next request goes to.
    next_ring: usize,
    /// The queue each request id in flight was put on.
    owner: [u8; RING_SLOTS as usize],
    pool: *mut u8,
    pool_pages: u32,
    /// Grant ref of pool page 0 (page i is `pool_ref + i`).
    pool_ref: u32,
    /// One indirect page per ring slot (ref `indirect_ref + slot`), if offered.
    indirect: *mut u8,
    indirect_ref: u32,
    max_request_pages: u32,
    free_ids: Vec<u32>,
    pub info: DiskInfo,
    frontend: String,
}

fn store_err(what: &str, e: impl core::fmt::Debug) -> BlkError {
    BlkError::Store(format!("{what}: {e:?}"))
}

fn read_u64(xs: &mut Xenstore, path: &str) -> Result<u64, BlkError> {
    let v = xs.read(path).map_err(|e| store_err(path, e))?;
    v.trim_end_matches('\0')
        .trim()
        .parse::<u64>()
        .map_err(|e| store_err(path, e))
}

fn read_opt_u64(xs: &mut Xenstore, path: &str) -> u64 {
    read_u64(xs, path).unwrap_or(0)
}

impl<'g> Blkfront<'g> {
    /// The device numbers under `device/vbd`.
    pub fn devices(xs: &mut Xenstore) -> Vec<u32> {
        xs.directory("device/vbd")
            .unwrap_or_default()
            .iter()
            .filter_map(|d| d.parse().ok())
            .collect()
    }

    /// Connects vbd `devid`, using grant refs from `first_ref` on (the rings, the pool
    /// pages, the indirect pages: `queues + pool_pages + 32` refs at most).
    pub fn connect(
        xs: &mut Xenstore,
        grants: &'g GrantTable,
        first_ref: u32,
        devid: u32,
        cfg: Config,
    ) -> Result<Self, BlkError> {
        let frontend = format!("device/vbd/{devid}");
        let backend = xs
            .read(&format!("{frontend}/backend"))
            .map_err(|e| store_err("backend", e))?
            .trim_end_matches('\0')
            .to_string();
        let backend_id = read_u64(xs, &format!("{frontend}/backend-id"))? as u16;
        frontend_wait(xs, &backend, STATE_INIT_WAIT)?;
        let mut info = DiskInfo {
            persistent: read_opt_u64(xs, &format!("{backend}/feature-persistent")) == 1,
            max_indirect_segments: read_opt_u64(
                xs,
                &format!("{backend}/feature-max-indirect-segments"),
            ) as u32,
            flush: read_opt_u64(xs, &format!("{backend}/feature-flush-cache")) == 1,
            discard: read_opt_u64(xs, &format!("{backend}/feature-discard")) == 1,
            ..Default::default()
        };
        let offered = read_opt_u64(xs, &format!("{backend}/multi-queue-max-queues")).max(1);
        info.queues = u64::from(cfg.queues.clamp(1, MAX_QUEUES)).min(offered) as u32;
        let max_request_pages = if info.max_indirect_segments > 0 {
            cfg.max_request_pages
                .min(info.max_indirect_segments)
                .min(BLKIF_SEGS_PER_INDIRECT_FRAME as u32)
        } else {
            cfg.max_request_pages
                .min(BLKIF_MAX_SEGMENTS_PER_REQUEST as u32)
        }
        .min(cfg.pool_pages);

        let mut rings = Vec::with_capacity(info.queues as usize);
        for q in 0..info.queues {
            // SHARED_RING_INIT: indices 0 (zeroed page), events 1.
            let page = frontend_alloc(1)?;
            // SAFETY: the page was just allocated; the header words are 4-byte aligned.
            unsafe {
                (*(page.add(4) as *const AtomicU32)).store(1, SeqCst);
                (*(page.add(12) as *const AtomicU32)).store(1, SeqCst);
            }
            grants.grant_access(first_ref + q, backend_id, pfn_of(page), false);
            let port = events::alloc_unbound(backend_id).map_err(|e| BlkError::Hypercall(e.0))?;
            rings.push(Ring {
                port,
                page,
                req_prod_pvt: 0,
                rsp_cons: 0,
            });
        }
        let pool = frontend_alloc(cfg.pool_pages as usize)?;
        let pool_ref = first_ref + info.queues;
        for i in 0..cfg.pool_pages {
            // SAFETY: page i of the pool allocation.
            let p = unsafe { pool.add(i as usize * PAGE) };
            grants.grant_access(pool_ref + i, backend_id, pfn_of(p), false);
        }
        let indirect_ref = pool_ref + cfg.pool_pages;
        let indirect = if max_request_pages > BLKIF_MAX_SEGMENTS_PER_REQUEST as u32 {
            let ind = frontend_alloc(RING_SLOTS as usize)?;
            for i in 0..RING_SLOTS {
                // SAFETY: page i of the indirect allocation.
                let p = unsafe { ind.add(i as usize * PAGE) };
                grants.grant_access(indirect_ref + i, backend_id, pfn_of(p), true);
            }
            ind
        } else {
            core::ptr::null_mut()
        };
        let mut nodes = Vec::new();
        if let Some(lie) = cfg.num_queues_lie {
            nodes.push(("multi-queue-num-queues".to_string(), lie.to_string()));
        }
        if info.queues == 1 {
            nodes.push(("ring-ref".to_string(), first_ref.to_string()));
            nodes.push(("event-channel".to_string(), rings[0].port.to_string()));
        } else {
            if cfg.num_queues_lie.is_none() {
                nodes.push((
                    "multi-queue-num-queues".to_string(),
                    info.queues.to_string(),
                ));
            }
            for (q, r) in rings.iter().enumerate() {
                nodes.push((
                    format!("queue-{q}/ring-ref"),
                    (first_ref + q as u32).to_string(),
                ));
                nodes.push((format!("queue-{q}/event-channel"), r.port.to_string()));
            }
        }
        nodes.push(("protocol".to_string(), XEN_IO_PROTO_ABI_X86_64.to_string()));
        nodes.push(("feature-persistent".to_string(), "1".to_string()));
        for (k, v) in &nodes {
            xs.write(&format!("{frontend}/{k}"), v)
                .map_err(|e| store_err(k, e))?;
        }
        xs.write(&format!("{frontend}/state"), &STATE_INITIALISED.to_string())
            .map_err(|e| store_err("state", e))?;
        frontend_wait(xs, &backend, STATE_CONNECTED)?;
        info.sectors = read_u64(xs, &format!("{backend}/sectors"))?;
        info.sector_size = read_opt_u64(xs, &format!("{backend}/sector-size")).max(512) as u32;
        info.readonly =
            read_opt_u64(xs, &format!("{backend}/info")) & u64::from(VDISK_READONLY) != 0;
        xs.write(&format!("{frontend}/state"), &STATE_CONNECTED.to_string())
            .map_err(|e| store_err("state", e))?;
        Ok(Self {
            grants,
            rings,
            next_ring: 0,
            owner: [0; RING_SLOTS as usize],
            pool,
            pool_pages: cfg.pool_pages,
            pool_ref,
            indirect,
            indirect_ref,
            max_request_pages,
            free_ids: (0..RING_SLOTS).rev().collect(),
            info,
            frontend,
        })
    }

    /// The frontend's xenstore directory.
    pub fn path(&self) -> &str {
        &self.frontend
    }

    /// The grant table the device uses.
    pub fn grants(&self) -> &GrantTable {
        self.grants
    }

    /// Largest request, in pages.
    pub fn max_request_pages(&self) -> u32 {
        self.max_request_pages
    }

    /// Pages in the pool.
    pub fn pool_pages(&self) -> u32 {
        self.pool_pages
    }

    /// Requests queued or in flight.
    pub fn in_flight(&self) -> u32 {
        RING_SLOTS - self.free_ids.len() as u32
    }

    /// Pool pages `[first, first + n)` as bytes (the caller must not touch pages of a
    /// request in flight).
    pub fn buffer(&mut self, first: u32, n: u32) -> &mut [u8] {
        let first = first.min(self.pool_pages);
        let n = n.min(self.pool_pages - first);
        // SAFETY: the range lies within the pool allocation, which lives as long as
        // `self`; `&mut self` keeps it unaliased on the guest's side.
        unsafe {
            core::slice::from_raw_parts_mut(self.pool.add(first as usize * PAGE), n as usize * PAGE)
        }
    }

    /// The event channels of the queues, in queue order.
    pub fn ports(&self) -> Vec<Port> {
        self.rings.iter().map(|r| r.port).collect()
    }

    fn segment(&self, page: u32) -> BlkifSegment {
        BlkifSegment {
            gref: self.pool_ref + page,
            first_sect: 0,
            last_sect: 7,
            pad: [0; 2],
        }
    }

    /// Queues `op` on `sector` with pool pages `[first_page, first_page + pages)`
    /// (whole pages; 0 pages for a flush, and `pages` counts the sectors/8 of a
    /// discard). Returns the request's id. Publish with [`push`](Self::push).
    pub fn queue(
        &mut self,
        op: BlkOp,
        sector: u64,
        first_page: u32,
        pages: u32,
    ) -> Result<u32, BlkError> {
        let end = first_page
            .checked_add(pages)
            .ok_or(BlkError::Unsupported("pages"))?;
        if matches!(op, BlkOp::Read | BlkOp::Write)
            && (pages == 0 || pages > self.max_request_pages || end > self.pool_pages)
        {
            return Err(BlkError::Unsupported("request size"));
        }
        if op == BlkOp::Discard && !self.info.discard {
            return Err(BlkError::Unsupported("discard"));
        }
        let id = self
            .free_ids
            .pop()
            .ok_or(BlkError::Unsupported("ring full"))?;
        let mut req = BlkifRequest {
            id: u64::from(id),
            sector_number: sector,
            ..Default::default()
        };
        let bytes: &[u8];
        let mut ind_bytes = [0u8; 64];
        let mut disc_bytes = [0u8; 32];
        match op {
            BlkOp::Flush => {
                req.operation = BLKIF_OP_FLUSH_DISKCACHE;
                bytes = zerocopy::IntoBytes::as_bytes(&req);
            }
            BlkOp::Discard => {
                let d = BlkifRequestDiscard {
                    operation: BLKIF_OP_DISCARD,
                    id: u64::from(id),
                    sector_number: sector,
                    nr_sectors: u64::from(pages) * 8,
                    ..Default::default()
                };
                disc_bytes.copy_from_slice(zerocopy::IntoBytes::as_bytes(&d));
                bytes = &disc_bytes;
            }
            BlkOp::Read | BlkOp::Write => {
                let rw = if op == BlkOp::Read {
                    BLKIF_OP_READ
                } else {
                    BLKIF_OP_WRITE
                };
                if pages as usize <= BLKIF_MAX_SEGMENTS_PER_REQUEST {
                    req.operation = rw;
                    req.nr_segments = pages as u8;
                    for i in 0..pages {
                        req.seg[i as usize] = self.segment(first_page + i);
                    }
                    bytes = zerocopy::IntoBytes::as_bytes(&req);
                } else {
                    // SAFETY: indirect page `id` (id < 32) of the indirect allocation,
                    // which exists whenever max_request_pages > 11.
                    let page = unsafe { self.indirect.add(id as usize * PAGE) };
                    for i in 0..pages {
                        let s = self.segment(first_page + i);
                        // SAFETY: entry i < 512 of that page.
                        unsafe {
                            core::ptr::copy_nonoverlapping(
                                zerocopy::IntoBytes::as_bytes(&s).as_ptr(),
                                page.add(i as usize * 8),
                                8,
                            )
                        };
                    }
                    let ind = BlkifRequestIndirect {
                        operation: BLKIF_OP_INDIRECT,
                        indirect_op: rw,
                        nr_segments: pages as u16,
                        id: u64::from(id),
                        sector_number: sector,
                        indirect_grefs: [self.indirect_ref + id, 0, 0, 0, 0, 0, 0, 0],
                        ..Default::default()
                    };
                    ind_bytes.copy_from_slice(zerocopy::IntoBytes::as_bytes(&ind));
                    bytes = &ind_bytes;
                }
            }
        }
        // Round-robin over the queues; at most 32 requests are in flight in all, so
        // no ring overflows.
        let q = self.next_ring % self.rings.len();
        self.next_ring = (q + 1) % self.rings.len();
        self.owner[id as usize] = q as u8;
        let ring = &mut self.rings[q];
        let slot = ring.slot(ring.req_prod_pvt);
        // SAFETY: the slot is ours until req_prod covers it; at most 112 bytes.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), slot, bytes.len()) };
        ring.req_prod_pvt = ring.req_prod_pvt.wrapping_add(1);
        Ok(id)
    }

    /// Publishes queued requests; notifies the backend of each queue that has new
    /// ones if it asked (one notify per queue for the batch).
    pub fn push(&mut self) {
        for r in &mut self.rings {
            r.push();
        }
    }

    /// Collects finished requests from every queue (and re-arms each ring's
    /// `rsp_event` when there are none).
    pub fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
        let mut n = 0;
        let mut raw = Vec::new();
        loop {
            let mut more = false;
            for q in 0..self.rings.len() {
                raw.clear();
                more |= self.rings[q].take(&mut raw);
                for r in &raw {
                    let id = r.id as u32;
                    // A response for an id not in flight on this queue is ignored (a
                    // lying backend).
                    if id < RING_SLOTS
                        && usize::from(self.owner[id as usize]) == q
                        && !self.free_ids.contains(&id)
                    {
                        self.free_ids.push(id);
                        out.push(Completion {
                            id,
                            status: r.status,
                        });
                        n += 1;
                    }
                }
            }
            if n > 0 || !more {
                return n;
            }
        }
    }

    /// Blocks the vCPU until at least one request finished; returns how many.
    pub fn wait(&mut self, out: &mut Vec<Completion>) -> usize {
        loop {
            let n = self.poll(out);
            if n > 0 || self.in_flight() == 0 {
                return n;
            }
            let mut fired = false;
            for r in &self.rings {
                fired |= events::take_fired(r.port);
            }
            if !fired {
                events::wait_and_dispatch();
            }
        }
    }

    /// Waits (as an executor task) until at least one request finished.
    pub async fn wait_async(&mut self, out: &mut Vec<Completion>) -> usize {
        loop {
            let n = self.poll(out);
            if n > 0 || self.in_flight() == 0 {
                return n;
            }
            crate::executor::wait_any_port(self.ports()).await;
        }
    }

    /// Runs one request to completion (queue, push, wait): its status.
    pub fn run(
        &mut self,
        op: BlkOp,
        sector: u64,
        first_page: u32,
        pages: u32,
    ) -> Result<i16, BlkError> {
        let id = self.queue(op, sector, first_page, pages)?;
        self.push();
        let mut done = Vec::new();
        loop {
            self.wait(&mut done);
            if let Some(c) = done.iter().find(|c| c.id == id) {
                return Ok(c.status);
            }
        }
    }
}

fn frontend_alloc(n: usize) -> Result<*mut u8, BlkError> {
    crate::frontend::alloc_pages(n).ok_or(BlkError::NoMemory)
}

fn frontend_wait(xs: &mut Xenstore, backend: &str, want: u32) -> Result<(), BlkError> {
    crate::frontend::wait_state(xs, backend, want).map_err(BlkError::Backend)
}
