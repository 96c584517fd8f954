//! A mapping of one granted frame held by a backend: reads and writes are bounded by
//! the frame, writes refused for read-only mappings; dropping it unmaps the grant.

use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use rxen_abi::PAGE_SIZE;

use super::table::{check_segment, Inner};
use super::GrantError;

/// Domain 0's mapping of a grant (`GNTTABOP_map_grant_ref`); `GNTTABOP_unmap_grant_ref`
/// is [`GrantMapping::unmap`] or dropping it.
pub struct GrantMapping {
    table: Arc<Inner>,
    handle: u32,
    gref: u32,
    frame_gpa: u64,
    readonly: bool,
}

impl std::fmt::Debug for GrantMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantMapping")
            .field("handle", &self.handle)
            .field("gref", &self.gref)
            .field("readonly", &self.readonly)
            .finish()
    }
}

impl GrantMapping {
    pub(super) fn new(
        table: Arc<Inner>,
        handle: u32,
        gref: u32,
        frame_gpa: u64,
        readonly: bool,
    ) -> Self {
        Self {
            table,
            handle,
            gref,
            frame_gpa,
            readonly,
        }
    }

    /// The mapping's handle (Xen's `grant_handle_t`).
    pub fn handle(&self) -> u32 {
        self.handle
    }

    /// The grant reference mapped.
    pub fn gref(&self) -> u32 {
        self.gref
    }

    /// Whether the mapping is read-only.
    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// Size of the window: one page.
    pub fn len(&self) -> u64 {
        PAGE_SIZE
    }

    /// Never empty (a page); for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Reads `buf.len()` bytes at `offset` of the granted frame.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), GrantError> {
        check_segment(offset, buf.len() as u64)?;
        self.table
            .ram()
            .read(self.frame_gpa + offset, buf)
            .map_err(|_| GrantError::BadCopyArg {
                offset,
                len: buf.len() as u64,
            })
    }

    /// Writes `data` at `offset` of the granted frame; refused on a read-only mapping.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), GrantError> {
        if self.readonly {
            return Err(GrantError::WriteToReadOnly);
        }
        check_segment(offset, data.len() as u64)?;
        self.table
            .ram()
            .write(self.frame_gpa + offset, data)
            .map_err(|_| GrantError::BadCopyArg {
                offset,
                len: data.len() as u64,
            })
    }

    /// A 32-bit word of the granted frame for atomic access (indices of a shared
    /// ring); `offset` must be 4-byte aligned and the mapping writable.
    pub fn atomic_u32(&self, offset: u64) -> Result<&AtomicU32, GrantError> {
        if self.readonly {
            return Err(GrantError::WriteToReadOnly);
        }
        check_segment(offset, 4)?;
        self.table
            .ram()
            .atomic_u32(self.frame_gpa + offset)
            .map_err(|_| GrantError::BadCopyArg { offset, len: 4 })
    }

    /// Unmaps the grant (`GNTTABOP_unmap_grant_ref`): the guest may end access again
    /// once no other mapping or copy holds it.
    pub fn unmap(self) {
        drop(self)
    }
}

impl Drop for GrantMapping {
    fn drop(&mut self) {
        self.table.release(self.handle);
    }
}
