//! The array's metadata on its members: superblocks (which carry the member
//! table, so a member failure is persisted here), the dirty flag, the
//! write-intent bitmap with the guard that counts a row write in it, and
//! what the journal may do to the array ([`JournalHost`]).

use async_trait::async_trait;
use blockdev::{BlockError, Bytes, SharedDevice, WriteFlags};
use futures::future::join_all;
use tracing::warn;

use crate::array::RaidArray;
use crate::error::{RaidError, Result};
use crate::integrity::{tag_addr, ChunkTags, TagEntry};
use crate::journal::JournalHost;
use crate::layout::Layout;
use crate::member_io::member_key;
use crate::superblock::{
    Superblock, FLAG_CLEAN, FLAG_REBUILD, FLAG_REPLACE, MAX_SLOTS, REBUILD_BITMAP, REPLACEMENT,
    RETIRED, SPARE,
};

impl RaidArray {
    /// Writes a new superblock version (events + 1) to every present member and spare.
    pub(crate) async fn write_superblocks(&self) -> Result<()> {
        let _g = self.inner.sb_lock.lock().await;
        for _attempt in 0..MAX_SLOTS {
            let (targets, sb) = {
                let mut m = self.meta();
                m.sb.events += 1;
                m.sb.slots = m.slot_entries();
                match m.rebuild.clone() {
                    Some(r) => {
                        m.sb.flags |= FLAG_REBUILD;
                        m.sb.rebuild_slot = r.slot;
                        m.sb.rebuild_pos = r.checkpoint;
                        m.sb.rebuild_flags = if r.bitmap_only { REBUILD_BITMAP } else { 0 };
                    }
                    None => m.sb.flags &= !FLAG_REBUILD,
                }
                match m
                    .replace
                    .as_ref()
                    .map(|r| (r.slot, r.checkpoint, r.target.clone()))
                {
                    Some((slot, pos, target)) => {
                        m.sb.flags |= FLAG_REPLACE;
                        m.sb.replace_slot = slot;
                        m.sb.replace_pos = pos;
                        m.sb.replace_device = target.identity().uuid;
                    }
                    None => m.sb.flags &= !FLAG_REPLACE,
                }
                let mut targets = m.live_members();
                targets.extend(m.spares.iter().map(|d| (SPARE, d.clone())));
                targets.extend(m.replace.as_ref().map(|r| (REPLACEMENT, r.target.clone())));
                (targets, m.sb.clone())
            };
            let bs = self.inner.block_size;
            let at = Superblock::slot_block(bs, sb.events);
            let writes = targets.iter().map(|(role, d)| {
                let mut copy = sb.clone();
                copy.role = *role;
                copy.device_uuid = d.identity().uuid;
                let buf = Bytes::from(copy.encode());
                let d = d.clone();
                async move { d.write(at, buf, WriteFlags::FUA).await }
            });
            let results = join_all(writes).await;
            let mut failed = false;
            for ((role, _), r) in targets.iter().zip(results) {
                if let Err(e) = r {
                    warn!(slot = role, error = %e, "superblock write failed");
                    failed = true;
                    if *role == REPLACEMENT {
                        self.meta().replace = None;
                    } else {
                        self.mark_faulty(*role);
                    }
                }
            }
            if !failed {
                return self.check_alive();
            }
        }
        self.check_alive()
    }

    /// Marks `dev`, no longer in the array, retired: the current superblock
    /// with role [`RETIRED`] on both copies, so it still names the array
    /// (no head takes it for a blank disk to create over) and assembly
    /// never takes it back. Best effort: a device that does not answer is
    /// refused at assembly anyway, its slot holding another device.
    pub(crate) async fn retire(&self, dev: &SharedDevice) {
        let mut sb = self.meta().sb.clone();
        sb.role = RETIRED;
        sb.device_uuid = dev.identity().uuid;
        let copy = sb.encode();
        let mut buf = copy.clone();
        buf.extend_from_slice(&copy);
        match dev.write(0, Bytes::from(buf), WriteFlags::FUA).await {
            Ok(()) => {
                tracing::info!(device = %dev.identity(), "retired device marked on its superblock")
            }
            Err(e) => {
                warn!(device = %dev.identity(), error = %e, "could not mark the retired device")
            }
        }
    }

    /// Marks a slot (or spare) faulty in memory. Returns whether it changed.
    fn mark_faulty(&self, slot: u32) -> bool {
        let now = self.now();
        self.meta().mark_faulty(slot, now)
    }

    /// Fails with [`RaidError::Failed`] once more than one member is faulty.
    pub(crate) fn check_alive(&self) -> Result<()> {
        match self.meta().failed_members() {
            bad if bad > 1 => Err(RaidError::Failed(format!("{bad} members failed"))),
            _ => Ok(()),
        }
    }

    /// Live members and, while a replace runs, its replacement device
    /// ([`REPLACEMENT`]): the devices that take the bitmap and flushes.
    pub(crate) fn metadata_targets(&self) -> Vec<(u32, SharedDevice)> {
        let m = self.meta();
        let mut targets = m.live_members();
        targets.extend(m.replace.as_ref().map(|r| (REPLACEMENT, r.target.clone())));
        targets
    }

