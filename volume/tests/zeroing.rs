//! Known-zero space: a pool formatted on a device that reads zeroes hands
//! out never-used space without writing it, zeroes a deleted volume's
//! space before another volume gets it, keeps that knowledge across
//! reopens, and opens a version 1 table (which knew nothing of it) by
//! zeroing everything it hands out, as version 1 did.

mod common;

use std::sync::Arc;

use blockdev::{BlockDevice, Bytes, SharedDevice, WriteFlags};
use common::{as_version, Counting};
use volume::table::{copy_lba, Table, COPY_BYTES};
use volume::{Pool, VolumeError};

const BS: u64 = 512;
const UNIT: u64 = 8;

/// A device of `mib` MiB counting the blocks written and zeroed outside
/// the table area.
fn counting(mib: u64) -> Arc<Counting> {
    let c = Arc::new(Counting::new("zeroing", mib));
    c.watch(2 * COPY_BYTES as u64 / BS..u64::MAX);
    c
}

/// A 4 MiB counting device and a pool formatted on it knowing it is zero.
async fn zeroed_pool() -> (Arc<Counting>, SharedDevice, Pool) {
    let c = counting(4);
    let dev: SharedDevice = c.clone();
    let pool = Pool::format_zeroed(dev.clone(), UNIT).await.unwrap();
    (c, dev, pool)
}

fn fill(v: u8, blocks: u64) -> Bytes {
    Bytes::from(vec![v; (blocks * BS) as usize])
}

#[tokio::test]
async fn never_used_space_is_handed_out_without_writing_it() {
    let (c, dev, pool) = zeroed_pool().await;
    assert_eq!(pool.space().unzeroed_free_blocks, 0);
    let a = pool.create("a", 64 * BS).await.unwrap();
    pool.grow("a", 128 * BS).await.unwrap();
    pool.create("b", 32 * BS).await.unwrap();
    assert_eq!(c.take_blocks(), 0, "no data block written for new volumes");
    assert_eq!(a.size_blocks, 64);

    // A deleted volume's space is dirty until a volume gets it, zeroed.
    let va = pool.open_volume("a").unwrap();
    va.write(0, fill(0x5A, 128), WriteFlags::NONE)
        .await
        .unwrap();
    drop(va);
    c.take_blocks();
    pool.delete("a").await.unwrap();
    assert_eq!(c.take_blocks(), 0, "delete writes no data block");
    // Its space and its changed-block map's unit.
    assert_eq!(pool.space().unzeroed_free_blocks, 128 + UNIT);
    // Reopened, the pool still knows.
    let pool = Pool::open(dev.clone()).await.unwrap();
    assert_eq!(pool.space().unzeroed_free_blocks, 128 + UNIT);
    pool.create("c", 128 * BS).await.unwrap();
    // c's map takes the top free unit: a's map's, dirty too.
    assert_eq!(
        c.take_blocks(),
        128 + UNIT,
        "exactly the deleted volume's space (and its map's) zeroed"
    );
    assert_eq!(pool.space().unzeroed_free_blocks, 0);
    let vc = pool.open_volume("c").unwrap();
    let data = vc.read(0, 128).await.unwrap();
    assert!(data.iter().all(|&b| b == 0), "deleted data never leaks");
}

#[tokio::test]
async fn a_volume_over_old_and_new_space_zeroes_only_the_old() {
    let (c, _dev, pool) = zeroed_pool().await;
    pool.create("a", 16 * BS).await.unwrap();
    pool.create("b", 16 * BS).await.unwrap();
    let vb = pool.open_volume("b").unwrap();
    vb.write(0, fill(0x77, 16), WriteFlags::FUA).await.unwrap();
    drop(vb);
    pool.delete("b").await.unwrap();
    c.take_blocks();
    // The only free run is b's old space followed by space never used.
    let free = pool.space().free_blocks;
    let v = pool.create("c", free * BS).await.unwrap();
    assert_eq!(v.size_blocks, free);
    assert_eq!(
        c.take_blocks(),
        16 + UNIT,
        "only b's old units (and its map's) zeroed"
    );
    let vc = pool.open_volume("c").unwrap();
    assert!(vc.read(0, 16).await.unwrap().iter().all(|&b| b == 0));
}

#[tokio::test]
async fn a_plain_format_knows_nothing_and_zeroes_everything_it_hands_out() {
    let c = counting(4);
    let dev: SharedDevice = c.clone();
    let pool = Pool::format(dev.clone(), UNIT, false).await.unwrap();
    let free = pool.space().free_blocks;
    assert_eq!(pool.space().unzeroed_free_blocks, free);
    pool.create("a", 40 * BS).await.unwrap();
    assert_eq!(
        c.take_blocks(),
        40 + UNIT,
        "the volume and its changed-block map"
    );
    // A formatted device is refused by format_zeroed: it is not new.
    assert!(matches!(
        Pool::format_zeroed(dev, UNIT).await,
        Err(VolumeError::AlreadyFormatted { .. })
    ));
}

/// Rewrites both table copies of `dev` as format version 1 wrote them.
async fn downgrade_to_version_1(dev: &SharedDevice) {
    for slot in 0..2 {
        let lba = copy_lba(slot, BS as u32);
        let raw = dev
            .read(lba, (COPY_BYTES as u64 / BS) as u32)
            .await
            .unwrap();
        let Ok(mut t) = Table::decode(&raw) else {
            continue;
        };
        t.zero_known = 0;
        t.dirty.clear();
        let c = as_version(t.encode().unwrap(), 1);
        dev.write(lba, Bytes::from(c), WriteFlags::FUA)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_version_1_table_opens_and_its_free_space_is_zeroed_before_use() {
    let (c, dev, pool) = zeroed_pool().await;
    pool.create("a", 16 * BS).await.unwrap();
    let va = pool.open_volume("a").unwrap();
    va.write(0, fill(3, 16), WriteFlags::FUA).await.unwrap();
    drop(va);
    drop(pool);
    downgrade_to_version_1(&dev).await;
    let pool = Pool::open(dev.clone()).await.unwrap();
    assert_eq!(pool.list().len(), 1);
    let va = pool.open_volume("a").unwrap();
    assert!(va.read(0, 16).await.unwrap().iter().all(|&b| b == 3));
    drop(va);
    let free = pool.space().free_blocks;
    assert_eq!(pool.space().unzeroed_free_blocks, free);
    c.take_blocks();
    pool.create("b", 24 * BS).await.unwrap();
    assert_eq!(
        c.take_blocks(),
        24 + UNIT,
        "a version 1 table knows no zeroes (the volume and its map)"
    );
    // The next commit writes version 2, and what it knows sticks.
    pool.delete("a").await.unwrap();
    let pool = Pool::open(dev).await.unwrap();
    assert_eq!(pool.space().unzeroed_free_blocks, pool.space().free_blocks);
}
