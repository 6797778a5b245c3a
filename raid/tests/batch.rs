//! Runs of whole rows written as one member write per member: the I/O they
//! cost, and what a member failure or a crash in the middle leaves behind.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use blockdev::{
    BlockDevice, Bytes, DeviceIdentity, Geometry, Limits, Result as BlockResult, SharedDevice,
    WriteFlags,
};
use common::*;
use raid::{MemberState, RaidArray};

/// A member that records the range of every write and counts its reads,
/// with a transfer limit that can be set (0: its device's).
#[derive(Debug)]
struct Counting {
    inner: SharedDevice,
    writes: Mutex<Vec<(u64, u64)>>,
    reads: Mutex<u64>,
    max_transfer: AtomicU32,
}

impl Counting {
    fn over(inner: SharedDevice) -> Arc<Counting> {
        Arc::new(Counting {
            inner,
            writes: Mutex::new(Vec::new()),
            reads: Mutex::new(0),
            max_transfer: AtomicU32::new(0),
        })
    }

    /// The writes since the last call, as `(first block, blocks)`.
    fn take_writes(&self) -> Vec<(u64, u64)> {
        std::mem::take(&mut *self.writes.lock().unwrap())
    }
}

#[async_trait]
impl BlockDevice for Counting {
    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }
    fn identity(&self) -> &DeviceIdentity {
        self.inner.identity()
    }
    fn limits(&self) -> Limits {
        match self.max_transfer.load(Ordering::Relaxed) {
            0 => self.inner.limits(),
            max => Limits {
                max_transfer: max,
                ..self.inner.limits()
            },
        }
    }
    async fn read(&self, lba: u64, blocks: u32) -> BlockResult<Bytes> {
        *self.reads.lock().unwrap() += 1;
        self.inner.read(lba, blocks).await
    }
    async fn write(&self, lba: u64, data: Bytes, flags: WriteFlags) -> BlockResult<()> {
        let n = (data.len() / BS) as u64;
        self.writes.lock().unwrap().push((lba, n));
        self.inner.write(lba, data, flags).await
    }
    async fn flush(&self) -> BlockResult<()> {
        self.inner.flush().await
    }
    async fn write_zeroes(&self, lba: u64, blocks: u64, unmap: bool) -> BlockResult<()> {
        self.inner.write_zeroes(lba, blocks, unmap).await
    }
}

/// Three counting members over the rig's devices, and the array over them.
async fn counted(journal_blocks: u64) -> (Rig, Vec<Arc<Counting>>, RaidArray) {
    let mut cfg = small_config();
    cfg.journal_blocks = journal_blocks;
    let rig = Rig::new(3, 1024, cfg.clone());
    let counting: Vec<Arc<Counting>> = (0..3).map(|i| Counting::over(rig.shared(i))).collect();
    let members = counting.iter().map(|c| c.clone() as SharedDevice).collect();
    let a = RaidArray::create(members, vec![], cfg, rig.clock.clone())
        .await
        .expect("create");
    (rig, counting, a)
}

async fn one_write_per_member(journal_blocks: u64) {
    let (_rig, counting, a) = counted(journal_blocks).await;
    let lay = a.layout().await;
    let rows = 8;
    let first = 2;
    let lba = first * lay.row_data_blocks();
    let n = rows * lay.row_data_blocks();
    let mut model = vec![None; a.geometry().num_blocks as usize];
    // The first write marks the array dirty and the rows' bitmap regions;
    // the second finds them marked and costs only its own I/O.
    a.write(lba, blocks(lba, n, 1), WriteFlags::NONE)
        .await
        .unwrap();
    for c in &counting {
        c.take_writes();
        *c.reads.lock().unwrap() = 0;
    }
    a.write(lba, blocks(lba, n, 2), WriteFlags::NONE)
        .await
        .unwrap();
    // The previous tags came from the tag cache, which the first write
    // filled with the tag blocks it wrote.
    for c in &counting {
        assert_eq!(*c.reads.lock().unwrap(), 0, "previous tags read again");
    }
    let run = (lay.member_block(first, 0), rows * lay.row_blocks());
    for (slot, c) in counting.iter().enumerate() {
        let writes = c.take_writes();
        let data: Vec<_> = writes
            .iter()
            .filter(|(at, _)| *at >= lay.data_start)
            .copied()
            .collect();
        assert_eq!(data, [run], "member {slot}: one write for the run");
        // With the journal, one more: the records of the rows it is parity
        // for, in one write to its ring.
        let expected = if journal_blocks > 0 { 2 } else { 1 };
        assert_eq!(writes.len(), expected, "member {slot}: {writes:?}");
    }
    for b in lba..lba + n {
        model[b as usize] = Some(2);
    }
    check_all(&a, &model).await;
    // Data, parity and tags agree everywhere.
    assert!(a.check().await.unwrap().clean());
    assert_scrub_clean(&a).await;
}

