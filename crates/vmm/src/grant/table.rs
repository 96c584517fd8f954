//! The grant table of one domain: where its frames are, the active (pinned) entries
//! and the mappings domain 0 holds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rxen_abi::grant_table::*;
use rxen_abi::{layout, DomId, PAGE_SIZE};

use super::entry::{self, PinRequest};
use super::{GrantError, GrantMapping};
use crate::memory::{Access, GuestRam};

/// Grant frames a domain starts with (Xen's `INITIAL_NR_GRANT_FRAMES`).
pub const INITIAL_GRANT_FRAMES: u32 = 1;
/// Most grant frames a domain may have (Xen's default `gnttab_max_frames`): 64 frames
/// of 512 v1 entries.
pub const MAX_GRANT_FRAMES: u32 = 64;
/// Most mappings domain 0 may hold at once on one domain's grants.
pub const MAX_MAPTRACK: usize = 1 << 16;

/// Why `XENMEM_add_to_physmap(XENMAPSPACE_grant_table)` failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    #[error("bad grant frame index or target pfn")]
    Invalid,
    #[error("the frame or the target page is in use by a grant mapping")]
    Busy,
}

impl PlaceError {
    /// The (negative) errno for the guest.
    pub fn errno(self) -> i32 {
        match self {
            PlaceError::Invalid => -rxen_abi::errno::EINVAL,
            PlaceError::Busy => -rxen_abi::errno::EBUSY,
        }
    }
}

/// A pinned entry: Xen's `active_grant_entry`.
#[derive(Clone, Copy, Debug)]
struct Active {
    grantee: DomId,
    /// Guest-physical address of the granted frame, read once at the first pin.
    frame_gpa: u64,
    /// Every pin (mappings and copies in progress).
    pins: u32,
    /// Writable pins.
    writers: u32,
}

#[derive(Clone, Copy, Debug)]
struct MapTrack {
    gref: u32,
    readonly: bool,
}

#[derive(Debug)]
struct State {
    version: u32,
    nr_frames: u32,
    /// The pfn each frame is placed at, for frames `0..nr_frames`.
    frames: Vec<Option<u64>>,
    active: HashMap<u32, Active>,
    maptrack: Vec<Option<MapTrack>>,
    free_handles: Vec<u32>,
}

impl State {
    fn entry_addr(&self, gref: u32) -> Result<Option<u64>, GrantError> {
        if gref >= self.nr_frames.saturating_mul(GRANT_ENTRIES_PER_FRAME_V1) {
            return Err(GrantError::BadRef(gref));
        }
        let idx = (gref / GRANT_ENTRIES_PER_FRAME_V1) as usize;
        let slot = u64::from(gref % GRANT_ENTRIES_PER_FRAME_V1);
        Ok(self
            .frames
            .get(idx)
            .copied()
            .flatten()
            .map(|pfn| pfn * PAGE_SIZE + slot * GRANT_ENTRY_V1_SIZE))
    }

    fn is_grant_frame(&self, pfn: u64) -> bool {
        self.frames.contains(&Some(pfn))
    }
}

pub(super) struct Inner {
    ram: Arc<GuestRam>,
    domid: DomId,
    state: Mutex<State>,
    pv: Option<PvFrames>,
}

/// How a Xen PV domain's frames are checked (it names machine frames, not pfns).
pub struct PvFrames {
    /// Frames `0..guest_pages` are the guest's RAM.
    pub guest_pages: u64,
    /// Grant frame `i` lives at machine frame `grant_base + i` (rxen's area).
    pub grant_base: u64,
    /// Whether a frame has a page-table or descriptor type now (never writable then).
    pub is_typed: Box<dyn Fn(u64) -> bool + Send + Sync>,
}

impl std::fmt::Debug for PvFrames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PvFrames")
            .field("guest_pages", &self.guest_pages)
            .field("grant_base", &self.grant_base)
            .finish()
    }
}

/// One domain's grant table (cheap to clone: clones share the table).
#[derive(Clone)]
pub struct GrantTable {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for GrantTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantTable")
            .field("domid", &self.inner.domid)
            .finish()
    }
}

