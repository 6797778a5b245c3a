//! A cut path is invisible: I/O moves to another path, nothing is lost and
//! no error reaches the caller.

mod common;

use std::sync::Arc;
use std::time::Duration;

use blockdev::{BlockDevice, WriteFlags};
use common::{device, stamp, verify};
use multipath::{Config, Marginal, PathState};

fn config() -> Config {
    Config {
        check_interval: Duration::from_millis(100),
        io_timeout: Some(Duration::from_secs(1)),
        ..Config::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_path_cut_mid_stream_loses_nothing_and_errors_nothing() {
    let (dev, faults) = device(2, config());
    for f in &faults {
        f.set_latency(Duration::from_millis(5), None);
    }
    let dev = Arc::new(dev);
    // Four writers, each on its own 100 blocks, one block per write.
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let dev = dev.clone();
            tokio::spawn(async move {
                for i in 0..100 {
                    let lba = w * 100 + i;
                    dev.write(lba, stamp(lba, 1), WriteFlags::NONE).await?;
                }
                blockdev::Result::Ok(())
            })
        })
        .collect();
    // The writers take 500 ms: cut path 0 while they run, bring it back,
    // then cut path 1.
    tokio::time::sleep(Duration::from_millis(50)).await;
    faults[0].set_path_down(true);
    tokio::time::sleep(Duration::from_millis(100)).await;
    faults[0].set_path_down(false);
    tokio::time::sleep(Duration::from_millis(150)).await;
    faults[1].set_path_down(true);
    for w in writers {
        w.await.unwrap().expect("no error reaches the caller");
    }
    verify(&dev, 0, 400, 1).await;
    let paths = dev.paths();
    assert!(paths[0].stats.failed_over >= 1, "{paths:?}");
    assert!(paths[1].stats.failed_over >= 1, "{paths:?}");
    assert!(paths.iter().all(|p| p.stats.completed > 0), "{paths:?}");
    assert_eq!(
        paths[0].stats.completed + paths[1].stats.completed,
        401,
        "every write and the read completed once"
    );
}

#[tokio::test(start_paused = true)]
async fn the_checker_fails_an_idle_path_and_brings_it_back() {
    let (dev, faults) = device(2, config());
    faults[1].set_path_down(true);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let paths = dev.paths();
    assert_eq!(paths[0].state, PathState::Up);
    assert!(matches!(paths[1].state, PathState::Failed { .. }));
    assert!(paths[1].stats.check_failures >= 1);
    faults[1].set_path_down(false);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(dev.paths()[1].state, PathState::Up);
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_read_is_retried_on_the_other_path() {
    let (dev, faults) = device(2, config());
    dev.write(7, stamp(7, 3), WriteFlags::NONE).await.unwrap();
    // Every I/O on path 0 now takes longer than the I/O timeout.
    faults[0].set_latency(Duration::from_secs(10), None);
    faults[1].set_latency(Duration::ZERO, None);
    for _ in 0..4 {
        verify(&dev, 7, 1, 3).await;
    }
    let paths = dev.paths();
    assert!(paths[0].stats.failed_over >= 1, "{paths:?}");
}

#[tokio::test(start_paused = true)]
async fn a_flapping_path_is_held_out_until_it_stays_good() {
    let (dev, faults) = device(
        2,
        Config {
            marginal: Marginal {
                window: Duration::from_secs(60),
                failures: 2,
                hold: Duration::from_secs(1),
            },
            ..config()
        },
    );
    let step = Duration::from_millis(250);
    for _ in 0..2 {
        faults[1].set_path_down(true);
        tokio::time::sleep(step).await;
        faults[1].set_path_down(false);
        tokio::time::sleep(step).await;
    }
    assert!(matches!(dev.paths()[1].state, PathState::Marginal { .. }));
    let before = dev.paths()[1].stats.completed;
    for i in 0..10 {
        dev.read(i, 1).await.unwrap();
    }
    assert_eq!(dev.paths()[1].stats.completed, before, "held out");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(dev.paths()[1].state, PathState::Up);
}

#[tokio::test(start_paused = true)]
async fn a_medium_error_reaches_the_caller_and_leaves_the_paths_up() {
    let (dev, faults) = device(2, config());
    for f in &faults {
        f.fail_writes(5..6);
    }
    let e = dev
        .write(5, stamp(5, 1), WriteFlags::NONE)
        .await
        .unwrap_err();
    assert_eq!(e.class(), blockdev::ErrorClass::Medium, "{e}");
    let paths = dev.paths();
    assert!(paths.iter().all(|p| p.state == PathState::Up), "{paths:?}");
    assert_eq!(paths.iter().map(|p| p.stats.errors).sum::<u64>(), 1);
}