#[tokio::test]
async fn a_run_of_whole_rows_is_one_write_per_member() {
    one_write_per_member(0).await;
}

#[tokio::test]
async fn a_run_of_whole_rows_is_one_write_per_member_and_ring_with_the_journal() {
    one_write_per_member(256).await;
}

#[tokio::test]
async fn a_run_longer_than_a_member_takes_is_cut_into_writes_it_takes() {
    let (_rig, counting, a) = counted(0).await;
    let lay = a.layout().await;
    // Members that take 3 rows' worth of blocks per request.
    for c in &counting {
        c.max_transfer
            .store(3 * lay.row_blocks() as u32, Ordering::Relaxed);
    }
    let n = 8 * lay.row_data_blocks();
    a.write(0, blocks(0, n, 1), WriteFlags::NONE).await.unwrap();
    for c in &counting {
        c.take_writes();
    }
    a.write(0, blocks(0, n, 2), WriteFlags::NONE).await.unwrap();
    for c in &counting {
        let data: Vec<u64> = c
            .take_writes()
            .iter()
            .filter(|(at, _)| *at >= lay.data_start)
            .map(|w| w.1)
            .collect();
        assert!(data.iter().all(|&b| b <= 3 * lay.row_blocks()), "{data:?}");
        assert_eq!(data.iter().sum::<u64>(), 8 * lay.row_blocks());
        assert_eq!(data.len(), 3, "runs of 3, 3 and 2 rows: {data:?}");
    }
    let mut model = vec![None; a.geometry().num_blocks as usize];
    for m in model.iter_mut().take(n as usize) {
        *m = Some(2);
    }
    check_all(&a, &model).await;
}

async fn member_fails_mid_batch(journal_blocks: u64) {
    let mut cfg = small_config();
    cfg.journal_blocks = journal_blocks;
    let rig = Rig::new(3, 1024, cfg);
    let (a, mut model) = rig.filled(3).await;
    let lay = a.layout().await;
    let first = 3;
    let rows = 6;
    let lba = first * lay.row_data_blocks();
    let n = rows * lay.row_data_blocks();
    // Member 1 fails the write of the run's data, the others take theirs.
    let victim = rig.index_of(&a, 1);
    rig.faulty[victim].fail_writes(lay.data_start..lay.member_blocks_needed());
    a.write(lba, blocks(lba, n, 2), WriteFlags::NONE)
        .await
        .expect("a write that loses one member succeeds");
    assert!(matches!(a.member_states()[1], MemberState::Faulty { .. }));
    assert!(a.degraded());
    for b in lba..lba + n {
        model[b as usize] = Some(2);
    }
    // Every block, in the run or not, reads back from what is left.
    check_all(&a, &model).await;
    // And from a fresh assembly without the member.
    a.close().await.unwrap();
    drop(a);
    rig.faulty[victim].set_offline(true);
    let b = rig.assemble(false).await.expect("assemble degraded");
    check_all(&b, &model).await;
}

#[tokio::test]
async fn a_member_failing_mid_batch_leaves_the_array_degraded_and_readable() {
    member_fails_mid_batch(0).await;
}

#[tokio::test]
async fn a_member_failing_mid_batch_with_the_journal_leaves_the_array_readable() {
    member_fails_mid_batch(256).await;
}

#[tokio::test]
async fn a_ring_failing_under_a_batch_falls_back_to_single_rows() {
    let mut cfg = small_config();
    cfg.journal_blocks = 256;
    let rig = Rig::new(3, 1024, cfg);
    let (a, mut model) = rig.filled(3).await;
    let lay = a.layout().await;
    let n = 6 * lay.row_data_blocks();
    // Member 2's ring (and its bitmap and superblock) fail: only its data
    // area takes writes.
    // The first write marks the rows' bitmap regions, so the next one's
    // first write to the members is its journal records.
    a.write(0, blocks(0, n, 2), WriteFlags::NONE).await.unwrap();
    // Member 2's ring fails: only its data area takes writes.
    let victim = rig.index_of(&a, 2);
    rig.faulty[victim].fail_writes(0..lay.data_start);
    a.write(0, blocks(0, n, 3), WriteFlags::NONE)
        .await
        .expect("a write that loses one member succeeds");
    assert!(matches!(a.member_states()[2], MemberState::Faulty { .. }));
    for m in model.iter_mut().take(n as usize) {
        *m = Some(3);
    }
    check_all(&a, &model).await;
}

