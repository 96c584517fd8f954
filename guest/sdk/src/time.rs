//! Time: Xen's pvclock (system time in ns since the domain started, from the TSC and
//! the calling vCPU's `vcpu_time_info`), the wallclock, singleshot timers, sleep.

use core::ptr::{addr_of, read_volatile};
use core::sync::atomic::{fence, Ordering};

use rxen_abi::vcpu::{
    VcpuSetSingleshotTimer, VCPUOP_SET_SINGLESHOT_TIMER, VCPUOP_STOP_SINGLESHOT_TIMER,
};
use rxen_abi::xen::SharedInfo;

fn shared() -> *const SharedInfo {
    crate::start::shared_info()
}

fn rdtsc() -> u64 {
    // SAFETY: rdtsc is allowed at CPL 3 (CR4.TSD clear) and has no memory effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Nanoseconds of system time since the domain was built; never decreases on a vCPU.
pub fn now_ns() -> u64 {
    let v = crate::percpu::vcpu_id() as usize % 32;
    // SAFETY: shared_info is mapped for the life of the domain; fields are read with
    // volatile loads under Xen's version protocol.
    unsafe {
        let t = addr_of!((*shared()).vcpu_info[v].time);
        loop {
            let v1 = read_volatile(addr_of!((*t).version));
            if v1 & 1 != 0 {
                core::hint::spin_loop();
                continue;
            }
            fence(Ordering::Acquire);
            let ts = read_volatile(addr_of!((*t).tsc_timestamp));
            let sys = read_volatile(addr_of!((*t).system_time));
            let mul = read_volatile(addr_of!((*t).tsc_to_system_mul));
            let shift = read_volatile(addr_of!((*t).tsc_shift));
            let tsc = rdtsc();
            fence(Ordering::Acquire);
            if read_volatile(addr_of!((*t).version)) != v1 {
                continue;
            }
            // Never wrap: a timestamp a little ahead of this vCPU's TSC must read as
            // "no time passed", not as 2^64 cycles.
            let delta = tsc.saturating_sub(ts);
            let d = if shift >= 0 {
                (delta as u128) << shift
            } else {
                (delta as u128) >> (-shift)
            };
            let now = sys.wrapping_add(((d * mul as u128) >> 32) as u64);
            // Never step back (the hypervisor re-anchors the clock after blocks).
            let prev = crate::percpu::current()
                .last_ns
                .fetch_max(now, Ordering::Relaxed);
            return prev.max(now);
        }
    }
}

/// Wallclock: (seconds, nanoseconds) since the Unix epoch.
pub fn wallclock() -> (u64, u32) {
    // SAFETY: as in now_ns, under the wc_version protocol.
    let (sec, nsec) = unsafe {
        let s = shared();
        loop {
            let v1 = read_volatile(addr_of!((*s).wc_version));
            fence(Ordering::Acquire);
            let lo = read_volatile(addr_of!((*s).wc_sec)) as u64;
            let hi = read_volatile(addr_of!((*s).wc_sec_hi)) as u64;
            let ns = read_volatile(addr_of!((*s).wc_nsec));
            fence(Ordering::Acquire);
            if v1 & 1 == 0 && read_volatile(addr_of!((*s).wc_version)) == v1 {
                break (lo | (hi << 32), ns);
            }
        }
    };
    let total = sec as u128 * 1_000_000_000 + nsec as u128 + now_ns() as u128;
    (
        (total / 1_000_000_000) as u64,
        (total % 1_000_000_000) as u32,
    )
}

/// Arms the calling vCPU's singleshot timer for system time `deadline_ns`; it raises
/// `VIRQ_TIMER` (bound by the SDK for every vCPU).
pub fn set_timer(deadline_ns: u64) {
    let mut t = VcpuSetSingleshotTimer {
        timeout_abs_ns: deadline_ns,
        flags: 0,
        pad: 0,
    };
    let _ = crate::hypercall::vcpu_op(
        VCPUOP_SET_SINGLESHOT_TIMER,
        crate::percpu::vcpu_id(),
        Some(&mut t),
    );
}

/// Disarms the calling vCPU's singleshot timer.
pub fn stop_timer() {
    let _ = crate::hypercall::vcpu_op::<()>(
        VCPUOP_STOP_SINGLESHOT_TIMER,
        crate::percpu::vcpu_id(),
        None,
    );
}

/// Blocks the calling vCPU until system time `deadline_ns`, handling events meanwhile.
pub fn sleep_until(deadline_ns: u64) {
    while now_ns() < deadline_ns {
        set_timer(deadline_ns);
        crate::hypercall::block();
        crate::events::dispatch();
    }
}

/// Sleeps for `ns` nanoseconds.
pub fn sleep_ns(ns: u64) {
    sleep_until(now_ns().saturating_add(ns));
}

/// Sleeps for `ms` milliseconds.
pub fn sleep_ms(ms: u64) {
    sleep_ns(ms.saturating_mul(1_000_000));
}
