//! The pool's operations over a memory device: format, open, create, grow,
//! delete, read-only, and what an open volume does.

use std::sync::Arc;

use blockdev::{BlockDevice, BlockError, Bytes, ErrorClass, MemDevice, SharedDevice, WriteFlags};
use volume::{Pool, VolumeError};

const BS: u64 = 512;
/// Allocation unit of the tests: 8 blocks (a 3-member array with 4-block chunks).
const UNIT: u64 = 8;

fn mem(mib: u64) -> Arc<MemDevice> {
    Arc::new(MemDevice::with_name("pool", mib << 20))
}

fn fill(v: u8, blocks: u64) -> Bytes {
    Bytes::from(vec![v; (blocks * BS) as usize])
}

#[tokio::test]
async fn format_refuses_a_formatted_device_unless_forced() {
    let dev: SharedDevice = mem(4);
    assert!(matches!(
        Pool::open(dev.clone()).await,
        Err(VolumeError::Unformatted)
    ));
    let pool = Pool::format(dev.clone(), UNIT, false).await.unwrap();
    pool.create("a", 64 * BS).await.unwrap();
    assert!(matches!(
        Pool::format(dev.clone(), UNIT, false).await,
        Err(VolumeError::AlreadyFormatted { volumes: 1, .. })
    ));
    let again = Pool::format(dev.clone(), UNIT, true).await.unwrap();
    assert!(again.list().is_empty());
    assert!(
        again.seq() > pool.seq(),
        "a forced format wins over the old table"
    );
    assert!(Pool::open(dev).await.unwrap().list().is_empty());
}

#[tokio::test]
async fn volumes_survive_reopen_with_their_identity() {
    let dev: SharedDevice = mem(4);
    let pool = Pool::format(dev.clone(), UNIT, false).await.unwrap();
    let a = pool.create("a", 100 * BS).await.unwrap();
    assert_eq!(a.size_blocks, 104, "rounded up to the unit");
    pool.create("b", 3 * BS).await.unwrap();
    let va = pool.open_volume("a").unwrap();
    va.write(0, fill(7, 104), WriteFlags::FUA).await.unwrap();
    let id = va.identity().clone();
    drop(va);

    let pool = Pool::open(dev).await.unwrap();
    let names: Vec<String> = pool.list().into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["a", "b"]);
    let va = pool.open_volume("a").unwrap();
    assert_eq!(va.identity(), &id, "identity stable across reopen");
    assert_eq!(id.uuid, pool.info("a").unwrap().uuid);
    assert_eq!(va.read(0, 104).await.unwrap(), fill(7, 104));
    let vb = pool.open_volume("b").unwrap();
    assert_ne!(vb.identity(), &id);
    assert_eq!(vb.read(0, 8).await.unwrap(), fill(0, 8));
}

#[tokio::test]
async fn new_space_reads_zeroes_after_a_delete() {
    let dev: SharedDevice = mem(4);
    let pool = Pool::format(dev, UNIT, false).await.unwrap();
    pool.create("a", 64 * BS).await.unwrap();
    let va = pool.open_volume("a").unwrap();
    va.write(0, fill(9, 64), WriteFlags::NONE).await.unwrap();
    assert!(matches!(
        pool.delete("a").await,
        Err(VolumeError::InUse { handles: 1, .. })
    ));
    drop(va);
    pool.delete("a").await.unwrap();
    let b = pool.create("b", 64 * BS).await.unwrap();
    assert_eq!(
        b.extents,
        vec![volume::UnitExtent {
            start: pool.space().reserved_blocks / UNIT,
            len: 8
        }],
        "b reuses a's space"
    );
    let vb = pool.open_volume("b").unwrap();
    assert_eq!(vb.read(0, 64).await.unwrap(), fill(0, 64));
}

#[tokio::test]
async fn grow_adds_an_extent_maps_across_it_and_reports_the_resize() {
    let dev: SharedDevice = mem(4);
    let pool = Pool::format(dev, UNIT, false).await.unwrap();
    pool.create("a", 16 * BS).await.unwrap();
    pool.create("b", 16 * BS).await.unwrap();
    let va = pool.open_volume("a").unwrap();
    let mut status = va.status();
    va.write(0, fill(1, 16), WriteFlags::NONE).await.unwrap();
    let info = pool.grow("a", 40 * BS).await.unwrap();
    assert_eq!(info.size_blocks, 40);
    assert_eq!(info.extents.len(), 2, "b sits right after a");
    assert!(status.has_changed().unwrap());
    assert_eq!(status.borrow_and_update().geometry.num_blocks, 40);
    assert_eq!(va.geometry().num_blocks, 40);
    // New space reads zeroes; a write across the extent boundary lands in both.
    assert_eq!(va.read(16, 24).await.unwrap(), fill(0, 24));
    va.write(12, fill(5, 8), WriteFlags::FUA).await.unwrap();
    let back = va.read(0, 40).await.unwrap();
    assert_eq!(back[..12 * 512], fill(1, 12)[..]);
    assert_eq!(back[12 * 512..20 * 512], fill(5, 8)[..]);
    // b is untouched.
    let vb = pool.open_volume("b").unwrap();
    assert_eq!(vb.read(0, 16).await.unwrap(), fill(0, 16));
    assert!(matches!(
        pool.grow("a", 8 * BS).await,
        Err(VolumeError::InvalidSize(_))
    ));
    // Past the end is out of range, not another volume.
    let e = va.read(40, 1).await.unwrap_err();
    assert!(matches!(e, BlockError::OutOfRange { .. }));
}

