//! Unmap and zeroing on the array: whole rows are deallocated on every
//! member when they all read zeroes after an unmap (their tag blocks then
//! read all zero: "never written"), zeroes are written otherwise; either
//! way the range reads zeroes, healthy and degraded, and the members stay
//! consistent (check and scrub find nothing).

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use blockdev::{BlockDevice, Bytes, DeviceIdentity, Features, Geometry, SharedDevice, WriteFlags};
use common::*;
use raid::RaidArray;

/// Whether member `dev` holds all-zero tag blocks in `row` (deallocated,
/// or never written).
async fn tags_zero(a: &RaidArray, dev: &SharedDevice, row: u64) -> bool {
    let lay = a.layout().await;
    let t = dev
        .read(lay.tag_block(row, 0), lay.tag_blocks)
        .await
        .unwrap();
    t.iter().all(|&b| b == 0)
}

async fn assert_consistent(a: &RaidArray) {
    let r = a.check().await.unwrap();
    assert!(r.clean(), "{r:?}");
    assert_scrub_clean(a).await;
}

#[tokio::test]
async fn whole_rows_are_deallocated_on_every_member_and_partial_rows_zeroed() {
    let rig = Rig::new(4, 400, small_config());
    let (a, mut model) = rig.filled(4).await;
    let lay = a.layout().await;
    let per = lay.row_data_blocks(); // 12 blocks of 3 chunks of 4
                                     // From the middle of row 2 to the middle of row 7: rows 3..7 whole.
    let (lba, n) = (2 * per + 5, 5 * per);
    a.unmap(lba, n).await.unwrap();
    model[lba as usize..(lba + n) as usize].fill(None);
    check_all(&a, &model).await;
    for slot in 0..4 {
        let dev = rig.shared(rig.index_of(&a, slot));
        for row in 3..7 {
            assert!(tags_zero(&a, &dev, row).await, "slot {slot} row {row}");
        }
        // The partial rows were written (zeroes with their tags).
        for row in [2, 7] {
            assert!(!tags_zero(&a, &dev, row).await, "slot {slot} row {row}");
        }
    }
    assert_consistent(&a).await;
    // Written again, a deallocated row is an ordinary row.
    a.write(3 * per + 1, blocks(3 * per + 1, 3, 2), WriteFlags::NONE)
        .await
        .unwrap();
    model[(3 * per + 1) as usize..(3 * per + 4) as usize].fill(Some(2));
    check_all(&a, &model).await;
    assert_consistent(&a).await;
    // It survives a clean reassembly.
    a.close().await.unwrap();
    let a = rig.assemble(false).await.unwrap();
    check_all(&a, &model).await;
    assert_consistent(&a).await;
}

#[tokio::test]
async fn an_unmapped_range_reads_zeroes_with_any_member_missing() {
    for members in [2, 3, 5] {
        let per = 4 * (members as u64 - 1);
        for slot in 0..members as u32 {
            let rig = Rig::new(members, 400, small_config());
            let (a, mut model) = rig.filled(members).await;
            a.unmap(per - 1, 6 * per + 2).await.unwrap();
            model[(per - 1) as usize..(7 * per + 1) as usize].fill(None);
            // The member goes away unnoticed: the reads find out.
            rig.faulty[rig.index_of(&a, slot)].set_offline(true);
            check_all(&a, &model).await;
            assert!(a.degraded(), "{members} members, slot {slot}");
            let r = a.check().await.unwrap();
            assert!(r.clean(), "{r:?}");
        }
    }
}

#[tokio::test]
async fn unmap_on_a_degraded_array_leaves_the_returning_member_consistent() {
    let rig = Rig::new(3, 400, small_config());
    let (a, mut model) = rig.filled(3).await;
    let per = a.layout().await.row_data_blocks();
    let f = rig.faulty[rig.index_of(&a, 1)].clone();
    // Away unnoticed: the unmap fails it on the way.
    f.set_offline(true);
    a.unmap(per, 10 * per).await.unwrap();
    assert!(a.degraded());
    model[per as usize..(11 * per) as usize].fill(None);
    check_all(&a, &model).await;
    f.set_offline(false);
    a.re_add(f.clone()).await.unwrap();
    while !a.rebuild_step(64).await.unwrap().1 {}
    check_all(&a, &model).await;
    assert_consistent(&a).await;
}

