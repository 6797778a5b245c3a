//! Injected time: the engine never reads the wall clock itself, so tests drive
//! spare timeouts, rebuild rate limits, ETAs and the wait for a member whose
//! path is down with a [`ManualClock`].

use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

/// A monotonic clock.
pub trait Clock: Send + Sync + Debug {
    /// Time since an arbitrary fixed origin.
    fn now(&self) -> Duration;

    /// Completes once the clock has moved `d` past now. The default sleeps
    /// on tokio's timer.
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(d))
    }
}

/// The system's monotonic clock.
#[derive(Debug)]
pub struct SystemClock(Instant);

impl SystemClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        SystemClock(Instant::now())
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// A clock that moves only when told to; its sleeps end when it is advanced
/// past their deadline.
#[derive(Debug)]
pub struct ManualClock {
    now: tokio::sync::watch::Sender<Duration>,
    /// Deadlines of the sleeps under way.
    sleeps: Arc<Mutex<Vec<Duration>>>,
}

impl ManualClock {
    /// A clock at time zero.
    pub fn new() -> Self {
        ManualClock {
            now: tokio::sync::watch::Sender::new(Duration::ZERO),
            sleeps: Arc::default(),
        }
    }

    /// Moves time forward.
    pub fn advance(&self, by: Duration) {
        self.now.send_modify(|t| *t += by);
    }

    /// How many sleeps wait for a time the clock has not reached (a sleep
    /// whose deadline has passed but that has not run yet is not counted).
    pub fn sleepers(&self) -> usize {
        let now = self.now();
        let sleeps = self.sleeps.lock().expect("clock lock");
        sleeps.iter().filter(|&&d| d > now).count()
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

/// A sleep's deadline in [`ManualClock::sleeps`] while the sleep exists.
struct Registered {
    sleeps: Arc<Mutex<Vec<Duration>>>,
    deadline: Duration,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut sleeps = self.sleeps.lock().expect("clock lock");
        if let Some(i) = sleeps.iter().position(|&d| d == self.deadline) {
            sleeps.swap_remove(i);
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        *self.now.borrow()
    }

    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        let mut rx = self.now.subscribe();
        let deadline = *rx.borrow_and_update() + d;
        self.sleeps.lock().expect("clock lock").push(deadline);
        let registered = Registered {
            sleeps: self.sleeps.clone(),
            deadline,
        };
        Box::pin(async move {
            let _registered = registered;
            // The sender lives as long as the clock, which outlives its sleeps
            // in every use; if it went away, time could not move any more.
            let _ = rx.wait_for(|t| *t >= deadline).await;
        })
    }
}
