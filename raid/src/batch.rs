//! Runs of whole rows written as one member write per member.
//!
//! Every member holds row `r` at `data_start + r * row_blocks` (its chunk
//! followed by the chunk's tag blocks, [`crate::layout`]), so consecutive
//! rows are contiguous on every member. A volume write that covers several
//! consecutive whole rows is therefore written as one buffer per member:
//! for each row in turn its data or parity chunk and the chunk's tag
//! blocks. Per client MiB over three members with 64 KiB chunks that is 3
//! member writes instead of 8 rows x 5 (two data chunks, their two tag
//! blocks, the parity chunk with its tags), and with the journal the rows'
//! records go to each ring in one write
//! ([`crate::journal::JournalState::log_group`]). The tag blocks a batch
//! wrote go into the tag cache ([`crate::tag_cache`]), so a writer that
//! comes round to the same rows again reads no previous tags from the
//! members. The member buffers are one allocation each, into which the
//! client's data is copied once (a single row's update sends the caller's
//! buffers as they are, in more writes).
//!
//! A batch keeps what a single row's update guarantees
//! ([`crate::row_update`]): every row's lock is held (taken in row order
//! by the caller, as for single rows), every row is counted in the
//! write-intent bitmap from before the first member write until its last
//! one returned (and stays counted if the batch is dropped half-way), the
//! journal's records of all rows are on their rings before any member is
//! written, tags carry the previous checksums read from the members (or
//! the tag cache), and a member whose write fails is failed, the rows then
//! stand degraded as a single row's would. Only the plain path is batched:
//! every member in sync for every row of the run, no replace copying it,
//! no reshape running. Anything else, and a journal ring that fails or
//! cannot hold the records, falls back to writing the rows one by one.

use std::sync::Arc;

use blockdev::{Bytes, BytesMut, SharedDevice, WriteFlags};
use futures::future::join_all;
use tracing::debug;

use crate::array::RaidArray;
use crate::error::{RaidError, Result};
use crate::geometry::Piece;
use crate::integrity::{parity_addr, ChunkTags};
use crate::journal::RowContent;
use crate::layout::Layout;
use crate::member_io::member_key;
use crate::parity::xor_many;
use crate::row_update::RowPlan;

/// Most bytes of one member write of a batch.
pub(crate) const MAX_BATCH_BYTES: u64 = 4 << 20;

/// Most rows of one batch. Its row locks are all taken before it starts, and
/// rows share locks in a table of [`crate::rows::ROW_LOCKS`]: a batch must
/// never hold two rows of one lock, and runs well inside the table never
/// wait on each other in a cycle.
pub(crate) const MAX_BATCH_ROWS: u64 = 64;

const _: () = assert!(MAX_BATCH_ROWS * 2 < crate::rows::ROW_LOCKS as u64);

impl RaidArray {
    /// Most rows of `lay` one batch writes: each member's buffer stays within
    /// [`MAX_BATCH_BYTES`] and every member's transfer limit, and at most
    /// [`MAX_BATCH_ROWS`].
    pub(crate) fn batch_rows(&self, lay: &Layout) -> u64 {
        let bs = u64::from(self.inner.block_size);
        let mut max_blocks = MAX_BATCH_BYTES / bs;
        for (_, dev) in self.live_members() {
            let t = u64::from(dev.limits().max_transfer);
            if t > 0 {
                max_blocks = max_blocks.min(t);
            }
        }
        (max_blocks / lay.row_blocks()).clamp(1, MAX_BATCH_ROWS)
    }

