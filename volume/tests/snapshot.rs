//! Backup snapshots: a volume's content at the snapshot instant, read while
//! clients keep writing; bounded copy-before-write into a hidden reserve;
//! the snapshot dropped (never a client write failed) when the reserve
//! fills; zeroing, unmap and grow under a snapshot; several volumes at one
//! instant; reserves left by a crash deleted at the next start.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use std::time::Duration;

use async_trait::async_trait;
use blockdev::{BlockDevice, BlockError, Bytes, FaultyDevice, MemDevice, SharedDevice, WriteFlags};
use blockdev::{DeviceIdentity, Geometry};
use rand::{Rng, SeedableRng};
use tokio::sync::Notify;
use volume::{Pool, Snapshot};

const BS: usize = 512;
const UNIT: u64 = 8;
const MIB: u64 = 1 << 20;

/// Block `lba` of generation `generation`: every byte says both.
fn stamp(lba: u64, generation: u8, blocks: u32) -> Bytes {
    let mut b = Vec::with_capacity(blocks as usize * BS);
    for i in 0..u64::from(blocks) {
        let mut block = vec![generation; BS];
        block[..8].copy_from_slice(&(lba + i).to_be_bytes());
        b.extend_from_slice(&block);
    }
    Bytes::from(b)
}

async fn pool(mib: u64) -> Pool {
    let dev: SharedDevice = Arc::new(MemDevice::with_name("snap", mib << 20));
    Pool::format(dev, UNIT, false).await.unwrap()
}

/// A volume of `mib` MiB with every block stamped with generation 1.
async fn filled(pool: &Pool, name: &str, mib: u64) -> Arc<volume::Volume> {
    pool.create(name, mib * MIB).await.unwrap();
    let v = pool.open_volume(name).unwrap();
    let blocks = v.geometry().num_blocks;
    for lba in (0..blocks).step_by(64) {
        let n = 64.min(blocks - lba) as u32;
        v.write(lba, stamp(lba, 1, n), WriteFlags::default())
            .await
            .unwrap();
    }
    v
}

/// Reads the whole snapshot in `chunk`-block pieces, releasing each after
/// it is read, and checks every block is of generation 1.
async fn back_up(snap: &Snapshot, chunk: u64) {
    let blocks = snap.geometry().num_blocks;
    for lba in (0..blocks).step_by(chunk as usize) {
        let n = chunk.min(blocks - lba) as u32;
        let data = snap.read(lba, n).await.unwrap();
        assert_eq!(data, stamp(lba, 1, n), "snapshot blocks {lba}+{n}");
        snap.release(lba, u64::from(n));
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_reads_the_instant_while_clients_write() {
    // A device whose I/Os take their time, some much longer, so copies,
    // snapshot reads and client writes of one grain overlap.
    let disk: SharedDevice = Arc::new(MemDevice::with_name("snap", 64 << 20));
    let slow = Arc::new(FaultyDevice::new(disk, 7));
    let pool = Pool::format(slow.clone(), UNIT, false).await.unwrap();
    let v = filled(&pool, "v0", 16).await;
    slow.set_latency(
        Duration::from_micros(50),
        Some((0.05, Duration::from_millis(2))),
    );
    let blocks = v.geometry().num_blocks;
    let snap = pool
        .snapshot(&["v0"], 16 * MIB, 64 << 10)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(snap.geometry().num_blocks, blocks);
    assert!(snap.read_only());
    // Clients overwrite random blocks (generation 2) while the backup reads.
    let writers: Vec<_> = (0..4u64)
        .map(|seed| {
            let v = v.clone();
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                let mut written = Vec::new();
                for _ in 0..300 {
                    let n = rng.gen_range(1..=16u32);
                    let lba = rng.gen_range(0..blocks - u64::from(n));
                    v.write(lba, stamp(lba, 2, n), WriteFlags::default())
                        .await
                        .unwrap();
                    written.push((lba, n));
                    tokio::task::yield_now().await;
                }
                written
            })
        })
        .collect();
    back_up(&snap, 48).await;
    let mut written = Vec::new();
    for w in writers {
        written.extend(w.await.unwrap());
    }
    // The reserve never held more than what changed ahead of the backup.
    assert!(snap.invalid().is_none());
    // The volume has every client write.
    for (lba, n) in written.iter().rev().take(50) {
        let data = v.read(*lba, *n).await.unwrap();
        for (i, b) in data.chunks(BS).enumerate() {
            assert_eq!(&b[..8], &(lba + i as u64).to_be_bytes());
        }
    }
    assert!(
        pool.list().iter().all(|i| i.name == "v0"),
        "reserves are hidden"
    );
    let used = pool.space().used_blocks;
    pool.drop_snapshot(snap).await.unwrap();
    assert_eq!(pool.space().used_blocks, used - 16 * MIB / BS as u64);
    // After the snapshot writes copy nothing and the volume works as before.
    v.write(0, stamp(0, 3, 8), WriteFlags::FUA).await.unwrap();
    assert_eq!(v.read(0, 8).await.unwrap(), stamp(0, 3, 8));
}

