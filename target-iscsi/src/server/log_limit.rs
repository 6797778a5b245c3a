//! Rate-limited logging of events that an attacker can repeat at will
//! (accept errors, connections dropped by a cap): the first is logged at
//! once, then at most one line per period, saying how many were left out.

use std::time::{Duration, Instant};

/// One kind of repeated event.
#[derive(Debug)]
pub(super) struct LogLimit {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    /// At most one line per `every`.
    pub fn new(every: Duration) -> LogLimit {
        LogLimit {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// An event happened at `now`: `Some(n)` if it is to be logged, `n`
    /// being the events left out since the last line; `None` to leave it out.
    pub fn check(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|l| now.saturating_duration_since(l) < self.every)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_with_the_count_left_out() {
        let t0 = Instant::now();
        let mut l = LogLimit::new(Duration::from_secs(10));
        assert_eq!(l.check(t0), Some(0));
        for i in 1..=19 {
            assert_eq!(l.check(t0 + Duration::from_millis(i * 50)), None);
        }
        assert_eq!(l.check(t0 + Duration::from_secs(10)), Some(19));
        assert_eq!(l.check(t0 + Duration::from_secs(11)), None);
        assert_eq!(l.check(t0 + Duration::from_secs(30)), Some(1));
    }
}
