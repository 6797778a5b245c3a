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
        for (i, (lba, len)) in [(0, 1), (3, 2), (row, row), (5, 3 * row + 1), (cap - 3, 3)].into_iter().enumerate() {
            a.write(lba, blocks(lba, len, i as u64), WriteFlags::NONE).await.unwrap();
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
