//! Path selectors: which of the best usable paths takes the next I/O.

use std::time::Duration;

use crate::stats::PathStats;

/// The selection policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SelectorKind {
    /// Each path in turn.
    RoundRobin,
    /// The path with the fewest I/Os in flight.
    QueueLength,
    /// The path expected to finish the I/O soonest: the bytes in flight plus
    /// this I/O's, times the path's average service time per I/O, with
    /// in-flight counts breaking ties (the default).
    #[default]
    ServiceTime,
}

/// A selector with its state (the round-robin cursor, also used to break
/// ties so equal paths share the load).
#[derive(Debug, Clone)]
pub struct Selector {
    kind: SelectorKind,
    /// The path picked last.
    last: usize,
}

impl Selector {
    /// A selector of the given kind.
    pub fn new(kind: SelectorKind) -> Selector {
        Selector {
            kind,
            last: usize::MAX,
        }
    }

    /// Picks one of `candidates` (path index and its statistics, in index
    /// order, none repeated) for an I/O of `bytes` bytes; None if there are
    /// none.
    pub fn pick(&mut self, candidates: &[(usize, &PathStats)], bytes: u64) -> Option<usize> {
        // Candidates after the last pick come first, so ties rotate.
        let start = candidates
            .iter()
            .position(|(i, _)| *i > self.last)
            .unwrap_or(0);
        let rotated = candidates[start..].iter().chain(&candidates[..start]);
        let chosen = match self.kind {
            SelectorKind::RoundRobin => rotated.map(|(i, _)| *i).next(),
            SelectorKind::QueueLength => rotated.min_by_key(|(_, s)| s.in_flight).map(|(i, _)| *i),
            SelectorKind::ServiceTime => rotated
                .min_by_key(|(_, s)| (expected_finish(s, bytes), s.in_flight))
                .map(|(i, _)| *i),
        }?;
        self.last = chosen;
        Some(chosen)
    }
}

/// How long the path would take to serve what it has plus `bytes` more, in
/// nanoseconds, from its average service time and bytes per I/O so far.
fn expected_finish(s: &PathStats, bytes: u64) -> u128 {
    if s.service_time == Duration::ZERO || s.completed == 0 {
        return 0;
    }
    let per_byte = s.service_time.as_nanos() * u128::from(s.completed) / u128::from(s.bytes.max(1));
    per_byte * u128::from(s.in_flight_bytes + bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(in_flight: u32, service_ms: u64) -> PathStats {
        PathStats {
            in_flight,
            in_flight_bytes: u64::from(in_flight) * 4096,
            completed: 10,
            bytes: 40960,
            service_time: Duration::from_millis(service_ms),
            ..PathStats::default()
        }
    }

    fn picks(kind: SelectorKind, s: &[PathStats], n: usize) -> Vec<usize> {
        let mut sel = Selector::new(kind);
        let c: Vec<(usize, &PathStats)> = s.iter().enumerate().collect();
        (0..n).map(|_| sel.pick(&c, 4096).unwrap()).collect()
    }

    #[test]
    fn round_robin_takes_each_in_turn() {
        let s = [stats(5, 1), stats(0, 1), stats(0, 9)];
        assert_eq!(picks(SelectorKind::RoundRobin, &s, 4), [0, 1, 2, 0]);
    }

    #[test]
    fn queue_length_takes_the_shortest_queue_and_rotates_ties() {
        let s = [stats(5, 1), stats(1, 9), stats(1, 1)];
        assert_eq!(picks(SelectorKind::QueueLength, &s, 3), [1, 2, 1]);
    }

    #[test]
    fn service_time_weighs_the_queue_by_speed() {
        // Path 1 has the shorter queue but is ten times slower.
        let s = [stats(3, 1), stats(1, 10)];
        assert_eq!(picks(SelectorKind::ServiceTime, &s, 2), [0, 0]);
        // Unmeasured paths are tried first.
        let s = [stats(3, 1), PathStats::default()];
        assert_eq!(picks(SelectorKind::ServiceTime, &s, 1), [1]);
    }

    #[test]
    fn service_time_shares_equal_paths() {
        let s = [stats(0, 1), stats(0, 1)];
        assert_eq!(picks(SelectorKind::ServiceTime, &s, 4), [0, 1, 0, 1]);
        assert_eq!(Selector::new(SelectorKind::ServiceTime).pick(&[], 1), None);
    }
}