#[tokio::test]
async fn read_only_is_honoured_and_names_and_space_are_checked() {
    let dev: SharedDevice = mem(2);
    let pool = Pool::format(dev.clone(), UNIT, false).await.unwrap();
    assert!(matches!(
        pool.create("Bad Name", BS).await,
        Err(VolumeError::InvalidName(_))
    ));
    pool.create("a", BS).await.unwrap();
    assert!(matches!(
        pool.create("a", BS).await,
        Err(VolumeError::Exists(_))
    ));
    let free = pool.space().free_blocks;
    assert!(matches!(
        pool.create("big", (free + 1) * BS).await,
        Err(VolumeError::NoSpace { .. })
    ));
    let va = pool.open_volume("a").unwrap();
    pool.set_read_only("a", true).await.unwrap();
    assert!(va.read_only());
    let e = va.write(0, fill(1, 1), WriteFlags::NONE).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::ReadOnly);
    assert_eq!(
        va.unmap(0, 1).await.unwrap_err().class(),
        ErrorClass::ReadOnly
    );
    let pool = Pool::open(dev).await.unwrap();
    assert!(
        pool.info("a").unwrap().read_only,
        "the flag is in the table"
    );
}

#[tokio::test]
async fn io_to_open_volumes_goes_on_while_a_commit_hangs_and_changes_queue() {
    let faulty = Arc::new(blockdev::FaultyDevice::new(mem(4), 5));
    let pool = Pool::format(faulty.clone(), UNIT, false).await.unwrap();
    pool.create("a", 16 * BS).await.unwrap();
    pool.create("b", 16 * BS).await.unwrap();
    let va = pool.open_volume("a").unwrap();
    let seq = pool.seq();
    // The next write is the table copy of this create (zeroing is not a
    // write): it hangs in the device until released.
    faulty.hold_next_writes(1);
    let creating = tokio::spawn({
        let pool = pool.clone();
        async move { pool.create("c", 16 * BS).await }
    });
    while faulty.held_writes() == 0 {
        tokio::task::yield_now().await;
    }
    let growing = tokio::spawn({
        let pool = pool.clone();
        async move { pool.grow("b", 32 * BS).await }
    });
    // I/O, opening and listing go on meanwhile; the table is the old one.
    va.write(0, fill(3, 16), WriteFlags::FUA).await.unwrap();
    va.flush().await.unwrap();
    assert_eq!(va.read(0, 16).await.unwrap(), fill(3, 16));
    assert_eq!(pool.open_volume("b").unwrap().geometry().num_blocks, 16);
    assert_eq!(pool.list().len(), 2);
    assert_eq!(pool.seq(), seq);
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(
        !creating.is_finished() && !growing.is_finished(),
        "the grow waits for the create's commit"
    );
    faulty.release_writes();
    creating.await.unwrap().unwrap();
    growing.await.unwrap().unwrap();
    assert_eq!(pool.seq(), seq + 2);
    assert_eq!(pool.list().len(), 3);
    assert_eq!(pool.info("b").unwrap().size_blocks, 32);
}

#[tokio::test]
async fn a_medium_error_names_the_volumes_block() {
    let faulty = Arc::new(blockdev::FaultyDevice::new(mem(4), 6));
    let pool = Pool::format(faulty.clone(), UNIT, false).await.unwrap();
    pool.create("a", 16 * BS).await.unwrap();
    pool.create("b", 16 * BS).await.unwrap();
    let info = pool.grow("a", 32 * BS).await.unwrap();
    let second = info.extents[1].start * UNIT;
    // Device block 3 of a's second extent is volume block 16 + 3.
    faulty.fail_reads(second + 3..second + 4);
    let va = pool.open_volume("a").unwrap();
    let e = va.read(10, 20).await.unwrap_err();
    assert!(matches!(e, BlockError::Medium { lba: 19 }), "{e:?}");
    faulty.fail_writes(second..second + 1);
    let e = va
        .write(8, fill(1, 16), WriteFlags::NONE)
        .await
        .unwrap_err();
    assert!(matches!(e, BlockError::WriteFault { lba: 16 }), "{e:?}");
    // The piece in the first extent was written all the same.
    faulty.clear_faults();
    assert_eq!(va.read(8, 8).await.unwrap(), fill(1, 8));
}

#[tokio::test]
async fn big_blocks_and_a_small_transfer_limit() {
    let dev = MemDevice::new(4096, 1024, blockdev::DeviceIdentity::from_name("4k"));
    let dev: SharedDevice = Arc::new(dev.set_limits(blockdev::Limits {
        max_transfer: 16,
        ..Default::default()
    }));
    let pool = Pool::format(dev.clone(), 4, false).await.unwrap();
    assert_eq!(pool.space().reserved_blocks, 128, "512 KiB of copies");
    pool.create("a", 40960).await.unwrap();
    let va = pool.open_volume("a").unwrap();
    assert_eq!(va.geometry().block_size, 4096);
    assert_eq!(va.limits().max_transfer, 16);
    let big = Bytes::from(vec![1u8; 17 * 4096]);
    let e = va.write(0, big, WriteFlags::NONE).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Invalid);
    va.write(0, Bytes::from(vec![2u8; 12 * 4096]), WriteFlags::NONE)
        .await
        .unwrap();
    drop(va);
    let pool = Pool::open(dev).await.unwrap();
    let va = pool.open_volume("a").unwrap();
    assert_eq!(va.read(0, 12).await.unwrap(), vec![2u8; 12 * 4096]);
}
