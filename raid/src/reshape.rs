//! Reshape ("morph"): growing a live array by one member at a time.
//!
//! With `d` data chunks per row before and `d' = d + 1` after, the new layout
//! packs the volume into fewer rows, so new row `j` is built from old rows at
//! or after `j` and written over physical row `j`. The engine copies new rows in
//! order, in windows, each under the exclusive geometry lock (I/O waits for one
//! window, then continues: volume blocks below the reshape position use the new
//! layout, the rest the old one). After each window the members are flushed and
//! the new position is persisted in the superblocks, so a crash resumes at the
//! last window.
//!
//! Safety rule: a window `[a, b)` may only overwrite old rows whose data is
//! already durable in new rows below `a`, and must not overwrite the sources
//! of its own rows, which start at old row `floor(a·d'/d)`; hence
//! `b <= floor(a·d'/d)`. For `a < d` that allows nothing: the first `d` new
//! rows overlap their own sources. That *critical section* is protected by a
//! backup: every member first copies its old rows `[0, d')` to its backup area,
//! the backup is flushed and flagged valid in the superblocks, and the first
//! `d` new rows are then built from the backup, so a crash in the middle
//! replays them from there.
//!
//! When every row is moved, rows past the new end are zeroed (they become new,
//! never-written capacity) and the superblocks switch to the new geometry.

use blockdev::{BytesMut, SharedDevice, WriteFlags};
use tracing::info;

use crate::array::RaidArray;
use crate::error::{RaidError, Result};
use crate::geometry::{Geo, Piece};
use crate::layout::Layout;
use crate::members::{MemberState, Slot};
use crate::superblock::{FLAG_BACKUP, FLAG_RESHAPE};

/// Progress of a reshape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReshapeProgress {
    /// Members after the reshape.
    pub new_members: u32,
    /// New-layout rows done.
    pub done_rows: u64,
    /// New-layout rows to do.
    pub total_rows: u64,
}

pub(crate) fn rows_needed(old: &Layout, new: &Layout) -> u64 {
    old.capacity().div_ceil(new.row_data_blocks())
}

impl RaidArray {
    /// Starts growing the array by `dev`; the data is restriped by
    /// [`RaidArray::reshape_step`] calls (or [`RaidArray::reshape_to_end`]).
    /// The critical section is done before this returns.
    pub async fn grow(&self, dev: SharedDevice) -> Result<()> {
        let dev = self.as_member(dev);
        let mut geo = self.inner.geo.write().await;
        if geo.reshape.is_some() {
            return Err(RaidError::Config("a reshape is already running".into()));
        }
        if self.degraded() || self.meta().rebuild.is_some() {
            return Err(RaidError::Config("cannot grow a degraded array".into()));
        }
        if self.meta().replace.is_some() {
            return Err(RaidError::Config(
                "cannot grow while a member is being replaced".into(),
            ));
        }
        let cur = geo.cur;
        let (backup_rows, max_slots) = {
            let m = self.meta();
            (m.sb.backup_rows, crate::superblock::MAX_SLOTS as u32)
        };
        let new = Layout {
            members: cur.members + 1,
            ..cur
        };
        if u64::from(new.data_chunks()) > backup_rows || new.members > max_slots {
            return Err(RaidError::Config(format!(
                "array cannot grow to {} members (backup area holds {backup_rows} rows)",
                new.members
            )));
        }
        let g = dev.geometry();
        if g.block_size != self.inner.block_size || g.num_blocks < cur.member_blocks_needed() {
            return Err(RaidError::Config(format!(
                "new member needs {} blocks of {} bytes",
                cur.member_blocks_needed(),
                self.inner.block_size
            )));
        }
        self.flush_locked(&geo).await?;
        dev.write_zeroes(0, cur.member_blocks_needed(), true)
            .await
            .map_err(|e| RaidError::Member {
                slot: new.members - 1,
                source: e,
            })?;
        {
            let mut m = self.meta();
            m.slots.push(Slot {
                uuid: dev.identity().uuid,
                dev: Some(dev),
                state: MemberState::InSync,
            });
            m.sb.reshape_members = new.members;
            m.sb.reshape_pos = 0;
            m.sb.flags |= FLAG_RESHAPE;
            m.sb.flags &= !FLAG_BACKUP;
        }
        geo.reshape = Some((new, 0));
        self.persist_bitmap().await?;
        if let Some(j) = &self.inner.journal {
            j.checkpoint(self).await?;
        }
        self.write_superblocks().await?;
        info!(members = new.members, "reshape started");
        self.critical_section(&mut geo).await
    }

