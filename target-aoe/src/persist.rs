//! When a target's state (its config string, or its MAC mask and reservation
//! lists) is written to disk, and which replies each write releases: a
//! sans-I/O policy with the clock passed in. The caller does the writing.
//!
//! Every change bumps a generation; the reply to a change waits until a write
//! that covers its generation is durable, so a reply still means "persisted".
//! Writes are coalesced: at most one is in flight and at most one starts per
//! interval, and each writes the state in effect when it starts (the latest
//! state wins). A flood of N changes therefore costs about one write per
//! interval, not N, and nothing else waits for it: the data path never goes
//! through here.
//!
//! Replies waiting for a write are bounded. Past the bound a change still
//! takes effect (and is written with the rest) but its reply is dropped, as
//! if lost on the wire: the initiator retransmits, and every AoE change
//! command is idempotent. Memory stays bounded however long a flood lasts.
//!
//! A reply is built from the state the write that released it wrote, so a
//! change superseded before that write is answered with the state that
//! superseded it: what is durably in effect. A failed write undoes every
//! change not yet durable: the caller puts the last durable state back and
//! answers every waiting reply with an error.
//!
//! A flood (many changes folded into few writes, or replies dropped) is
//! reported at most once per [`REPORT_EVERY`], with the counts since the last
//! report, so it is neither silently absorbed nor a log storm.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Default shortest time between the starts of two writes of one state.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(100);
/// Default bound on replies waiting for a write, per state.
pub const DEFAULT_MAX_WAITING: usize = 256;
/// Shortest time between two flood reports of one state.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);
/// Changes that must be folded into other changes' writes (changes minus
/// writes, within [`REPORT_EVERY`]) before they are reported as a flood.
pub const FLOOD_FOLDED: u64 = 100;

/// What becomes of a change's reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Admitted<W> {
    /// Everything is durable already (the request changed nothing that is
    /// not on disk): answer now.
    AnswerNow(W),
    /// The reply waits for the write covering the change.
    Waiting,
    /// Too many replies wait: this one is dropped. The change stands and
    /// will be written.
    Dropped(W),
}

/// What the caller should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Write the state as it is now (take the snapshot at once, under the
    /// same lock as the changes), then call [`Coalescer::written`] with this
    /// generation, or [`Coalescer::failed`].
    Write(u64),
    /// A write is due at this instant (ask again then, or after a change).
    WaitUntil(Instant),
    /// Nothing to write, or a write is in flight.
    Idle,
}

/// Counts since the last report, for the log line of a flood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloodReport {
    /// Changes applied.
    pub changes: u64,
    /// Writes that completed.
    pub writes: u64,
    /// Replies dropped because too many were waiting.
    pub dropped: u64,
    /// The time these counts cover.
    pub over: Duration,
}

#[derive(Debug, Default)]
struct FloodCount {
    since: Option<Instant>,
    changes: u64,
    writes: u64,
    dropped: u64,
    last_report: Option<Instant>,
}

impl FloodCount {
    fn start(&mut self, now: Instant) {
        self.since.get_or_insert(now);
    }

    fn reset(&mut self, now: Instant) {
        *self = FloodCount {
            since: Some(now),
            last_report: self.last_report,
            ..FloodCount::default()
        };
    }
}

/// The coalescing policy for one persisted state, holding the replies (`W`)
/// that wait for it to be written.
#[derive(Debug)]
pub struct Coalescer<W> {
    interval: Duration,
    max_waiting: usize,
    /// Generation of the state in effect.
    current: u64,
    /// Generation known to be on disk.
    durable: u64,
    in_flight: Option<u64>,
    last_start: Option<Instant>,
    /// Waiting replies with their generations (non-decreasing).
    waiting: VecDeque<(u64, W)>,
    flood: FloodCount,
}

impl<W> Coalescer<W> {
    /// A policy writing at most once per `interval`, holding at most
    /// `max_waiting` replies. The state it starts from is durable.
    pub fn new(interval: Duration, max_waiting: usize) -> Coalescer<W> {
        Coalescer {
            interval,
            max_waiting,
            current: 0,
            durable: 0,
            in_flight: None,
            last_start: None,
            waiting: VecDeque::new(),
            flood: FloodCount::default(),
        }
    }

    /// A request to change the state arrived and was applied; `changed`
    /// says whether it changed anything. Its reply waits for the write that
    /// covers the state it saw, unless that is durable already.
    pub fn change(&mut self, now: Instant, changed: bool, reply: W) -> Admitted<W> {
        self.flood.start(now);
        if changed {
            self.current += 1;
            self.flood.changes += 1;
        }
        if self.current == self.durable {
            return Admitted::AnswerNow(reply);
        }
        if self.waiting.len() >= self.max_waiting {
            self.flood.dropped += 1;
            return Admitted::Dropped(reply);
        }
        self.waiting.push_back((self.current, reply));
        Admitted::Waiting
    }

