//! Grant-table client: place the table's frame in guest RAM, grant frames to another
//! domain (domain 0's backends) read-only or read-write, and end access.

use core::sync::atomic::{AtomicU32, Ordering};

use rxen_abi::grant_table::*;
use rxen_abi::hypercall as nr;
use rxen_abi::memory::XENMEM_ADD_TO_PHYSMAP;

use crate::hypercall::{check, hypercall3, memory_op, Errno};

/// Why ending access failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndAccessError {
    /// The grantee still has the frame mapped or is copying (`GTF_reading`/`GTF_writing`).
    Busy,
}

/// A one-frame grant table placed at a page of guest RAM (512 entries; ref 0..7 are
/// reserved by convention, as Linux and Mini-OS do).
pub struct GrantTable {
    entries: *mut GrantEntryV1,
}

/// First ref handed out (refs below are reserved for the toolstack).
pub const FIRST_FREE_REF: u32 = 8;

impl GrantTable {
    /// Places grant frame 0 at the page `pfn` and checks with `GNTTABOP_setup_table`
    /// that the hypervisor sees it there: on rxen's layout with
    /// `XENMEM_add_to_physmap`; for a Xen PV kernel `setup_table` gives the frame's
    /// machine address (in rxen's area), which is mapped at `pfn`'s virtual address
    /// with `update_va_mapping` (the RAM page there is no longer reachable through it).
    ///
    /// # Safety
    /// `pfn` must be a page of RAM the guest owns and uses for nothing else.
    pub unsafe fn setup(pfn: u64) -> Result<Self, Errno> {
        if crate::start::is_pv() {
            let frame = setup_table()?;
            crate::hypercall::update_va_mapping(
                pfn * rxen_abi::PAGE_SIZE,
                (frame * rxen_abi::PAGE_SIZE) | crate::pv::memory::PAGE_RW,
                rxen_abi::mmu::UVMF_INVLPG,
            )?;
            return Ok(Self {
                entries: (pfn * rxen_abi::PAGE_SIZE) as *mut GrantEntryV1,
            });
        }
        let mut ap = XenAddToPhysmap {
            domid: rxen_abi::DOMID_SELF,
            size: 0,
            space: XENMAPSPACE_GRANT_TABLE,
            idx: 0,
            gpfn: pfn,
        };
        memory_op(XENMEM_ADD_TO_PHYSMAP, &mut ap)?;
        if setup_table()? != pfn {
            return Err(Errno(rxen_abi::errno::EINVAL));
        }
        Ok(Self {
            entries: (pfn * rxen_abi::PAGE_SIZE) as *mut GrantEntryV1,
        })
    }

    /// Grants `domid` access to frame `pfn` through entry `gref`: frame and domid
    /// are written before the flags make the entry valid. For a PV kernel the entry
    /// names the page's machine frame (from the P2M).
    pub fn grant_access(&self, gref: u32, domid: u16, pfn: u64, readonly: bool) {
        let frame = if crate::start::is_pv() {
            crate::pv::memory::mfn_of_pfn(pfn)
        } else {
            pfn
        };
        self.grant_frame(gref, domid, frame, readonly)
    }

    fn word(&self, gref: u32) -> &AtomicU32 {
        let i = (gref % GRANT_ENTRIES_PER_FRAME_V1) as usize;
        // SAFETY: the entry lies in the table frame this value owns (index bounded by
        // the frame), 8-byte aligned; flags|domid is shared with the hypervisor and
        // only accessed atomically.
        unsafe { &*(self.entries.add(i) as *const AtomicU32) }
    }

    /// Grants `domid` access to machine frame `frame` through entry `gref`.
    pub fn grant_frame(&self, gref: u32, domid: u16, frame: u64, readonly: bool) {
        let i = (gref % GRANT_ENTRIES_PER_FRAME_V1) as usize;
        // SAFETY: as in `word`; the frame field is ours until the flags are set.
        unsafe {
            core::ptr::addr_of_mut!((*self.entries.add(i)).frame).write_volatile(frame as u32)
        };
        let flags = GTF_PERMIT_ACCESS | if readonly { GTF_READONLY } else { 0 };
        self.word(gref).store(
            u32::from(flags) | (u32::from(domid) << 16),
            Ordering::Release,
        );
    }

    /// Ends access through `gref` unless the grantee still uses it.
    pub fn end_access(&self, gref: u32) -> Result<(), EndAccessError> {
        let w = self.word(gref);
        let mut cur = w.load(Ordering::Acquire);
        loop {
            if cur as u16 & (GTF_READING | GTF_WRITING) != 0 {
                return Err(EndAccessError::Busy);
            }
            match w.compare_exchange(cur, cur & 0xffff_0000, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(seen) => cur = seen,
            }
        }
    }
}

/// `GNTTABOP_setup_table` for one frame: the frame number the hypervisor lists (a
/// pfn on rxen's layout, a machine frame for a PV kernel).
fn setup_table() -> Result<u64, Errno> {
    let mut frame = 0u64;
    let mut st = GnttabSetupTable {
        dom: rxen_abi::DOMID_SELF,
        nr_frames: 1,
        frame_list: &mut frame as *mut u64 as u64,
        ..Default::default()
    };
    // SAFETY: `st` and `frame` are valid for the hypervisor to read and write.
    check(unsafe {
        hypercall3(
            nr::GRANT_TABLE_OP,
            GNTTABOP_SETUP_TABLE,
            &mut st as *mut _ as u64,
            1,
        )
    })?;
    if st.status != GNTST_OKAY {
        return Err(Errno(rxen_abi::errno::EINVAL));
    }
    Ok(frame)
}
