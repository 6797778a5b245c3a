//! The no-path policy: while no path is usable, I/O waits, up to a bound of
//! time counted from the moment the last path went; after that it fails
//! with a typed error at once, until a path is back.

use std::time::{Duration, Instant};

use crate::error::MultipathError;

/// The clock of the time without a usable path.
#[derive(Debug, Clone)]
pub struct NoPathClock {
    bound: Duration,
    /// Since when no path has been usable; None while one is.
    since: Option<Instant>,
}

impl NoPathClock {
    /// A clock with the given bound, a path usable now.
    pub fn new(bound: Duration) -> NoPathClock {
        NoPathClock { bound, since: None }
    }

    /// Tells the clock whether a path is usable at `now`.
    pub fn update(&mut self, usable: bool, now: Instant) {
        if usable {
            self.since = None;
        } else {
            self.since.get_or_insert(now);
        }
    }

    /// Since when no path has been usable.
    pub fn since(&self) -> Option<Instant> {
        self.since
    }

    /// For an I/O at `now` with no usable path: the time to wait until, or
    /// the error once the bound has passed.
    pub fn wait_until(&mut self, now: Instant) -> Result<Instant, MultipathError> {
        let since = *self.since.get_or_insert(now);
        let deadline = since + self.bound;
        if now >= deadline {
            Err(MultipathError::NoPath {
                waited: now - since,
                bound: self.bound,
            })
        } else {
            Ok(deadline)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_up_to_the_bound_from_the_last_path_going() {
        let t = Instant::now();
        let bound = Duration::from_secs(30);
        let mut c = NoPathClock::new(bound);
        c.update(false, t);
        // An I/O arriving later waits only for what is left of the bound.
        assert_eq!(
            c.wait_until(t + Duration::from_secs(10)).unwrap(),
            t + bound
        );
        // The clock does not restart while paths stay down.
        c.update(false, t + Duration::from_secs(20));
        assert!(matches!(
            c.wait_until(t + bound),
            Err(MultipathError::NoPath { waited, .. }) if waited == bound
        ));
        c.update(true, t + Duration::from_secs(31));
        assert_eq!(c.since(), None);
        c.update(false, t + Duration::from_secs(40));
        assert_eq!(
            c.wait_until(t + Duration::from_secs(40)).unwrap(),
            t + Duration::from_secs(70)
        );
    }
}