#[tokio::test]
async fn a_full_reserve_drops_the_snapshot_never_a_write() {
    let pool = pool(32).await;
    let v = filled(&pool, "v0", 8).await;
    // A reserve of two grains of 64 KiB (128 blocks).
    let snap = pool
        .snapshot(&["v0"], 128 << 10, 64 << 10)
        .await
        .unwrap()
        .pop()
        .unwrap();
    v.write(0, stamp(0, 2, 1), WriteFlags::default())
        .await
        .unwrap();
    v.write(128, stamp(128, 2, 1), WriteFlags::default())
        .await
        .unwrap();
    assert_eq!(snap.reserve_used_blocks(), 256);
    assert_eq!(snap.read(0, 1).await.unwrap(), stamp(0, 1, 1));
    // The third grain finds no room: the snapshot goes, the write lands.
    v.write(1000, stamp(1000, 2, 4), WriteFlags::default())
        .await
        .unwrap();
    assert_eq!(v.read(1000, 4).await.unwrap(), stamp(1000, 2, 4));
    let why = snap.invalid().expect("dropped");
    assert!(why.contains("reserve is full"), "{why}");
    match snap.read(0, 1).await {
        Err(BlockError::Failed(m)) => assert!(m.contains("reserve is full"), "{m}"),
        other => panic!("a read of a dropped snapshot: {other:?}"),
    }
    assert_eq!(snap.reserve_used_blocks(), 0);
    pool.drop_snapshot(snap).await.unwrap();
}

#[tokio::test]
async fn zeroing_and_unmap_copy_first() {
    let pool = pool(32).await;
    let v = filled(&pool, "v0", 8).await;
    let snap = pool
        .snapshot(&["v0"], 4 * MIB, 64 << 10)
        .await
        .unwrap()
        .pop()
        .unwrap();
    v.write_zeroes(0, 300, false).await.unwrap();
    v.unmap(2048, 256).await.unwrap();
    assert_eq!(v.read(0, 1).await.unwrap(), Bytes::from(vec![0u8; BS]));
    assert_eq!(snap.read(0, 300).await.unwrap(), stamp(0, 1, 300));
    assert_eq!(snap.read(2048, 256).await.unwrap(), stamp(2048, 1, 256));
    pool.drop_snapshot(snap).await.unwrap();
}

#[tokio::test]
async fn a_volume_grown_under_a_snapshot_keeps_the_snapshot_size() {
    let pool = pool(32).await;
    let v = filled(&pool, "v0", 4).await;
    let before = v.geometry().num_blocks;
    let snap = pool
        .snapshot(&["v0"], MIB, 64 << 10)
        .await
        .unwrap()
        .pop()
        .unwrap();
    pool.grow("v0", 8 * MIB).await.unwrap();
    assert_eq!(v.geometry().num_blocks, 2 * before);
    // The new blocks are the volume's alone: no copy, no room taken.
    v.write(before + 10, stamp(before + 10, 2, 8), WriteFlags::default())
        .await
        .unwrap();
    assert_eq!(snap.reserve_used_blocks(), 0);
    assert_eq!(snap.geometry().num_blocks, before);
    assert!(snap.read(before, 1).await.is_err());
    v.write(before - 1, stamp(before - 1, 2, 2), WriteFlags::default())
        .await
        .unwrap();
    assert_eq!(
        snap.read(before - 1, 1).await.unwrap(),
        stamp(before - 1, 1, 1)
    );
    pool.drop_snapshot(snap).await.unwrap();
}

#[tokio::test]
async fn volumes_of_one_call_share_the_instant() {
    let pool = pool(64).await;
    let a = filled(&pool, "a", 4).await;
    let b = filled(&pool, "b", 4).await;
    let mut snaps = pool.snapshot(&["a", "b"], MIB, 64 << 10).await.unwrap();
    assert_eq!(snaps.len(), 2);
    a.write(5, stamp(5, 2, 1), WriteFlags::default())
        .await
        .unwrap();
    b.write(6, stamp(6, 2, 1), WriteFlags::default())
        .await
        .unwrap();
    let sb = snaps.pop().unwrap();
    let sa = snaps.pop().unwrap();
    assert_eq!((sa.volume(), sb.volume()), ("a", "b"));
    assert_eq!(sa.read(5, 1).await.unwrap(), stamp(5, 1, 1));
    assert_eq!(sb.read(6, 1).await.unwrap(), stamp(6, 1, 1));
    // One snapshot per volume at a time.
    assert!(pool.snapshot(&["a"], MIB, 64 << 10).await.is_err());
    assert_eq!(pool.list().len(), 2);
    pool.drop_snapshot(sa).await.unwrap();
    pool.drop_snapshot(sb).await.unwrap();
    assert!(pool.snapshot(&["a"], MIB, 64 << 10).await.is_ok());
}

