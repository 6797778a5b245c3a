//! Multipath over real links: the head's `MultipathDevice` over two iSCSI
//! sessions, one per link, to opie's target in another network namespace,
//! under verified random I/O while links are cut with `ip link set down`.
//! Needs root (see `mpnet`). `failover_bench` is the benchmark behind
//! `interop/failover-bench` (ignored here: run it from the script).

mod mpnet;

use std::sync::Arc;
use std::time::Duration;

use blockdev::{BlockDevice, ErrorClass};
use multipath::{Config, MultipathDevice};
use tokio::time::Instant;

use mpnet::flap::{all_up, cut, loadavg, percentile, Cut, Rng};
use mpnet::head::{failed, head_runtime, multipath_over};
use mpnet::{workload, Net};

/// Writers of the verified I/O, and the blocks each owns.
const WRITERS: u64 = 8;
const REGION: u64 = 2048;

/// The network, the target, the head's runtime and a device over both
/// links with `config`, then `f` on them.
fn with_device<F, Fut>(config: Config, f: F)
where
    F: FnOnce(Arc<Net>, Arc<MultipathDevice>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let Some(net) = Net::new() else { return };
    let net = Arc::new(net);
    let portals = net.start_target(mpnet::disk(WRITERS * REGION));
    let rt = head_runtime(&net);
    rt.block_on(async {
        let dev = Arc::new(multipath_over(&portals, config).await);
        f(net.clone(), dev).await;
    });
}

/// Per cut: the failover (the last read that may have gone to the cut
/// path ended, after the cut) and the same for writes (which also wait for
/// the fence).
fn timed(report: &workload::Report, cuts: &[Cut]) -> Vec<(Cut, Duration, Duration)> {
    cuts.iter()
        .map(|c| {
            let failed = c.failed.unwrap_or(c.up);
            (
                *c,
                report.failover(c.down, failed, false),
                report.failover(c.down, failed, true),
            )
        })
        .collect()
}

fn print_cuts(cuts: &[(Cut, Duration, Duration)]) {
    for (c, read, write) in cuts {
        eprintln!(
            "link {} down {:?}: path out of use after {:?}, failover (reads) {read:?}, writes reported after {write:?}",
            c.link,
            c.up - c.down,
            c.failed.map(|f| f - c.down)
        );
    }
}

#[test]
fn a_cut_link_fails_over_with_no_error_and_no_mismatch() {
    with_device(Config::default(), |net, dev| async move {
        let stop = workload::stop_after(Duration::from_secs(6));
        let io = tokio::spawn(workload::run(dev.clone(), WRITERS, REGION, stop));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let down = Instant::now();
        net.set_link(0, false);
        let failed_at = tokio::time::timeout(Duration::from_secs(3), failed(&dev, 0))
            .await
            .expect("the cut path is taken out of use");
        let report = io.await.unwrap();
        let took = report.failover(down, failed_at, false);
        eprintln!(
            "{} I/Os; path out of use {:?} after the cut; failover {took:?}",
            report.ios,
            failed_at - down
        );
        report.assert_clean();
        assert!(dev.paths()[1].stats.completed > 0);
    });
}

/// A minute of verified I/O while links go down and up at random, now and
/// then both at once (never for longer than the no-path bound).
#[test]
fn a_minute_of_flapping_links_loses_nothing_and_errors_nothing() {
    with_device(Config::default(), |net, dev| async move {
        let seed = std::process::id() as u64 * 0x9e37_79b9 + 1;
        eprintln!("schedule seed {seed}");
        let mut rng = Rng(seed);
        let start = Instant::now();
        let until = start + Duration::from_secs(60);
        let stop = workload::stop_after(Duration::from_secs(60));
        let io = tokio::spawn(workload::run(dev.clone(), WRITERS, REGION, stop));
        let mut cuts = Vec::new();
        let mut both = 0;
        while Instant::now() + Duration::from_secs(8) < until {
            tokio::time::sleep(Duration::from_millis(rng.range(500, 2500))).await;
            let link = rng.range(0, 2) as usize;
            let down_for = Duration::from_millis(rng.range(300, 4000));
            if rng.range(0, 5) == 0 {
                // Both down for a while, shorter than the bound.
                both += 1;
                let other = {
                    let (net, dev) = (net.clone(), dev.clone());
                    tokio::spawn(async move { cut(&net, &dev, 1 - link, down_for).await })
                };
                cut(&net, &dev, link, down_for + Duration::from_millis(300)).await;
                other.await.unwrap();
            } else {
                cuts.push(cut(&net, &dev, link, down_for).await);
            }
        }
        let report = io.await.unwrap();
        let timed = timed(&report, &cuts);
        print_cuts(&timed);
        eprintln!(
            "{} I/Os in {:?}; {} single cuts, {both} both-links cuts; read failover max {:?}",
            report.ios,
            start.elapsed(),
            cuts.len(),
            timed.iter().map(|t| t.1).max()
        );
        report.assert_clean();
    });
}

const BOUND: Duration = Duration::from_secs(4);