    /// A member failed an I/O: mark it faulty and persist that on the others.
    /// For the replacement device ([`REPLACEMENT`]) the replace ends instead;
    /// the member it was copying keeps serving.
    pub(crate) async fn fail_member(&self, slot: u32, err: &BlockError) {
        if slot == REPLACEMENT {
            self.abort_replace(err).await;
            return;
        }
        let dev = self
            .meta()
            .slots
            .get(slot as usize)
            .and_then(|s| s.dev.clone());
        if let Some(dev) = dev {
            // Its cached tags go with it: whatever comes back is read anew.
            self.inner.tag_cache.forget(member_key(&dev));
        }
        if self.mark_faulty(slot) {
            warn!(slot, error = %err, "member failed; array degraded");
            if let Some(j) = &self.inner.journal {
                // Its ring held the records of the rows it was parity for,
                // written in place on the others: those writes must become
                // durable before a crash could tear them unprotected.
                j.request_checkpoint();
            }
            if let Err(e) = self.write_superblocks().await {
                warn!(error = %e, "could not persist member failure");
            }
        }
    }

    /// Takes a member out (administratively failed), as if it had failed.
    pub async fn fail(&self, slot: u32) {
        self.fail_member(slot, &BlockError::Failed("failed by administrator".into()))
            .await;
    }

    /// Persists "dirty" before the first write after a clean state.
    async fn mark_dirty(&self) -> Result<()> {
        if !self.meta().clean_on_disk {
            return Ok(());
        }
        {
            let mut m = self.meta();
            m.clean_on_disk = false;
            m.sb.flags &= !FLAG_CLEAN;
        }
        self.write_superblocks().await
    }

    /// Writes the whole bitmap to every live member.
    pub(crate) async fn persist_bitmap(&self) -> Result<()> {
        let blocks = self.meta().sb.bitmap_blocks;
        for b in 0..blocks {
            self.persist_bitmap_block(b).await?;
        }
        Ok(())
    }

    /// Writes bitmap block `b` to every live member.
    pub(crate) async fn persist_bitmap_block(&self, b: u64) -> Result<()> {
        let _g = self.inner.bitmap_lock.lock().await;
        let bs = self.inner.block_size;
        let (buf, at) = {
            let m = self.meta();
            (
                Bytes::from(m.bitmap.encode_block(b, bs)),
                m.sb.bitmap_start + b,
            )
        };
        // A replacement gets the bitmap too: should its member fail, it
        // takes over the slot with a copy that lacks nothing.
        let targets = self.metadata_targets();
        let res = join_all(
            targets
                .iter()
                .map(|(_, d)| d.write(at, buf.clone(), WriteFlags::FUA)),
        )
        .await;
        for ((slot, _), r) in targets.iter().zip(res) {
            if let Err(e) = r {
                self.fail_member(*slot, &e).await;
            }
        }
        self.check_alive()
    }

    /// A write to `row` is about to touch the members: its bitmap region is
    /// dirty (and persisted) until the returned guard ends the write.
    pub(crate) async fn begin_row_write(&self, row: u64) -> Result<RowWrite<'_>> {
        self.mark_dirty().await?;
        let need = self.meta().bitmap.start_write(row, self.inner.block_size);
        // From here on the write is counted in the bitmap; the guard ends it
        // however this function or the write returns, or is dropped.
        let guard = RowWrite {
            array: self,
            row,
            writing: false,
        };
        if let Some(b) = need {
            self.persist_bitmap_block(b).await?;
        }
        Ok(guard)
    }
}

/// A row write counted in the write-intent bitmap ([`RaidArray::begin_row_write`]).
///
/// Dropped once the write has returned (done or failed), or before it began
/// writing the members, it ends the write in the bitmap. Dropped while the
/// members were being written (the write's future was dropped half-way, or
/// it panicked), it leaves the write counted: the row may be torn against its
/// parity, so its region must stay dirty until a resync (the next assembly)
/// rather than be cleared by the next flush.
pub(crate) struct RowWrite<'a> {
    array: &'a RaidArray,
    row: u64,
    /// The members are being written.
    pub(crate) writing: bool,
}

impl Drop for RowWrite<'_> {
    fn drop(&mut self) {
        if self.writing {
            tracing::warn!(
                row = self.row,
                "row write abandoned half-way: its bitmap region stays dirty until a resync"
            );
            return;
        }
        self.array.meta().bitmap.end_write(self.row);
    }
}

#[async_trait]
impl JournalHost for RaidArray {
    fn journal_block_size(&self) -> usize {
        self.inner.block_size as usize
    }

    fn ring_members(&self) -> Vec<(u32, SharedDevice)> {
        self.live_members()
    }

    fn row_member(&self, slot: u32, row: u64) -> Option<SharedDevice> {
        self.usable(slot, row)
    }

