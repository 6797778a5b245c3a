//! The pace of a running reshape, which the RAID engine reports only as a
//! position: its rate since the monitor first saw it run, and the time
//! left at that rate. Sans-I/O: the times are handed in.

use std::time::{Duration, Instant};

/// Where a reshape was when it was first seen.
#[derive(Debug, Default)]
pub struct ReshapePace {
    start: Option<(Instant, u64)>,
}

impl ReshapePace {
    /// Notes the reshape's position `done` at `now` (`None`: no reshape
    /// runs, and the next one starts afresh).
    pub fn note(&mut self, done: Option<u64>, now: Instant) {
        match done {
            None => self.start = None,
            Some(d) => {
                // A position below the start is a new reshape.
                if self.start.is_none_or(|(_, s)| d < s) {
                    self.start = Some((now, d));
                }
            }
        }
    }

    /// Rows per second since the start, and the time left for `total -
    /// done` rows at that rate (none until it has moved).
    pub fn rate(&self, done: u64, total: u64, now: Instant) -> (f64, Option<Duration>) {
        let Some((t0, d0)) = self.start else {
            return (0.0, None);
        };
        let secs = now.saturating_duration_since(t0).as_secs_f64();
        let moved = done.saturating_sub(d0);
        if moved == 0 || secs <= 0.0 {
            return (0.0, None);
        }
        let rate = moved as f64 / secs;
        let left = total.saturating_sub(done) as f64 / rate;
        (rate, Some(Duration::from_secs_f64(left)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_counts_from_the_first_look_and_restarts_with_a_new_reshape() {
        let t0 = Instant::now();
        let mut p = ReshapePace::default();
        assert_eq!(p.rate(0, 100, t0), (0.0, None));
        p.note(Some(10), t0);
        assert_eq!(p.rate(10, 100, t0 + Duration::from_secs(1)), (0.0, None));
        p.note(Some(30), t0 + Duration::from_secs(2));
        // 20 rows in 2 s: 10 rows/s, 70 left: 7 s.
        let (r, eta) = p.rate(30, 100, t0 + Duration::from_secs(2));
        assert_eq!(r, 10.0);
        assert_eq!(eta, Some(Duration::from_secs(7)));
        p.note(None, t0 + Duration::from_secs(3));
        assert_eq!(p.rate(30, 100, t0 + Duration::from_secs(3)), (0.0, None));
        p.note(Some(50), t0 + Duration::from_secs(4));
        p.note(Some(5), t0 + Duration::from_secs(5));
        let (r, _) = p.rate(15, 100, t0 + Duration::from_secs(6));
        assert_eq!(r, 10.0);
    }
}
