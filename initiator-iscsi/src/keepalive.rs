//! The initiator's NOP-Out keepalive, sans-I/O (RFC 7143 §11.18): when
//! the target has been silent for an interval, ping it; when a ping goes
//! unanswered for the timeout, the connection is dead. Time is handed in
//! by the caller, so the rules are tested without a clock.

use std::time::{Duration, Instant};

/// Keepalive settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepaliveConfig {
    /// How long the target may be silent before it is pinged; zero turns
    /// pings off.
    pub interval: Duration,
    /// How long a ping may go unanswered before the connection is taken
    /// for dead.
    pub timeout: Duration,
}

impl Default for KeepaliveConfig {
    /// Failure detection well inside a second, so that multipath's
    /// failover (detection, then the command again on another path) stays
    /// under one: a ping after 300 ms of silence, dead 400 ms later. A
    /// live target answers a NOP-Out from its connection task, whatever its
    /// commands are doing, in well under a millisecond on a LAN.
    fn default() -> KeepaliveConfig {
        KeepaliveConfig {
            interval: Duration::from_millis(300),
            timeout: Duration::from_millis(400),
        }
    }
}

/// What the keepalive wants done now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing until [`Keepalive::deadline`].
    Wait,
    /// Send a ping now (then tell [`Keepalive::pinged`] its tag).
    Ping,
    /// A ping went unanswered for the timeout: drop the connection.
    Dead,
}

/// The keepalive of one connection.
#[derive(Debug, Clone)]
pub struct Keepalive {
    cfg: KeepaliveConfig,
    /// When the target was last heard from.
    heard: Instant,
    /// The ping awaiting its answer: tag and when it went out.
    outstanding: Option<(u32, Instant)>,
}

impl Keepalive {
    /// The keepalive of a connection that has just heard from the target.
    pub fn new(cfg: KeepaliveConfig, now: Instant) -> Keepalive {
        Keepalive {
            cfg,
            heard: now,
            outstanding: None,
        }
    }

    /// Any PDU came from the target: it is alive.
    pub fn heard(&mut self, now: Instant) {
        self.heard = self.heard.max(now);
    }

    /// The answer to the ping tagged `itt` came: it is no longer awaited.
    pub fn answered(&mut self, itt: u32, now: Instant) {
        self.heard(now);
        if self.outstanding.is_some_and(|(i, _)| i == itt) {
            self.outstanding = None;
        }
    }

    /// The settings.
    pub fn config(&self) -> KeepaliveConfig {
        self.cfg
    }

    /// A ping tagged `itt` went out at `now`.
    pub fn pinged(&mut self, itt: u32, now: Instant) {
        self.outstanding = Some((itt, now));
    }

    /// The tag of the ping awaiting its answer.
    pub fn outstanding(&self) -> Option<u32> {
        self.outstanding.map(|(itt, _)| itt)
    }

    /// When [`Keepalive::poll`] has something to do next; None with pings off.
    pub fn deadline(&self) -> Option<Instant> {
        if self.cfg.interval.is_zero() {
            return None;
        }
        Some(match self.outstanding {
            Some((_, sent)) => sent + self.cfg.timeout,
            None => self.heard + self.cfg.interval,
        })
    }

    /// What to do at `now`.
    pub fn poll(&self, now: Instant) -> Action {
        match (self.deadline(), self.outstanding) {
            (Some(d), Some(_)) if now >= d => Action::Dead,
            (Some(d), None) if now >= d => Action::Ping,
            _ => Action::Wait,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn cfg() -> KeepaliveConfig {
        KeepaliveConfig {
            interval: 100 * MS,
            timeout: 50 * MS,
        }
    }

    #[test]
    fn a_silent_target_is_pinged_after_the_interval() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(cfg(), t0);
        assert_eq!(k.poll(t0 + 99 * MS), Action::Wait);
        assert_eq!(k.deadline(), Some(t0 + 100 * MS));
        // Traffic pushes the ping back.
        k.heard(t0 + 60 * MS);
        assert_eq!(k.poll(t0 + 100 * MS), Action::Wait);
        assert_eq!(k.poll(t0 + 160 * MS), Action::Ping);
    }

    #[test]
    fn an_unanswered_ping_means_the_connection_is_dead() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(cfg(), t0);
        k.pinged(7, t0 + 100 * MS);
        assert_eq!(k.outstanding(), Some(7));
        // Other traffic does not answer the ping: a target whose
        // connection still delivers old PDUs may be stuck.
        k.heard(t0 + 120 * MS);
        assert_eq!(k.poll(t0 + 149 * MS), Action::Wait);
        assert_eq!(k.poll(t0 + 150 * MS), Action::Dead);
        // Another ping's answer does not either.
        k.answered(8, t0 + 140 * MS);
        assert_eq!(k.poll(t0 + 150 * MS), Action::Dead);
    }

    #[test]
    fn an_answered_ping_starts_a_new_interval() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(cfg(), t0);
        k.pinged(7, t0 + 100 * MS);
        k.answered(7, t0 + 130 * MS);
        assert_eq!(k.outstanding(), None);
        assert_eq!(k.poll(t0 + 229 * MS), Action::Wait);
        assert_eq!(k.poll(t0 + 230 * MS), Action::Ping);
    }

    #[test]
    fn a_zero_interval_turns_pings_off() {
        let t0 = Instant::now();
        let k = Keepalive::new(
            KeepaliveConfig {
                interval: Duration::ZERO,
                timeout: MS,
            },
            t0,
        );
        assert_eq!(k.deadline(), None);
        assert_eq!(k.poll(t0 + Duration::from_secs(3600)), Action::Wait);
    }
}