/// Three members with volatile caches, no stripe cache; a journal when
/// `journal_blocks` is not 0.
async fn volatile(journal_blocks: u64) -> (Rig, RaidArray) {
    let mut cfg = small_config();
    cfg.cache_blocks = 0;
    cfg.journal_blocks = journal_blocks;
    let rig = Rig::new(3, 512, cfg);
    for f in &rig.faulty {
        f.enable_volatile_cache();
    }
    let a = rig.create(3).await;
    (rig, a)
}

/// A batch of `ROWS` rows (each member parity of one) overwriting flushed
/// content, then a crash that keeps, on the members `torn` picks, only the
/// first `cut` blocks of their batch write and on the others all of it;
/// then member `victim` is lost. The write was answered but not flushed
/// (or FUA when `fua`): every block holds its old or its new content (the
/// new one after FUA), the journal's rows whose record survived hold the
/// new content, and the array is consistent once the member is back.
async fn crash_in_a_batch(journal_blocks: u64, fua: bool) {
    const ROWS: u64 = 3;
    let probe = volatile(journal_blocks).await.1;
    let lay = probe.layout().await;
    drop(probe);
    let per_row = lay.row_data_blocks();
    let first = 1;
    let lba = first * per_row;
    let n = ROWS * per_row;
    let order: Vec<u64> = (0..ROWS * lay.row_blocks())
        .map(|b| lay.member_block(first, 0) + b)
        .collect();
    for cut in 0..=order.len() {
        for torn in 1..8u32 {
            for victim in 0..3u32 {
                let what = format!(
                    "journal {journal_blocks}, fua {fua}: cut {cut}, torn members {torn:#05b}, member {victim} lost"
                );
                let (rig, a) = volatile(journal_blocks).await;
                a.write(lba, blocks(lba, n, 1), WriteFlags::NONE)
                    .await
                    .unwrap();
                a.flush().await.unwrap();
                a.write(lba, blocks(lba, n, 2), WriteFlags { fua })
                    .await
                    .unwrap();
                drop(a);
                crash_tearing(&rig, torn, &order, cut).await;
                // Without the journal nothing closes the write hole: the
                // crash resync comes first, then the member goes.
                let (b, got) = if journal_blocks == 0 {
                    let b = rig.assemble(false).await.expect("assemble after crash");
                    let got = b.read(lba, n as u32).await.unwrap();
                    b.close().await.unwrap();
                    drop(b);
                    rig.faulty[victim as usize].set_offline(true);
                    let b = rig.assemble(false).await.expect("assemble degraded");
                    assert_eq!(
                        b.read(lba, n as u32).await.unwrap(),
                        got,
                        "{what}: a member loss after the resync changed the content"
                    );
                    (b, got)
                } else {
                    rig.faulty[victim as usize].set_offline(true);
                    let b = rig.assemble(false).await.expect("assemble after crash");
                    let got = b.read(lba, n as u32).await.unwrap();
                    for row in first..first + ROWS {
                        let at = ((row - first) * per_row) as usize * BS;
                        if lay.parity_member(row) != victim {
                            assert_eq!(
                                &got[at..at + per_row as usize * BS],
                                &blocks(row * per_row, per_row, 2)[..],
                                "{what}: row {row}'s record not replayed"
                            );
                        }
                    }
                    (b, got)
                };
                for k in 0..n {
                    let blk = &got[k as usize * BS..(k as usize + 1) * BS];
                    let new = blk == &pattern(lba + k, 2)[..];
                    assert!(
                        new || (!fua && blk == &pattern(lba + k, 1)[..]),
                        "{what}: block {} holds neither version",
                        lba + k
                    );
                }
                rig.faulty[victim as usize].set_offline(false);
                b.re_add(rig.shared(victim as usize)).await.unwrap();
                while !b.rebuild_step(1000).await.unwrap().1 {}
                assert!(!b.degraded(), "{what}");
                assert_eq!(b.read(lba, n as u32).await.unwrap(), got, "{what}");
                assert!(b.check().await.unwrap().clean(), "{what}");
            }
        }
    }
}

#[tokio::test]
async fn a_crash_at_every_point_of_a_batch_then_a_member_loss_keeps_old_or_new() {
    crash_in_a_batch(0, false).await;
}

#[tokio::test]
async fn a_crash_at_every_point_of_a_journaled_batch_then_a_member_loss_replays_it() {
    crash_in_a_batch(64, false).await;
}

#[tokio::test]
async fn a_crash_at_every_point_of_a_fua_batch_keeps_every_block_new() {
    crash_in_a_batch(0, true).await;
    crash_in_a_batch(64, true).await;
}
