//! The state machine of one path: up, failed, marginal (held out after
//! flapping) or dead, driven by checker results and I/O errors by class.
//! Sans-I/O: every input carries the time it happened.

use std::collections::VecDeque;
use std::time::Instant;

use blockdev::ErrorClass;

use crate::config::Marginal;

/// Where a path stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathState {
    /// Carries I/O.
    Up,
    /// Down since the given time: no I/O until a check succeeds.
    Failed {
        /// When it went down.
        since: Instant,
    },
    /// Back after flapping, held out until it stays good for
    /// [`Marginal::hold`] from `good_since`.
    Marginal {
        /// Since when every check has succeeded.
        good_since: Instant,
    },
    /// The device behind it failed for good (an error of class
    /// [`ErrorClass::Failed`]); never used again.
    Dead,
}

/// One path's state and its recent failures.
#[derive(Debug, Clone)]
pub struct Health {
    state: PathState,
    /// When the path went down, within the marginal window.
    failures: VecDeque<Instant>,
    rules: Marginal,
}

impl Health {
    /// A path assumed up (its first check will tell).
    pub fn new(rules: Marginal) -> Health {
        Health {
            state: PathState::Up,
            failures: VecDeque::new(),
            rules,
        }
    }

    /// The state now.
    pub fn state(&self) -> PathState {
        self.state
    }

    /// Whether I/O may go through the path.
    pub fn is_up(&self) -> bool {
        self.state == PathState::Up
    }

    /// How many times the path went down within the window before `now`.
    pub fn recent_failures(&self, now: Instant) -> usize {
        self.failures
            .iter()
            .filter(|t| now.saturating_duration_since(**t) < self.rules.window)
            .count()
    }

    /// An I/O through the path failed with an error of `class`. Returns
    /// whether the path changed state.
    pub fn io_error(&mut self, class: ErrorClass, now: Instant) -> bool {
        match class {
            ErrorClass::RetryElsewhere | ErrorClass::OutcomeUnknown => self.go_down(now),
            ErrorClass::Failed => self.die(),
            // Busy paths stay; the other classes are about the request or the
            // device, the same on every path.
            ErrorClass::RetryLater
            | ErrorClass::ReservationConflict
            | ErrorClass::Medium
            | ErrorClass::Invalid
            | ErrorClass::ReadOnly
            | ErrorClass::NoSpace => false,
        }
    }

    /// A check of the path ended: `Ok` if the device answered ready, or the
    /// class of its error. Returns whether the path changed state.
    pub fn checked(&mut self, result: Result<(), ErrorClass>, now: Instant) -> bool {
        match (result, self.state) {
            (_, PathState::Dead) => false,
            (Err(ErrorClass::Failed), _) => self.die(),
            (Err(_), _) => self.go_down(now),
            (Ok(()), PathState::Up) => false,
            (Ok(()), PathState::Failed { .. }) => {
                self.state = if self.recent_failures(now) >= self.rules.failures as usize {
                    PathState::Marginal { good_since: now }
                } else {
                    PathState::Up
                };
                true
            }
            (Ok(()), PathState::Marginal { good_since }) => {
                if now.saturating_duration_since(good_since) >= self.rules.hold {
                    self.state = PathState::Up;
                    true
                } else {
                    false
                }
            }
        }
    }

    fn go_down(&mut self, now: Instant) -> bool {
        match self.state {
            PathState::Up | PathState::Marginal { .. } => {
                self.state = PathState::Failed { since: now };
                self.failures.push_back(now);
                while let Some(first) = self.failures.front() {
                    if now.saturating_duration_since(*first) >= self.rules.window {
                        self.failures.pop_front();
                    } else {
                        break;
                    }
                }
                true
            }
            PathState::Failed { .. } | PathState::Dead => false,
        }
    }

    fn die(&mut self) -> bool {
        let changed = self.state != PathState::Dead;
        self.state = PathState::Dead;
        changed
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const RULES: Marginal = Marginal {
        window: Duration::from_secs(60),
        failures: 3,
        hold: Duration::from_secs(10),
    };

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn path_down_fails_the_path_and_a_good_check_brings_it_back() {
        let t = Instant::now();
        let mut h = Health::new(RULES);
        assert!(h.io_error(ErrorClass::RetryElsewhere, t));
        assert_eq!(h.state(), PathState::Failed { since: t });
        assert!(!h.checked(Err(ErrorClass::RetryElsewhere), t + s(1)));
        assert!(h.checked(Ok(()), t + s(2)));
        assert!(h.is_up());
    }

    #[test]
    fn request_errors_leave_the_path_up() {
        let t = Instant::now();
        let mut h = Health::new(RULES);
        for class in [
            ErrorClass::RetryLater,
            ErrorClass::Medium,
            ErrorClass::Invalid,
            ErrorClass::ReadOnly,
            ErrorClass::NoSpace,
            ErrorClass::ReservationConflict,
        ] {
            assert!(!h.io_error(class, t));
            assert!(h.is_up());
        }
        assert!(h.io_error(ErrorClass::OutcomeUnknown, t));
        assert!(!h.is_up());
    }

    #[test]
    fn a_flapping_path_is_held_out_until_it_stays_good() {
        let t = Instant::now();
        let mut h = Health::new(RULES);
        for i in 0..2 {
            h.io_error(ErrorClass::RetryElsewhere, t + s(i * 5));
            h.checked(Ok(()), t + s(i * 5 + 1));
            assert!(h.is_up(), "two failures in the window are not flapping");
        }
        h.io_error(ErrorClass::RetryElsewhere, t + s(20));
        h.checked(Ok(()), t + s(21));
        assert_eq!(
            h.state(),
            PathState::Marginal {
                good_since: t + s(21)
            }
        );
        h.checked(Ok(()), t + s(30));
        assert!(!h.is_up(), "held for 10 s of good checks");
        // A failure while held restarts the hold.
        h.checked(Err(ErrorClass::RetryElsewhere), t + s(30));
        h.checked(Ok(()), t + s(31));
        h.checked(Ok(()), t + s(40));
        assert!(!h.is_up());
        h.checked(Ok(()), t + s(41));
        assert!(h.is_up());
    }

    #[test]
    fn old_failures_leave_the_window() {
        let t = Instant::now();
        let mut h = Health::new(RULES);
        for i in 0..3 {
            h.io_error(ErrorClass::RetryElsewhere, t + s(i * 40));
            h.checked(Ok(()), t + s(i * 40 + 1));
        }
        assert!(h.is_up(), "failures 40 s apart never reach 3 within 60 s");
    }

    #[test]
    fn failed_class_kills_the_path_for_good() {
        let t = Instant::now();
        let mut h = Health::new(RULES);
        assert!(h.checked(Err(ErrorClass::Failed), t));
        assert_eq!(h.state(), PathState::Dead);
        assert!(!h.checked(Ok(()), t + s(100)));
        assert_eq!(h.state(), PathState::Dead);
    }
}
