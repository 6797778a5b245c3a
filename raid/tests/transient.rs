//! Member errors by class: a member whose path is down, or that is busy or
//! timed out, is waited for (on the injected clock) up to
//! `Config::member_timeout` and stays in the array if it answers in time; one
//! down longer, or one that failed for good, is failed and the array goes on
//! degraded. Either way the volume's I/O succeeds.

mod common;

use std::sync::Arc;
use std::time::Duration;

use blockdev::{BlockDevice, WriteFlags};
use common::*;
use raid::{MemberState, RaidArray};

/// The small test configuration: members may be down for 10 s.
const BOUND: Duration = Duration::from_secs(10);

/// Lets real time pass until something sleeps on `rig`'s clock or `task`
/// ends. No deadline: a test that never gets there hangs, visibly.
async fn until_waiting_or_done<T>(rig: &Rig, task: &tokio::task::JoinHandle<T>) {
    while rig.clock.sleepers() == 0 && !task.is_finished() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Moves `rig`'s clock in `step`s whenever something waits on it, until
/// `task` ends; returns how far the clock moved.
async fn drive_clock<T>(rig: &Rig, task: &tokio::task::JoinHandle<T>, step: Duration) -> Duration {
    let mut moved = Duration::ZERO;
    loop {
        until_waiting_or_done(rig, task).await;
        if task.is_finished() {
            return moved;
        }
        rig.clock.advance(step);
        moved += step;
    }
}

/// Writes version 2 of 5 blocks at `lba` (a partial row, FUA, so it reaches
/// every member: data, parity, and the bitmap block of its region) on a
/// task of its own.
fn spawn_write(a: &RaidArray, lba: u64) -> tokio::task::JoinHandle<blockdev::Result<()>> {
    let a = a.clone();
    tokio::spawn(async move { a.write(lba, blocks(lba, 5, 2), WriteFlags::FUA).await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_down_for_less_than_the_bound_stays_in_the_array() {
    let rig = Rig::new(3, 1024, small_config());
    assert_eq!(rig.cfg.member_timeout, BOUND);
    let (a, mut model) = rig.filled(3).await;
    let down = 1;
    rig.faulty[down].set_path_down(true);
    let w = spawn_write(&a, 10);
    // The write waits for the member: 6 s of injected time, and no answer.
    until_waiting_or_done(&rig, &w).await;
    assert!(
        !w.is_finished(),
        "the write finished with a member's path down"
    );
    for _ in 0..3 {
        rig.clock.advance(Duration::from_secs(2));
        until_waiting_or_done(&rig, &w).await;
    }
    assert!(!w.is_finished());
    assert_eq!(a.member_states()[down], MemberState::InSync);
    // The path comes back within the bound: the retries go through.
    rig.faulty[down].set_path_down(false);
    let waited = drive_clock(&rig, &w, Duration::from_millis(500)).await;
    assert!(waited < Duration::from_secs(4), "{waited:?}");
    w.await
        .unwrap()
        .expect("the write succeeds once the path is back");
    model[10..15].fill(Some(2));
    assert!(
        a.member_states().iter().all(|s| *s == MemberState::InSync),
        "{:?}",
        a.member_states()
    );
    assert!(!a.degraded());
    assert!(a.rebuild_progress().is_none(), "no rebuild for a blip");
    check_all(&a, &model).await;
    assert_scrub_clean(&a).await;
    // The member holds its part of the write: the others can go.
    let other = (down + 1) % 3;
    rig.faulty[other].set_offline(true);
    check_all(&a, &model).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_and_timed_out_members_are_retried_too() {
    use blockdev::{BlockError, Bytes, DeviceIdentity, MemDevice, SharedDevice};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Answers its first `n` calls with a transient error of each kind in turn.
    #[derive(Debug)]
    struct Flaky {
        inner: MemDevice,
        left: AtomicU32,
    }
    impl Flaky {
        fn transient(&self) -> blockdev::Result<()> {
            match self
                .left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            {
                Ok(n) if n % 3 == 0 => Err(BlockError::Busy("queue full".into())),
                Ok(n) if n % 3 == 1 => Err(BlockError::TimedOut("no answer".into())),
                Ok(_) => Err(BlockError::PathDown("link down".into())),
                Err(_) => Ok(()),
            }
        }
    }
    #[async_trait::async_trait]
    impl BlockDevice for Flaky {
        fn geometry(&self) -> blockdev::Geometry {
            self.inner.geometry()
        }
        fn identity(&self) -> &DeviceIdentity {
            self.inner.identity()
        }
        async fn read(&self, lba: u64, blocks: u32) -> blockdev::Result<Bytes> {
            self.transient()?;
            self.inner.read(lba, blocks).await
        }
        async fn write(&self, lba: u64, data: Bytes, f: WriteFlags) -> blockdev::Result<()> {
            self.transient()?;
            self.inner.write(lba, data, f).await
        }
        async fn flush(&self) -> blockdev::Result<()> {
            self.transient()?;
            self.inner.flush().await
        }
        async fn write_zeroes(&self, lba: u64, n: u64, unmap: bool) -> blockdev::Result<()> {
            self.transient()?;
            self.inner.write_zeroes(lba, n, unmap).await
        }
    }

    let rig = Rig::new(2, 1024, small_config());
    let flaky = Arc::new(Flaky {
        inner: MemDevice::new(BS as u32, 1024, DeviceIdentity::from_name("flaky")),
        left: AtomicU32::new(0),
    });
    let members: Vec<SharedDevice> = vec![rig.shared(0), rig.shared(1), flaky.clone()];
    let a = RaidArray::create(members, vec![], rig.cfg.clone(), rig.clock.clone())
        .await
        .unwrap();
    flaky.left.store(9, Ordering::SeqCst);
    let w = spawn_write(&a, 3);
    drive_clock(&rig, &w, Duration::from_millis(100)).await;
    w.await.unwrap().unwrap();
    assert_eq!(flaky.left.load(Ordering::SeqCst), 0, "every error was met");
    assert!(!a.degraded(), "{:?}", a.member_states());
    let mut model = vec![None; 16];
    model[3..8].fill(Some(2));
    check_all(&a, &model).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_down_for_longer_than_the_bound_is_failed() {
    let rig = Rig::new(3, 1024, small_config());
    let (a, mut model) = rig.filled(3).await;
    let down = 2;
    rig.faulty[down].set_path_down(true);
    let w = spawn_write(&a, 10);
    let waited = drive_clock(&rig, &w, Duration::from_secs(1)).await;
    assert!(waited >= BOUND, "failed after {waited:?}");
    w.await
        .unwrap()
        .expect("the write succeeds without the member");
    model[10..15].fill(Some(2));
    assert!(matches!(
        a.member_states()[down],
        MemberState::Faulty { .. }
    ));
    assert!(a.degraded());
    check_all(&a, &model).await;
    // Its path back, it returns with a rebuild of what it missed.
    rig.faulty[down].set_path_down(false);
    a.re_add(rig.shared(down)).await.unwrap();
    while !a.rebuild_step(1000).await.unwrap().1 {}
    assert!(!a.degraded());
    rig.faulty[0].set_offline(true);
    check_all(&a, &model).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_failed_for_good_is_failed_at_once() {
    let rig = Rig::new(3, 1024, small_config());
    let (a, mut model) = rig.filled(3).await;
    rig.faulty[0].set_offline(true);
    let w = spawn_write(&a, 10);
    // Nothing waits on the clock: the write ends without it moving.
    tokio::time::timeout(Duration::from_secs(60), w)
        .await
        .expect("the write waited for a member that failed for good")
        .unwrap()
        .expect("the write succeeds without the member");
    assert_eq!(rig.clock.sleepers(), 0);
    model[10..15].fill(Some(2));
    assert!(matches!(a.member_states()[0], MemberState::Faulty { .. }));
    check_all(&a, &model).await;
}
