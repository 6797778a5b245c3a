//! Path and device status changes are published: a path going down and
//! coming back on the per-path channel, every path down as the device
//! absent on the `BlockDevice` status channel, and present again when one
//! returns.

mod common;

use std::time::Duration;

use blockdev::BlockDevice;
use common::device;
use multipath::{Config, PathState};

#[tokio::test(start_paused = true)]
async fn path_changes_and_all_paths_down_are_published() {
    let (dev, faults) = device(
        2,
        Config {
            check_interval: Duration::from_millis(100),
            io_timeout: Some(Duration::from_secs(1)),
            ..Config::default()
        },
    );
    let mut status = dev.status();
    let mut states = dev.path_states();
    assert!(status.borrow().present);

    faults[0].set_path_down(true);
    states
        .wait_for(|s| matches!(s[..], [PathState::Failed { .. }, PathState::Up]))
        .await
        .unwrap();
    assert!(status.borrow().present, "one path left: still present");

    faults[1].set_path_down(true);
    status.wait_for(|s| !s.present).await.unwrap();
    assert!(states
        .borrow()
        .iter()
        .all(|s| matches!(s, PathState::Failed { .. })));

    faults[1].set_path_down(false);
    status.wait_for(|s| s.present).await.unwrap();
    assert_eq!(states.borrow()[1], PathState::Up);
    assert_eq!(status.borrow().geometry, dev.geometry());
}
