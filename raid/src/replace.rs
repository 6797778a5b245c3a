//! Replacing a member online: its chunks are copied onto a new device while
//! the array serves, and the new device then takes its slot.
//!
//! The copy walks the rows in order under each row's lock. Rows below its
//! position are on both devices, so every write to the slot's chunk of such a
//! row goes to both (`RaidArray::mirror_write`, and the row update adds the
//! replacement to its member writes); rows above are written to the old
//! device alone and copied later. Redundancy never drops: the old device
//! serves until the end. If another member fails meanwhile, the copy goes on
//! (the old device still serves its slot). If the member being replaced
//! fails, the replacement takes over its slot as a rebuild target whose rows
//! below the copy position are in sync (`Meta::mark_faulty`). If the
//! replacement fails, the replace ends and the old device keeps its slot.
//!
//! A chunk whose blocks all check against its tags is copied as it is, tag
//! blocks included, so the copy keeps the previous checksums a crash resync
//! may need; a chunk that does not is reconstructed from the other members
//! and written with fresh tags, as a rebuild does.
//!
//! The position is checkpointed in the superblocks (with the replacement's
//! identity; the replacement carries a superblock of its own, role
//! [`REPLACEMENT`], and the bitmap) every [`Config::checkpoint_rows`] rows,
//! after flushing the replacement, so assembly resumes the copy there. After
//! a crash, rows below the checkpoint in dirty bitmap regions may differ
//! between the two devices (a mirrored write torn differently); assembly
//! copies them again once the resync has made the old device's rows
//! consistent. At the end, with I/O held off by the geometry lock, the array
//! is flushed, the replacement takes the slot, gets the bitmap and a journal
//! ring, and the superblocks say so; the old device is written no more.
//!
//! [`Config::checkpoint_rows`]: crate::Config

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use blockdev::{BlockError, Bytes, SharedDevice, WriteFlags};
use tracing::{info, warn};

use crate::array::RaidArray;
use crate::error::{RaidError, Result};
use crate::integrity::{tag_addr, ChunkTags};
use crate::layout::Layout;
use crate::members::{MemberState, ReplaceState};
use crate::superblock::REPLACEMENT;

/// Progress of a member replacement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplaceProgress {
    /// Slot being replaced.
    pub slot: u32,
    /// Rows copied (the copy position).
    pub done_rows: u64,
    /// Rows in the array.
    pub total_rows: u64,
    /// Rows per second since the copy (re)started.
    pub rows_per_sec: f64,
    /// Estimated time to completion, when a rate is known.
    pub eta: Option<Duration>,
}

impl RaidArray {
    /// Starts replacing the member in `slot` with `dev`, online: the slot's
    /// chunks are copied onto `dev` by [`RaidArray::replace_step`] (which
    /// [`RaidArray::maintain`] calls), writes to rows already copied go to
    /// both devices, and at the end `dev` takes the slot and the old device
    /// is released (no longer written; assembly refuses it).
    ///
    /// Refused ([`RaidError::Config`]) while a reshape, a rebuild or another
    /// replace runs, for a slot that is not active (failed or suspended:
    /// add a spare or resume it instead), for a device that is already in
    /// the array, of another block size, or with fewer blocks than each
    /// member uses ([`crate::SizeReport::used_per_member`]). A device with
    /// more blocks is accepted; the rest is waste until every member is
    /// larger (the array does not grow by itself).
    pub async fn replace(&self, slot: u32, dev: SharedDevice) -> Result<()> {
        let dev = self.as_member(dev);
        let geo = self.inner.geo.read().await;
        let lay = geo.cur;
        let refuse = |why: String| Err(RaidError::Config(why));
        if geo.reshape.is_some() {
            return refuse("cannot replace a member while a reshape runs".into());
        }
        let g = dev.geometry();
        if g.block_size != self.inner.block_size {
            return refuse(format!(
                "replacement has {}-byte blocks, the array {}",
                g.block_size, self.inner.block_size
            ));
        }
        let need = lay.member_blocks_needed();
        if g.num_blocks < need {
            return refuse(format!(
                "replacement has {} blocks, each member uses {need}",
                g.num_blocks
            ));
        }
        {
            let m = self.meta();
            let Some(s) = m.slots.get(slot as usize).filter(|_| slot < lay.members) else {
                return refuse(format!("no member slot {slot}"));
            };
            if s.state != MemberState::InSync {
                return refuse(format!(
                    "slot {slot} is not active ({:?}): resume it, or let a spare rebuild it",
                    s.state
                ));
            }
            if m.rebuild.is_some() || m.replace.is_some() {
                return refuse("a rebuild or replace is running; replace when it ends".into());
            }
            let id = dev.identity().uuid;
            if m.slots.iter().any(|s| s.uuid == id)
                || m.spares.iter().any(|d| d.identity().uuid == id)
            {
                return refuse("the replacement is already in the array".into());
            }
        }
        // Stale metadata of an earlier life (a superblock with a higher
        // event count) must not outvote this array's.
        dev.write_zeroes(0, lay.data_start, false)
            .await
            .map_err(|e| RaidError::Member {
                slot: REPLACEMENT,
                source: e,
            })?;
        let now = self.now();
        self.meta().replace = Some(ReplaceState::new(slot, dev.clone(), 0, now));
        drop(geo);
        self.persist_bitmap().await?;
        self.write_superblocks().await?;
        if !self.replacing(&dev) {
            return Err(RaidError::Member {
                slot: REPLACEMENT,
                source: BlockError::Failed("replacement failed as the replace began".into()),
            });
        }
        info!(slot, target = %dev.identity(), "replace started");
        Ok(())
    }

