//! The pace of a row-by-row copy (a rebuild, a replace): its rate since it
//! (re)started, the time left, and a token bucket on the injected clock that
//! limits how many rows each call may do.

use std::time::Duration;

/// Rows done, rate and rate limit of a running copy.
#[derive(Debug, Clone)]
pub(crate) struct Pacing {
    started: Duration,
    /// Rows done since it (re)started.
    pub(crate) rows_done: u64,
    tokens: f64,
    last_tick: Duration,
}

impl Pacing {
    pub(crate) fn new(now: Duration) -> Self {
        Pacing {
            started: now,
            rows_done: 0,
            tokens: 0.0,
            last_tick: now,
        }
    }

    /// Rows a call may do now: `unlimited` without a limit, else the
    /// tokens `limit` rows per second earned since the last call (at most
    /// one second's worth).
    pub(crate) fn budget(&mut self, now: Duration, limit: Option<u64>, unlimited: u64) -> u64 {
        let Some(rate) = limit else {
            return unlimited;
        };
        let dt = (now - self.last_tick).as_secs_f64();
        self.last_tick = now;
        self.tokens = (self.tokens + dt * rate as f64).min(rate.max(1) as f64);
        let n = self.tokens.floor();
        self.tokens -= n;
        n as u64
    }

    /// Rows per second since the start, and the time `rows_left` take at
    /// that rate, when a rate is known.
    pub(crate) fn rate(&self, now: Duration, rows_left: u64) -> (f64, Option<Duration>) {
        let secs = (now - self.started).as_secs_f64();
        let rate = if secs > 0.0 {
            self.rows_done as f64 / secs
        } else {
            0.0
        };
        let eta = (rate > 0.0).then(|| Duration::from_secs_f64(rows_left as f64 / rate));
        (rate, eta)
    }
}
