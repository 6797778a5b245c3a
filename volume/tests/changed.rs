//! Persistent changed-block tracking: what each volume's map on the device
//! says after an orderly close, a crash, a failed map write, a failed or a
//! successful backup, a grow, and on a pool made before maps were stored.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use blockdev::{BlockDevice, Bytes, FaultyDevice, MemDevice, SharedDevice, WriteFlags};
use common::{version_2_copy, Counting};
use proptest::prelude::*;
use volume::table;
use volume::{Pool, Snapshot, Volume};

const BS: u64 = 512;
const MIB: u64 = 1 << 20;
/// Blocks per region of the map.
const REGION: u64 = volume::CHANGED_REGION_BYTES / BS;
const UNIT: u64 = 8;

/// A zeroed memory device of `mib` MiB behind a fault injector whose
/// volatile cache loses (or tears) what was not flushed at a crash.
fn device(mib: u64, seed: u64) -> Arc<FaultyDevice> {
    let mem: SharedDevice = Arc::new(MemDevice::with_name("cbt", mib * MIB));
    let dev = Arc::new(FaultyDevice::new(mem, seed));
    dev.enable_volatile_cache();
    dev
}

async fn formatted(dev: &Arc<FaultyDevice>, unit: u64) -> Pool {
    Pool::format_zeroed(dev.clone(), unit).await.unwrap()
}

async fn reopen(dev: &Arc<FaultyDevice>) -> Pool {
    Pool::open(dev.clone()).await.unwrap()
}

/// Ends the process of `pool` (in order: a close first; or a crash) and
/// opens the pool again after the power failed (whatever was not flushed
/// lost or torn).
async fn restart(dev: &Arc<FaultyDevice>, pool: Pool, orderly: bool) -> Pool {
    if orderly {
        pool.close().await.unwrap();
    }
    drop(pool);
    dev.crash().await.unwrap();
    reopen(dev).await
}

/// The regions `snap` says changed.
fn regions(snap: &Snapshot) -> Vec<u64> {
    let m = snap.changed();
    (0..m.blocks().div_ceil(m.region()))
        .filter(|&r| m.is_changed(r))
        .collect()
}

/// A backup snapshot of volume `name` alone (1 MiB of reserve).
async fn snapshot_of(pool: &Pool, name: &str) -> Snapshot {
    let mut snaps = pool.snapshot(&[name], MIB, 64 << 10).await.unwrap();
    snaps.pop().unwrap()
}

/// The regions a backup of `name` taken now reads; its backup succeeds.
async fn backed_up(pool: &Pool, name: &str) -> Vec<u64> {
    let snap = snapshot_of(pool, name).await;
    let changed = regions(&snap);
    pool.drop_snapshot(snap).await.unwrap();
    changed
}

/// A device (`seed` for its crash outcomes), a pool and a volume `v` of 8
/// regions, opened, whose first backup read it whole (a new volume has no
/// history a backup could build on: all changed) and succeeded.
async fn backed_up_volume(seed: u64) -> (Arc<FaultyDevice>, Pool, Arc<Volume>) {
    let dev = device(64, seed);
    let pool = formatted(&dev, UNIT).await;
    pool.create("v", 32 * MIB).await.unwrap();
    let v = pool.open_volume("v").unwrap();
    assert_eq!(backed_up(&pool, "v").await, (0..8).collect::<Vec<_>>());
    (dev, pool, v)
}

async fn write_region(v: &Volume, r: u64) -> blockdev::Result<()> {
    let data = Bytes::from(vec![r as u8 + 1; 2 * BS as usize]);
    v.write(r * REGION + 7, data, WriteFlags::NONE).await
}

/// The device blocks of the changed-block map of volume `name`.
fn map_range(pool: &Pool, name: &str) -> std::ops::Range<u64> {
    let uuid = pool.info(name).unwrap().uuid;
    let map = pool.info(&table::change_map_name(&uuid)).unwrap();
    let e = map.extents[0];
    e.start * pool.unit_blocks()..e.end() * pool.unit_blocks()
}

#[tokio::test]
async fn after_an_orderly_close_only_the_written_regions_are_changed() {
    let (dev, pool, v) = backed_up_volume(1).await;
    write_region(&v, 1).await.unwrap();
    write_region(&v, 5).await.unwrap();
    v.unmap(6 * REGION, 8).await.unwrap();
    drop(v);
    // Whatever was not flushed is lost: the close made the map durable.
    let pool = restart(&dev, pool, true).await;
    assert_eq!(backed_up(&pool, "v").await, vec![1, 5, 6]);
    // Opened and closed with nothing written: nothing changed.
    let pool = restart(&dev, pool, true).await;
    assert_eq!(backed_up(&pool, "v").await, Vec::<u64>::new());
}

