//! Every path down: I/O waits up to the bound and resumes when a path
//! returns in time, and fails cleanly, with a typed error, when none does.

mod common;

use std::time::Duration;

use blockdev::{BlockDevice, ErrorClass, WriteFlags};
use common::{device, device_with_paths, stamp, verify};
use multipath::{Config, Marginal};
use tokio::time::Instant;

const BOUND: Duration = Duration::from_secs(2);

fn config() -> Config {
    Config {
        check_interval: Duration::from_millis(100),
        io_timeout: Some(Duration::from_secs(1)),
        no_path_bound: BOUND,
        ..Config::default()
    }
}

#[tokio::test(start_paused = true)]
async fn all_paths_down_shorter_than_the_bound_resumes() {
    let (dev, faults) = device(2, config());
    for f in &faults {
        f.set_path_down(true);
    }
    let back = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        faults[1].set_path_down(false);
    };
    let (w, ()) = tokio::join!(dev.write(9, stamp(9, 4), WriteFlags::NONE), back);
    w.expect("the write waited for the path and went through");
    verify(&dev, 9, 1, 4).await;
}

#[tokio::test(start_paused = true)]
async fn all_paths_down_longer_than_the_bound_fails_with_path_down() {
    let (dev, faults) = device(2, config());
    for f in &faults {
        f.set_path_down(true);
    }
    let start = Instant::now();
    let e = dev
        .write(9, stamp(9, 4), WriteFlags::NONE)
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::RetryElsewhere, "{e}");
    // The bound runs from when the paths went, and is not restarted by each
    // I/O: once it has passed, I/O fails at once.
    assert!(start.elapsed() >= BOUND);
    let again = Instant::now();
    let e = dev.read(9, 1).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::RetryElsewhere, "{e}");
    assert_eq!(again.elapsed(), Duration::ZERO);
    // A path back makes the device usable again.
    faults[0].set_path_down(false);
    tokio::time::sleep(Duration::from_millis(200)).await;
    dev.write(9, stamp(9, 5), WriteFlags::NONE).await.unwrap();
    verify(&dev, 9, 1, 5).await;
}

#[tokio::test(start_paused = true)]
async fn every_path_failed_for_good_fails_with_the_failed_class() {
    let (dev, faults) = device(2, config());
    for f in &faults {
        f.set_offline(true);
    }
    let e = dev.read(0, 1).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Failed, "{e}");
}

#[tokio::test(start_paused = true)]
async fn an_io_on_a_path_that_checks_good_but_fails_every_io_ends_within_the_bound() {
    // Marginal detection off: the path comes back after every check.
    let (dev, paths) = device_with_paths(
        1,
        Config {
            marginal: Marginal {
                failures: u32::MAX,
                ..Marginal::default()
            },
            ..config()
        },
    );
    paths[0]
        .checks_lie
        .store(true, std::sync::atomic::Ordering::Relaxed);
    paths[0].faults.set_path_down(true);
    let start = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(60), dev.read(0, 1))
        .await
        .expect("the I/O ends, it does not go round for ever");
    assert_eq!(r.unwrap_err().class(), ErrorClass::RetryElsewhere);
    assert!(start.elapsed() >= BOUND);
}
