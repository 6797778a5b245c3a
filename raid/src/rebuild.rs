//! Rebuild onto a spare or a returning member, hot-spare activation, and the
//! resync of rows left inconsistent by a crash.
//!
//! A rebuild walks the rows in order; rows below its position are in sync on
//! the target, so reads use it and writes keep it current, while rows above are
//! served by reconstruction. A member that returns after a failure rebuilds only
//! rows whose write-intent bitmap bit is set (the bitmap is never cleared while
//! the array is degraded). The position is checkpointed in the superblocks every
//! [`Config::checkpoint_rows`](crate::Config) rows, so a restart resumes there.
//! The rate limit is a token bucket on the injected clock.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use blockdev::{Bytes, SharedDevice, WriteFlags};
use futures::future::join_all;
use tracing::{info, warn};

use crate::array::RaidArray;
use crate::error::{RaidError, Result};
use crate::integrity::{tag_addr, ChunkTags, Vouch};
use crate::members::{MemberState, RebuildState};

use crate::layout::Layout;
use crate::parity::xor_into;
use crate::superblock::{Superblock, SPARE};

/// Progress of a rebuild.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RebuildProgress {
    /// Slot being rebuilt.
    pub slot: u32,
    /// Rows done (position of the rebuild).
    pub done_rows: u64,
    /// Rows actually rebuilt since it (re)started: for a returning or
    /// resumed member only those of regions written while it was away.
    pub rows_rebuilt: u64,
    /// Only regions marked in the write-intent bitmap are rebuilt.
    pub bitmap_only: bool,
    /// Rows in the array.
    pub total_rows: u64,
    /// Rows per second since the rebuild (re)started.
    pub rows_per_sec: f64,
    /// Estimated time to completion, when a rate is known.
    pub eta: Option<Duration>,
}

/// What one call of [`RaidArray::maintain`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MaintenanceReport {
    /// Slot a hot spare was pulled into.
    pub spare_activated: Option<u32>,
    /// Rows rebuilt in this call.
    pub rows_rebuilt: u64,
    /// Rebuild progress after this call, if one is running.
    pub rebuild: Option<RebuildProgress>,
    /// Whether a rebuild finished in this call.
    pub rebuild_finished: bool,
    /// Rows a running replace copied in this call.
    pub rows_copied: u64,
    /// Replace progress after this call, if one is running.
    pub replace: Option<crate::ReplaceProgress>,
    /// Whether a replace finished (its new member took the slot) in this call.
    pub replace_finished: bool,
}

impl RaidArray {
    /// Progress of the running rebuild.
    pub fn rebuild_progress(&self) -> Option<RebuildProgress> {
        let now = self.now();
        let m = self.meta();
        let r = m.rebuild.as_ref()?;
        let total = m.sb.rows;
        let (rate, eta) = r.pace.rate(now, total - r.pos.min(total));
        Some(RebuildProgress {
            slot: r.slot,
            done_rows: r.pos,
            rows_rebuilt: r.pace.rows_done,
            bitmap_only: r.bitmap_only,
            total_rows: total,
            rows_per_sec: rate,
            eta,
        })
    }

    /// Periodic work, driven by the caller's timer: pulls in a hot spare for a
    /// member failed longer than the spare timeout (never for a suspended
    /// one) and advances a rebuild and a replace as far as the rate limit
    /// allows (each has its own budget of `rebuild_rows_per_sec`).
    pub async fn maintain(&self) -> Result<MaintenanceReport> {
        self.settle_journal().await?;
        let mut report = MaintenanceReport::default();
        let now = self.now();
        let candidate = {
            let m = self.meta();
            let reshaping = m.sb.reshape_members != 0;
            if m.rebuild.is_none() && !reshaping && !m.spares.is_empty() {
                m.slots.iter().position(|s| {
                    matches!(s.state, MemberState::Faulty { since } if now >= since + self.inner.cfg.spare_timeout)
                })
            } else {
                None
            }
        };
        if let Some(slot) = candidate {
            let spare = self.meta().spares.remove(0);
            info!(slot, spare = %spare.identity(), "hot spare activated");
            self.install(slot as u32, spare, false).await?;
            report.spare_activated = Some(slot as u32);
        }
        let budget = {
            let mut m = self.meta();
            let cfg = &self.inner.cfg;
            m.rebuild.as_mut().map_or(0, |r| {
                r.pace
                    .budget(now, cfg.rebuild_rows_per_sec, cfg.checkpoint_rows)
            })
        };
        if budget > 0 {
            let (rows, finished) = self.rebuild_step(budget).await?;
            report.rows_rebuilt = rows;
            report.rebuild_finished = finished;
        }
        report.rebuild = self.rebuild_progress();
        let budget = self.replace_budget(now);
        if budget > 0 {
            let (rows, finished) = self.replace_step(budget).await?;
            report.rows_copied = rows;
            report.replace_finished = finished;
        }
        report.replace = self.replace_progress();
        Ok(report)
    }