#[tokio::test]
async fn after_a_crash_every_region_is_changed() {
    let (dev, pool, v) = backed_up_volume(2).await;
    write_region(&v, 2).await.unwrap();
    drop(v);
    let pool = restart(&dev, pool, false).await;
    assert_eq!(backed_up(&pool, "v").await, (0..8).collect::<Vec<_>>());
    // Closed in order, then written again and crashed: the write opened the
    // map again before it went ahead, so it is not trusted.
    pool.close().await.unwrap();
    let v = pool.open_volume("v").unwrap();
    write_region(&v, 3).await.unwrap();
    drop(v);
    let pool = restart(&dev, pool, false).await;
    assert_eq!(backed_up(&pool, "v").await, (0..8).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_write_never_succeeds_without_its_bit_on_the_device() {
    let (dev, pool, v) = backed_up_volume(3).await;
    write_region(&v, 1).await.unwrap();
    dev.fail_writes(map_range(&pool, "v"));
    // Region 1's bit is on the device: no map write, the write goes ahead.
    write_region(&v, 1).await.unwrap();
    // Region 3's is not and cannot be: the write fails, naming its block.
    let e = write_region(&v, 3).await.unwrap_err();
    assert!(
        matches!(e, blockdev::BlockError::WriteFault { lba } if lba == 3 * REGION + 7),
        "{e:?}"
    );
    assert_eq!(
        v.read(3 * REGION + 7, 1).await.unwrap(),
        Bytes::from(vec![0; BS as usize]),
        "the failed write did not reach the volume"
    );
    dev.clear_faults();
    write_region(&v, 3).await.unwrap();
    drop(v);
    let pool = restart(&dev, pool, true).await;
    assert_eq!(backed_up(&pool, "v").await, vec![1, 3]);
}

#[tokio::test]
async fn a_burst_of_first_writes_shares_its_map_writes() {
    let dev = Arc::new(Counting::new("count", 64));
    let pool = Pool::format_zeroed(dev.clone(), UNIT).await.unwrap();
    pool.create("v", 32 * MIB).await.unwrap();
    let v = pool.open_volume("v").unwrap();
    backed_up(&pool, "v").await;
    pool.close().await.unwrap();
    dev.watch(map_range(&pool, "v"));
    let burst = || futures::future::join_all((0..8).map(|r| write_region(&v, r)));
    for r in burst().await {
        r.unwrap();
    }
    // The header opened once, the first writer's bit, then one write for
    // the seven that came while it ran: not one per write.
    let map_writes = dev.take_writes();
    assert!(
        map_writes <= 3,
        "{map_writes} map writes for 8 first writes"
    );
    for r in burst().await {
        r.unwrap();
    }
    assert_eq!(dev.take_writes(), 0, "marked regions cost no map write");
}

#[tokio::test]
async fn a_failed_backup_is_given_back_across_restarts() {
    let (dev, pool, v) = backed_up_volume(4).await;
    write_region(&v, 2).await.unwrap();
    let snap = snapshot_of(&pool, "v").await;
    assert_eq!(regions(&snap), vec![2]);
    write_region(&v, 4).await.unwrap();
    pool.abort_snapshot(snap).await.unwrap();
    drop(v);
    let pool = restart(&dev, pool, true).await;
    let v = pool.open_volume("v").unwrap();
    write_region(&v, 6).await.unwrap();
    // A backup still running at an orderly close did not succeed: its
    // regions are changed after the restart.
    let running = snapshot_of(&pool, "v").await;
    assert_eq!(regions(&running), vec![2, 4, 6]);
    write_region(&v, 7).await.unwrap();
    drop((v, running));
    let pool = restart(&dev, pool, true).await;
    assert_eq!(pool.drop_stale_reserves().await.unwrap(), 1);
    assert_eq!(backed_up(&pool, "v").await, vec![2, 4, 6, 7]);
    // That one succeeded: nothing is changed after the next restart.
    let pool = restart(&dev, pool, true).await;
    assert_eq!(backed_up(&pool, "v").await, Vec::<u64>::new());
}

#[tokio::test]
async fn a_grown_volume_and_its_grown_map() {
    // One-block units: the map's area grows with the volume (one bit block
    // holds 4096 regions).
    let dev = device(17 << 10, 5);
    let pool = formatted(&dev, 1).await;
    pool.create("v", 8 * MIB).await.unwrap();
    let v = pool.open_volume("v").unwrap();
    assert_eq!(backed_up(&pool, "v").await, vec![0, 1]);
    let map_blocks = |pool: &Pool| {
        let uuid = pool.info("v").unwrap().uuid;
        pool.info(&table::change_map_name(&uuid))
            .unwrap()
            .size_blocks
    };
    assert_eq!(map_blocks(&pool), 2, "header and one bit block");
    write_region(&v, 0).await.unwrap();
    pool.grow("v", 4098 * 4 * MIB).await.unwrap();
    assert_eq!(map_blocks(&pool), 3, "the map grew with its volume");
    drop(v);
    let pool = restart(&dev, pool, true).await;
    let mut want = vec![0];
    want.extend(2..4098);
    assert_eq!(
        backed_up(&pool, "v").await,
        want,
        "the new regions are changed"
    );
    let v = pool.open_volume("v").unwrap();
    write_region(&v, 1).await.unwrap();
    write_region(&v, 4097).await.unwrap();
    drop(v);
    let pool = restart(&dev, pool, true).await;
    assert_eq!(backed_up(&pool, "v").await, vec![1, 4097]);
    // Deleting the volume frees its map with it.
    let used = pool.space().used_blocks;
    pool.delete("v").await.unwrap();
    assert_eq!(pool.space().used_blocks, 0, "{used} blocks were used");
}

#[tokio::test]
async fn a_pool_made_before_maps_opens_all_dirty_and_gets_them_at_close() {
    let mem = Arc::new(MemDevice::with_name("old", 64 * MIB));
    mem.write_bytes(0, &version_2_copy(BS as u32, UNIT, 32 * MIB / BS / UNIT));
    let pool = Pool::open(mem.clone()).await.unwrap();
    let v = pool.open_volume("v").unwrap();
    assert_eq!(backed_up(&pool, "v").await, (0..8).collect::<Vec<_>>());
    write_region(&v, 1).await.unwrap();
    pool.close().await.unwrap();
    drop((v, pool));
    let version = |slot: u64| {
        let mut b = [0u8; 4];
        mem.read_bytes(slot * table::COPY_BYTES as u64 + 8, &mut b);
        u32::from_le_bytes(b)
    };
    assert_eq!(version(0).max(version(1)), 3, "the close wrote version 3");
    let pool = Pool::open(mem.clone()).await.unwrap();
    assert_eq!(pool.list().len(), 1, "the map is hidden");
    assert_eq!(backed_up(&pool, "v").await, vec![1]);
}

#[derive(Debug, Clone)]
enum Op {
    Write(u64),
    /// A backup that succeeds (true) or fails.
    Backup(bool),
    /// A backup still running when the pool is closed in order.
    CloseDuringBackup,
    Close,
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u64..8).prop_map(Op::Write),
        2 => any::<bool>().prop_map(Op::Backup),
        1 => Just(Op::CloseDuringBackup),
        1 => Just(Op::Close),
        1 => Just(Op::Crash),
    ]
}

