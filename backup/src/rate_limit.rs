//! The read-rate limit of a run: a token bucket, sans-I/O (the caller
//! passes the time and sleeps for the delay it gets back), so a backup can
//! be kept from taking the whole array away from the clients.

use std::time::{Duration, Instant};

/// A token bucket of bytes: `rate` bytes per second, at most `burst` bytes
/// saved up while idle. A request larger than the burst is allowed and
/// pays its debt in the delay of the requests after it.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    rate: u64,
    burst: u64,
    /// Bytes available at `at`; negative: owed.
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// A bucket of `rate` bytes per second (at least 1), `burst` bytes deep,
    /// full at `now`.
    pub fn new(rate: u64, burst: u64, now: Instant) -> Self {
        RateLimiter {
            rate: rate.max(1),
            burst,
            tokens: burst as f64,
            at: now,
        }
    }

    /// The bytes per second allowed.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Takes `bytes` at `now` and says how long to wait before using them
    /// (zero when the bucket held enough). Times earlier than the last
    /// call count as the last call.
    pub fn take(&mut self, bytes: u64, now: Instant) -> Duration {
        if now > self.at {
            let refill = now.duration_since(self.at).as_secs_f64() * self.rate as f64;
            self.tokens = (self.tokens + refill).min(self.burst as f64);
            self.at = now;
        }
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate as f64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RateLimiter;
    use std::time::{Duration, Instant};

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_burst_is_free_then_each_chunk_waits_its_share() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(100 * MIB, 4 * MIB, t0);
        assert_eq!(l.take(4 * MIB, t0), Duration::ZERO);
        // Empty: the next 4 MiB at 100 MiB/s are 40 ms away.
        let d = l.take(4 * MIB, t0);
        assert!((d.as_secs_f64() - 0.04).abs() < 1e-9, "{d:?}");
        // Once those 40 ms have passed the debt is paid; the third chunk,
        // asked for then, is 40 ms further away.
        let d = l.take(4 * MIB, t0 + Duration::from_millis(40));
        assert!((d.as_secs_f64() - 0.04).abs() < 1e-9, "{d:?}");
    }

    #[test]
    fn a_caller_that_sleeps_the_delays_reads_at_the_rate() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(50 * MIB, 4 * MIB, t0);
        let mut now = t0;
        let chunks = 100;
        for _ in 0..chunks {
            now += l.take(4 * MIB, now);
        }
        // 100 chunks of 4 MiB, the first one free: 99 x 4 MiB at 50 MiB/s.
        let secs = now.duration_since(t0).as_secs_f64();
        assert!((secs - 99.0 * 4.0 / 50.0).abs() < 1e-6, "{secs}");
    }

    #[test]
    fn idle_time_saves_at_most_the_burst() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(10 * MIB, 8 * MIB, t0);
        l.take(8 * MIB, t0);
        // An hour idle refills 8 MiB, not 36 GiB.
        let t1 = t0 + Duration::from_secs(3600);
        assert_eq!(l.take(8 * MIB, t1), Duration::ZERO);
        let d = l.take(MIB, t1);
        assert!((d.as_secs_f64() - 0.1).abs() < 1e-9, "{d:?}");
    }

    #[test]
    fn concurrent_takers_share_the_rate() {
        // Eight chunks asked for at one instant (eight in flight): they are
        // spread 40 ms apart at 100 MiB/s, not let through together.
        let t0 = Instant::now();
        let mut l = RateLimiter::new(100 * MIB, 4 * MIB, t0);
        let delays: Vec<f64> = (0..8).map(|_| l.take(4 * MIB, t0).as_secs_f64()).collect();
        for (i, d) in delays.iter().enumerate() {
            assert!((d - 0.04 * i as f64).abs() < 1e-9, "{i}: {d}");
        }
    }
}
