//! The journal checkpoints once per full ring, however many writers wait
//! on it: concurrent full-stripe writes (a client's 1 MiB writes at QD32,
//! as `interop/head-bench` runs them) cost one member flush per ring's
//! worth of records, not one per writer that found the ring full.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use blockdev::{
    BlockDevice, Bytes, DeviceIdentity, DeviceStatus, Extent, Features, Geometry, Limits,
    SharedDevice, WriteFlags,
};
use common::{blocks, small_config, Rig};
use futures::future::join_all;
use raid::RaidArray;

/// A member that counts the flushes it is asked for.
#[derive(Debug)]
struct Counting {
    inner: SharedDevice,
    flushes: AtomicU64,
}

#[async_trait]
impl BlockDevice for Counting {
    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }
    fn identity(&self) -> &DeviceIdentity {
        self.inner.identity()
    }
    fn read_only(&self) -> bool {
        self.inner.read_only()
    }
    fn features(&self) -> Features {
        self.inner.features()
    }
    fn limits(&self) -> Limits {
        self.inner.limits()
    }
    fn status(&self) -> tokio::sync::watch::Receiver<DeviceStatus> {
        self.inner.status()
    }
    async fn read(&self, lba: u64, n: u32) -> blockdev::Result<Bytes> {
        self.inner.read(lba, n).await
    }
    async fn write(&self, lba: u64, data: Bytes, flags: WriteFlags) -> blockdev::Result<()> {
        self.inner.write(lba, data, flags).await
    }
    async fn flush(&self) -> blockdev::Result<()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        self.inner.flush().await
    }
    async fn write_zeroes(&self, lba: u64, n: u64, unmap: bool) -> blockdev::Result<()> {
        self.inner.write_zeroes(lba, n, unmap).await
    }
    async fn block_status(&self, lba: u64, max: u64) -> blockdev::Result<Extent> {
        self.inner.block_status(lba, max).await
    }
}

/// Full-stripe records (3 members, 4-block chunks: 12 entries and one
/// header block) a ring holds.
const RECORDS_PER_RING: u64 = 4;
const RECORD_BLOCKS: u64 = 13;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_full_stripe_writes_checkpoint_once_per_full_ring() {
    let mut cfg = small_config();
    // The ring's header block and four records.
    cfg.journal_blocks = 1 + RECORDS_PER_RING * RECORD_BLOCKS;
    let rig = Rig::new(3, 4096, cfg.clone());
    let members: Vec<Arc<Counting>> = rig
        .faulty
        .iter()
        .map(|f| {
            // Some latency, so that writers pile up on a full ring.
            f.set_latency(Duration::from_micros(300), None);
            Arc::new(Counting {
                inner: f.clone(),
                flushes: AtomicU64::new(0),
            })
        })
        .collect();
    let shared: Vec<SharedDevice> = members.iter().map(|m| m.clone() as SharedDevice).collect();
    let a = RaidArray::create(shared, vec![], cfg, rig.clock.clone())
        .await
        .expect("create");
    let before: Vec<u64> = members
        .iter()
        .map(|m| m.flushes.load(Ordering::SeqCst))
        .collect();

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
    for (i, m) in members.iter().enumerate() {
        let n = m.flushes.load(Ordering::SeqCst) - before[i];
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
