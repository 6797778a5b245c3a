//! The per-client request rate, sans-I/O: a token bucket with time handed
//! in.

use std::time::Instant;

/// How fast one client may send requests: `per_second` on average, bursts
/// of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Requests per second on average.
    pub per_second: f64,
    /// Requests at once after a quiet spell.
    pub burst: f64,
}

/// One client's bucket.
pub(crate) struct Bucket {
    limit: RateLimit,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub(crate) fn new(limit: RateLimit, now: Instant) -> Self {
        Bucket {
            limit,
            tokens: limit.burst,
            last: now,
        }
    }

    /// Takes one request's token; false when the client is over its rate.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.limit.per_second).min(self.limit.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let t0 = Instant::now();
        let mut b = Bucket::new(
            RateLimit {
                per_second: 10.0,
                burst: 5.0,
            },
            t0,
        );
        assert_eq!((0..8).filter(|_| b.take(t0)).count(), 5);
        // 0.1 s later one more token.
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert!(!b.take(t0 + Duration::from_millis(100)));
        // A long quiet spell refills no more than the burst.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..8).filter(|_| b.take(later)).count(), 5);
    }
}
