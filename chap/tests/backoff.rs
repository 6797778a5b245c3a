//! The login backoff limiter, driven with injected time.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use chap::{Admission, BackoffConfig, LoginBackoff};
use proptest::prelude::*;

const MS: Duration = Duration::from_millis(1);

fn cfg() -> BackoffConfig {
    BackoffConfig {
        free_failures: 2,
        base: 100 * MS,
        cap: 1600 * MS,
        quiet: Duration::from_secs(60),
        max_sources: 16,
        max_in_flight: 4,
    }
}

/// The wait of an admission that must proceed.
fn go(a: Admission) -> Duration {
    match a {
        Admission::Proceed(d) => d,
        Admission::Retry(d) => panic!("admission refused for now (retry after {d:?})"),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

/// A sequential attacker: waits for admission, fails, waits out the held-back
/// failure response, tries again. Returns the time `n` attempts took.
fn sequential_failures(b: &mut LoginBackoff, src: IpAddr, start: Instant, n: usize) -> Duration {
    let mut now = start;
    for _ in 0..n {
        now += go(b.admit(src, now));
        now += b.record_failure(src, now);
        b.finish(src);
    }
    now - start
}

#[test]
fn delays_grow_exponentially_up_to_the_cap() {
    let c = cfg();
    let expected = [0, 0, 0, 100, 200, 400, 800, 1600, 1600, 1600];
    for (n, ms) in expected.iter().enumerate() {
        assert_eq!(c.delay_for(n as u32), *ms * MS, "after {n} failures");
    }
    assert_eq!(c.delay_for(u32::MAX), c.cap);

    let mut b = LoginBackoff::new(c);
    let now = Instant::now();
    let src = ip("192.0.2.7");
    let got: Vec<Duration> = (0..9).map(|_| b.record_failure(src, now)).collect();
    assert_eq!(
        got,
        expected[1..].iter().map(|ms| *ms * MS).collect::<Vec<_>>()
    );
}

#[test]
fn fifty_wrong_logins_take_long_while_another_source_is_not_slowed() {
    let c = cfg();
    let mut b = LoginBackoff::new(c.clone());
    let start = Instant::now();
    let attacker = ip("198.51.100.9");
    let took = sequential_failures(&mut b, attacker, start, 50);
    // 100 + 200 + 400 + 800 + 44 * 1600 ms at least.
    let floor: Duration = (3..=50).map(|n| c.delay_for(n)).sum();
    assert!(took >= floor, "{took:?} < {floor:?}");
    assert!(took >= 40 * c.cap);

    // Meanwhile an honest client elsewhere logs in at once.
    let honest = ip("203.0.113.1");
    let now = start + took;
    assert_eq!(b.admit(honest, now), Admission::Proceed(Duration::ZERO));
    b.record_success(honest, now);
    b.finish(honest);
    assert_eq!(b.failures(honest, now), 0);
    // The attacker is still penalized: its held-back failure response just
    // ended, so one new connection proceeds, but a second one has to wait.
    assert_eq!(b.admit(attacker, now), Admission::Proceed(Duration::ZERO));
    assert!(go(b.admit(attacker, now)) >= c.cap);
}

#[test]
fn parallel_connections_do_not_multiply_the_guess_rate() {
    let mut b = LoginBackoff::new(cfg());
    let now = Instant::now();
    let src = ip("192.0.2.1");
    for _ in 0..8 {
        b.record_failure(src, now);
    }
    // Four more connections arrive at once: they are spread out by the delay.
    let waits: Vec<Duration> = (0..4).map(|_| go(b.admit(src, now))).collect();
    for (k, w) in waits.iter().enumerate() {
        assert!(
            *w >= 1600 * MS * (k as u32 + 1),
            "connection {k} waits only {w:?}"
        );
    }
    // A fifth has to come back later: four are already in progress.
    assert!(matches!(b.admit(src, now), Admission::Retry(_)));
}

#[test]
fn a_burst_of_first_attempts_is_bounded_before_any_failure_is_known() {
    let c = cfg();
    let mut b = LoginBackoff::new(c.clone());
    let now = Instant::now();
    let src = ip("192.0.2.3");
    // A hundred connections at once from a source with a clean record: only
    // max_in_flight are looked at; the others are told to come back.
    let got: Vec<Admission> = (0..100).map(|_| b.admit(src, now)).collect();
    let proceeding = got
        .iter()
        .filter(|a| matches!(a, Admission::Proceed(_)))
        .count();
    assert_eq!(proceeding, c.max_in_flight as usize);
    assert!(got[..4]
        .iter()
        .all(|a| *a == Admission::Proceed(Duration::ZERO)));
    assert_eq!(b.in_flight(src), c.max_in_flight);
    // Each login that ends makes room for one more.
    b.finish(src);
    assert!(matches!(b.admit(src, now), Admission::Proceed(_)));
    assert!(matches!(b.admit(src, now), Admission::Retry(_)));
    // Another source is unaffected.
    assert_eq!(
        b.admit(ip("192.0.2.4"), now),
        Admission::Proceed(Duration::ZERO)
    );
    // A source with logins in progress is not forgotten to make room.
    let mut small = LoginBackoff::new(BackoffConfig {
        max_sources: 1,
        ..c
    });
    assert!(matches!(small.admit(src, now), Admission::Proceed(_)));
    small.record_failure(ip("192.0.2.9"), now);
    assert_eq!(small.in_flight(src), 1);
}

#[test]
fn success_resets_and_quiet_time_decays() {
    let c = cfg();
    let mut b = LoginBackoff::new(c.clone());
    let t0 = Instant::now();
    let src = ip("192.0.2.2");
    for _ in 0..6 {
        b.record_failure(src, t0);
    }
    assert_eq!(b.failures(src, t0), 6);
    // One quiet period forgives one failure, two forgive two.
    assert_eq!(b.failures(src, t0 + c.quiet), 5);
    assert_eq!(b.failures(src, t0 + c.quiet * 2 + MS), 4);
    // A failure after three quiet periods counts on top of the decayed count.
    let t3 = t0 + c.quiet * 3;
    assert_eq!(b.record_failure(src, t3), c.delay_for(4));
    // Long quiet: back to nothing, admitted at once, and purged.
    let later = t3 + c.quiet * 10;
    assert_eq!(b.failures(src, later), 0);
    assert_eq!(b.admit(src, later), Admission::Proceed(Duration::ZERO));
    b.finish(src);
    b.purge(later);
    assert_eq!(b.tracked_sources(), 0);

    for _ in 0..6 {
        b.record_failure(src, later);
    }
    b.record_success(src, later);
    assert_eq!(b.failures(src, later), 0);
    assert_eq!(b.admit(src, later), Admission::Proceed(Duration::ZERO));
}

#[test]
fn new_settings_keep_each_source_history() {
    let mut b = LoginBackoff::new(cfg());
    let now = Instant::now();
    let (attacker, busy) = (ip("192.0.2.7"), ip("192.0.2.8"));
    for _ in 0..3 {
        b.record_failure(attacker, now);
    }
    for _ in 0..3 {
        go(b.admit(busy, now));
    }
    b.set_config(BackoffConfig {
        cap: 150 * MS,
        max_in_flight: 2,
        ..cfg()
    });
    assert_eq!(b.config().cap, 150 * MS);
    // Three failures are remembered: the fourth is held at 200 ms capped to
    // the new 150 ms, not let through as a first failure.
    assert_eq!(b.failures(attacker, now), 3);
    assert_eq!(b.record_failure(attacker, now), 150 * MS);
    // Three logins still in flight against the new limit of two: a new one
    // waits until two of them finish.
    assert!(matches!(b.admit(busy, now), Admission::Retry(_)));
    b.finish(busy);
    assert!(matches!(b.admit(busy, now), Admission::Retry(_)));
    b.finish(busy);
    go(b.admit(busy, now));
}

#[test]
fn ipv6_sources_are_grouped_by_slash_64_and_mapped_v4_by_address() {
    let mut b = LoginBackoff::new(cfg());
    let now = Instant::now();
    for _ in 0..5 {
        b.record_failure(ip("2001:db8:1:2::1"), now);
    }
    assert_eq!(b.failures(ip("2001:db8:1:2:ffff::9"), now), 5, "same /64");
    assert_eq!(b.failures(ip("2001:db8:1:3::1"), now), 0, "other /64");
    b.record_failure(ip("::ffff:192.0.2.5"), now);
    assert_eq!(b.failures(ip("192.0.2.5"), now), 1);
}

#[test]
fn table_size_is_bounded() {
    let mut b = LoginBackoff::new(cfg());
    let now = Instant::now();
    for i in 0..100u32 {
        b.record_failure(IpAddr::from((0x0a00_0000 + i).to_be_bytes()), now + i * MS);
    }
    assert!(b.tracked_sources() <= 16);
    // The most recent source is still tracked; the oldest was forgotten.
    assert_eq!(
        b.failures(IpAddr::from((0x0a00_0000u32 + 99).to_be_bytes()), now),
        1
    );
    assert_eq!(
        b.failures(IpAddr::from(0x0a00_0000u32.to_be_bytes()), now),
        0
    );
}

proptest! {
    /// Whatever the sequence of events: a held-back response never exceeds the
    /// cap, an admission waits at most one cap per connection queued before it,
    /// no more than max_in_flight logins of a source are in progress, a success
    /// clears the source's failures, and sources never affect each other.
    #[test]
    fn arbitrary_event_sequences(events in prop::collection::vec((0u8..3, 0u8..4, 0u64..100_000), 0..200)) {
        let c = cfg();
        let mut b = LoginBackoff::new(c.clone());
        let mut shadow = LoginBackoff::new(c.clone());
        let start = Instant::now();
        let mut now = start;
        // Admissions per source since its last failure or success.
        let mut admits = [0u32; 3];
        for (src, kind, dt) in events {
            now += Duration::from_micros(dt * 10);
            let a = IpAddr::from([10, 0, 0, src]);
            let i = usize::from(src);
            match kind {
                0 => {
                    let d = b.record_failure(a, now);
                    prop_assert!(d <= c.cap);
                    admits[i] = 0;
                }
                1 => match b.admit(a, now) {
                    Admission::Proceed(d) => {
                        admits[i] += 1;
                        prop_assert!(d <= c.cap * (admits[i] + 1));
                    }
                    Admission::Retry(d) => {
                        prop_assert_eq!(b.in_flight(a), c.max_in_flight);
                        prop_assert!(d > Duration::ZERO && d <= c.cap);
                    }
                },
                2 => b.finish(a),
                _ => {
                    b.record_success(a, now);
                    prop_assert_eq!(b.failures(a, now), 0);
                    admits[i] = 0;
                }
            }
            prop_assert!(b.in_flight(a) <= c.max_in_flight);
            // Source 3 never sees an event on `b`, so it matches a fresh limiter.
            let probe = IpAddr::from([10, 0, 0, 3]);
            prop_assert_eq!(b.admit(probe, now), shadow.admit(probe, now));
            b.finish(probe);
            shadow.finish(probe);
        }
    }
}