/// What a save keeps of a grant table (`crate::snapshot`): the version and where each
/// frame is placed. The entries are guest memory; domain 0's mappings are not kept
/// (the backends that held them are started again after a restore).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct GrantSnapshot {
    pub version: u32,
    pub nr_frames: u32,
    pub frames: Vec<Option<u64>>,
}

impl GrantTable {
    /// A v1 table of [`INITIAL_GRANT_FRAMES`] frames, none placed yet, for domain `domid`.
    pub fn new(ram: Arc<GuestRam>, domid: DomId) -> Self {
        Self::with_policy(ram, domid, None)
    }

    /// A v1 table of a Xen PV domain: its frames are rxen's, at fixed machine frames
    /// ([`PvFrames::grant_base`]), listed by `setup_table` as machine frame numbers;
    /// `add_to_physmap` does not apply.
    pub fn new_pv(ram: Arc<GuestRam>, domid: DomId, pv: PvFrames) -> Self {
        Self::with_policy(ram, domid, Some(pv))
    }

    fn with_policy(ram: Arc<GuestRam>, domid: DomId, pv: Option<PvFrames>) -> Self {
        let frames = (0..u64::from(INITIAL_GRANT_FRAMES))
            .map(|i| pv.as_ref().map(|p| p.grant_base + i))
            .collect();
        Self {
            inner: Arc::new(Inner {
                ram,
                domid,
                state: Mutex::new(State {
                    version: 1,
                    nr_frames: INITIAL_GRANT_FRAMES,
                    frames,
                    active: HashMap::new(),
                    maptrack: Vec::new(),
                    free_handles: Vec::new(),
                }),
                pv,
            }),
        }
    }

    /// The table as a save keeps it.
    pub fn snapshot(&self) -> GrantSnapshot {
        let s = self.lock();
        GrantSnapshot {
            version: s.version,
            nr_frames: s.nr_frames,
            frames: s.frames.clone(),
        }
    }

    /// Takes `snap`'s version and frame placement into a fresh table.
    pub fn restore(&self, snap: &GrantSnapshot) -> Result<(), String> {
        if snap.version != 1 || snap.frames.len() != snap.nr_frames as usize {
            return Err(format!(
                "version {}, {} frames of {}",
                snap.version,
                snap.frames.len(),
                snap.nr_frames
            ));
        }
        if snap.nr_frames > MAX_GRANT_FRAMES {
            return Err(format!("{} frames", snap.nr_frames));
        }
        let pages = self.inner.ram.nr_pages();
        if snap.frames.iter().flatten().any(|&pfn| pfn >= pages) {
            return Err("a frame outside guest memory".into());
        }
        let mut s = self.lock();
        s.version = snap.version;
        s.nr_frames = snap.nr_frames;
        s.frames = snap.frames.clone();
        Ok(())
    }

    /// Whether this is a PV domain's table (frames at fixed machine frames).
    pub fn is_pv(&self) -> bool {
        self.inner.pv.is_some()
    }

    /// The address of the caller's own frame `frame` if it may be used for `access`
    /// (a `GNTTABOP_copy` side given by frame number).
    pub fn local_frame(&self, frame: u64, access: Access) -> Option<u64> {
        let st = self.lock();
        self.inner.frame_ok(&st, frame, access)
    }

    /// The granting domain.
    pub fn domid(&self) -> DomId {
        self.inner.domid
    }

    /// Guest RAM of the granting domain.
    pub(super) fn ram(&self) -> &GuestRam {
        &self.inner.ram
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.lock()
    }

    /// The grant table version in use (always 1: rxen implements v1 only).
    pub fn version(&self) -> u32 {
        self.lock().version
    }

    /// Frames the table has now.
    pub fn nr_frames(&self) -> u32 {
        self.lock().nr_frames
    }

