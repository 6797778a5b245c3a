//! The sans-I/O core of a multipath device: its paths' states, ALUA states
//! and statistics, which path the next I/O takes, and what happens while
//! none is usable. Every input carries the time it happened.

use std::time::{Duration, Instant};

use blockdev::ErrorClass;

use crate::alua::AluaState;
use crate::config::Config;
use crate::error::MultipathError;
use crate::events::PathEvent;
use crate::health::{Health, PathState};
use crate::no_path::NoPathClock;
use crate::selector::Selector;
use crate::stats::PathStats;

/// Where the next I/O goes.
#[derive(Debug)]
pub enum Route {
    /// Through this path (counted in flight until [`PathSet::ended`]).
    Path(usize),
    /// No path is usable: wait for one until this time.
    Wait {
        /// When the no-path bound runs out.
        until: Instant,
    },
    /// Give up with this error.
    Fail(MultipathError),
}

/// What is known of one path, for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathReport {
    /// Up, failed, marginal or dead.
    pub state: PathState,
    /// Its port group's ALUA state, as last checked.
    pub alua: AluaState,
    /// Its counters.
    pub stats: PathStats,
}

#[derive(Debug, Clone)]
struct Entry {
    health: Health,
    alua: AluaState,
    stats: PathStats,
}

/// The paths of one device.
#[derive(Debug, Clone)]
pub struct PathSet {
    paths: Vec<Entry>,
    selector: Selector,
    no_path: NoPathClock,
    /// Whether some path was usable after the last input.
    was_usable: bool,
    /// Changes not yet taken by [`PathSet::take_events`].
    events: Vec<PathEvent>,
}

impl PathSet {
    /// `n` paths, assumed up and active/optimized until checked.
    pub fn new(n: usize, config: &Config) -> PathSet {
        PathSet {
            paths: vec![
                Entry {
                    health: Health::new(config.marginal),
                    alua: AluaState::default(),
                    stats: PathStats::default(),
                };
                n
            ],
            selector: Selector::new(config.selector),
            no_path: NoPathClock::new(config.no_path_bound),
            was_usable: n > 0,
            events: Vec::new(),
        }
    }

    /// The changes since the last call, oldest first: paths that changed
    /// state, and the moments no path was usable any more or again.
    pub fn take_events(&mut self) -> Vec<PathEvent> {
        std::mem::take(&mut self.events)
    }

    /// Number of paths.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Whether there are no paths.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Whether some path can take I/O now.
    pub fn has_usable(&self) -> bool {
        self.paths.iter().any(|e| usable(e, true))
    }

    /// Whether held-out (marginal) paths take I/O now: only while no path
    /// that is up could take it; a flapping path is better than none.
    fn marginal_allowed(&self) -> bool {
        !self.paths.iter().any(|e| usable(e, false))
    }

    /// Chooses the path of an I/O of `bytes` bytes at `now`: among the
    /// usable paths of the best ALUA rank present, by the selector. Paths
    /// held out after flapping (marginal) are used only when no other is.
    pub fn route(&mut self, bytes: u64, now: Instant) -> Route {
        let marginal = self.marginal_allowed();
        let best = self
            .paths
            .iter()
            .filter(|e| usable(e, marginal))
            .filter_map(|e| e.alua.rank())
            .min();
        if let Some(best) = best {
            let candidates: Vec<(usize, &PathStats)> = self
                .paths
                .iter()
                .enumerate()
                .filter(|(_, e)| usable(e, marginal) && e.alua.rank() == Some(best))
                .map(|(i, e)| (i, &e.stats))
                .collect();
            let chosen = self
                .selector
                .pick(&candidates, bytes)
                .expect("a best rank has a candidate");
            self.paths[chosen].stats.started(bytes);
            return Route::Path(chosen);
        }
        if self
            .paths
            .iter()
            .all(|e| e.health.state() == PathState::Dead)
        {
            return Route::Fail(MultipathError::AllPathsFailed);
        }
        match self.no_path.wait_until(now) {
            Ok(until) => Route::Wait { until },
            Err(e) => Route::Fail(e),
        }
    }

    /// An I/O of `bytes` bytes routed to `path` ended after `took`, with
    /// success or an error of the given class.
    pub fn ended(
        &mut self,
        path: usize,
        bytes: u64,
        took: Duration,
        result: Result<(), ErrorClass>,
        now: Instant,
    ) {
        let before = self.paths[path].health.state();
        let e = &mut self.paths[path];
        e.stats.ended(bytes, took, result.is_ok());
        if let Err(class) = result {
            if matches!(
                class,
                ErrorClass::RetryElsewhere | ErrorClass::OutcomeUnknown | ErrorClass::Failed
            ) {
                e.stats.failed_over += 1;
            }
            e.health.io_error(class, now);
        }
        self.refresh(path, before, now);
    }

