//! The window of frames outstanding at one target.
//!
//! The target's Query Config buffer count is how many frames it queues for
//! an initiator: the window never exceeds it. Within it the window is
//! additive-increase, multiplicative-decrease, as the Linux `aoe` driver's
//! is: it starts at the buffer count, halves on a retransmit timeout (at
//! most once per round trip, so one burst of losses counts once) and grows
//! by one frame per window's worth of answered frames.

use std::time::{Duration, Instant};

/// The congestion window of one target.
#[derive(Debug, Clone)]
pub struct Window {
    cwnd: u32,
    limit: u32,
    acked: u32,
    last_cut: Option<Instant>,
}

impl Window {
    /// A window for a target with `buffer_count` buffers (0 is taken as 1).
    pub fn new(buffer_count: u16) -> Window {
        let limit = u32::from(buffer_count).max(1);
        Window {
            cwnd: limit,
            limit,
            acked: 0,
            last_cut: None,
        }
    }

    /// How many frames may be outstanding now.
    pub fn size(&self) -> u32 {
        self.cwnd
    }

    /// The target's buffer count (the ceiling).
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// A new buffer count (a later Query Config reply).
    pub fn set_limit(&mut self, buffer_count: u16) {
        self.limit = u32::from(buffer_count).max(1);
        self.cwnd = self.cwnd.min(self.limit);
    }

    /// A frame was answered.
    pub fn on_answer(&mut self) {
        self.acked += 1;
        if self.acked >= self.cwnd {
            self.acked = 0;
            self.cwnd = (self.cwnd + 1).min(self.limit);
        }
    }

    /// A frame timed out at `now`; `rtt` is the current round-trip estimate
    /// (losses within one round trip of the last cut count once).
    pub fn on_timeout(&mut self, now: Instant, rtt: Duration) {
        if self
            .last_cut
            .is_some_and(|t| now.saturating_duration_since(t) < rtt)
        {
            return;
        }
        self.last_cut = Some(now);
        self.acked = 0;
        self.cwnd = (self.cwnd / 2).max(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_at_the_buffer_count_halves_once_per_round_trip_and_grows_back() {
        let t0 = Instant::now();
        let rtt = Duration::from_millis(10);
        let mut w = Window::new(16);
        assert_eq!(w.size(), 16);
        w.on_timeout(t0, rtt);
        w.on_timeout(t0 + Duration::from_millis(5), rtt);
        assert_eq!(w.size(), 8);
        w.on_timeout(t0 + Duration::from_millis(20), rtt);
        assert_eq!(w.size(), 4);
        for _ in 0..4 {
            w.on_answer();
        }
        assert_eq!(w.size(), 5);
        for _ in 0..1000 {
            w.on_answer();
        }
        assert_eq!(w.size(), 16, "never above the buffer count");
        assert_eq!(Window::new(0).size(), 1);
        for _ in 0..10 {
            w.on_timeout(t0 + Duration::from_secs(1), Duration::ZERO);
        }
        assert_eq!(w.size(), 1, "never below one");
    }
}