fn bounded() -> Config {
    Config {
        no_path_bound: BOUND,
        ..Config::default()
    }
}

#[test]
fn all_links_down_shorter_than_the_bound_resumes() {
    with_device(bounded(), |net, dev| async move {
        let stop = workload::stop_after(Duration::from_secs(10));
        let io = tokio::spawn(workload::run(dev.clone(), WRITERS, REGION, stop));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut status = dev.status();
        net.set_link(0, false);
        net.set_link(1, false);
        tokio::time::timeout(BOUND, status.wait_for(|s| !s.present))
            .await
            .expect("the device is absent while no path is usable")
            .unwrap();
        tokio::time::sleep(BOUND / 2).await;
        net.set_link(0, true);
        net.set_link(1, true);
        tokio::time::timeout(BOUND, status.wait_for(|s| s.present))
            .await
            .expect("present again")
            .unwrap();
        let report = io.await.unwrap();
        report.assert_clean();
        assert!(all_up(&dev, Duration::from_secs(5)).await);
    });
}

#[test]
fn all_links_down_longer_than_the_bound_fails_cleanly_within_the_bound_and_a_second() {
    with_device(bounded(), |net, dev| async move {
        dev.read(0, 1).await.unwrap();
        let mut status = dev.status();
        net.set_link(0, false);
        net.set_link(1, false);
        let down = Instant::now();
        let read = {
            let dev = dev.clone();
            tokio::spawn(async move { dev.read(0, 8).await })
        };
        // The initiator finds both links dead within its keepalive (1 s):
        // from then on no path is usable and the bound runs.
        tokio::time::timeout(BOUND, status.wait_for(|s| !s.present))
            .await
            .expect("the device is absent once no path is usable")
            .unwrap();
        let absent = Instant::now();
        let r = tokio::time::timeout(BOUND * 3, read)
            .await
            .expect("no hang")
            .unwrap();
        let took = absent.elapsed();
        eprintln!(
            "no path {:?} after the cut; the read failed {took:?} later: {r:?}",
            absent - down
        );
        assert_eq!(
            r.map(|_| ()).map_err(|e| e.class()),
            Err(ErrorClass::RetryElsewhere)
        );
        assert!(took <= BOUND + Duration::from_secs(1), "{took:?}");
        net.set_link(0, true);
        net.set_link(1, true);
        assert!(all_up(&dev, Duration::from_secs(10)).await, "paths back");
        dev.read(0, 8).await.expect("I/O again once a path is back");
    });
}

/// The failover benchmark (`interop/failover-bench`): `FAILOVER_EVENTS`
/// (default 50) cuts of one link at a time under verified I/O with the
/// default settings; per cut, the time from the link going down to the end
/// of the last I/O that may have gone to it; p50/p99/max and the load
/// average.
#[test]
#[ignore = "benchmark: run interop/failover-bench"]
fn failover_bench() {
    let events: usize = std::env::var("FAILOVER_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let down_for = Duration::from_millis(
        std::env::var("FAILOVER_DOWN_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000),
    );
    eprintln!("load average before: {}", loadavg());
    with_device(Config::default(), |net, dev| async move {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let io = tokio::spawn(workload::run(dev.clone(), WRITERS, REGION, stop.clone()));
        let mut cuts = Vec::new();
        let mut not_back = 0;
        tokio::time::sleep(Duration::from_secs(1)).await;
        for i in 0..events {
            cuts.push(cut(&net, &dev, i % 2, down_for).await);
            if !all_up(&dev, Duration::from_secs(10)).await {
                not_back += 1;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let report = io.await.unwrap();
        eprintln!("load average after: {}", loadavg());
        let timed = timed(&report, &cuts);
        print_cuts(&timed);
        let mut times: Vec<Duration> = timed.iter().map(|t| t.1).collect();
        times.sort();
        let mut writes: Vec<Duration> = timed.iter().map(|t| t.2).collect();
        writes.sort();
        let mut seen: Vec<Duration> = cuts
            .iter()
            .filter_map(|c| c.failed.map(|f| f - c.down))
            .collect();
        seen.sort();
        eprintln!(
            "FAILOVER events={} ios={} errors={} mismatches={} not_back={not_back} \
             failover (reads) p50={:?} p99={:?} max={:?} | writes reported p50={:?} p99={:?} max={:?} \
             | path out of use in {} cuts: p50={:?} p99={:?} max={:?}",
            cuts.len(),
            report.ios,
            report.errors.len(),
            report.mismatches.len(),
            percentile(&times, 50),
            percentile(&times, 99),
            times.last().copied().unwrap_or_default(),
            percentile(&writes, 50),
            percentile(&writes, 99),
            writes.last().copied().unwrap_or_default(),
            seen.len(),
            percentile(&seen, 50),
            percentile(&seen, 99),
            seen.last().copied().unwrap_or_default(),
        );
        for e in report.errors.iter().chain(&report.mismatches).take(10) {
            eprintln!("  {e}");
        }
    });
}
