//! The guest heap: all RAM between the end of the image and the end of memory.

use linked_list_allocator::LockedHeap;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// Hands `[start, end)` to the allocator. Called once by the SDK at boot.
pub(crate) fn init(start: u64, end: u64) {
    if end > start {
        // SAFETY: the range is guest RAM that nothing else uses (past the image, inside
        // nr_pages), and init runs once before any allocation.
        unsafe { HEAP.lock().init(start as *mut u8, (end - start) as usize) };
    }
}

/// Bytes of heap still free.
pub fn free_bytes() -> usize {
    HEAP.lock().free()
}