/// A member that does not read zeroes after an unmap (no LBPRZ).
#[derive(Debug)]
struct NoLbprz(SharedDevice);

#[async_trait]
impl BlockDevice for NoLbprz {
    fn geometry(&self) -> Geometry {
        self.0.geometry()
    }
    fn identity(&self) -> &DeviceIdentity {
        self.0.identity()
    }
    fn features(&self) -> Features {
        Features {
            unmap_reads_zero: false,
            ..self.0.features()
        }
    }
    async fn read(&self, lba: u64, blocks: u32) -> blockdev::Result<Bytes> {
        self.0.read(lba, blocks).await
    }
    async fn write(&self, lba: u64, data: Bytes, flags: WriteFlags) -> blockdev::Result<()> {
        self.0.write(lba, data, flags).await
    }
    async fn flush(&self) -> blockdev::Result<()> {
        self.0.flush().await
    }
    async fn write_zeroes(&self, lba: u64, blocks: u64, unmap: bool) -> blockdev::Result<()> {
        self.0.write_zeroes(lba, blocks, unmap).await
    }
    /// Deallocates without zeroing: the old content stays.
    async fn unmap(&self, _lba: u64, _blocks: u64) -> blockdev::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn without_lbprz_on_every_member_zeroes_are_written() {
    let rig = Rig::new(3, 400, small_config());
    let mut members: Vec<SharedDevice> = (0..3).map(|i| rig.shared(i)).collect();
    members[2] = Arc::new(NoLbprz(members[2].clone()));
    let a = RaidArray::create(members, vec![], rig.cfg.clone(), rig.clock.clone())
        .await
        .unwrap();
    let cap = a.geometry().num_blocks;
    a.write(0, blocks(0, cap, 1), WriteFlags::NONE)
        .await
        .unwrap();
    let per = a.layout().await.row_data_blocks();
    a.unmap(0, 4 * per).await.unwrap();
    let mut model = vec![Some(1); cap as usize];
    model[..(4 * per) as usize].fill(None);
    check_all(&a, &model).await;
    for row in 0..4 {
        assert!(
            !tags_zero(&a, &rig.shared(0), row).await,
            "row {row} written"
        );
    }
    assert_consistent(&a).await;
    // The same through write_zeroes with unmap allowed.
    a.write_zeroes(5 * per, 3 * per, true).await.unwrap();
    model[(5 * per) as usize..(8 * per) as usize].fill(None);
    check_all(&a, &model).await;
    assert_consistent(&a).await;
}

#[tokio::test]
async fn journaled_unmap_survives_a_crash_with_every_block_vouched_for() {
    let mut cfg = small_config();
    cfg.journal_blocks = 160;
    let rig = Rig::new(3, 600, cfg);
    for f in &rig.faulty {
        f.enable_volatile_cache();
    }
    let (a, mut model) = rig.filled(3).await;
    let per = a.layout().await.row_data_blocks();
    a.unmap(2, 9 * per).await.unwrap();
    model[2..(2 + 9 * per) as usize].fill(None);
    check_all(&a, &model).await;
    // Power fails before any flush: each member keeps some of its
    // unflushed blocks.
    a.halt();
    for (i, f) in rig.faulty.iter().enumerate() {
        crash_keeping(f, |lba| (lba / 3 + i as u64).is_multiple_of(2)).await;
    }
    let (a, _) = rig.assemble_report(false).await.unwrap();
    assert_eq!(a.integrity_stats().resync_unverified, 0);
    // Every block is its old content or zero; the members are consistent.
    let cap = a.geometry().num_blocks;
    let data = a.read(0, cap as u32).await.unwrap();
    for lba in 0..cap as usize {
        let got = &data[lba * BS..(lba + 1) * BS];
        let zero = model[lba].is_none() && got.iter().all(|&b| b == 0);
        assert!(zero || got == &pattern(lba as u64, 1)[..], "block {lba}");
    }
    assert_consistent(&a).await;
}