    /// Grows the table to `nr` frames (never shrinks); false when `nr` exceeds
    /// [`MAX_GRANT_FRAMES`].
    pub fn grow(&self, nr: u32) -> bool {
        if nr > MAX_GRANT_FRAMES {
            return false;
        }
        let mut st = self.lock();
        if nr > st.nr_frames {
            let old = st.nr_frames as usize;
            st.nr_frames = nr;
            st.frames.resize(nr as usize, None);
            if let Some(pv) = &self.inner.pv {
                for i in old..nr as usize {
                    // Fresh frames hold no valid entries (rxen's area starts zeroed).
                    st.frames[i] = Some(pv.grant_base + i as u64);
                }
            }
        }
        true
    }

    /// The pfn of each of the first `nr` frames (`None`: not placed).
    pub fn frame_pfns(&self, nr: u32) -> Vec<Option<u64>> {
        let st = self.lock();
        (0..nr as usize)
            .map(|i| st.frames.get(i).copied().flatten())
            .collect()
    }

    /// Number of pinned entries (mapped or being copied).
    pub fn active_entries(&self) -> usize {
        self.lock().active.len()
    }

    /// Whether an active (mapped or being copied) grant names guest frame `frame`.
    pub fn frame_pinned(&self, frame: u64) -> bool {
        self.lock()
            .active
            .values()
            .any(|a| a.frame_gpa / PAGE_SIZE == frame)
    }

    /// Places grant frame `idx` at guest pfn `pfn`
    /// (`XENMEM_add_to_physmap(XENMAPSPACE_grant_table)`), growing the table to
    /// `idx + 1` frames. A frame placed for the first time is zeroed (all entries
    /// invalid); a frame moved from another pfn takes its entries along, and the old
    /// page is ordinary RAM again. The target must be the guest's writable RAM at or
    /// above [`layout::BOOT_STACK_BOTTOM`], not another grant frame, and neither the
    /// frame's entries nor the target page may be in use by a mapping.
    pub fn place_frame(&self, idx: u64, pfn: u64) -> Result<(), PlaceError> {
        if idx & XENMAPIDX_GRANT_TABLE_STATUS != 0 || idx >= u64::from(MAX_GRANT_FRAMES) {
            return Err(PlaceError::Invalid);
        }
        let ram = &self.inner.ram;
        let gpa = pfn.checked_mul(PAGE_SIZE).ok_or(PlaceError::Invalid)?;
        if gpa < layout::BOOT_STACK_BOTTOM
            || ram
                .check_guest_range(gpa, PAGE_SIZE, Access::Write)
                .is_err()
        {
            return Err(PlaceError::Invalid);
        }
        let idx = idx as usize;
        let mut st = self.lock();
        if st
            .frames
            .iter()
            .enumerate()
            .any(|(i, f)| i != idx && *f == Some(pfn))
        {
            return Err(PlaceError::Invalid);
        }
        let first_ref = (idx as u32) * GRANT_ENTRIES_PER_FRAME_V1;
        let busy = st.active.iter().any(|(&gref, a)| {
            a.frame_gpa == gpa
                || (first_ref..first_ref + GRANT_ENTRIES_PER_FRAME_V1).contains(&gref)
        });
        if busy {
            return Err(PlaceError::Busy);
        }
        if idx as u32 >= st.nr_frames {
            st.nr_frames = idx as u32 + 1;
            st.frames.resize(idx + 1, None);
        }
        let mut page = vec![0u8; PAGE_SIZE as usize];
        match st.frames[idx] {
            Some(old) if old == pfn => return Ok(()),
            Some(old) => ram
                .read(old * PAGE_SIZE, &mut page)
                .map_err(|_| PlaceError::Invalid)?,
            None => {}
        }
        ram.write(gpa, &page).map_err(|_| PlaceError::Invalid)?;
        st.frames[idx] = Some(pfn);
        tracing::debug!(domid = self.inner.domid, idx, pfn, "grant frame placed");
        Ok(())
    }