    /// How many I/Os `path` has completed: taken as a check starts, for
    /// [`PathSet::check_ended`].
    pub fn served(&self, path: usize) -> u64 {
        self.paths[path].stats.completed
    }

    /// A check of `path` that started when the path had [served](Self::served)
    /// `served_before` I/Os ended with `result`. A check that got no answer
    /// in time ([`ErrorClass::OutcomeUnknown`]) while I/Os kept completing on
    /// the path waited behind a full queue (large writes, a journal's FUA
    /// records on a loaded ISU): the path is busy, not down, and the result
    /// is dropped, as open-iscsi lets a NOP-Out go unanswered while data
    /// comes in. Failing it would hold it out as marginal after a few such
    /// checks and pile every I/O onto the other paths. Any other result is
    /// [`PathSet::checked`]. Returns whether the result was taken.
    pub fn check_ended(
        &mut self,
        path: usize,
        served_before: u64,
        result: Result<AluaState, ErrorClass>,
        now: Instant,
    ) -> bool {
        if result == Err(ErrorClass::OutcomeUnknown) && self.served(path) > served_before {
            return false;
        }
        self.checked(path, result, now);
        true
    }

    /// A check of `path` ended: the ALUA state of its port group if the
    /// device answered ready, or the class of its error.
    pub fn checked(&mut self, path: usize, result: Result<AluaState, ErrorClass>, now: Instant) {
        let before = self.paths[path].health.state();
        let e = &mut self.paths[path];
        match result {
            Ok(alua) => {
                e.alua = alua;
                e.health.checked(Ok(()), now);
            }
            Err(class) => {
                e.stats.check_failures += 1;
                e.health.checked(Err(class), now);
            }
        }
        self.refresh(path, before, now);
    }

    /// What is known of each path, in path order.
    pub fn report(&self) -> Vec<PathReport> {
        self.paths
            .iter()
            .map(|e| PathReport {
                state: e.health.state(),
                alua: e.alua,
                stats: e.stats,
            })
            .collect()
    }

    /// After an input about `path`, which was in state `before`: notes the
    /// changes and runs the no-path clock.
    fn refresh(&mut self, path: usize, before: PathState, now: Instant) {
        let state = self.paths[path].health.state();
        if std::mem::discriminant(&state) != std::mem::discriminant(&before) {
            self.events.push(PathEvent::Path { path, state });
        }
        let usable = self.has_usable();
        if usable != self.was_usable {
            self.was_usable = usable;
            self.events.push(if usable {
                PathEvent::Resumed
            } else {
                PathEvent::AllPathsDown
            });
        }
        self.no_path.update(usable, now);
    }
}

