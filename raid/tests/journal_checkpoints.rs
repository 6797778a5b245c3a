//! The journal checkpoints once per full ring, however many writers wait
//! on it: concurrent full-stripe writes (a client's 1 MiB writes at QD32,
//! as `interop/head-bench` runs them) cost one member flush per ring's
//! worth of records, not one per writer that found the ring full.

mod common;

use std::time::Duration;

use blockdev::{BlockDevice, WriteFlags};
use common::{blocks, small_config, Rig};
use futures::future::join_all;

/// Full-stripe records (3 members, 4-block chunks: 12 entries and one
/// header block) a ring holds.
const RECORDS_PER_RING: u64 = 4;
const RECORD_BLOCKS: u64 = 13;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_full_stripe_writes_checkpoint_once_per_full_ring() {
    let mut cfg = small_config();
    // The ring's header block and four records.
    cfg.journal_blocks = 1 + RECORDS_PER_RING * RECORD_BLOCKS;
    let rig = Rig::new(3, 4096, cfg);
    for f in &rig.faulty {
        // Some latency, so that writers pile up on a full ring.
        f.set_latency(Duration::from_micros(300), None);
    }
    let a = rig.create(3).await;
    let before: Vec<u64> = rig.faulty.iter().map(|f| f.stats().flushes).collect();

    // 16 requests of 8 whole rows each (8 data blocks a row), all at once.
    const ROW: u64 = 8;
    const REQUESTS: u64 = 16;
    const ROWS_EACH: u64 = 8;
    let writes = (0..REQUESTS).map(|r| {
        let lba = r * ROWS_EACH * ROW;
        let a = &a;
        async move {
            a.write(lba, blocks(lba, ROWS_EACH * ROW, 7), WriteFlags::NONE)
                .await
        }
    });
    for r in join_all(writes).await {
        r.expect("write");
    }
    let records = REQUESTS * ROWS_EACH;
    // Each checkpoint empties at least one full ring: at most one per
    // RECORDS_PER_RING records.
    let bound = records / RECORDS_PER_RING;
    for (i, f) in rig.faulty.iter().enumerate() {
        let n = f.stats().flushes - before[i];
        assert!(
            n <= bound,
            "member {i}: {n} flushes for {records} journaled rows ({bound} at most: one per full ring)"
        );
    }
    // And the rows read back.
    let got = a.read(0, (records * ROW) as u32).await.unwrap();
    assert_eq!(got, blocks(0, records * ROW, 7));
    a.close().await.unwrap();
}