    /// Whether the running replace copies onto `dev`.
    fn replacing(&self, dev: &SharedDevice) -> bool {
        self.meta()
            .replace
            .as_ref()
            .is_some_and(|r| Arc::ptr_eq(&r.target, dev))
    }

    /// Progress of the running replace.
    pub fn replace_progress(&self) -> Option<ReplaceProgress> {
        let now = self.now();
        let m = self.meta();
        let r = m.replace.as_ref()?;
        let total = m.sb.rows;
        let (rate, eta) = r.pace.rate(now, total - r.pos.min(total));
        Some(ReplaceProgress {
            slot: r.slot,
            done_rows: r.pos,
            total_rows: total,
            rows_per_sec: rate,
            eta,
        })
    }

    /// Rows the rate limit lets the replace copy now ([`RaidArray::maintain`]).
    pub(crate) fn replace_budget(&self, now: Duration) -> u64 {
        let mut m = self.meta();
        let cfg = &self.inner.cfg;
        m.replace.as_mut().map_or(0, |r| {
            r.pace
                .budget(now, cfg.rebuild_rows_per_sec, cfg.checkpoint_rows)
        })
    }

    /// Copies up to `max_rows` rows of the running replace; at the end the
    /// replacement takes the slot. Returns rows copied and whether the
    /// replace finished (false also when none runs or it ended otherwise).
    pub async fn replace_step(&self, max_rows: u64) -> Result<(u64, bool)> {
        let geo = self.inner.geo.read().await;
        let lay = geo.cur;
        let mut done = 0;
        while done < max_rows {
            let Some((slot, row, target)) = self
                .meta()
                .replace
                .as_ref()
                .map(|r| (r.slot, r.pos, r.target.clone()))
            else {
                return Ok((done, false));
            };
            if row >= lay.rows {
                drop(geo);
                return Ok((done, self.finish_replace().await?));
            }
            let went_on = self
                .on_row(row, move |a| async move {
                    a.copy_row(&lay, row, slot, &target).await?;
                    let mut m = a.meta();
                    match m.replace.as_mut() {
                        Some(r) if Arc::ptr_eq(&r.target, &target) => {
                            r.pos = row + 1;
                            r.pace.rows_done += 1;
                            Ok::<_, RaidError>(true)
                        }
                        _ => Ok(false),
                    }
                })
                .await?;
            if !went_on {
                return Ok((done, false));
            }
            done += 1;
            let ckpt = self
                .meta()
                .replace
                .as_ref()
                .is_some_and(|r| r.pos - r.checkpoint >= self.inner.cfg.checkpoint_rows);
            if ckpt {
                self.checkpoint_replace().await?;
            }
        }
        Ok((done, false))
    }

    /// Runs the running replace to its end (no rate limit).
    pub async fn replace_to_end(&self) -> Result<bool> {
        loop {
            match self.replace_step(self.inner.cfg.checkpoint_rows).await? {
                (_, true) => return Ok(true),
                (0, false) => return Ok(false),
                _ => {}
            }
        }
    }