#[tokio::test]
async fn reserves_left_by_a_crash_are_deleted_at_the_next_start() {
    let dev: SharedDevice = Arc::new(MemDevice::with_name("snap", 32 << 20));
    let pool = Pool::format(dev.clone(), UNIT, false).await.unwrap();
    filled(&pool, "v0", 4).await;
    let used = pool.space().used_blocks;
    let snaps = pool.snapshot(&["v0"], 2 * MIB, 64 << 10).await.unwrap();
    // The head dies with the snapshot open: another process opens the pool.
    std::mem::forget(snaps);
    let again = Pool::open(dev).await.unwrap();
    assert_eq!(again.space().used_blocks, used + 2 * MIB / BS as u64);
    assert_eq!(again.drop_stale_reserves().await.unwrap(), 1);
    assert_eq!(again.space().used_blocks, used);
    assert_eq!(again.list().len(), 1);
}

/// A device that holds its next `hold` reads until released.
#[derive(Debug)]
struct HoldReads {
    inner: MemDevice,
    hold: AtomicU32,
    arrived: Notify,
    release: Notify,
}

#[async_trait]
impl BlockDevice for HoldReads {
    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }
    fn identity(&self) -> &DeviceIdentity {
        self.inner.identity()
    }
    async fn read(&self, lba: u64, blocks: u32) -> blockdev::Result<Bytes> {
        let held = self
            .hold
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if held {
            let released = self.release.notified();
            self.arrived.notify_one();
            released.await;
        }
        self.inner.read(lba, blocks).await
    }
    async fn write(&self, lba: u64, data: Bytes, flags: WriteFlags) -> blockdev::Result<()> {
        self.inner.write(lba, data, flags).await
    }
    async fn flush(&self) -> blockdev::Result<()> {
        self.inner.flush().await
    }
    async fn write_zeroes(&self, lba: u64, blocks: u64, unmap: bool) -> blockdev::Result<()> {
        self.inner.write_zeroes(lba, blocks, unmap).await
    }
}

#[tokio::test]
async fn a_write_waits_for_a_snapshot_read_of_its_grain() {
    let dev = Arc::new(HoldReads {
        inner: MemDevice::with_name("held", 32 << 20),
        hold: AtomicU32::new(0),
        arrived: Notify::new(),
        release: Notify::new(),
    });
    let pool = Pool::format(dev.clone(), UNIT, false).await.unwrap();
    let v = filled(&pool, "v0", 4).await;
    let snap = Arc::new(
        pool.snapshot(&["v0"], MIB, 64 << 10)
            .await
            .unwrap()
            .pop()
            .unwrap(),
    );
    // The snapshot's read of grain 0 is on the volume, held in the device.
    dev.hold.store(1, Ordering::SeqCst);
    let arrived = dev.arrived.notified();
    let reader = tokio::spawn({
        let snap = snap.clone();
        async move { snap.read(0, 8).await }
    });
    arrived.await;
    // A client write into that grain copies it, then waits for the read.
    let writer = tokio::spawn({
        let v = v.clone();
        async move { v.write(0, stamp(0, 2, 8), WriteFlags::default()).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !writer.is_finished(),
        "the write went ahead of the snapshot read"
    );
    dev.release.notify_one();
    assert_eq!(reader.await.unwrap().unwrap(), stamp(0, 1, 8));
    writer.await.unwrap().unwrap();
    assert_eq!(v.read(0, 8).await.unwrap(), stamp(0, 2, 8));
    assert_eq!(snap.read(0, 8).await.unwrap(), stamp(0, 1, 8));
}

#[tokio::test]
async fn each_snapshot_says_what_changed_since_the_last_and_a_failed_backup_gives_it_back() {
    let pool = pool(64).await;
    let v = filled(&pool, "v0", 16).await;
    let blocks = v.geometry().num_blocks;
    let region = volume::CHANGED_REGION_BYTES / BS as u64;
    let take = || pool.snapshot(&["v0"], MIB, 64 << 10);
    // Opened by this process: nothing known of before, all of it changed.
    let first = take().await.unwrap().pop().unwrap();
    assert_eq!(first.changed().runs(), vec![(0, blocks)]);
    pool.drop_snapshot(first).await.unwrap();
    // Two writes (one across a region boundary) and an unmap since.
    v.write(10, stamp(10, 2, 1), WriteFlags::default())
        .await
        .unwrap();
    v.write(
        2 * region - 1,
        stamp(2 * region - 1, 2, 2),
        WriteFlags::default(),
    )
    .await
    .unwrap();
    let second = take().await.unwrap().pop().unwrap();
    assert_eq!(second.changed().runs(), vec![(0, 3 * region)]);
    v.unmap(3 * region, 8).await.unwrap();
    // That backup fails: its regions are read again by the next one.
    pool.abort_snapshot(second).await.unwrap();
    let third = take().await.unwrap().pop().unwrap();
    assert_eq!(third.changed().runs(), vec![(0, 4 * region)]);
    pool.drop_snapshot(third).await.unwrap();
    let fourth = take().await.unwrap().pop().unwrap();
    assert!(fourth.changed().runs().is_empty());
    pool.drop_snapshot(fourth).await.unwrap();
    // Opened again with no orderly close before (a crash): nothing is
    // trusted, all of it changed.
    let again = Pool::open(pool.device().clone()).await.unwrap();
    drop(v);
    let snap = again
        .snapshot(&["v0"], MIB, 64 << 10)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(snap.changed().runs(), vec![(0, blocks)]);
}
