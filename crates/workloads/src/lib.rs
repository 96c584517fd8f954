//! Benchmark workloads compiled twice: natively into `rxen-bench` (the baseline) and
//! into the `cpubench`/`membench` guests. Same source, same compiler, same flags for
//! the code itself, so the ratio of their times is the virtualization overhead.
//!
//! Must stay `no_std`, allocation-free and free of I/O and timing: callers time them.
#![no_std]

/// An integer- and branch-heavy loop (xorshift, multiply, bit counting) of `iters`
/// iterations; returns a checksum so the work cannot be optimised away.
#[inline(never)]
pub fn cpu_work(iters: u64, seed: u64) -> u64 {
    let mut x = seed | 1;
    let mut acc = 0u64;
    for i in 0..iters {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let m = x.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        acc = acc.wrapping_add(if m & 1 == 0 {
            m.count_ones() as u64
        } else {
            m >> 59
        }) ^ i;
    }
    core::hint::black_box(acc)
}

/// Streams over `buf` `passes` times: one write pass then one read pass each time;
/// returns a checksum. Bytes moved = `passes * 2 * size_of_val(buf)`.
#[inline(never)]
pub fn mem_work(buf: &mut [u64], passes: u32) -> u64 {
    let mut sum = 0u64;
    for p in 0..passes as u64 {
        for (i, w) in buf.iter_mut().enumerate() {
            *w = (i as u64) ^ p;
        }
        sum = sum.wrapping_add(buf.iter().fold(0u64, |a, &w| a.wrapping_add(w)));
        core::hint::black_box(&mut *buf);
    }
    core::hint::black_box(sum)
}

/// The same deterministic generator the guests and host tests use.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_are_deterministic() {
        assert_eq!(cpu_work(1000, 7), cpu_work(1000, 7));
        assert_ne!(cpu_work(1000, 7), cpu_work(1001, 7));
        let mut a = [0u64; 64];
        let s = mem_work(&mut a, 3);
        assert_eq!(s, mem_work(&mut a, 3));
        let mut r = XorShift(1);
        assert_ne!(r.next_u64(), r.next_u64());
    }
}
