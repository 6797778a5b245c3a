//! Login backoff: slow down repeated authentication failures from one source
//! so secrets cannot be guessed at line rate, without slowing anyone else.
//!
//! Sans-I/O: the caller passes the current [`Instant`] in and does the
//! waiting itself (for example with `tokio::time::sleep_until`).
//!
//! Each source (an IPv4 address, or the /64 prefix of an IPv6 address, since
//! one host usually owns a whole /64) has a failure count. After
//! `free_failures` failures, each further failure doubles the delay, from
//! `base` up to `cap`. The count drops by one for every `quiet` period without
//! a failure, and a successful login clears it.
//!
//! Two delays are handed out:
//! * [`LoginBackoff::record_failure`] returns how long to hold back the failure
//!   Login Response, so a single connection cannot retry faster;
//! * [`LoginBackoff::admit`] says when a new login from that source may be
//!   processed. While a source is penalized, admissions are spaced by the
//!   current delay, so opening many connections in parallel does not multiply
//!   the guess rate. Independently of failures, at most `max_in_flight` logins
//!   per source are processed at once (a burst of parallel guesses before the
//!   first failure is recorded would otherwise all be answered); each admitted
//!   login must be ended with [`LoginBackoff::finish`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Backoff tuning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Failures from one source before any delay applies.
    pub free_failures: u32,
    /// Delay after the first failure beyond `free_failures`.
    pub base: Duration,
    /// Largest delay.
    pub cap: Duration,
    /// Each quiet period (no failure) forgives one failure.
    pub quiet: Duration,
    /// Most sources tracked at once; beyond that the least recently active
    /// source without a login in progress is forgotten.
    pub max_sources: usize,
    /// Most logins from one source processed at the same time; further ones
    /// wait their turn. A host logging in to all its targets at boot stays
    /// well below it.
    pub max_in_flight: u32,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            free_failures: 2,
            base: Duration::from_millis(500),
            cap: Duration::from_secs(16),
            quiet: Duration::from_secs(60),
            max_sources: 4096,
            max_in_flight: 16,
        }
    }
}

impl BackoffConfig {
    /// The delay after `failures` failures.
    pub fn delay_for(&self, failures: u32) -> Duration {
        if failures <= self.free_failures {
            return Duration::ZERO;
        }
        let doublings = (failures - self.free_failures - 1).min(31);
        self.base
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.cap)
            .min(self.cap)
    }
}

/// What counts as one source of logins: an IPv4 address, or the /64 prefix
/// of an IPv6 address (IPv4-mapped IPv6 addresses count as their IPv4
/// address). Other per-source limits of a target use the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKey {
    /// An IPv4 address.
    V4(u32),
    /// The upper 64 bits of an IPv6 address.
    V6Prefix(u64),
}

impl From<IpAddr> for SourceKey {
    fn from(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(a) => SourceKey::V4(a.into()),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => SourceKey::V4(v4.into()),
                None => SourceKey::V6Prefix((u128::from(a) >> 64) as u64),
            },
        }
    }
}

/// What [`LoginBackoff::admit`] decided about a new login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The login is admitted (and counted in flight until
    /// [`LoginBackoff::finish`]); process it after this wait.
    Proceed(Duration),
    /// Too many logins from this source are in progress: ask again after
    /// this wait. Nothing was reserved.
    Retry(Duration),
}

#[derive(Debug, Clone)]
struct Entry {
    failures: u32,
    /// Admitted logins not yet finished.
    in_flight: u32,
    /// Start of the current quiet-time accounting.
    last_failure: Instant,
    /// Earliest time the next login from this source may be processed.
    next_slot: Instant,
    /// Last time anything happened for this source (for eviction).
    last_seen: Instant,
}

/// Per-source login failure tracker. See the module documentation.
#[derive(Debug, Clone)]
pub struct LoginBackoff {
    config: BackoffConfig,
    sources: HashMap<SourceKey, Entry>,
}

impl LoginBackoff {
    /// A tracker with the given tuning.
    pub fn new(config: BackoffConfig) -> Self {
        LoginBackoff {
            config,
            sources: HashMap::new(),
        }
    }

    /// The tuning in force.
    pub fn config(&self) -> &BackoffConfig {
        &self.config
    }

    /// Replaces the tuning (e.g. on a config reload). Every source keeps its
    /// failure count, logins in flight and next admission time, so a reload
    /// does not forgive an attacker; the new settings apply from the next
    /// admission, failure or decay on.
    pub fn set_config(&mut self, config: BackoffConfig) {
        self.config = config;
    }