    /// Whether the state in effect is not all on disk.
    pub fn dirty(&self) -> bool {
        self.current != self.durable
    }

    /// Replies waiting for a write.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// What to do at `now`: start a write when the state is dirty, none is
    /// in flight and the last one started at least an interval ago.
    pub fn poll(&mut self, now: Instant) -> Next {
        if self.in_flight.is_some() || !self.dirty() {
            return Next::Idle;
        }
        if let Some(due) = self.last_start.map(|t| t + self.interval) {
            if now < due {
                return Next::WaitUntil(due);
            }
        }
        self.start(now)
    }

    /// As [`Coalescer::poll`], but without waiting for the interval (at
    /// shutdown).
    pub fn poll_now(&mut self, now: Instant) -> Next {
        if self.in_flight.is_some() || !self.dirty() {
            return Next::Idle;
        }
        self.start(now)
    }

    fn start(&mut self, now: Instant) -> Next {
        self.in_flight = Some(self.current);
        self.last_start = Some(now);
        Next::Write(self.current)
    }

    /// The write of generation `generation` is durable: returns the replies
    /// it covers, oldest first (answer them with the state that was written).
    pub fn written(&mut self, generation: u64) -> Vec<W> {
        self.in_flight = None;
        self.durable = self.durable.max(generation);
        self.flood.writes += 1;
        let n = self
            .waiting
            .iter()
            .take_while(|(g, _)| *g <= generation)
            .count();
        self.waiting.drain(..n).map(|(_, w)| w).collect()
    }

    /// The write in flight failed. The caller must put the last durable
    /// state back in effect (every change since is undone); returns every
    /// waiting reply, to be answered with an error.
    pub fn failed(&mut self) -> Vec<W> {
        self.in_flight = None;
        self.durable = self.current;
        self.waiting.drain(..).map(|(_, w)| w).collect()
    }

