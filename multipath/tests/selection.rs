//! Which path carries I/O: the selectors share equal paths, ALUA states
//! decide between port groups, and the device keeps to its paths' limits.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use blockdev::{BlockDevice, Limits, MemDevice};
use common::{device, device_with_paths};
use multipath::{AluaState, Config, MultipathDevice, MultipathError, PathState, SelectorKind};

fn config(selector: SelectorKind) -> Config {
    Config {
        selector,
        check_interval: Duration::from_millis(100),
        ..Config::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_path_whose_checks_wait_behind_completing_io_stays_up() {
    // A check stuck behind a busy path's queue times out while the path's
    // I/Os keep completing: the path is busy, not down, and keeps its share.
    let (dev, paths) = device_with_paths(
        2,
        Config {
            io_timeout: Some(Duration::from_millis(300)),
            ..config(SelectorKind::RoundRobin)
        },
    );
    for p in &paths {
        p.faults.set_latency(Duration::from_millis(1), None);
    }
    paths[0].checks_hang.store(true, Ordering::Relaxed);
    for i in 0..2000u64 {
        dev.read(i % 1000 * 8, 8).await.unwrap();
    }
    let r = dev.paths();
    assert_eq!(r[0].state, PathState::Up, "{r:?}");
    assert_eq!(r[0].stats.check_failures, 0, "{r:?}");
    assert!((800..=1200).contains(&r[0].stats.completed), "{r:?}");
    // Idle, its next check that times out is a failure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = dev.paths();
    assert!(matches!(r[0].state, PathState::Failed { .. }), "{r:?}");
    assert_eq!(r[1].state, PathState::Up, "{r:?}");
}

#[tokio::test(start_paused = true)]
async fn equal_paths_share_the_load_under_every_selector() {
    for kind in [
        SelectorKind::RoundRobin,
        SelectorKind::QueueLength,
        SelectorKind::ServiceTime,
    ] {
        let (dev, faults) = device(2, config(kind));
        for f in &faults {
            f.set_latency(Duration::from_millis(1), None);
        }
        let dev = Arc::new(dev);
        let readers: Vec<_> = (0..4u64)
            .map(|r| {
                let dev = dev.clone();
                tokio::spawn(async move {
                    for i in 0..50 {
                        dev.read(r * 50 + i, 8).await.unwrap();
                    }
                })
            })
            .collect();
        for r in readers {
            r.await.unwrap();
        }
        let paths = dev.paths();
        let counts: Vec<u64> = paths.iter().map(|p| p.stats.completed).collect();
        assert_eq!(counts.iter().sum::<u64>(), 200, "{kind:?}");
        assert!(
            counts.iter().all(|&c| (80..=120).contains(&c)),
            "{kind:?}: each path carries 40-60% of the I/Os: {counts:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn standby_paths_carry_nothing_and_optimized_ones_are_preferred() {
    let (dev, paths) = device_with_paths(3, config(SelectorKind::ServiceTime));
    *paths[0].alua.lock().unwrap() = AluaState::Standby;
    *paths[1].alua.lock().unwrap() = AluaState::ActiveNonOptimized;
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 0..20 {
        dev.read(i, 1).await.unwrap();
    }
    let done = |dev: &MultipathDevice| -> Vec<u64> {
        dev.paths().iter().map(|p| p.stats.completed).collect()
    };
    assert_eq!(done(&dev), [0, 0, 20]);
    // The optimized path goes: the non-optimized one takes over, never the
    // standby one.
    paths[2].faults.set_path_down(true);
    for i in 0..20 {
        dev.read(i, 1).await.unwrap();
    }
    assert_eq!(done(&dev), [0, 20, 20]);
}

#[tokio::test]
async fn paths_to_another_disk_are_refused() {
    let a = common::path_to(Arc::new(MemDevice::with_name("disk", 4 << 20)));
    let b = common::path_to(Arc::new(MemDevice::with_name("other", 4 << 20)));
    assert!(matches!(
        MultipathDevice::new(vec![a.clone(), b], Config::default()),
        Err(MultipathError::IdentityMismatch { index: 1, .. })
    ));
    let small = common::path_to(Arc::new(MemDevice::with_name("disk", 2 << 20)));
    assert!(matches!(
        MultipathDevice::new(vec![a, small], Config::default()),
        Err(MultipathError::GeometryMismatch { index: 1, .. })
    ));
    assert!(matches!(
        MultipathDevice::new(vec![], Config::default()),
        Err(MultipathError::NoPaths)
    ));
}

#[tokio::test]
async fn limits_are_what_every_path_can_carry() {
    let disk = |l: Limits| {
        common::path_to(Arc::new(
            MemDevice::with_name("disk", 4 << 20).set_limits(l),
        ))
    };
    let a = disk(Limits {
        max_transfer: 256,
        optimal_granularity: 8,
        atomic_write: 8,
        queue_depth: 32,
    });
    let b = disk(Limits {
        max_transfer: 128,
        optimal_granularity: 8,
        atomic_write: 16,
        queue_depth: 16,
    });
    let dev = MultipathDevice::new(vec![a, b], Config::default()).unwrap();
    assert_eq!(
        dev.limits(),
        Limits {
            max_transfer: 128,
            optimal_granularity: 8,
            atomic_write: 8,
            queue_depth: 48,
        }
    );
}
