//! The tunables of the initiator core, with their defaults and why.

use std::time::Duration;

/// Timers and thresholds of a [`crate::TargetState`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Retransmit timeout before any round trip was measured.
    pub initial_rto: Duration,
    /// Floor of the adaptive retransmit timeout: a LAN's round trip is far
    /// below it, so only a lost frame (or a target stalled that long) waits
    /// it out, and a busy target is not flooded with copies.
    pub min_rto: Duration,
    /// Ceiling of the retransmit timeout (also of its per-frame backoff);
    /// the Linux `aoe` driver's ceiling is 2 s as well.
    pub max_rto: Duration,
    /// How long a request may go unanswered (from its submission) before it
    /// fails upward: a read with `PathDown`, a write with `TimedOut`.
    pub give_up: Duration,
    /// How long a copy of a frame may still be alive after it was sent (in
    /// a switch or NIC queue, a link that comes back, the target's queue).
    /// AoE cannot cancel a frame, so a write's unanswered copy fences its
    /// blocks against later writes for this long (see the crate docs).
    pub stale_horizon: Duration,
    /// Consecutive timeouts after which a path is steered around while
    /// another one is usable.
    pub failing_after: u32,
    /// How often a failing path is probed with a Query Config.
    pub probe_interval: Duration,
    /// How often the driver broadcasts Query Config while the target is
    /// attached, so a path that was not there at first (a link down, a
    /// target port added) is learned when it appears.
    pub rediscover_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            initial_rto: Duration::from_millis(250),
            min_rto: Duration::from_millis(50),
            max_rto: Duration::from_secs(2),
            give_up: Duration::from_secs(30),
            stale_horizon: Duration::from_secs(5),
            failing_after: 2,
            probe_interval: Duration::from_millis(500),
            rediscover_interval: Duration::from_secs(10),
        }
    }
}
