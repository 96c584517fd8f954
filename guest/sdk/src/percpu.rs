//! Per-vCPU data, found through the FS segment base (set with `set_segment_base`
//! for vCPU 0 and through `vcpu_guest_context.fs_base` for the others).

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use rxen_abi::layout::MAX_VCPUS;

/// One vCPU's record; `fs:0` points at it.
#[repr(C)]
pub struct PerCpu {
    self_ptr: u64,
    vcpu_id: u32,
    /// Event-channel port of this vCPU's `VIRQ_TIMER` (0 = not bound yet).
    pub timer_port: AtomicU32,
    /// Latest system time this vCPU returned, so time never steps back when the
    /// hypervisor re-anchors the pvclock.
    pub last_ns: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: PerCpu = PerCpu {
    self_ptr: 0,
    vcpu_id: 0,
    timer_port: AtomicU32::new(0),
    last_ns: AtomicU64::new(0),
};

struct Table(core::cell::UnsafeCell<[PerCpu; MAX_VCPUS as usize]>);
// SAFETY: each entry's plain fields are written once, by the vCPU that owns it, before
// any other code can reach that vCPU (see `init`); the rest are atomics.
unsafe impl Sync for Table {}

static PERCPU: Table = Table(core::cell::UnsafeCell::new([EMPTY; MAX_VCPUS as usize]));

/// Address of vCPU `id`'s record (for `vcpu_guest_context.fs_base`).
pub fn record_address(id: u32) -> u64 {
    // SAFETY: only the address is computed.
    unsafe {
        (*PERCPU.0.get())
            .as_ptr()
            .add(id as usize % MAX_VCPUS as usize) as u64
    }
}

/// Fills vCPU `id`'s record; called before that vCPU runs (or by vCPU 0 itself).
pub fn prepare(id: u32) {
    let addr = record_address(id);
    // SAFETY: the record of a vCPU that does not run yet (or of the caller itself) is
    // written by one party only.
    unsafe {
        let rec = addr as *mut PerCpu;
        (*rec).self_ptr = addr;
        (*rec).vcpu_id = id;
    }
}

/// The calling vCPU's record.
pub fn current() -> &'static PerCpu {
    let p: u64;
    // SAFETY: fs:0 holds the self pointer of this vCPU's record once the SDK started.
    unsafe {
        core::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) p, options(nostack, readonly, preserves_flags))
    };
    // SAFETY: `p` points into the static table.
    unsafe { &*(p as *const PerCpu) }
}

/// The calling vCPU's id.
pub fn vcpu_id() -> u32 {
    current().vcpu_id
}

/// The timer port of the calling vCPU.
pub fn timer_port() -> u32 {
    current().timer_port.load(Ordering::Relaxed)
}
