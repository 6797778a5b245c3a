//! Reads, writes, the stripe cache and degraded operation.

mod common;

use blockdev::{BlockDevice, WriteFlags};
use common::*;

#[tokio::test]
async fn round_trip_every_width() {
    for n in 2..=5 {
        let rig = Rig::new(n, 2048, small_config());
        let a = rig.create(n).await;
        let cap = a.geometry().num_blocks;
        let mut model = vec![None; cap as usize];
        // Partial, unaligned, full-row and multi-row writes.
        let row = (n as u64 - 1) * 4;
        for (i, (lba, len)) in [(0, 1), (3, 2), (row, row), (5, 3 * row + 1), (cap - 3, 3)]
            .into_iter()
            .enumerate()
        {
            a.write(lba, blocks(lba, len, i as u64), WriteFlags::NONE)
                .await
                .unwrap();
            for b in lba..lba + len {
                model[b as usize] = Some(i as u64);
            }
            check_all(&a, &model).await;
        }
        a.flush().await.unwrap();
        check_all(&a, &model).await;
        a.close().await.unwrap();
        let b = rig.assemble(false).await.unwrap();
        check_all(&b, &model).await;
    }
}

#[tokio::test]
async fn degraded_reads_and_writes_keep_data() {
    for n in [2usize, 3, 5] {
        let rig = Rig::new(n, 2048, small_config());
        let a = rig.create(n).await;
        let cap = a.geometry().num_blocks;
        let mut model = vec![None; cap as usize];
        a.write(0, blocks(0, cap, 1), WriteFlags::NONE)
            .await
            .unwrap();
        model.iter_mut().for_each(|m| *m = Some(1));
        a.flush().await.unwrap();
        // Member 1 drops out: the next I/O touching it marks it faulty.
        rig.faulty[1].set_offline(true);
        check_all(&a, &model).await;
        assert!(matches!(
            a.member_states()[1],
            raid::MemberState::Faulty { .. }
        ));
        // Writes while degraded (partial rows, read-modify-write and reconstruct-write).
        for (lba, len, v) in [(1, 1, 2), (6, 7, 3), (17, 2, 4)] {
            a.write(lba, blocks(lba, len, v), WriteFlags::NONE)
                .await
                .unwrap();
            for b in lba..lba + len {
                model[b as usize] = Some(v);
            }
        }
        a.flush().await.unwrap();
        check_all(&a, &model).await;
        // The failure is persisted: reassembly without the member still works,
        // and the returned member is refused as stale.
        a.close().await.unwrap();
        rig.faulty[1].set_offline(false);
        let (b, report) = rig.assemble_report(false).await.unwrap();
        assert_eq!(report.missing_slots, vec![1]);
        assert_eq!(report.refused.len(), 1, "{report:?}");
        check_all(&b, &model).await;
        // A second failure makes reads fail instead of returning wrong data.
        if n > 2 {
            rig.faulty[0].set_offline(true);
            let r = b.read(0, cap as u32).await;
            assert!(r.is_err());
        }
    }
}

#[tokio::test]
async fn stripe_cache_merges_partial_writes_into_full_rows() {
    let rig = Rig::new(4, 2048, small_config());
    let a = rig.create(4).await;
    // 12 blocks per row, written one block at a time: the cache holds them
    // until the row is complete, then writes the row once, with no reads.
    for lba in 0..12 {
        a.write(lba, blocks(lba, 1, 7), WriteFlags::NONE)
            .await
            .unwrap();
    }
    let mut model = vec![None; 24];
    model[..12].iter_mut().for_each(|m| *m = Some(7));
    check_all(&a, &model).await;
    // Cached, unflushed data is readable before it reaches the members.
    a.write(13, blocks(13, 1, 8), WriteFlags::NONE)
        .await
        .unwrap();
    model[13] = Some(8);
    check_all(&a, &model).await;
    // FUA writes go straight through.
    a.write(20, blocks(20, 1, 9), WriteFlags::FUA)
        .await
        .unwrap();
    model[20] = Some(9);
    check_all(&a, &model).await;
    a.flush().await.unwrap();
    check_all(&a, &model).await;
}