    /// Maps grant `gref` for domain `grantee` (domain 0's backends pass [`super::DOM0`]),
    /// read-only or writable, as Xen's `GNTTABOP_map_grant_ref`: the entry must be
    /// `GTF_permit_access` for `grantee`, not `GTF_readonly` for a writable mapping, and
    /// name a frame of the guest's RAM; `GTF_reading` (and `GTF_writing`) stay set
    /// while mapped, so the guest cannot end access until the mapping is dropped.
    pub fn map(
        &self,
        grantee: DomId,
        gref: u32,
        readonly: bool,
    ) -> Result<GrantMapping, GrantError> {
        let mut st = self.lock();
        let handle = match st.free_handles.pop() {
            Some(h) => h,
            None if st.maptrack.len() < MAX_MAPTRACK => {
                st.maptrack.push(None);
                (st.maptrack.len() - 1) as u32
            }
            None => return Err(GrantError::NoSpace),
        };
        match self.inner.pin(&mut st, grantee, gref, readonly, true) {
            Ok(frame_gpa) => {
                st.maptrack[handle as usize] = Some(MapTrack { gref, readonly });
                Ok(GrantMapping::new(
                    self.inner.clone(),
                    handle,
                    gref,
                    frame_gpa,
                    readonly,
                ))
            }
            Err(e) => {
                st.free_handles.push(handle);
                Err(e)
            }
        }
    }

    /// Runs `f` with the frame of grant `gref` pinned for a copy (`GTF_reading`, and
    /// `GTF_writing` unless `readonly`, set meanwhile), as Xen's `acquire_grant_for_copy`.
    pub(super) fn with_pinned<R>(
        &self,
        grantee: DomId,
        gref: u32,
        readonly: bool,
        f: impl FnOnce(&GuestRam, u64) -> R,
    ) -> Result<R, GrantError> {
        let frame_gpa = {
            let mut st = self.lock();
            self.inner.pin(&mut st, grantee, gref, readonly, false)?
        };
        let r = f(&self.inner.ram, frame_gpa);
        let mut st = self.lock();
        self.inner.unpin(&mut st, gref, readonly);
        Ok(r)
    }

    /// `GNTTABOP_copy` from grant `gref` at `offset` into `buf` (one segment: it may not
    /// cross the page).
    pub fn copy_from_grant(
        &self,
        grantee: DomId,
        gref: u32,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), GrantError> {
        check_segment(offset, buf.len() as u64)?;
        self.with_pinned(grantee, gref, true, |ram, gpa| ram.read(gpa + offset, buf))?
            .map_err(|_| GrantError::BadFrame { gref, frame: 0 })
    }

    /// `GNTTABOP_copy` of `data` into grant `gref` at `offset` (one segment: it may not
    /// cross the page; the grant must be writable).
    pub fn copy_to_grant(
        &self,
        grantee: DomId,
        gref: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), GrantError> {
        check_segment(offset, data.len() as u64)?;
        self.with_pinned(grantee, gref, false, |ram, gpa| {
            ram.write(gpa + offset, data)
        })?
        .map_err(|_| GrantError::BadFrame { gref, frame: 0 })
    }
}

/// A copy segment must lie within one page (`GNTST_bad_copy_arg`).
pub(super) fn check_segment(offset: u64, len: u64) -> Result<(), GrantError> {
    match offset.checked_add(len) {
        Some(end) if end <= PAGE_SIZE => Ok(()),
        _ => Err(GrantError::BadCopyArg { offset, len }),
    }
}