/// Runs `ops` on a volume of 8 regions; every backup must read exactly the
/// model's regions: those written since the last successful backup; after
/// a crash, the map as the last orderly close left it if nothing was
/// written since, else all of them (and all at first).
async fn run(ops: Vec<Op>, seed: u64) {
    let dev = device(64, seed);
    let mut pool = formatted(&dev, UNIT).await;
    pool.create("v", 32 * MIB).await.unwrap();
    let all: BTreeSet<u64> = (0..8).collect();
    let mut model = all.clone();
    // What the last orderly close wrote, while nothing was written since.
    let mut closed: Option<BTreeSet<u64>> = None;
    for op in ops {
        match op {
            Op::Write(r) => {
                let v = pool.open_volume("v").unwrap();
                write_region(&v, r).await.unwrap();
                model.insert(r);
                closed = None;
            }
            Op::Backup(ok) => {
                let snap = snapshot_of(&pool, "v").await;
                assert_eq!(regions(&snap), model.iter().copied().collect::<Vec<_>>());
                if ok {
                    pool.drop_snapshot(snap).await.unwrap();
                    model.clear();
                } else {
                    pool.abort_snapshot(snap).await.unwrap();
                }
            }
            Op::CloseDuringBackup | Op::Close | Op::Crash => {
                let snap = match op {
                    Op::CloseDuringBackup => pool.snapshot(&["v"], MIB, 64 << 10).await.unwrap(),
                    _ => Vec::new(),
                };
                let orderly = !matches!(op, Op::Crash);
                if orderly {
                    closed = Some(model.clone());
                } else {
                    model = closed.clone().unwrap_or_else(|| all.clone());
                }
                drop(snap);
                pool = restart(&dev, pool, orderly).await;
                pool.drop_stale_reserves().await.unwrap();
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn every_region_written_since_the_last_successful_backup_is_changed(
        ops in prop::collection::vec(op(), 1..30),
        seed in any::<u64>(),
    ) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(run(ops, seed));
    }
}
