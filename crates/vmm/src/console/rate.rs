//! A token bucket: how many bytes of console output may pass now.

use std::time::Instant;

/// Bytes per second sustained and a burst allowance; bytes over them are refused.
#[derive(Debug)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    tokens: u64,
    /// Nanoseconds of refill not yet turned into a whole token.
    carry_ns: u128,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket: `burst` bytes may pass at once, then `rate` bytes per second.
    pub fn new(rate: u64, burst: u64) -> Self {
        Self::new_at(rate, burst, Instant::now())
    }

    fn new_at(rate: u64, burst: u64, now: Instant) -> Self {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            carry_ns: 0,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let ns = now.saturating_duration_since(self.last).as_nanos() + self.carry_ns;
        self.last = now;
        if self.rate == 0 {
            self.carry_ns = 0;
            return;
        }
        let gained = ns * self.rate as u128 / 1_000_000_000;
        self.carry_ns = ns - gained * 1_000_000_000 / self.rate as u128;
        self.tokens = (self.tokens as u128 + gained).min(self.burst as u128) as u64;
        if self.tokens == self.burst {
            self.carry_ns = 0;
        }
    }

    /// Nanoseconds until `n` tokens (at most the burst) have accumulated from empty.
    pub fn ns_for(&self, n: u64) -> u64 {
        if self.rate == 0 {
            return u64::MAX / 2;
        }
        (n.min(self.burst) as u128 * 1_000_000_000 / self.rate as u128).min(u64::MAX as u128 / 2)
            as u64
    }

    /// Takes up to `want` tokens; returns how many were granted.
    pub fn take(&mut self, want: u64) -> u64 {
        self.take_at(want, Instant::now())
    }

    fn take_at(&mut self, want: u64, now: Instant) -> u64 {
        self.refill(now);
        let n = want.min(self.tokens);
        self.tokens -= n;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new_at(1000, 5000, t0);
        assert_eq!(b.take_at(4000, t0), 4000);
        assert_eq!(b.take_at(4000, t0), 1000);
        assert_eq!(b.take_at(10, t0), 0);
        // 0.5 s later: 500 bytes more, in small pieces too.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(b.take_at(10_000, t1), 500);
        let mut got = 0;
        for ms in 1..=1000 {
            got += b.take_at(10_000, t1 + Duration::from_millis(ms));
        }
        assert_eq!(got, 1000, "fractions of a token are carried over");
        // Never more than the burst after a long pause.
        assert_eq!(b.take_at(u64::MAX, t1 + Duration::from_secs(3600)), 5000);
    }

    #[test]
    fn zero_rate_passes_only_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new_at(0, 10, t0);
        assert_eq!(b.take_at(100, t0), 10);
        assert_eq!(b.take_at(100, t0 + Duration::from_secs(100)), 0);
    }
}
