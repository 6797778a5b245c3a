//! Volumes on a real RAID5 array over memory members: the table and the
//! data survive reassembly and a grow of the array, free space grows with
//! it, and unmap and zeroing keep the array's parity right.

use std::sync::Arc;

use blockdev::{BlockDevice, Bytes, DeviceIdentity, MemDevice, SharedDevice, WriteFlags};
use raid::{AssembleOptions, Config, ManualClock, RaidArray};
use volume::Pool;

const BS: usize = 512;
const MEMBER_BLOCKS: u64 = 8192;

fn config() -> Config {
    Config {
        chunk_blocks: 8,
        max_members: 4,
        cache_blocks: 256,
        ..Config::default()
    }
}

fn member(i: usize) -> SharedDevice {
    Arc::new(MemDevice::new(
        BS as u32,
        MEMBER_BLOCKS,
        DeviceIdentity::from_name(&format!("volume-raid-member-{i}")),
    ))
}

fn pattern(v: u8, blocks: u64) -> Bytes {
    Bytes::from(
        (0..blocks as usize * BS)
            .map(|i| v ^ (i / BS) as u8)
            .collect::<Vec<u8>>(),
    )
}

async fn assemble(members: &[SharedDevice], clock: &Arc<ManualClock>) -> RaidArray {
    RaidArray::assemble(
        members.to_vec(),
        config(),
        clock.clone(),
        AssembleOptions { force: false },
    )
    .await
    .unwrap()
    .0
}

async fn assert_parity_right(array: &RaidArray) {
    let r = array.check().await.unwrap();
    assert_eq!(
        (r.bad_blocks, r.parity_mismatches),
        (0, 0),
        "the array's members disagree: {r:?}"
    );
}

#[tokio::test]
async fn volumes_survive_reassembly_and_a_grow_of_the_array() {
    let clock = Arc::new(ManualClock::new());
    let mut members: Vec<SharedDevice> = (0..3).map(member).collect();
    let array = RaidArray::create(members.clone(), vec![], config(), clock.clone())
        .await
        .unwrap();
    let unit = array.layout().await.row_data_blocks();
    assert_eq!(unit, 16, "two data chunks of 8 blocks");
    let dev: SharedDevice = Arc::new(array.clone());
    let pool = Pool::format(dev, unit, false).await.unwrap();
    let before = pool.space();
    assert_eq!(
        before.total_blocks,
        array.geometry().num_blocks / unit * unit
    );

    pool.create("a", 1000 * BS as u64).await.unwrap();
    pool.create("b", 2000 * BS as u64).await.unwrap();
    let (va, vb) = (
        pool.open_volume("a").unwrap(),
        pool.open_volume("b").unwrap(),
    );
    let a_blocks = va.geometry().num_blocks;
    assert_eq!(a_blocks, 1008, "rounded up to the full stripe");
    assert_eq!(va.limits().optimal_granularity, 16);
    va.write(0, pattern(1, a_blocks), WriteFlags::NONE)
        .await
        .unwrap();
    vb.write(0, pattern(2, 2000), WriteFlags::FUA)
        .await
        .unwrap();
    // UNMAP and WRITE SAME with unmap pass down: the array writes zeroes
    // itself (it reports unmapped blocks reading zero) and its parity stays right.
    assert!(va.features().unmap_reads_zero);
    va.unmap(100, 37).await.unwrap();
    vb.write_zeroes(1990, 10, true).await.unwrap();
    va.flush().await.unwrap();
    let mut want_a = pattern(1, a_blocks).to_vec();
    want_a[100 * BS..137 * BS].fill(0);
    let mut want_b = pattern(2, 2000).to_vec();
    want_b[1990 * BS..].fill(0);
    assert_eq!(va.read(0, a_blocks as u32).await.unwrap()[..], want_a[..]);
    assert_eq!(vb.read(0, 2000).await.unwrap()[..2000 * BS], want_b[..]);
    assert_parity_right(&array).await;
    let ids = (va.identity().clone(), vb.identity().clone());
    drop((va, vb, pool));

    // Another head assembles the array from its members: same volumes,
    // same identities, same data.
    array.close().await.unwrap();
    let array = assemble(&members, &clock).await;
    let pool = Pool::open(Arc::new(array.clone())).await.unwrap();
    let va = pool.open_volume("a").unwrap();
    assert_eq!(
        (va.identity(), pool.open_volume("b").unwrap().identity()),
        (&ids.0, &ids.1)
    );
    assert_eq!(va.read(0, a_blocks as u32).await.unwrap()[..], want_a[..]);

    // Grow the array onto a fourth member, online.
    let free_before = pool.space().free_blocks;
    members.push(member(3));
    array.grow(members[3].clone()).await.unwrap();
    va.write(0, pattern(3, 16), WriteFlags::NONE).await.unwrap();
    want_a[..16 * BS].copy_from_slice(&pattern(3, 16));
    array.reshape_to_end().await.unwrap();
    let grown = pool.space();
    assert!(
        grown.free_blocks >= free_before + (grown.total_blocks - before.total_blocks),
        "free space grows with the array: {free_before} -> {grown:?}"
    );
    assert!(grown.total_blocks > before.total_blocks * 4 / 3);
    assert_eq!(va.read(0, a_blocks as u32).await.unwrap()[..], want_a[..]);

    // The volume grows into the new space; the new part reads zeroes.
    let status = va.status();
    // All the free space (the volumes' changed-block maps hold some).
    let want_blocks = a_blocks + grown.free_blocks;
    let info = pool.grow("a", want_blocks * BS as u64).await.unwrap();
    assert!(status.has_changed().unwrap());
    assert_eq!(va.geometry().num_blocks, info.size_blocks);
    assert!(info.extents.len() >= 2, "{:?}", info.extents);
    let tail = info.size_blocks - a_blocks;
    let got = va.read(a_blocks, tail as u32).await.unwrap();
    assert!(got.iter().all(|&b| b == 0), "new space reads zeroes");
    va.write(info.size_blocks - 8, pattern(4, 8), WriteFlags::NONE)
        .await
        .unwrap();
    va.flush().await.unwrap();
    assert_parity_right(&array).await;
    drop(va);

    // And once more from the members alone.
    array.close().await.unwrap();
    let array = assemble(&members, &clock).await;
    let pool = Pool::open(Arc::new(array)).await.unwrap();
    assert_eq!(pool.info("a").unwrap(), {
        let mut i = info.clone();
        i.open_handles = 0;
        i
    });
    let va = pool.open_volume("a").unwrap();
    assert_eq!(va.read(0, a_blocks as u32).await.unwrap()[..], want_a[..]);
    assert_eq!(
        va.read(info.size_blocks - 8, 8).await.unwrap(),
        pattern(4, 8)
    );
}