    /// A report to log, when changes flood in: at most one per
    /// [`REPORT_EVERY`], with the counts since the previous one.
    pub fn flood_report(&mut self, now: Instant) -> Option<FloodReport> {
        let f = &self.flood;
        let since = f.since?;
        let flooding = f.changes.saturating_sub(f.writes) >= FLOOD_FOLDED || f.dropped > 0;
        let may_report = f
            .last_report
            .is_none_or(|t| now.duration_since(t) >= REPORT_EVERY);
        if flooding && may_report {
            let report = FloodReport {
                changes: f.changes,
                writes: f.writes,
                dropped: f.dropped,
                over: now.duration_since(since),
            };
            self.flood.last_report = Some(now);
            self.flood.reset(now);
            return Some(report);
        }
        if !flooding && now.duration_since(since) >= REPORT_EVERY {
            // A quiet window: forget it, so slow trickles never add up.
            self.flood.reset(now);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn policy() -> Coalescer<u32> {
        Coalescer::new(100 * MS, 8)
    }

    #[test]
    fn a_lone_change_is_written_at_once_and_answered_after() {
        let t0 = Instant::now();
        let mut c = policy();
        assert_eq!(c.poll(t0), Next::Idle);
        assert_eq!(c.change(t0, true, 1), Admitted::Waiting);
        assert_eq!(c.poll(t0), Next::Write(1));
        assert_eq!(c.poll(t0), Next::Idle, "one write in flight at a time");
        assert_eq!(c.written(1), vec![1]);
        assert!(!c.dirty());
        // Nothing to write: a request that changes nothing is answered now.
        assert_eq!(c.change(t0 + MS, false, 2), Admitted::AnswerNow(2));
        assert_eq!(c.poll(t0 + MS), Next::Idle);
    }

    #[test]
    fn a_flood_costs_one_write_per_interval_and_the_last_state_wins() {
        let t0 = Instant::now();
        let mut c: Coalescer<u64> = Coalescer::new(100 * MS, 256);
        // 300,000 changes over 3 s (one every 10 us), the writer taking
        // 30 ms per write; every reply admitted is released, in order.
        let (mut writes, mut released, mut dropped) = (0u64, Vec::new(), 0u64);
        let mut in_flight: Option<(u64, Instant)> = None;
        let (mut max_waiting, mut last_admitted) = (0, 0);
        for i in 0..300_000u64 {
            let now = t0 + Duration::from_micros(10 * i);
            match c.change(now, true, i) {
                Admitted::Dropped(_) => dropped += 1,
                Admitted::AnswerNow(_) => panic!("a change is never durable at once"),
                Admitted::Waiting => last_admitted = i,
            }
            max_waiting = max_waiting.max(c.waiting());
            if let Some((g, done)) = in_flight {
                if now >= done {
                    released.extend(c.written(g));
                    in_flight = None;
                }
            }
            if let Next::Write(g) = c.poll(now) {
                writes += 1;
                in_flight = Some((g, now + 30 * MS));
            }
        }
        // The flood is over: the last state is written within an interval.
        let end = t0 + Duration::from_secs(3);
        if let Some((g, _)) = in_flight.take() {
            released.extend(c.written(g));
        }
        let last = match c.poll(end) {
            Next::Write(g) => g,
            Next::WaitUntil(due) => {
                assert!(due <= end + 100 * MS, "due within an interval");
                let Next::Write(g) = c.poll(due) else {
                    panic!("the last state must be written when due")
                };
                g
            }
            Next::Idle => panic!("the last state must be written"),
        };
        assert_eq!(last, 300_000, "the write covers the last change");
        released.extend(c.written(last));
        writes += 1;
        assert!(!c.dirty());
        assert!(writes <= 32, "{writes} writes for 3 s of flood");
        assert!(max_waiting <= 256, "waiting replies are bounded");
        assert_eq!(released.len() as u64 + dropped, 300_000);
        assert!(
            released.windows(2).all(|w| w[0] < w[1]),
            "released in order"
        );
        assert_eq!(
            released.last(),
            Some(&last_admitted),
            "every admitted reply is answered"
        );
    }

    #[test]
    fn a_reply_waits_for_the_write_covering_its_change() {
        let t0 = Instant::now();
        let mut c = policy();
        c.change(t0, true, 1);
        let Next::Write(g1) = c.poll(t0) else {
            panic!()
        };
        // A change during the write waits for the next one, which starts an
        // interval after the first.
        assert_eq!(c.change(t0 + MS, true, 2), Admitted::Waiting);
        // Changing nothing while dirty also waits: the state it reports is
        // not durable yet.
        assert_eq!(c.change(t0 + MS, false, 3), Admitted::Waiting);
        assert_eq!(c.written(g1), vec![1]);
        assert_eq!(c.poll(t0 + 50 * MS), Next::WaitUntil(t0 + 100 * MS));
        let Next::Write(g2) = c.poll(t0 + 100 * MS) else {
            panic!()
        };
        assert_eq!(c.written(g2), vec![2, 3]);
    }

    #[test]
    fn replies_beyond_the_bound_are_dropped_but_the_change_is_written() {
        let t0 = Instant::now();
        let mut c = policy();
        for i in 0..8 {
            assert_eq!(c.change(t0, true, i), Admitted::Waiting);
        }
        assert_eq!(c.change(t0, true, 8), Admitted::Dropped(8));
        let Next::Write(g) = c.poll(t0) else { panic!() };
        assert_eq!(g, 9, "the dropped reply's change is in the write");
        assert_eq!(c.written(g).len(), 8);
        assert!(!c.dirty());
    }

    #[test]
    fn a_failed_write_fails_every_waiting_reply_and_leaves_nothing_dirty() {
        let t0 = Instant::now();
        let mut c = policy();
        c.change(t0, true, 1);
        assert_eq!(c.poll(t0), Next::Write(1));
        c.change(t0 + MS, true, 2);
        assert_eq!(c.failed(), vec![1, 2]);
        // The caller put the durable state back: nothing to write.
        assert!(!c.dirty());
        assert_eq!(c.poll(t0 + Duration::from_secs(1)), Next::Idle);
        assert_eq!(c.change(t0 + 2 * MS, false, 3), Admitted::AnswerNow(3));
        // The next change is written, an interval after the failed start.
        c.change(t0 + 2 * MS, true, 4);
        assert_eq!(c.poll(t0 + 2 * MS), Next::WaitUntil(t0 + 100 * MS));
        assert_eq!(c.poll_now(t0 + 2 * MS), Next::Write(3));
    }

    #[test]
    fn a_flood_is_reported_once_per_period_and_a_trickle_never() {
        let t0 = Instant::now();
        let mut c: Coalescer<u32> = Coalescer::new(100 * MS, 200);
        // A change a second for a minute, each written: no report.
        for i in 0..60u64 {
            let now = t0 + Duration::from_secs(i);
            c.change(now, true, 0);
            let Next::Write(g) = c.poll(now) else {
                panic!()
            };
            c.written(g);
            assert_eq!(c.flood_report(now), None);
        }
        // Then 1000 changes in 10 ms: one report at once, then silence
        // until REPORT_EVERY has passed, then one with the counts since.
        let t1 = t0 + Duration::from_secs(100);
        let mut reports = Vec::new();
        for i in 0..1000u64 {
            let now = t1 + Duration::from_micros(10 * i);
            c.change(now, true, 0);
            reports.extend(c.flood_report(now));
        }
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert_eq!((reports[0].changes, reports[0].writes), (FLOOD_FOLDED, 0));
        for i in 0..1000u64 {
            let now = t1 + 10 * MS + Duration::from_millis(20 * i);
            c.change(now, true, 0);
            reports.extend(c.flood_report(now));
        }
        assert_eq!(reports.len(), 2, "{reports:?}");
        assert!(reports[1].over >= REPORT_EVERY);
        assert!(
            reports[1].dropped > 0,
            "replies beyond the bound are counted"
        );
    }
}