    /// Backs up the critical region and builds the first `d` new rows from it.
    async fn critical_section(&self, geo: &mut Geo) -> Result<()> {
        let Some((new, pos)) = geo.reshape else {
            return Ok(());
        };
        let old = geo.cur;
        let d = u64::from(old.data_chunks());
        if pos >= d {
            return Ok(());
        }
        let backup_start = self.meta().sb.backup_start;
        let src_rows = u64::from(new.data_chunks()).min(old.rows);
        let backup = Layout {
            data_start: backup_start,
            ..old
        };
        let backup_valid = self.meta().sb.flags & FLAG_BACKUP != 0;
        if !backup_valid {
            let n = (src_rows * old.row_blocks()) as u32;
            for (slot, dev) in self.live_members() {
                if slot >= old.members {
                    continue;
                }
                let buf = dev
                    .read(old.member_block(0, 0), n)
                    .await
                    .map_err(|e| RaidError::Member { slot, source: e })?;
                dev.write(backup_start, buf, WriteFlags::FUA)
                    .await
                    .map_err(|e| RaidError::Member { slot, source: e })?;
            }
            self.flush_members().await?;
            self.set_flag(FLAG_BACKUP, true);
            self.write_superblocks().await?;
        }
        let end = d.min(rows_needed(&old, &new));
        for j in pos..end {
            self.copy_new_row(&old, &new, j, Some((&backup, src_rows)))
                .await?;
        }
        self.flush_members().await?;
        geo.reshape = Some((new, end));
        {
            let mut m = self.meta();
            m.sb.reshape_pos = end;
            m.sb.flags &= !FLAG_BACKUP;
        }
        self.write_superblocks().await
    }

    /// Builds new-layout row `j` from the old layout (old rows below
    /// `backup.1` read from the backup area) and writes it as a full stripe.
    async fn copy_new_row(
        &self,
        old: &Layout,
        new: &Layout,
        j: u64,
        backup: Option<(&Layout, u64)>,
    ) -> Result<()> {
        let bs = self.inner.block_size as usize;
        let start = j * new.row_data_blocks();
        let end = (start + new.row_data_blocks()).min(old.capacity());
        let mut buf = BytesMut::zeroed(new.row_data_blocks() as usize * bs);
        let mut lba = start;
        while lba < end {
            let (row, k, i) = old.locate(lba);
            let n = (u64::from(old.chunk_blocks - i)).min(end - lba) as u32;
            let src = match backup {
                Some((b, rows)) if row < rows => b,
                _ => old,
            };
            let data = self.read_chunk(src, row, k, i, i + n).await?;
            let off = (lba - start) as usize * bs;
            buf[off..off + data.len()].copy_from_slice(&data);
            lba += u64::from(n);
        }
        let buf = buf.freeze();
        let c = new.chunk_blocks as usize * bs;
        let pieces: Vec<Piece> = (0..new.data_chunks() as usize)
            .map(|k| {
                (
                    start + (k * new.chunk_blocks as usize) as u64,
                    buf.slice(k * c..(k + 1) * c),
                )
            })
            .collect();
        self.write_row(new, j, &pieces, false).await
    }

    /// Progress of the running reshape.
    pub async fn reshape_progress(&self) -> Option<ReshapeProgress> {
        let geo = self.inner.geo.read().await;
        let (new, pos) = geo.reshape?;
        Some(ReshapeProgress {
            new_members: new.members,
            done_rows: pos,
            total_rows: rows_needed(&geo.cur, &new),
        })
    }

    /// Moves one window of rows. Returns whether the reshape is complete.
    pub async fn reshape_step(&self) -> Result<bool> {
        let mut geo = self.inner.geo.write().await;
        let Some((new, pos)) = geo.reshape else {
            return Ok(true);
        };
        let old = geo.cur;
        self.flush_locked(&geo).await?;
        if pos < u64::from(old.data_chunks()) {
            self.critical_section(&mut geo).await?;
            return Ok(false);
        }
        let total = rows_needed(&old, &new);
        if pos >= total {
            self.finish_reshape(&mut geo, new, total).await?;
            return Ok(true);
        }
        let d = u64::from(old.data_chunks());
        let d2 = u64::from(new.data_chunks());
        let safe = pos * d2 / d;
        let b = safe
            .min(total)
            .min(pos + self.inner.cfg.reshape_step_rows.max(1));
        for j in pos..b {
            self.copy_new_row(&old, &new, j, None).await?;
        }
        self.flush_members().await?;
        geo.reshape = Some((new, b));
        self.meta().sb.reshape_pos = b;
        self.write_superblocks().await?;
        Ok(false)
    }

    /// Runs the reshape to its end.
    pub async fn reshape_to_end(&self) -> Result<()> {
        while !self.reshape_step().await? {}
        Ok(())
    }

    async fn finish_reshape(&self, geo: &mut Geo, new: Layout, total: u64) -> Result<()> {
        // Rows past the new end become fresh capacity: zero data and tags. A
        // member that is away misses this, so mark those rows for its return.
        if self.degraded() {
            {
                let mut m = self.meta();
                for row in (total..new.rows).step_by(m.sb.region_rows as usize) {
                    let r = m.bitmap.region(row);
                    m.bitmap.set(r);
                }
            }
            self.persist_bitmap().await?;
        }
        let first = new.member_block(total, 0);
        let blocks = new.member_blocks_needed() - first;
        for (slot, dev) in self.live_members() {
            if let Err(e) = dev.write_zeroes(first, blocks, true).await {
                self.fail_member(slot, &e).await;
            }
        }
        self.flush_members().await?;
        geo.cur = new;
        geo.reshape = None;
        {
            let mut m = self.meta();
            m.sb.members = new.members;
            m.sb.reshape_members = 0;
            m.sb.reshape_pos = 0;
            m.sb.flags &= !(FLAG_RESHAPE | FLAG_BACKUP);
        }
        self.set_capacity(new.capacity());
        self.write_superblocks().await?;
        info!(
            members = new.members,
            capacity = new.capacity(),
            "reshape finished"
        );
        Ok(())
    }
}
