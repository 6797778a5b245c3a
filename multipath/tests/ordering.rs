//! Write ordering across failover: a write re-issued on another path is
//! reported only once the old path can no longer execute it, so a later
//! write of the same blocks is never overwritten by the stale first copy.

mod common;

use std::time::Duration;

use blockdev::{BlockDevice, WriteFlags};
use common::{device, stamp, verify};
use multipath::{Config, PathState, SelectorKind};

#[tokio::test(start_paused = true)]
async fn a_write_held_on_a_dead_path_never_lands_over_newer_data() {
    let (dev, faults) = device(
        2,
        Config {
            // Round-robin: the first write takes path 0.
            selector: SelectorKind::RoundRobin,
            check_interval: Duration::from_secs(60),
            io_timeout: Some(Duration::from_millis(500)),
            ..Config::default()
        },
    );
    // Path 0 takes the write and holds it (a proxy that keeps its data),
    // then dies; multipath times the attempt out and re-issues it on path 1.
    faults[0].hold_next_writes(1);
    let dies = async {
        while faults[0].held_writes() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        faults[0].set_path_down(true);
    };
    let (w, ()) = tokio::join!(dev.write(20, stamp(20, 1), WriteFlags::NONE), dies);
    w.unwrap();
    assert!(matches!(dev.paths()[0].state, PathState::Failed { .. }));
    // The same block rewritten through the surviving path.
    dev.write(20, stamp(20, 2), WriteFlags::NONE).await.unwrap();
    // Whatever path 0 still held goes to the disk now, at the latest.
    faults[0].release_writes();
    while faults[0].held_writes() > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    verify(&dev, 20, 1, 2).await;
}