/// Whether the path can take I/O: up (or, with `marginal`, held out after
/// flapping) and in an ALUA state that carries I/O.
fn usable(e: &Entry, marginal: bool) -> bool {
    let health = match e.health.state() {
        PathState::Up => true,
        PathState::Marginal { .. } => marginal,
        PathState::Failed { .. } | PathState::Dead => false,
    };
    health && e.alua.rank().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn set(n: usize) -> PathSet {
        PathSet::new(
            n,
            &Config {
                no_path_bound: Duration::from_secs(5),
                ..Config::default()
            },
        )
    }

    fn path(r: Route) -> usize {
        match r {
            Route::Path(p) => p,
            other => panic!("expected a path, got {other:?}"),
        }
    }

    #[test]
    fn a_path_down_error_moves_io_to_the_other_path() {
        let t = Instant::now();
        let mut s = set(2);
        let p = path(s.route(4096, t));
        s.ended(p, 4096, ms(1), Err(ErrorClass::RetryElsewhere), t);
        for _ in 0..4 {
            let q = path(s.route(4096, t));
            assert_ne!(q, p);
            s.ended(q, 4096, ms(1), Ok(()), t);
        }
        let r = s.report();
        assert_eq!(r[p].stats.failed_over, 1);
        assert_eq!(r[1 - p].stats.completed, 4);
        assert!(matches!(r[p].state, PathState::Failed { .. }));
    }

    #[test]
    fn optimized_paths_are_preferred_and_standby_never_used() {
        let t = Instant::now();
        let mut s = set(3);
        s.checked(0, Ok(AluaState::ActiveNonOptimized), t);
        s.checked(1, Ok(AluaState::Standby), t);
        s.checked(2, Ok(AluaState::ActiveOptimized), t);
        for _ in 0..3 {
            assert_eq!(path(s.route(512, t)), 2);
        }
        s.checked(2, Err(ErrorClass::RetryElsewhere), t);
        for _ in 0..3 {
            assert_eq!(path(s.route(512, t)), 0);
        }
        s.checked(0, Ok(AluaState::Transitioning), t);
        assert!(matches!(s.route(512, t), Route::Wait { .. }));
    }

    #[test]
    fn a_check_timed_out_behind_completing_io_is_busy_not_down() {
        let t = Instant::now();
        let mut s = set(2);
        let before = s.served(0);
        let p = path(s.route(4096, t));
        assert_eq!(p, 0);
        s.ended(0, 4096, ms(2500), Ok(()), t + ms(2500));
        // The check started before that I/O completed and then timed out.
        assert!(!s.check_ended(0, before, Err(ErrorClass::OutcomeUnknown), t + ms(3000)));
        assert_eq!(s.report()[0].state, PathState::Up);
        // No I/O completed during the next one: the path is down.
        let before = s.served(0);
        assert!(s.check_ended(0, before, Err(ErrorClass::OutcomeUnknown), t + ms(6000)));
        assert!(matches!(s.report()[0].state, PathState::Failed { .. }));
        // Other errors count however busy the path was.
        let before = s.served(1);
        let q = path(s.route(4096, t + ms(6000)));
        assert_eq!(q, 1);
        s.ended(1, 4096, ms(1), Ok(()), t + ms(6001));
        assert!(s.check_ended(1, before, Err(ErrorClass::RetryElsewhere), t + ms(6002)));
        assert!(matches!(s.report()[1].state, PathState::Failed { .. }));
    }

    #[test]
    fn no_path_waits_up_to_the_bound_then_fails_typed() {
        let t = Instant::now();
        let mut s = set(2);
        s.checked(0, Err(ErrorClass::RetryElsewhere), t);
        s.checked(1, Err(ErrorClass::OutcomeUnknown), t + ms(100));
        assert!(
            matches!(s.route(512, t + ms(200)), Route::Wait { until } if until == t + ms(5100))
        );
        assert!(matches!(
            s.route(512, t + ms(5100)),
            Route::Fail(MultipathError::NoPath { .. })
        ));
        s.checked(1, Ok(AluaState::ActiveOptimized), t + ms(6000));
        assert_eq!(path(s.route(512, t + ms(6000))), 1);
    }

    #[test]
    fn changes_are_reported_once_in_order() {
        let t = Instant::now();
        let mut s = set(2);
        s.ended(0, 512, ms(1), Err(ErrorClass::RetryElsewhere), t);
        s.checked(0, Err(ErrorClass::RetryElsewhere), t + ms(10));
        s.checked(1, Err(ErrorClass::OutcomeUnknown), t + ms(20));
        s.checked(1, Err(ErrorClass::OutcomeUnknown), t + ms(30));
        s.checked(1, Ok(AluaState::ActiveOptimized), t + ms(40));
        s.checked(1, Ok(AluaState::ActiveOptimized), t + ms(50));
        assert_eq!(
            s.take_events(),
            [
                PathEvent::Path {
                    path: 0,
                    state: PathState::Failed { since: t }
                },
                PathEvent::Path {
                    path: 1,
                    state: PathState::Failed { since: t + ms(20) }
                },
                PathEvent::AllPathsDown,
                PathEvent::Path {
                    path: 1,
                    state: PathState::Up
                },
                PathEvent::Resumed,
            ]
        );
        assert_eq!(s.take_events(), []);
        // An ALUA state that carries no I/O counts as no usable path.
        s.checked(1, Ok(AluaState::Standby), t + ms(60));
        assert_eq!(s.take_events(), [PathEvent::AllPathsDown]);
    }

    #[test]
    fn a_marginal_path_is_used_only_when_no_other_is() {
        let t = Instant::now();
        let mut s = set(2);
        // Path 0 flaps three times within the window: marginal when back.
        for i in 0..3 {
            s.checked(0, Err(ErrorClass::RetryElsewhere), t + ms(i * 100));
            s.checked(0, Ok(AluaState::ActiveOptimized), t + ms(i * 100 + 50));
        }
        assert!(matches!(s.report()[0].state, PathState::Marginal { .. }));
        for _ in 0..3 {
            assert_eq!(path(s.route(512, t + ms(400))), 1);
        }
        // Path 1 goes down: the marginal path is better than none.
        s.checked(1, Err(ErrorClass::RetryElsewhere), t + ms(500));
        assert!(s.has_usable());
        assert_eq!(path(s.route(512, t + ms(500))), 0);
        // Back: the held-out path is left alone again.
        s.checked(1, Ok(AluaState::ActiveOptimized), t + ms(600));
        assert_eq!(path(s.route(512, t + ms(600))), 1);
        assert_eq!(path(s.route(512, t + ms(600))), 1);
    }

    #[test]
    fn all_paths_dead_fail_at_once() {
        let t = Instant::now();
        let mut s = set(2);
        s.checked(0, Err(ErrorClass::Failed), t);
        s.ended(1, 0, ms(1), Err(ErrorClass::Failed), t);
        assert!(matches!(
            s.route(512, t),
            Route::Fail(MultipathError::AllPathsFailed)
        ));
    }
}
