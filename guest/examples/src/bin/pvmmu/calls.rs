//! Raw MMU hypercalls: every argument is passed as given (the point is to pass bad
//! ones), the return value comes back unchanged.

use rxen_guest::abi::hypercall as nr;
use rxen_guest::abi::mmu::{MmuUpdate, MmuextOp};
use rxen_guest::abi::DOMID_SELF;
use rxen_guest::hypercall::{hypercall3, hypercall5};

pub const P: u64 = 1;
pub const RW: u64 = 2;
pub const U: u64 = 4;
pub const A: u64 = 0x20;
pub const D: u64 = 0x40;
/// Flags of a table link (L2-L4 entry).
pub const LINK: u64 = P | RW | U | A | D;

/// `mmu_update(ptr, count, pdone, foreigndom)` with raw pointers.
pub fn mmu_update_raw(reqs: u64, count: u64, pdone: u64, foreigndom: u64) -> i64 {
    // SAFETY: the hypervisor validates every pointer; a bad one is the test.
    unsafe { hypercall5(nr::MMU_UPDATE, reqs, count, pdone, foreigndom, 0) }
}

/// `mmu_update` of `reqs` on the domain itself.
pub fn mmu_update(reqs: &[MmuUpdate]) -> i64 {
    mmu_update_raw(
        reqs.as_ptr() as u64,
        reqs.len() as u64,
        0,
        u64::from(DOMID_SELF),
    )
}

/// One `mmu_update` request.
pub fn update(ptr: u64, val: u64) -> i64 {
    mmu_update(&[MmuUpdate { ptr, val }])
}

/// `mmuext_op(ops, count, pdone, foreigndom)` with raw pointers.
pub fn mmuext_raw(ops: u64, count: u64, pdone: u64, foreigndom: u64) -> i64 {
    // SAFETY: as for `mmu_update_raw`.
    unsafe { hypercall5(nr::MMUEXT_OP, ops, count, pdone, foreigndom, 0) }
}

/// One `mmuext_op` on the domain itself.
pub fn ext(cmd: u32, arg1: u64) -> i64 {
    ext2(cmd, arg1, 0)
}

/// One `mmuext_op` with two arguments on the domain itself.
pub fn ext2(cmd: u32, arg1: u64, arg2: u64) -> i64 {
    let op = MmuextOp {
        cmd,
        pad: 0,
        arg1,
        arg2,
    };
    mmuext_raw(&op as *const _ as u64, 1, 0, u64::from(DOMID_SELF))
}

/// `update_va_mapping(va, val, flags)`.
pub fn update_va_mapping(va: u64, val: u64, flags: u64) -> i64 {
    // SAFETY: takes no pointer; the hypervisor validates the new entry.
    unsafe { hypercall3(nr::UPDATE_VA_MAPPING, va, val, flags) }
}