impl Inner {
    pub(super) fn ram(&self) -> &GuestRam {
        &self.ram
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn entry_word(&self, addr: u64) -> Option<&AtomicU32> {
        self.ram.atomic_u32(addr).ok()
    }

    /// The frame's address if `frame` is guest RAM the grantee may use for `readonly`.
    fn check_frame(
        &self,
        st: &State,
        gref: u32,
        frame: u64,
        readonly: bool,
    ) -> Result<u64, GrantError> {
        let access = if readonly {
            Access::Read
        } else {
            Access::Write
        };
        self.frame_ok(st, frame, access)
            .ok_or(GrantError::BadFrame { gref, frame })
    }

    /// The address of `frame` if it is the domain's own RAM usable for `access`: never
    /// a grant frame; in rxen's layout inside the guest's view, in a PV domain below
    /// its RAM size and, for writes, without a page-table or descriptor type.
    fn frame_ok(&self, st: &State, frame: u64, access: Access) -> Option<u64> {
        let gpa = frame.checked_mul(PAGE_SIZE)?;
        if st.is_grant_frame(frame) {
            return None;
        }
        let ok = match &self.pv {
            None => self.ram.check_guest_range(gpa, PAGE_SIZE, access).is_ok(),
            Some(pv) => frame < pv.guest_pages && (access == Access::Read || !(pv.is_typed)(frame)),
        };
        ok.then_some(gpa)
    }

    /// Pins `gref` (Xen's map/copy path): returns the frame's guest-physical address.
    fn pin(
        &self,
        st: &mut State,
        grantee: DomId,
        gref: u32,
        readonly: bool,
        mapping: bool,
    ) -> Result<u64, GrantError> {
        let not_permitted = GrantError::NotPermitted {
            gref,
            grantee,
            flags: 0,
            domid: 0,
        };
        // An entry in a frame the guest never placed is all zeroes: GTF_invalid.
        let addr = st.entry_addr(gref)?.ok_or(not_permitted)?;
        let word = self.entry_word(addr).ok_or(not_permitted)?;
        let active = st.active.get(&gref).copied();
        if let Some(a) = active {
            if a.grantee != grantee {
                return Err(not_permitted);
            }
        }
        let first = active.is_none();
        let upgrade = !readonly && active.is_some_and(|a| a.writers == 0);
        if first || upgrade {
            entry::pin(
                word,
                PinRequest {
                    gref,
                    grantee,
                    readonly,
                    first,
                    mapping,
                },
            )?;
        }
        let frame_gpa = match active {
            Some(a) => a.frame_gpa,
            None => {
                let frame = self
                    .entry_word(addr + 4)
                    .map(|w| u64::from(w.load(Ordering::Acquire)))
                    .unwrap_or(u64::MAX);
                match self.check_frame(st, gref, frame, readonly) {
                    Ok(gpa) => gpa,
                    Err(e) => {
                        entry::clear_flags(word, GTF_READING | GTF_WRITING);
                        return Err(e);
                    }
                }
            }
        };
        if upgrade {
            let frame = frame_gpa / PAGE_SIZE;
            if let Err(e) = self.check_frame(st, gref, frame, false) {
                entry::clear_flags(word, GTF_WRITING);
                return Err(e);
            }
        }
        let a = st.active.entry(gref).or_insert(Active {
            grantee,
            frame_gpa,
            pins: 0,
            writers: 0,
        });
        a.pins += 1;
        if !readonly {
            a.writers += 1;
        }
        Ok(frame_gpa)
    }

    /// Drops one pin of `gref`; clears `GTF_writing` with the last writable pin and
    /// `GTF_reading` with the last pin.
    fn unpin(&self, st: &mut State, gref: u32, readonly: bool) {
        let Some(a) = st.active.get_mut(&gref) else {
            return;
        };
        a.pins = a.pins.saturating_sub(1);
        if !readonly {
            a.writers = a.writers.saturating_sub(1);
        }
        let (pins, writers) = (a.pins, a.writers);
        let mut clear = 0;
        if writers == 0 && !readonly {
            clear |= GTF_WRITING;
        }
        if pins == 0 {
            clear |= GTF_READING;
            st.active.remove(&gref);
        }
        if clear != 0 {
            // The frame cannot move while pinned (`place_frame` refuses), so the entry
            // is where it was at the pin.
            if let Some(word) = st
                .entry_addr(gref)
                .ok()
                .flatten()
                .and_then(|a| self.entry_word(a))
            {
                entry::clear_flags(word, clear);
            }
        }
    }

    /// Ends mapping `handle` (called by [`GrantMapping`]'s unmap and drop).
    pub(super) fn release(&self, handle: u32) {
        let mut st = self.lock();
        let Some(track) = st.maptrack.get_mut(handle as usize).and_then(Option::take) else {
            return;
        };
        st.free_handles.push(handle);
        self.unpin(&mut st, track.gref, track.readonly);
    }
}
