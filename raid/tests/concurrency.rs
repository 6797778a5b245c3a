//! Concurrent I/O: many tasks writing into shared rows on a multi-threaded
//! runtime must leave data and parity consistent.

mod common;

use blockdev::{BlockDevice, WriteFlags};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_keep_parity_consistent() {
    let rig = Rig::new(4, 1024, small_config());
    let a = rig.create(4).await;
    let cap = a.geometry().num_blocks;
    // 8 writers; writer w owns blocks with lba % 8 == w, so every row is shared
    // by several writers whose read-modify-write cycles interleave.
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            for round in 1..=3u64 {
                let mut lba = w;
                while lba < cap {
                    let fua = lba % 3 == 0;
                    a.write(lba, blocks(lba, 1, round), WriteFlags { fua })
                        .await
                        .unwrap();
                    lba += 8 * (1 + round % 2);
                }
                if w == 0 {
                    a.flush().await.unwrap();
                }
            }
        }));
    }
    // A reader runs alongside: it must never see an error.
    let reader = {
        let a = a.clone();
        tokio::spawn(async move {
            for i in 0..50u64 {
                let lba = (i * 37) % (cap - 16);
                a.read(lba, 16).await.unwrap();
            }
        })
    };
    for t in tasks {
        t.await.unwrap();
    }
    reader.await.unwrap();
    a.flush().await.unwrap();
    // Expected: the last round that touched each block.
    let model: Vec<Option<u64>> = (0..cap)
        .map(|lba| {
            let w = lba % 8;
            (1..=3u64)
                .rev()
                .find(|r| (lba - w) % (8 * (1 + r % 2)) == 0)
        })
        .collect();
    check_all(&a, &model).await;
    // Parity must be right everywhere: scrub finds nothing, and with any one
    // member gone every block still reads back.
    let r = a.scrub().await.unwrap();
    assert_eq!(
        (r.data_repaired, r.parity_repaired, r.unrecoverable),
        (0, 0, 0),
        "{r:?}"
    );
    rig.faulty[2].set_offline(true);
    check_all(&a, &model).await;
}
