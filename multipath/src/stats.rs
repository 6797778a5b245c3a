//! Per-path statistics: what went through a path and how fast it served.

use std::time::Duration;

/// Counters and service-time estimate of one path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathStats {
    /// I/Os sent through the path and not yet ended.
    pub in_flight: u32,
    /// Bytes of the I/Os in flight.
    pub in_flight_bytes: u64,
    /// I/Os that ended successfully.
    pub completed: u64,
    /// Bytes moved by the successful I/Os.
    pub bytes: u64,
    /// I/Os that ended with an error (any class).
    pub errors: u64,
    /// I/Os that failed here and were retried on another path.
    pub failed_over: u64,
    /// Checks that failed.
    pub check_failures: u64,
    /// Moving average of the service time of successful I/Os (weight 1/8
    /// for the newest); zero until the first one.
    pub service_time: Duration,
}

impl PathStats {
    /// An I/O of `bytes` bytes was sent.
    pub fn started(&mut self, bytes: u64) {
        self.in_flight += 1;
        self.in_flight_bytes += bytes;
    }

    /// An I/O of `bytes` bytes ended after `took`, successfully or not.
    pub fn ended(&mut self, bytes: u64, took: Duration, ok: bool) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.in_flight_bytes = self.in_flight_bytes.saturating_sub(bytes);
        if ok {
            self.completed += 1;
            self.bytes += bytes;
            self.service_time = if self.completed == 1 {
                took
            } else {
                (self.service_time * 7 + took) / 8
            };
        } else {
            self.errors += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_time_averages_successes_only() {
        let mut s = PathStats::default();
        s.started(4096);
        assert_eq!((s.in_flight, s.in_flight_bytes), (1, 4096));
        s.ended(4096, Duration::from_millis(8), true);
        assert_eq!(s.service_time, Duration::from_millis(8));
        s.started(4096);
        s.ended(4096, Duration::from_millis(16), true);
        assert_eq!(s.service_time, Duration::from_millis(9));
        s.started(512);
        s.ended(512, Duration::from_secs(5), false);
        assert_eq!(s.service_time, Duration::from_millis(9));
        assert_eq!((s.completed, s.errors, s.bytes), (2, 1, 8192));
        assert_eq!((s.in_flight, s.in_flight_bytes), (0, 0));
    }
}