    /// Calls [`maintain`](Self::maintain), and advances a running reshape by
    /// one window, every `period` on a tokio timer: the background driver
    /// that pulls in hot spares and runs rebuilds and reshapes while I/O goes
    /// on. The task holds the array weakly and ends when the last handle to
    /// it is dropped (or when the returned handle is aborted). Errors are
    /// logged and retried at the next tick.
    pub fn spawn_maintenance(&self, period: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let array = RaidArray { inner };
                if let Err(e) = array.maintain().await {
                    warn!(error = %e, "background maintenance failed");
                }
                let reshaping = array.meta().sb.reshape_members != 0;
                if reshaping {
                    if let Err(e) = array.reshape_step().await {
                        warn!(error = %e, "background reshape step failed");
                    }
                }
            }
        })
    }

    /// Adds a hot spare: it is pulled in when a member has been failed for
    /// [`Config::spare_timeout`](crate::Config).
    pub async fn add_spare(&self, dev: SharedDevice) -> Result<()> {
        let dev = self.as_member(dev);
        if dev.geometry().block_size != self.inner.block_size {
            return Err(RaidError::Config("spare block size differs".into()));
        }
        let need = self.inner.geo.read().await.cur.member_blocks_needed();
        if dev.geometry().num_blocks < need {
            return Err(RaidError::Config(format!(
                "spare has fewer than the {need} blocks needed"
            )));
        }
        // A superblock of an earlier life (another array, with a higher
        // event count) must not outvote this array's on the next read.
        let sb_blocks = 2 * Superblock::blocks(self.inner.block_size);
        dev.write_zeroes(0, sb_blocks, false)
            .await
            .map_err(|e| RaidError::Member {
                slot: SPARE,
                source: e,
            })?;
        self.meta().spares.push(dev);
        self.write_superblocks().await
    }

    /// Puts `dev` into `slot` and starts rebuilding it.
    pub(crate) async fn install(
        &self,
        slot: u32,
        dev: SharedDevice,
        bitmap_only: bool,
    ) -> Result<()> {
        let now = self.now();
        {
            let mut m = self.meta();
            let s = &mut m.slots[slot as usize];
            s.uuid = dev.identity().uuid;
            s.dev = Some(dev);
            s.state = MemberState::Rebuilding;
            m.rebuild = Some(RebuildState::new(slot, 0, bitmap_only, now));
        }
        // The device's copy of the write-intent bitmap lacks every bit set
        // while it was away (a spare's holds whatever it held before): write
        // the whole bitmap to it before the superblocks list it. Once they
        // do, assembly may have to go by its copy alone, if a crash is
        // followed by the loss of the others, and a bit missing there is a
        // row in flight that resync never looks at.
        self.persist_bitmap().await?;
        if let Some(j) = &self.inner.journal {
            j.checkpoint(self).await?;
        }
        self.write_superblocks().await
    }

    /// Brings back a member that failed or was missing: only the regions written
    /// while it was away (its write-intent bitmap bits) are rebuilt.
    pub async fn re_add(&self, dev: SharedDevice) -> Result<()> {
        let dev = self.as_member(dev);
        let sb = crate::superblock::read_newest(&dev).await?;
        if sb.array_uuid != self.inner.array_uuid {
            return Err(RaidError::Assembly(
                "device belongs to another array".into(),
            ));
        }
        let slot = sb.role;
        {
            let m = self.meta();
            let Some(s) = m.slots.get(slot as usize).filter(|_| slot != SPARE) else {
                return Err(RaidError::Assembly(
                    "device has no slot in this array".into(),
                ));
            };
            if s.uuid != dev.identity().uuid {
                return Err(RaidError::Assembly(format!(
                    "slot {slot} now holds another device; add it as a spare"
                )));
            }
            if matches!(s.state, MemberState::Suspended { .. }) {
                return Err(RaidError::Assembly(format!(
                    "slot {slot} is suspended: resume it"
                )));
            }
            if !matches!(s.state, MemberState::Faulty { .. }) {
                return Err(RaidError::Assembly(format!("slot {slot} is not failed")));
            }
            if m.rebuild.is_some() {
                return Err(RaidError::Assembly("a rebuild is already running".into()));
            }
            if m.sb.reshape_members != 0 {
                return Err(RaidError::Assembly(
                    "members return after the reshape finishes".into(),
                ));
            }
        }
        info!(
            slot,
            "member returns; rebuilding regions written while it was away"
        );
        self.install(slot, dev, true).await
    }

    /// Rebuilds up to `max_rows` rows. Returns rows rebuilt and whether the rebuild finished.
    pub async fn rebuild_step(&self, max_rows: u64) -> Result<(u64, bool)> {
        let geo = self.inner.geo.read().await;
        let lay = geo.cur;
        let mut done = 0;
        while done < max_rows {
            let Some((slot, row, bitmap_only)) = self
                .meta()
                .rebuild
                .as_ref()
                .map(|r| (r.slot, r.pos, r.bitmap_only))
            else {
                return Ok((done, false));
            };
            if row >= lay.rows {
                self.finish_rebuild(slot).await?;
                return Ok((done, true));
            }
            // Under the row lock to the end: the target's chunk must not be
            // written after a later write of the row.
            let went_on = self
                .on_row(row, move |a| async move {
                    let needed = !bitmap_only || a.meta().bitmap.row_dirty(row);
                    if needed {
                        let Some(dev) = a.meta().slots[slot as usize].dev.clone() else {
                            return Err(RaidError::Failed("rebuild target vanished".into()));
                        };
                        a.rebuild_row(&lay, row, slot, &dev).await?;
                    }
                    let mut m = a.meta();
                    match m.rebuild.as_mut() {
                        Some(r) if r.slot == slot => {
                            r.pos = row + 1;
                            if needed {
                                r.pace.rows_done += 1;
                            }
                            Ok(Some(needed))
                        }
                        _ => Ok(None),
                    }
                })
                .await?;
            match went_on {
                Some(needed) => done += u64::from(needed),
                None => return Ok((done, false)),
            }
            let ckpt = self
                .meta()
                .rebuild
                .as_ref()
                .is_some_and(|r| r.pos - r.checkpoint >= self.inner.cfg.checkpoint_rows);
            if ckpt {
                self.checkpoint_rebuild(slot).await?;
            }
        }
        Ok((done, false))
    }

    async fn rebuild_row(
        &self,
        lay: &Layout,
        row: u64,
        slot: u32,
        dev: &SharedDevice,
    ) -> Result<()> {
        // A row written since the last flush may hold data that is not durable
        // yet, and was written without a journal record if this slot held its
        // parity. Make the sources durable before deriving the target from
        // them, or a crash could revert the data under a parity that is.
        if self.meta().bitmap.row_dirty(row) {
            self.flush_members().await?;
        }
        match self.reconstruct(lay, row, slot, 0, lay.chunk_blocks).await {
            Ok(content) => {
                self.write_chunk_with_tags(lay, row, slot, dev, &content, WriteFlags::NONE)
                    .await;
            }
            Err(RaidError::Unrecoverable { lba }) => {
                // No correct copy exists: leave a damaged tag block so reads of
                // this chunk report an error instead of returning stale data.
                warn!(row, slot, lba, "rebuild found unrecoverable data");
                let mut tb = ChunkTags::unwritten(lay.chunk_blocks).encode(
                    self.inner.block_size,
                    self.place(row, slot),
                    self.epoch(),
                );
                tb[4] ^= 0xff;
                if let Err(e) = dev
                    .write(lay.tag_block(row, 0), Bytes::from(tb), WriteFlags::NONE)
                    .await
                {
                    self.fail_member(slot, &e).await;
                }
            }
            Err(e) => return Err(e),
        }
        self.check_target(slot)
    }

    fn check_target(&self, slot: u32) -> Result<()> {
        match self.meta().slots[slot as usize].state {
            MemberState::Faulty { .. } => {
                Err(RaidError::Failed(format!("rebuild target {slot} failed")))
            }
            _ => Ok(()),
        }
    }

    /// Flushes the rebuild target; false when that failed it.
    async fn flush_target(&self, slot: u32) -> bool {
        let dev = self.meta().slots[slot as usize].dev.clone();
        if let Some(dev) = dev {
            if let Err(e) = dev.flush().await {
                self.fail_member(slot, &e).await;
                return false;
            }
        }
        true
    }

    async fn checkpoint_rebuild(&self, slot: u32) -> Result<()> {
        if !self.flush_target(slot).await {
            return Ok(());
        }
        {
            let mut m = self.meta();
            if let Some(r) = m.rebuild.as_mut() {
                r.checkpoint = r.pos;
            }
        }
        self.write_superblocks().await
    }

    async fn finish_rebuild(&self, slot: u32) -> Result<()> {
        if !self.flush_target(slot).await {
            return Ok(());
        }
        {
            let mut m = self.meta();
            m.rebuild = None;
            m.slots[slot as usize].state = MemberState::InSync;
        }
        info!(slot, "rebuild finished");
        self.write_superblocks().await
    }

    /// Makes one row of a dirty region consistent after a crash: every
    /// block ends up holding content that was there at the last flush or was
    /// written since, with matching tags and parity.
    ///
    /// Per block position, a data block is good when its tag vouches for it
    /// now or at the start of the flush epoch (an overwrite the crash
    /// reverted), the latter only if that epoch is not below `closed`, the
    /// first one not known flushed. Parity that equals the XOR of the data
    /// vouches for all of it (rot would break the equation). Otherwise one
    /// doubtful block is replaced by its reconstruction when its tag vouches
    /// for that; only when no evidence decides is a block kept as it is (the
    /// unjournaled write hole; counted in `resync_unverified` and logged).
    /// Parity is recomputed last. With the parity member missing only the
    /// tags vouch; with a data member missing nothing can be checked (the
    /// journal covers that case) and the row is left alone. Returns whether
    /// anything was rewritten.
    pub(crate) async fn resync_row(&self, lay: &Layout, row: u64, closed: u64) -> Result<bool> {
        let bs = self.inner.block_size as usize;
        let c = lay.chunk_blocks as usize;
        let pslot = lay.parity_member(row);
        let devs: Vec<Option<SharedDevice>> =
            (0..lay.members).map(|s| self.usable(s, row)).collect();
        let missing: Vec<u32> = (0..lay.members)
            .filter(|&s| devs[s as usize].is_none())
            .collect();
        if missing.len() > 1 || missing.first().is_some_and(|&m| m != pslot) {
            return Ok(false);
        }
        // Chunk content and tags of every member present, data slots in
        // data order, then parity.
        let d = lay.data_chunks();
        let slots: Vec<u32> = (0..d)
            .map(|k| lay.data_member(row, k))
            .chain(devs[pslot as usize].as_ref().map(|_| pslot))
            .collect();
        let reads = join_all(slots.iter().map(|&s| {
            let dev = devs[s as usize].clone().expect("present");
            async move {
                let (data, tags) = tokio::join!(
                    dev.read(lay.member_block(row, 0), lay.chunk_blocks),
                    self.read_tags_from_disk(lay, row, s, &dev)
                );
                (s, data, tags)
            }
        }))
        .await;
        let mut chunks: Vec<Vec<u8>> = Vec::with_capacity(slots.len());
        let mut tags: Vec<ChunkTags> = Vec::with_capacity(slots.len());
        for (s, data, t) in reads {
            match (data, t) {
                (Ok(data), Ok(t)) => {
                    chunks.push(data.to_vec());
                    tags.push(t);
                }
                (Err(e), _) | (_, Err(e)) => {
                    self.fail_member(s, &e).await;
                    return Ok(false);
                }
            }
        }
        let d = d as usize;
        let has_parity = slots.len() > d;
        // XOR of the data, kept equal to it as blocks are restored: the
        // parity the row must end with.
        let mut xor = vec![0u8; c * bs];
        for chunk in &chunks[..d] {
            xor_into(&mut xor, chunk);
        }
        // A data chunk is rewritten unless every block matches its current tag.
        let mut rewrite = vec![false; slots.len()];
        for i in 0..c {
            let r = i * bs..(i + 1) * bs;
            let addr = |k: usize| tag_addr(lay, row, slots[k], i as u32);
            let mut suspects = Vec::new();
            for k in 0..d {
                match tags[k].vouch_after_crash(i, addr(k), &chunks[k][r.clone()], closed) {
                    Vouch::Current => {}
                    Vouch::Previous => rewrite[k] = true,
                    Vouch::Neither => {
                        rewrite[k] = true;
                        suspects.push(k);
                    }
                }
            }
            if suspects.is_empty() || (has_parity && chunks[d][r.clone()] == xor[r.clone()]) {
                continue;
            }
            if let ([k], true) = (suspects.as_slice(), has_parity) {
                // The block the parity and the other data imply.
                let k = *k;
                let mut rebuilt = chunks[d][r.clone()].to_vec();
                xor_into(&mut rebuilt, &xor[r.clone()]);
                xor_into(&mut rebuilt, &chunks[k][r.clone()]);
                if tags[k].verifies_after_crash(i, addr(k), &rebuilt, closed) {
                    warn!(
                        row,
                        slot = slots[k],
                        block = i,
                        "resync: block matches no tag; restored from parity"
                    );
                    chunks[k][r.clone()].copy_from_slice(&rebuilt);
                    xor[r.clone()].copy_from_slice(&chunks[d][r.clone()]);
                    self.inner.stats.repaired.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
            for &k in &suspects {
                warn!(
                    row,
                    slot = slots[k],
                    block = i,
                    "resync: block matches no tag and nothing else vouches for it; kept as it is"
                );
                self.inner
                    .stats
                    .resync_unverified
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        if has_parity {
            let stale = chunks[d] != xor
                || (0..c).any(|i| {
                    !tags[d].verifies(
                        i,
                        tag_addr(lay, row, pslot, i as u32),
                        &xor[i * bs..(i + 1) * bs],
                    )
                });
            if stale {
                chunks[d] = xor;
                rewrite[d] = true;
            }
        }
        let mut changed = false;
        for (k, &s) in slots.iter().enumerate() {
            if rewrite[k] {
                changed = true;
                let dev = devs[s as usize].clone().expect("present");
                self.write_chunk_with_tags(lay, row, s, &dev, &chunks[k], WriteFlags::NONE)
                    .await;
            }
        }
        Ok(changed)
    }

    /// Resyncs every row of the dirty bitmap regions. Returns rows rewritten.
    pub(crate) async fn resync_dirty(&self) -> Result<u64> {
        let geo = *self.inner.geo.read().await;
        let regions = self.meta().bitmap.dirty_regions();
        // Tags of epochs below this were flushed before the crash.
        let closed = self.meta().sb.closed_epoch;
        let mut fixed = 0;
        for r in regions {
            let rows = self.meta().bitmap.rows_of(r);
            for row in rows {
                let Some(lay) = geo.layout_of_row(row) else {
                    continue;
                };
                let _g = self.row_lock(row).await;
                if self.resync_row(&lay, row, closed).await? {
                    fixed += 1;
                }
            }
        }
        Ok(fixed)
    }
}
