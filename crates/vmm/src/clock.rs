//! Guest time: Xen's pvclock (`vcpu_time_info`) from the TSC, and the wallclock.
//!
//! System time is nanoseconds since the domain was built, on the host's
//! `CLOCK_MONOTONIC`. The guest computes it from its TSC with the scale published in
//! each `vcpu_time_info`; the VMM computes it from the host clock. Both agree because
//! the published `(tsc_timestamp, system_time)` pair was taken together.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rxen_abi::xen::{VcpuTimeInfo, PVCLOCK_TSC_STABLE};

/// Scale factors of Xen's pvclock: `ns = ((tsc_delta << shift) * mul) >> 32`
/// (a negative shift shifts right).
pub fn pvclock_scale(tsc_hz: u64) -> (u32, i8) {
    let tsc_hz = tsc_hz.max(1) as u128;
    let mut shift: i32 = 0;
    loop {
        let mul = if shift >= 0 {
            (1_000_000_000u128 << 32) / (tsc_hz << shift)
        } else {
            (1_000_000_000u128 << (32 - shift)) / tsc_hz
        };
        if mul >= 1 << 32 && shift < 31 {
            shift += 1;
        } else if mul < 1 << 31 && shift > -31 {
            shift -= 1;
        } else {
            return (mul.min(u32::MAX as u128) as u32, shift as i8);
        }
    }
}

/// Applies a pvclock scale to a TSC delta (what the guest computes).
pub fn scale_delta(delta: u64, mul: u32, shift: i8) -> u64 {
    let d = if shift >= 0 {
        (delta as u128) << shift
    } else {
        (delta as u128) >> (-shift)
    };
    ((d * mul as u128) >> 32) as u64
}

/// Reads the host TSC.
pub fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` has no memory effects and is available on every x86-64 CPU.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The clock of one domain.
#[derive(Debug, Clone)]
pub struct DomainClock {
    boot: Instant,
    boot_wall: Duration,
    tsc_hz: u64,
    mul: u32,
    shift: i8,
}

impl DomainClock {
    /// Starts the domain's clock now; `tsc_khz` is the guest TSC frequency KVM reports.
    pub fn new(tsc_khz: u32) -> Self {
        let tsc_hz = tsc_khz as u64 * 1000;
        let (mul, shift) = pvclock_scale(tsc_hz);
        Self {
            boot: Instant::now(),
            boot_wall: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
            tsc_hz,
            mul,
            shift,
        }
    }

    /// The clock of a restored domain: system time goes on from `system_time_ns`
    /// (the time the domain was away does not count, so its timers keep their
    /// distance), and the wallclock of system time 0 moves so that the guest's
    /// wallclock is the host's now. `None` if the host's monotonic clock is younger
    /// than the guest's system time.
    pub fn resumed(tsc_khz: u32, system_time_ns: u64) -> Option<Self> {
        let away = Duration::from_nanos(system_time_ns);
        let mut c = Self::new(tsc_khz);
        c.boot = c.boot.checked_sub(away)?;
        c.boot_wall = c.boot_wall.checked_sub(away)?;
        Some(c)
    }

    /// Nanoseconds since the domain was built.
    pub fn now_ns(&self) -> u64 {
        self.boot.elapsed().as_nanos() as u64
    }

    /// The host instant of a guest system time.
    pub fn instant_of(&self, system_time_ns: u64) -> Instant {
        self.boot
            .checked_add(Duration::from_nanos(system_time_ns))
            .unwrap_or_else(|| self.boot + Duration::from_secs(1 << 40))
    }

    /// TSC frequency in Hz.
    pub fn tsc_hz(&self) -> u64 {
        self.tsc_hz
    }

    /// Wallclock of system time 0 as (seconds, nanoseconds) since the Unix epoch.
    pub fn boot_wallclock(&self) -> (u64, u32) {
        (self.boot_wall.as_secs(), self.boot_wall.subsec_nanos())
    }

    /// A `vcpu_time_info` for a vCPU whose TSC reads `host_tsc + tsc_offset`.
    /// `version` must be even (the caller bumps it around the write).
    pub fn time_info(&self, tsc_offset: i64, version: u32) -> VcpuTimeInfo {
        // Take the TSC and the monotonic clock as close together as possible.
        let t0 = rdtsc();
        let ns = self.now_ns();
        let t1 = rdtsc();
        let host_tsc = t0 + (t1.wrapping_sub(t0) / 2);
        VcpuTimeInfo {
            version,
            pad0: 0,
            tsc_timestamp: host_tsc.wrapping_add_signed(tsc_offset),
            system_time: ns,
            tsc_to_system_mul: self.mul,
            tsc_shift: self.shift,
            flags: PVCLOCK_TSC_STABLE,
            pad1: [0; 2],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_is_accurate_across_frequencies() {
        for hz in [
            1_000_000u64,
            100_000_000,
            999_999_999,
            1_000_000_000,
            2_445_000_000,
            3_000_000_000,
            5_800_000_000,
        ] {
            let (mul, shift) = pvclock_scale(hz);
            assert!(mul >= 1 << 31, "mul normalised for {hz}");
            let one_second = scale_delta(hz, mul, shift);
            assert!(
                (one_second as i64 - 1_000_000_000).abs() < 2,
                "{hz}: {one_second}"
            );
        }
    }

    #[test]
    fn time_info_tracks_host_clock() {
        let c = DomainClock::new(2_500_000);
        let ti = c.time_info(0, 2);
        assert_eq!(ti.version, 2);
        assert!(ti.system_time < 1_000_000_000);
        assert_eq!(ti.flags, PVCLOCK_TSC_STABLE);
        assert!(c.instant_of(1_000) >= c.instant_of(0));
        assert!(c.instant_of(u64::MAX) > c.instant_of(0));
    }
}
