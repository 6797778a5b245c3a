//! Concurrent I/O: many tasks writing into shared rows on a multi-threaded
//! runtime must leave data and parity consistent.

mod common;

use blockdev::{BlockDevice, WriteFlags};
use common::*;
use raid::RaidArray;

/// A task reading 50 spans of `n` blocks, `stride` apart, across the
/// volume alongside the writers (whose rounds write versions 1 to 3): it
/// must never see an error, and every block it reads must be whole, never
/// written or one of those versions.
fn reader(a: &RaidArray, n: u32, stride: u64) -> tokio::task::JoinHandle<()> {
    let a = a.clone();
    let cap = a.geometry().num_blocks;
    tokio::spawn(async move {
        for i in 0..50u64 {
            let lba = (i * stride) % (cap - u64::from(n));
            let got = a.read(lba, n).await.unwrap();
            for (j, b) in got.chunks_exact(BS).enumerate() {
                let l = lba + j as u64;
                assert!(
                    b.iter().all(|&x| x == 0) || (1..=3).any(|v| b == &pattern(l, v)[..]),
                    "block {l} read torn or foreign content"
                );
            }
        }
    })
}

/// Every block reads back as `model` says, and parity is right everywhere:
/// scrub finds nothing, and with device `gone` offline every block still
/// reads back.
async fn assert_consistent(rig: &Rig, a: &RaidArray, model: &[Option<u64>], gone: usize) {
    check_all(a, model).await;
    assert_scrub_clean(a).await;
    rig.faulty[gone].set_offline(true);
    check_all(a, model).await;
}

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
    let reader = reader(&a, 16, 37);
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
    assert_consistent(&rig, &a, &model, 2).await;
}

/// Requests spanning several whole rows write those rows as parallel tasks.
/// Writers of such requests (with partial rows at their edges) and readers
/// run together on a multi-threaded runtime; every block must end as its
/// last writer left it, with parity right.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_multi_row_writers_keep_data_and_parity() {
    let rig = Rig::new(4, 1024, small_config());
    let a = rig.create(4).await;
    let cap = a.geometry().num_blocks;
    // 3 data chunks of 4 blocks per row. Writer w owns the span
    // [w * 64 + 3, w * 64 + 60): four whole rows and a partial row at each
    // end, rewritten in three rounds.
    let row = 12;
    let writers = cap / 64;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            let (lo, hi) = (w * 64 + 3, w * 64 + 60);
            assert!((hi - lo) / row >= 4);
            for round in 1..=3u64 {
                a.write(lo, blocks(lo, hi - lo, round), WriteFlags::NONE)
                    .await
                    .unwrap();
            }
        }));
    }
    let reader = reader(&a, 40, 53);
    for t in tasks {
        t.await.unwrap();
    }
    reader.await.unwrap();
    a.flush().await.unwrap();
    let model: Vec<Option<u64>> = (0..cap)
        .map(|lba| (lba / 64 < writers && (3..60).contains(&(lba % 64))).then_some(3))
        .collect();
    assert_consistent(&rig, &a, &model, 1).await;
}

/// A request of whole rows whose caller goes away (an initiator that drops
/// its connection) still writes every row it started, under the layout it
/// was planned with: a grow that follows waits for those rows, restripes
/// them, and nothing of them is lost or torn.
#[tokio::test]
async fn a_dropped_multi_row_write_still_lands_before_a_grow() {
    let mut rig = Rig::new(3, 1024, small_config());
    let a = rig.create(3).await;
    let cap = a.geometry().num_blocks;
    let rows = 8 * 8; // 8 whole rows of 2 chunks of 4 blocks
    a.write(0, blocks(0, cap, 1), WriteFlags::NONE)
        .await
        .unwrap();
    for f in &rig.faulty {
        f.set_latency(std::time::Duration::from_millis(1), None);
    }
    {
        let w = a.write(0, blocks(0, rows, 2), WriteFlags::NONE);
        tokio::pin!(w);
        // One poll starts the request; then the caller is gone.
        assert!(futures::poll!(w.as_mut()).is_pending());
    }
    let dev = rig.add_device(1024);
    a.grow(dev).await.unwrap();
    while !a.reshape_step().await.unwrap() {}
    let model: Vec<Option<u64>> = (0..cap)
        .map(|lba| Some(if lba < rows { 2 } else { 1 }))
        .collect();
    check_all(&a, &model).await;
    assert_scrub_clean(&a).await;
}