    /// A new login from `source` arrived at `now`: whether and when it may be
    /// processed. A [`Admission::Proceed`] must be paired with one
    /// [`LoginBackoff::finish`] once the login is over, whatever its outcome.
    pub fn admit(&mut self, source: IpAddr, now: Instant) -> Admission {
        let (cfg, e) = self.touch(source, now);
        if e.in_flight >= cfg.max_in_flight.max(1) {
            return Admission::Retry(cfg.base.max(Duration::from_millis(10)));
        }
        e.in_flight += 1;
        let delay = cfg.delay_for(e.failures);
        if delay.is_zero() {
            return Admission::Proceed(e.next_slot.saturating_duration_since(now));
        }
        let slot = e.next_slot.max(now);
        e.next_slot = slot + delay;
        Admission::Proceed(slot - now)
    }

    /// A login admitted by [`LoginBackoff::admit`] is over (authenticated,
    /// refused, or the connection went away).
    pub fn finish(&mut self, source: IpAddr) {
        if let Some(e) = self.sources.get_mut(&source.into()) {
            e.in_flight = e.in_flight.saturating_sub(1);
        }
    }

    /// Logins from `source` admitted and not yet finished.
    pub fn in_flight(&self, source: IpAddr) -> u32 {
        self.sources.get(&source.into()).map_or(0, |e| e.in_flight)
    }

    /// A login from `source` failed authentication at `now`: returns how long
    /// to hold back the failure response.
    pub fn record_failure(&mut self, source: IpAddr, now: Instant) -> Duration {
        let (cfg, e) = self.touch(source, now);
        e.failures = e.failures.saturating_add(1);
        e.last_failure = now;
        let delay = cfg.delay_for(e.failures);
        e.next_slot = e.next_slot.max(now + delay);
        delay
    }

    /// A login from `source` authenticated: forget its failures (logins still
    /// in flight stay counted).
    pub fn record_success(&mut self, source: IpAddr, now: Instant) {
        if let Some(e) = self.sources.get_mut(&source.into()) {
            e.failures = 0;
            e.next_slot = now;
        }
    }

    /// Current failure count of `source` (after decay up to `now`).
    pub fn failures(&self, source: IpAddr, now: Instant) -> u32 {
        self.sources.get(&source.into()).map_or(0, |e| {
            let mut e = e.clone();
            decay(&self.config, &mut e, now);
            e.failures
        })
    }

    /// Number of sources tracked.
    pub fn tracked_sources(&self) -> usize {
        self.sources.len()
    }

    /// Drop sources that have fully decayed; call now and then (for example
    /// once a minute) to bound memory.
    pub fn purge(&mut self, now: Instant) {
        let cfg = self.config.clone();
        self.sources.retain(|_, e| {
            decay(&cfg, e, now);
            e.failures > 0 || e.in_flight > 0 || e.next_slot > now
        });
    }

    /// The entry of `source` (created if new, making room if the table is
    /// full), decayed up to `now` and marked as seen.
    fn touch(&mut self, source: IpAddr, now: Instant) -> (&BackoffConfig, &mut Entry) {
        let key = SourceKey::from(source);
        if !self.sources.contains_key(&key) && self.sources.len() >= self.config.max_sources {
            self.make_room(now);
        }
        let cfg = &self.config;
        let e = self.sources.entry(key).or_insert_with(|| Entry::new(now));
        decay(cfg, e, now);
        e.last_seen = now;
        (cfg, e)
    }

    fn make_room(&mut self, now: Instant) {
        self.purge(now);
        if self.sources.len() < self.config.max_sources {
            return;
        }
        if let Some(oldest) = self
            .sources
            .iter()
            .filter(|(_, e)| e.in_flight == 0)
            .min_by_key(|(_, e)| e.last_seen)
            .map(|(k, _)| *k)
        {
            self.sources.remove(&oldest);
        }
    }
}

impl Entry {
    fn new(now: Instant) -> Self {
        Entry {
            failures: 0,
            in_flight: 0,
            last_failure: now,
            next_slot: now,
            last_seen: now,
        }
    }
}

/// Forgive one failure per full quiet period since the last failure.
fn decay(cfg: &BackoffConfig, e: &mut Entry, now: Instant) {
    if cfg.quiet.is_zero() {
        e.failures = 0;
        return;
    }
    let elapsed = now.saturating_duration_since(e.last_failure);
    let periods = elapsed.as_nanos() / cfg.quiet.as_nanos();
    if periods > 0 {
        let forgiven = u32::try_from(periods).unwrap_or(u32::MAX);
        e.failures = e.failures.saturating_sub(forgiven);
        // Keep the remainder so decay proceeds at a steady rate.
        let step = cfg.quiet.saturating_mul(forgiven);
        e.last_failure = e.last_failure.checked_add(step).map_or(now, |t| t.min(now));
    }
}
