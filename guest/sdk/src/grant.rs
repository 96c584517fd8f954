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
    /// Places grant frame 0 at the page `pfn` (`XENMEM_add_to_physmap`) and checks
    /// with `GNTTABOP_setup_table` that the hypervisor sees it there.
    ///
    /// # Safety
    /// `pfn` must be a page of RAM the guest owns and uses for nothing else.
    pub unsafe fn setup(pfn: u64) -> Result<Self, Errno> {
        let mut ap = XenAddToPhysmap {
            domid: rxen_abi::DOMID_SELF,
            size: 0,
            space: XENMAPSPACE_GRANT_TABLE,
            idx: 0,
            gpfn: pfn,
        };
        memory_op(XENMEM_ADD_TO_PHYSMAP, &mut ap)?;
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
        if st.status != GNTST_OKAY || frame != pfn {
            return Err(Errno(rxen_abi::errno::EINVAL));
        }
        Ok(Self {
            entries: (pfn * rxen_abi::PAGE_SIZE) as *mut GrantEntryV1,
        })
    }

    fn word(&self, gref: u32) -> &AtomicU32 {
        let i = (gref % GRANT_ENTRIES_PER_FRAME_V1) as usize;
        // SAFETY: the entry lies in the table frame this value owns (index bounded by
        // the frame), 8-byte aligned; flags|domid is shared with the hypervisor and
        // only accessed atomically.
        unsafe { &*(self.entries.add(i) as *const AtomicU32) }
    }

    /// Grants `domid` access to frame `pfn` through entry `gref`: frame and domid
    /// are written before the flags make the entry valid.
    pub fn grant_access(&self, gref: u32, domid: u16, pfn: u64, readonly: bool) {
        let i = (gref % GRANT_ENTRIES_PER_FRAME_V1) as usize;
        // SAFETY: as in `word`; the frame field is ours until the flags are set.
        unsafe { core::ptr::addr_of_mut!((*self.entries.add(i)).frame).write_volatile(pfn as u32) };
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