    /// Copies `slot`'s chunk of `row` onto `target` (module docs).
    async fn copy_row(
        &self,
        lay: &Layout,
        row: u64,
        slot: u32,
        target: &SharedDevice,
    ) -> Result<()> {
        let bs = self.inner.block_size as usize;
        let c = lay.chunk_blocks;
        let mut raw = None;
        if let Some(dev) = self.usable(slot, row) {
            match dev
                .read(lay.member_block(row, 0), lay.row_blocks() as u32)
                .await
            {
                Ok(buf) => raw = Some(buf),
                Err(e) => {
                    self.inner.stats.read_errors.fetch_add(1, Ordering::Relaxed);
                    if !matches!(e, BlockError::Medium { .. }) {
                        // Fails the slot: the replacement takes it over.
                        self.fail_member(slot, &e).await;
                    }
                }
            }
        }
        let intact = raw.as_ref().is_some_and(|buf| {
            let tags = ChunkTags::decode(
                &buf[c as usize * bs..],
                self.inner.block_size,
                c,
                self.place(row, slot),
            );
            !tags.damaged()
                && buf[..c as usize * bs]
                    .chunks_exact(bs)
                    .enumerate()
                    .all(|(i, b)| tags.verifies(i, tag_addr(lay, row, slot, i as u32), b))
        });
        let buf = match raw {
            Some(buf) if intact => buf,
            raw => {
                if raw.is_some() {
                    self.inner
                        .stats
                        .checksum_errors
                        .fetch_add(1, Ordering::Relaxed);
                }
                // As a rebuild: sources written since the last flush are
                // made durable before the copy is derived from them.
                if self.meta().bitmap.row_dirty(row) {
                    self.flush_members().await?;
                }
                match self.reconstruct(lay, row, slot, 0, c).await {
                    Ok(content) => self.chunk_with_tags(lay, row, slot, &content),
                    Err(RaidError::Unrecoverable { lba }) => {
                        warn!(row, slot, lba, "replace found unrecoverable data");
                        match raw {
                            // Its tags say which blocks are bad: they stay bad.
                            Some(buf) => buf,
                            None => {
                                let mut tb = ChunkTags::unwritten(c).encode(
                                    self.inner.block_size,
                                    self.place(row, slot),
                                    self.epoch(),
                                );
                                tb[4] ^= 0xff;
                                let mut buf = vec![0u8; c as usize * bs];
                                buf.extend_from_slice(&tb);
                                Bytes::from(buf)
                            }
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        if let Err(e) = target
            .write(lay.member_block(row, 0), buf, WriteFlags::NONE)
            .await
        {
            self.fail_member(REPLACEMENT, &e).await;
        }
        Ok(())
    }

    /// Writes `buf` at member block `at` of the replacement too when `slot`
    /// is being replaced and its copy has passed `row`: the write of a
    /// repair, resync or scrub to the old device, mirrored.
    pub(crate) async fn mirror_write(
        &self,
        slot: u32,
        row: u64,
        at: u64,
        buf: Bytes,
        flags: WriteFlags,
    ) {
        let target = self.meta().mirror(slot, row);
        if let Some(target) = target {
            if let Err(e) = target.write(at, buf, flags).await {
                self.fail_member(REPLACEMENT, &e).await;
            }
        }
    }

    /// Flushes the replacement and persists the copy position.
    async fn checkpoint_replace(&self) -> Result<()> {
        let Some(target) = self.meta().replace.as_ref().map(|r| r.target.clone()) else {
            return Ok(());
        };
        if let Err(e) = target.flush().await {
            self.fail_member(REPLACEMENT, &e).await;
            return Ok(());
        }
        {
            let mut m = self.meta();
            if let Some(r) = m.replace.as_mut() {
                r.checkpoint = r.pos;
            }
        }
        self.write_superblocks().await
    }

    /// The replacement has every row: it takes the slot. Returns whether
    /// it did (the replace may have ended otherwise meanwhile).
    async fn finish_replace(&self) -> Result<bool> {
        let geo = self.inner.geo.write().await;
        // Everything written so far is durable on both devices.
        self.flush_locked(&geo).await?;
        let (slot, old) = {
            let mut m = self.meta();
            let rows = m.sb.rows;
            let Some(r) = m.replace.take_if(|r| r.pos >= rows) else {
                return Ok(false);
            };
            let s = &mut m.slots[r.slot as usize];
            if s.state != MemberState::InSync {
                // Cannot happen: a failing slot hands over to its replacement.
                return Ok(false);
            }
            s.uuid = r.target.identity().uuid;
            let old = s.dev.replace(r.target);
            (r.slot, old)
        };
        // The new member's copy of the bitmap and its journal ring, before
        // the superblocks list it.
        self.persist_bitmap().await?;
        if let Some(j) = &self.inner.journal {
            j.checkpoint(self).await?;
        }
        self.write_superblocks().await?;
        if let Some(d) = &old {
            self.retire(d).await;
        }
        info!(
            slot,
            old = ?old.map(|d| d.identity().clone()),
            "replace finished; the old member is released (marked retired)"
        );
        Ok(true)
    }

    /// The replacement failed: the replace ends and the old device keeps
    /// its slot.
    pub(crate) async fn abort_replace(&self, err: &BlockError) {
        if self.meta().replace.take().is_some() {
            warn!(error = %err, "replacement failed; replace abandoned");
            if let Err(e) = self.write_superblocks().await {
                warn!(error = %e, "could not persist the end of the replace");
            }
        }
    }

    /// After a crash resync: copies again the rows of dirty bitmap regions
    /// below the replace position (a mirrored write may have torn
    /// differently on the two devices). Returns rows copied.
    pub(crate) async fn recopy_dirty_rows(&self) -> Result<u64> {
        let lay = self.inner.geo.read().await.cur;
        let Some((slot, pos, target)) = self
            .meta()
            .replace
            .as_ref()
            .map(|r| (r.slot, r.pos, r.target.clone()))
        else {
            return Ok(0);
        };
        let rows: Vec<u64> = {
            let m = self.meta();
            m.bitmap
                .dirty_regions()
                .into_iter()
                .flat_map(|r| m.bitmap.rows_of(r))
                .filter(|&row| row < pos.min(lay.rows))
                .collect()
        };
        let mut copied = 0;
        for row in rows {
            if !self.replacing(&target) {
                break;
            }
            let _g = self.row_lock(row).await;
            self.copy_row(&lay, row, slot, &target).await?;
            copied += 1;
        }
        Ok(copied)
    }
}