    /// Writes the whole rows `first, first + 1, ..` of `lay`, `rows[j]` the
    /// pieces of row `first + j` (together every data block of it), under
    /// all their row locks: as one batch when every row takes the plain
    /// path, else (or when the batch's journal records could not be
    /// written) row by row.
    pub(crate) async fn write_rows(
        &self,
        lay: &Layout,
        first: u64,
        rows: &[Vec<Piece>],
        fua: bool,
    ) -> Result<()> {
        match self.write_batch(lay, first, rows, fua).await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e @ (RaidError::Member { .. } | RaidError::Config(_))) => {
                debug!(first, rows = rows.len(), error = %e, "batch not written; row by row");
            }
            Err(e) => return Err(e),
        }
        for (j, pieces) in rows.iter().enumerate() {
            self.write_row(lay, first + j as u64, pieces, fua).await?;
        }
        Ok(())
    }

    /// The batch itself: `Ok(false)` when a row does not take the plain
    /// path (nothing was written). A journal error comes before any
    /// member write.
    async fn write_batch(
        &self,
        lay: &Layout,
        first: u64,
        rows: &[Vec<Piece>],
        fua: bool,
    ) -> Result<bool> {
        let n = rows.len() as u64;
        let Some(devs) = self.plain_members(lay, first, n) else {
            return Ok(false);
        };
        let bs = self.inner.block_size as usize;
        let plans: Vec<RowPlan<'_>> = rows.iter().map(|p| RowPlan::new(lay, p, bs)).collect();
        if !plans.iter().all(|p| p.full) {
            return Ok(false);
        }
        let mut marks = Vec::with_capacity(rows.len());
        for j in 0..n {
            marks.push(self.begin_row_write(first + j).await?);
        }
        for m in &mut marks {
            m.writing = true;
        }
        let r = self.update_rows(lay, first, &plans, &devs, fua).await;
        for m in &mut marks {
            m.writing = false;
        }
        r.map(|()| true)
    }

    /// Every member of `lay` if each is usable for all `n` rows from
    /// `first` on and none is being replaced there; `None` otherwise.
    fn plain_members(&self, lay: &Layout, first: u64, n: u64) -> Option<Vec<SharedDevice>> {
        let m = self.meta();
        (0..lay.members)
            .map(|slot| {
                let dev = m.usable(slot, first)?;
                let plain = (first..first + n)
                    .all(|row| m.usable(slot, row).is_some() && m.mirror(slot, row).is_none());
                plain.then_some(dev)
            })
            .collect()
    }

    /// Computes the rows' tags and parity into one buffer per member, logs
    /// the rows, and writes each member's buffer.
    async fn update_rows(
        &self,
        lay: &Layout,
        first: u64,
        plans: &[RowPlan<'_>],
        devs: &[SharedDevice],
        fua: bool,
    ) -> Result<()> {
        let bs = self.inner.block_size as usize;
        let c = lay.chunk_blocks;
        let d = lay.data_chunks();
        let chunk_bytes = c as usize * bs;
        let row_bytes = lay.row_blocks() as usize * bs;

        // The previous tags of every data chunk, for their previous checksums.
        let mut tags: Vec<ChunkTags> = join_all((0..plans.len() as u64).flat_map(|j| {
            (0..d).map(move |k| {
                let row = first + j;
                let slot = lay.data_member(row, k);
                self.previous_tags(lay, row, slot, &devs[slot as usize])
            })
        }))
        .await;

        let epoch = self.write_epoch();
        let mut bufs: Vec<BytesMut> = devs
            .iter()
            .map(|_| BytesMut::zeroed(plans.len() * row_bytes))
            .collect();
        let mut sources: Vec<&[u8]> = Vec::with_capacity(d as usize);
        // The tags each member's buffer carries, row after row, as a read
        // of them would decode them (for the tag cache once written).
        let mut written: Vec<Vec<ChunkTags>> = devs
            .iter()
            .map(|_| Vec::with_capacity(plans.len()))
            .collect();
        for (j, plan) in plans.iter().enumerate() {
            let row = first + j as u64;
            let at = j * row_bytes;
            let row_tags = &mut tags[j * d as usize..(j + 1) * d as usize];
            for k in 0..d {
                let slot = lay.data_member(row, k);
                let buf = &mut bufs[slot as usize][at..at + row_bytes];
                for &(i, piece) in &plan.pieces[k as usize] {
                    let o = i as usize * bs;
                    buf[o..o + piece.len()].copy_from_slice(piece);
                }
                let t = &mut row_tags[k as usize];
                for (i, blk) in buf[..chunk_bytes].chunks_exact(bs).enumerate() {
                    t.overwrite(i, epoch, lay.lba_of(row, k, i as u32), blk, fua);
                }
                buf[chunk_bytes..].copy_from_slice(&t.encode(
                    self.inner.block_size,
                    self.place(row, slot),
                    epoch,
                ));
                written[slot as usize].push(t.as_written(epoch));
            }
            let pslot = lay.parity_member(row);
            let pbuf = &mut bufs[pslot as usize][at..at + row_bytes];
            let mut ptags = ChunkTags::fresh(c);
            for i in 0..c {
                let r = i as usize * bs..(i as usize + 1) * bs;
                sources.clear();
                sources.extend(
                    plan.blocks
                        .iter()
                        .map(|chunk| chunk[i as usize].expect("a full row")),
                );
                xor_many(&mut pbuf[r], &sources);
                let addr = parity_addr(row, c, i);
                let crc = self.inner.xor_tagger.xor_crc(
                    addr,
                    row_tags.iter().map(|t| {
                        let e = t.entries[i as usize].unwrap_or_default();
                        (e.addr, e.crc)
                    }),
                );
                ptags.overwrite_crc(i as usize, epoch, addr, crc, fua);
            }
            pbuf[chunk_bytes..].copy_from_slice(&ptags.encode(
                self.inner.block_size,
                self.place(row, pslot),
                epoch,
            ));
            written[pslot as usize].push(ptags.as_written(epoch));
        }
        drop(sources);
        let bufs: Vec<Bytes> = bufs.into_iter().map(BytesMut::freeze).collect();

        // Every row's record on its parity member's ring first.
        let _journaled = match &self.inner.journal {
            Some(j) => {
                let contents: Vec<RowContent<'_>> = plans
                    .iter()
                    .enumerate()
                    .map(|(jr, plan)| {
                        let row = first + jr as u64;
                        let at = jr * row_bytes;
                        RowContent {
                            lay,
                            row,
                            data: &plan.blocks,
                            parity_from: 0,
                            parity: &bufs[lay.parity_member(row) as usize][at..at + chunk_bytes],
                        }
                    })
                    .collect();
                let updates: Vec<(u32, SharedDevice, &RowContent<'_>)> = contents
                    .iter()
                    .map(|u| {
                        let pslot = lay.parity_member(u.row);
                        (pslot, devs[pslot as usize].clone(), u)
                    })
                    .collect();
                Some(j.log_group(self, &updates).await?)
            }
            None => None,
        };

        let at = lay.member_block(first, 0);
        let results = join_all(
            devs.iter()
                .zip(&bufs)
                .map(|(dev, buf)| dev.write(at, buf.clone(), WriteFlags { fua })),
        )
        .await;
        let mut failed = Vec::new();
        for ((slot, r), tags) in results.into_iter().enumerate().zip(written) {
            match r {
                Ok(()) => self.cache_written_tags(lay, first, slot, &devs[slot], tags),
                Err(e) => failed.push((slot as u32, e)),
            }
        }
        for (slot, e) in failed {
            self.fail_member(slot, &e).await;
        }
        self.check_alive()
    }

    /// Puts the tag blocks a member now holds, as the batch wrote them, in
    /// the tag cache: the next batch over these rows (a sequential writer
    /// going round its device) then reads no previous tags from the member.
    /// The row locks are still held, so nothing else writes these blocks
    /// meanwhile; the member's write has returned, so the cache's
    /// invalidation of it has happened. `tags` are the member's, one per
    /// row of the run from `first`, as a read would decode them.
    fn cache_written_tags(
        &self,
        lay: &Layout,
        first: u64,
        slot: usize,
        dev: &SharedDevice,
        tags: Vec<ChunkTags>,
    ) {
        let cache = &self.inner.tag_cache;
        let key = member_key(dev);
        if !cache.caches(key) {
            return;
        }
        let tb = u64::from(lay.tag_blocks);
        let bytes = lay.tag_blocks as usize * self.inner.block_size as usize;
        for (row, t) in (first..).zip(tags) {
            let at = lay.tag_block(row, 0);
            let ticket = cache.ticket(key, at, tb);
            let place = self.place(row, slot as u32);
            cache.insert(ticket, (key, at, tb, bytes), place, Arc::new(t));
        }
    }
}