    async fn member_failed(&self, slot: u32, err: &BlockError) {
        self.fail_member(slot, err).await
    }

    async fn make_durable(&self) -> Result<()> {
        self.flush_members().await
    }

    /// Writes the blocks, then sets their tags from their content; a damaged
    /// tag block is rebuilt from the blocks' current content (after a crash
    /// the data is trusted).
    async fn restore_blocks(
        &self,
        lay: &Layout,
        row: u64,
        slot: u32,
        dev: &SharedDevice,
        blocks: &[(u32, &[u8])],
    ) {
        for (i, data) in blocks {
            if let Err(e) = dev
                .write(
                    lay.member_block(row, *i),
                    Bytes::copy_from_slice(data),
                    WriteFlags::NONE,
                )
                .await
            {
                self.fail_member(slot, &e).await;
            }
        }
        let bs = self.inner.block_size as usize;
        let mut tags = match self.read_tags(lay, row, slot, dev).await {
            Ok(t) => t,
            Err(_) => ChunkTags {
                entries: vec![None; lay.chunk_blocks as usize],
            },
        };
        if tags.damaged() {
            if let Ok(all) = dev.read(lay.member_block(row, 0), lay.chunk_blocks).await {
                for (i, b) in all.chunks_exact(bs).enumerate() {
                    if tags.entries[i].is_none() {
                        tags.entries[i] = Some(TagEntry::of(tag_addr(lay, row, slot, i as u32), b));
                    }
                }
            }
        }
        for (i, data) in blocks {
            tags.entries[*i as usize] = Some(TagEntry::of(tag_addr(lay, row, slot, *i), data));
        }
        let buf =
            Bytes::from(tags.encode(self.inner.block_size, self.place(row, slot), self.epoch()));
        if let Err(e) = dev
            .write(lay.tag_block(row, 0), buf, WriteFlags::NONE)
            .await
        {
            self.fail_member(slot, &e).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::{Context, Waker};

    use std::sync::Arc;
    use std::time::Duration;

    use blockdev::{BlockDevice, DeviceIdentity, FaultyDevice, MemDevice};

    use super::*;
    use crate::clock::SystemClock;
    use crate::Config;

    const ROW_BLOCKS: u64 = 8; // 2 data chunks of 4 blocks
    const BS: usize = 512;

    async fn array() -> (RaidArray, Vec<Arc<FaultyDevice>>) {
        let members: Vec<Arc<FaultyDevice>> = (0..3)
            .map(|i| {
                let mem = MemDevice::new(512, 4096, DeviceIdentity::from_name(&format!("m{i}")));
                Arc::new(FaultyDevice::new(Arc::new(mem), i))
            })
            .collect();
        let cfg = Config {
            chunk_blocks: 4,
            region_rows: 4,
            cache_blocks: 64,
            ..Config::default()
        };
        let shared = members.iter().map(|m| m.clone() as SharedDevice).collect();
        let a = RaidArray::create(shared, vec![], cfg, Arc::new(SystemClock::new()))
            .await
            .expect("create");
        (a, members)
    }

    /// Polls a write of row `row` until member 0 holds one of its writes,
    /// then drops it, as a caller that gives up on it would.
    async fn drop_while_held(a: &RaidArray, m0: &FaultyDevice, row: u64) {
        let data = Bytes::from(vec![row as u8 + 1; ROW_BLOCKS as usize * BS]);
        let mut w = a.write(row * ROW_BLOCKS, data, WriteFlags::FUA);
        while m0.held_writes() == 0 {
            let p = w.as_mut().poll(&mut Context::from_waker(Waker::noop()));
            assert!(
                p.is_pending(),
                "the write finished although a member holds it"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        drop(w);
        m0.release_writes();
        while m0.held_writes() > 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_row_write_ends_its_bitmap_write_once_it_has_run_to_its_end() {
        let (a, m) = array().await;
        let block = || Bytes::from(vec![9u8; ROW_BLOCKS as usize * BS]);
        // The array is dirty already: the next member write of a write to a
        // clean region is its bitmap block.
        a.write(0, block(), WriteFlags::FUA).await.unwrap();
        a.flush().await.unwrap();

        // Dropped while its bitmap block was being persisted, or while
        // writing the row (its region dirty and persisted by a write to
        // another row of it): either way the write goes on to its end, so
        // the row is consistent and the next flush cleans its region.
        for other in [None, Some(9)] {
            if let Some(r) = other {
                a.write(r * ROW_BLOCKS, block(), WriteFlags::FUA)
                    .await
                    .unwrap();
            }
            m[0].hold_next_writes(1);
            drop_while_held(&a, &m[0], 8).await;
            a.flush().await.unwrap();
            assert!(
                !a.meta().bitmap.row_dirty(8),
                "a dropped row write kept its region dirty ({other:?})"
            );
            assert_eq!(
                a.read(8 * ROW_BLOCKS, ROW_BLOCKS as u32).await.unwrap(),
                Bytes::from(vec![9u8; ROW_BLOCKS as usize * BS]),
                "the dropped write did not land"
            );
        }
    }
}
