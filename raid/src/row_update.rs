//! One row's update on the members: one path for every kind of row write.
//!
//! The new parity over the touched span of block positions `[lo, hi)` is
//! the XOR of a *base* and the new blocks at each position. The base is what
//! the untouched part of the row contributes, and is found the cheapest way:
//!
//! - a **full-stripe write** (every data block new) needs none and reads
//!   nothing;
//! - **read-modify-write**: old parity XOR the old content of the touched
//!   blocks;
//! - **reconstruct-write**: the XOR of the untouched old blocks in the span.
//!
//! Then one pass per block position, while those blocks are in cache,
//! updates every new data block's tag, computes the parity block and its
//! tag (for a full stripe derived from the data tags with
//! [`crate::integrity::XorTagger`] rather than a CRC pass over the parity).
//! The journal records the new content, and the members are written: each
//! wholly new data chunk as one buffer (the caller's own when it is one
//! piece), other data as the pieces given, tag blocks beside them, and a
//! parity span that reaches the end of the chunk together with its tag
//! blocks (a whole parity chunk in a buffer from a small pool). The row is
//! counted in the write-intent bitmap meanwhile.

use std::sync::atomic::Ordering;

use blockdev::{BlockError, Bytes, BytesMut, SharedDevice, WriteFlags};
use futures::future::join_all;
use tracing::debug;

use crate::array::RaidArray;
use crate::cache::concat_bytes;
use crate::error::{RaidError, Result};
use crate::geometry::Piece;
use crate::integrity::{parity_addr, tag_addr, ChunkTags, TagEntry};
use crate::journal::RowContent;
use crate::layout::Layout;
use crate::parity::{xor_into, xor_many};
use crate::superblock::REPLACEMENT;

/// Parity buffers kept for reuse by full-stripe writes.
const PARITY_POOL: usize = 4;

/// The new content of a row, as the caller's pieces and block by block.
pub(crate) struct RowPlan<'p> {
    /// Per data chunk, its pieces as `(first block, data)`, in block order.
    pub(crate) pieces: Vec<Vec<(u32, &'p Bytes)>>,
    /// New content per data chunk and block (`None`: unchanged).
    pub(crate) blocks: Vec<Vec<Option<&'p [u8]>>>,
    /// Block positions touched in any chunk: `[lo, hi)`.
    lo: u32,
    hi: u32,
    /// Every data block of the row is new.
    pub(crate) full: bool,
}

impl<'p> RowPlan<'p> {
    /// The plan of writing `pieces` (disjoint, each inside one data chunk
    /// of one row of `lay`).
    pub(crate) fn new(lay: &Layout, pieces: &'p [Piece], bs: usize) -> Self {
        let (c, d) = (lay.chunk_blocks as usize, lay.data_chunks() as usize);
        let mut by_chunk: Vec<Vec<(u32, &Bytes)>> = vec![Vec::new(); d];
        let mut blocks: Vec<Vec<Option<&[u8]>>> = vec![vec![None; c]; d];
        let (mut lo, mut hi, mut count) = (u32::MAX, 0u32, 0u64);
        for (lba, data) in pieces {
            let (_, k, i) = lay.locate(*lba);
            by_chunk[k as usize].push((i, data));
            let n = data.len() / bs;
            for (j, blk) in data.chunks_exact(bs).enumerate() {
                blocks[k as usize][i as usize + j] = Some(blk);
            }
            lo = lo.min(i);
            hi = hi.max(i + n as u32);
            count += n as u64;
        }
        for v in &mut by_chunk {
            v.sort_by_key(|(i, _)| *i);
        }
        RowPlan {
            pieces: by_chunk,
            blocks,
            lo,
            hi,
            full: count == lay.row_data_blocks(),
        }
    }

    /// Whether every block of data chunk `k` is new.
    fn whole_chunk(&self, k: usize) -> bool {
        self.blocks[k].iter().all(Option::is_some)
    }

    /// Whether data chunk `k` has new blocks.
    fn touched(&self, k: usize) -> bool {
        !self.pieces[k].is_empty()
    }

    /// The member writes of data chunk `k`: `(first block, data)`; a wholly
    /// new chunk as one buffer.
    fn chunk_writes(&self, k: usize) -> Vec<(u32, Bytes)> {
        if self.whole_chunk(k) {
            vec![(0, concat_bytes(self.pieces[k].iter().map(|(_, b)| *b)))]
        } else {
            self.pieces[k]
                .iter()
                .map(|&(i, b)| (i, b.clone()))
                .collect()
        }
    }
}

impl RaidArray {
    /// Writes `pieces` (disjoint, each inside one data chunk of `row`) to the
    /// members, keeping parity, tags, bitmap and journal right. A member
    /// that fails before the row is written is taken out and the row planned
    /// again without it, so the write succeeds while the array lives.
    pub(crate) async fn write_row(
        &self,
        lay: &Layout,
        row: u64,
        pieces: &[Piece],
        fua: bool,
    ) -> Result<()> {
        let mut guard = self.begin_row_write(row).await?;
        guard.writing = true;
        let mut attempts = 0;
        let r = loop {
            match self.update_row(lay, row, pieces, fua).await {
                Err(RaidError::Member { slot, source }) if attempts < lay.members => {
                    debug!(row, slot, error = %source, "member failed under a row write; again without it");
                    attempts += 1;
                }
                r => break r,
            }
        };
        guard.writing = false;
        r
    }

    async fn update_row(&self, lay: &Layout, row: u64, pieces: &[Piece], fua: bool) -> Result<()> {
        let bs = self.inner.block_size as usize;
        let c = lay.chunk_blocks;
        let d = lay.data_chunks() as usize;
        let plan = RowPlan::new(lay, pieces, bs);
        if plan.hi == 0 {
            return Ok(());
        }
        let (lo, hi) = (plan.lo, plan.hi);
        let pslot = lay.parity_member(row);
        let pdev = self.usable(pslot, row);

        // What the untouched part of the row contributes to the new parity.
        let base = match &pdev {
            Some(_) if !plan.full => Some(self.parity_base(lay, row, &plan).await?),
            _ => None,
        };

        // The tags the new entries go into. A full stripe needs every data
        // chunk's (the parity tags derive from them), a missing member's
        // computed afresh.
        let data_devs: Vec<Option<SharedDevice>> = (0..d as u32)
            .map(|k| self.usable(lay.data_member(row, k), row))
            .collect();
        let mut data_tags: Vec<Option<ChunkTags>> = Vec::with_capacity(d);
        for (k, dev) in data_devs.iter().enumerate() {
            let slot = lay.data_member(row, k as u32);
            data_tags.push(match dev {
                Some(dev) if plan.whole_chunk(k) => {
                    Some(self.previous_tags(lay, row, slot, dev).await)
                }
                Some(dev) if plan.touched(k) => {
                    Some(self.tags_for_update(lay, row, slot, dev).await?)
                }
                None if plan.full => Some(ChunkTags::fresh(c)),
                _ => None,
            });
        }
        let mut parity_tags = match &pdev {
            // Parity has no previous content worth keeping: resync rebuilds
            // it from the data whatever it holds.
            Some(_) if lo == 0 && hi == c => Some(ChunkTags::fresh(c)),
            Some(pdev) => Some(self.tags_for_update(lay, row, pslot, pdev).await?),
            None => None,
        };

        // One flush epoch for all the row's tags.
        let epoch = self.write_epoch();
        let span = (hi - lo) as usize * bs;
        // The parity span, followed by the tag blocks when it reaches the
        // chunk's end (one member write).
        let tag_bytes = if hi == c {
            lay.tag_blocks as usize * bs
        } else {
            0
        };
        let mut parity = pdev.as_ref().map(|_| self.parity_buffer(span + tag_bytes));
        let mut sources: Vec<&[u8]> = Vec::with_capacity(d + 1);
        for i in lo..hi {
            let r = (i - lo) as usize * bs..(i - lo + 1) as usize * bs;
            sources.clear();
            if let Some(b) = &base {
                sources.push(&b[r.clone()]);
            }
            for (k, tags) in data_tags.iter_mut().enumerate() {
                let Some(blk) = plan.blocks[k][i as usize] else {
                    continue;
                };
                if let Some(tags) = tags {
                    tags.overwrite(i as usize, epoch, lay.lba_of(row, k as u32, i), blk, fua);
                }
                sources.push(blk);
            }
            let (Some(p), Some(ptags)) = (parity.as_mut(), parity_tags.as_mut()) else {
                continue;
            };
            let dst = &mut p[r];
            xor_many(dst, &sources);
            let addr = parity_addr(row, c, i);
            let crc = if plan.full {
                let crc = self.inner.xor_tagger.xor_crc(
                    addr,
                    data_tags.iter().flatten().map(|t| {
                        let e = t.entries[i as usize].unwrap_or_default();
                        (e.addr, e.crc)
                    }),
                );
                debug_assert_eq!(crc, crate::integrity::block_crc(addr, dst));
                crc
            } else {
                crate::integrity::block_crc(addr, dst)
            };
            ptags.overwrite_crc(i as usize, epoch, addr, crc, fua);
        }
        drop(sources);
        if let (Some(p), Some(ptags), true) = (parity.as_mut(), &parity_tags, tag_bytes > 0) {
            let tb = ptags.encode(self.inner.block_size, self.place(row, pslot), epoch);
            p[span..].copy_from_slice(&tb);
        }

        let _journaled = match (&self.inner.journal, self.journal_member(lay, row, &pdev)) {
            (Some(j), Some((jslot, jdev))) => {
                let content = RowContent {
                    lay,
                    row,
                    data: &plan.blocks,
                    parity_from: lo,
                    parity: parity.as_ref().map_or(&[][..], |p| &p[..span]),
                };
                Some(j.log(self, jslot, &jdev, &content).await?)
            }
            _ => None,
        };

        let flags = WriteFlags { fua };
        let mut writes: Vec<(u32, SharedDevice, u64, Bytes)> = Vec::new();
        for (k, (dev, tags)) in data_devs.into_iter().zip(&data_tags).enumerate() {
            let (Some(dev), Some(tags)) = (dev, tags) else {
                continue;
            };
            let slot = lay.data_member(row, k as u32);
            for (i, data) in plan.chunk_writes(k) {
                writes.push((slot, dev.clone(), lay.member_block(row, i), data));
            }
            let tb = Bytes::from(tags.encode(self.inner.block_size, self.place(row, slot), epoch));
            writes.push((slot, dev, lay.tag_block(row, 0), tb));
        }
        if let (Some(pdev), Some(p), Some(ptags)) = (pdev, parity, &parity_tags) {
            if tag_bytes == 0 {
                let tb = ptags.encode(self.inner.block_size, self.place(row, pslot), epoch);
                writes.push((pslot, pdev.clone(), lay.tag_block(row, 0), Bytes::from(tb)));
            }
            writes.push((pslot, pdev, lay.member_block(row, lo), p.freeze()));
        }
        // A replace that has copied this row takes the slot's writes too.
        let mirrored: Vec<(u32, SharedDevice, u64, Bytes)> = {
            let m = self.meta();
            writes
                .iter()
                .filter_map(|(slot, _, at, buf)| {
                    m.mirror(*slot, row)
                        .map(|t| (REPLACEMENT, t, *at, buf.clone()))
                })
                .collect()
        };
        // In front: the parity write stays last, for its buffer's reuse.
        writes.splice(0..0, mirrored);
        let results = join_all(
            writes
                .iter()
                .map(|(_, dev, at, buf)| dev.write(*at, buf.clone(), flags)),
        )
        .await;
        let mut failed = Vec::new();
        for ((slot, ..), r) in writes.iter().zip(results) {
            if let Err(e) = r {
                failed.push((*slot, e));
            }
        }
        // The parity buffer is ours again once no member holds on to it.
        if let Some((_, _, _, p)) = writes.pop().filter(|w| w.0 == pslot) {
            self.recycle_parity_buffer(p, lay);
        }
        drop(writes);
        for (slot, e) in failed {
            self.fail_member(slot, &e).await;
        }
        self.check_alive()
    }

    /// The base of the new parity over the plan's span: read-modify-write
    /// or reconstruct-write, whichever reads less (read-modify-write only
    /// when every touched member is there, and falling back to
    /// reconstruct-write when the old parity fails its check).
    async fn parity_base(&self, lay: &Layout, row: u64, plan: &RowPlan<'_>) -> Result<Vec<u8>> {
        let (lo, hi) = (plan.lo as usize, plan.hi as usize);
        let rmw_ok = (0..plan.blocks.len()).all(|k| {
            !plan.touched(k) || self.usable(lay.data_member(row, k as u32), row).is_some()
        });
        let touched_blocks: usize = plan
            .blocks
            .iter()
            .map(|v| v.iter().filter(|b| b.is_some()).count())
            .sum();
        let rmw_cost = touched_blocks + (hi - lo);
        let rcw_cost: usize = plan
            .blocks
            .iter()
            .map(|v| v[lo..hi].iter().filter(|b| b.is_none()).count())
            .sum();
        if rmw_ok && rmw_cost < rcw_cost {
            if let Some(base) = self.rmw_base(lay, row, plan).await? {
                return Ok(base);
            }
        }
        self.rcw_base(lay, row, plan).await
    }

    /// Read-modify-write base: old parity XOR the old content of the
    /// touched blocks. `Ok(None)` when the old parity fails its check.
    async fn rmw_base(
        &self,
        lay: &Layout,
        row: u64,
        plan: &RowPlan<'_>,
    ) -> Result<Option<Vec<u8>>> {
        let bs = self.inner.block_size as usize;
        let pslot = lay.parity_member(row);
        let Some(old_parity) = self
            .read_verified(lay, row, pslot, plan.lo, plan.hi)
            .await?
        else {
            return Ok(None);
        };
        let mut p = old_parity.to_vec();
        for (k, blocks) in plan.blocks.iter().enumerate() {
            let Some(a) = blocks.iter().position(Option::is_some) else {
                continue;
            };
            let b = blocks
                .iter()
                .rposition(Option::is_some)
                .map_or(a, |x| x + 1);
            let old = self
                .read_chunk(lay, row, k as u32, a as u32, b as u32)
                .await?;
            for i in (a..b).filter(|&i| blocks[i].is_some()) {
                let po = (i - plan.lo as usize) * bs;
                let oo = (i - a) * bs;
                xor_into(&mut p[po..po + bs], &old[oo..oo + bs]);
            }
        }
        Ok(Some(p))
    }

    /// Reconstruct-write base: the XOR of the untouched old blocks in the span.
    async fn rcw_base(&self, lay: &Layout, row: u64, plan: &RowPlan<'_>) -> Result<Vec<u8>> {
        let bs = self.inner.block_size as usize;
        let (lo, hi) = (plan.lo as usize, plan.hi as usize);
        let mut p = vec![0u8; (hi - lo) * bs];
        for (k, blocks) in plan.blocks.iter().enumerate() {
            let mut i = lo;
            while i < hi {
                if blocks[i].is_some() {
                    i += 1;
                    continue;
                }
                let start = i;
                while i < hi && blocks[i].is_none() {
                    i += 1;
                }
                let old = self
                    .read_chunk(lay, row, k as u32, start as u32, i as u32)
                    .await?;
                let po = (start - lo) * bs;
                xor_into(&mut p[po..po + old.len()], &old);
            }
        }
        Ok(p)
    }

    /// The member whose journal ring takes a record of an update to `row`:
    /// its parity member, or while that is missing the first usable member
    /// of the row. The data is then written in place with no parity, and
    /// only the record keeps a block and its tag from tearing apart in a
    /// crash (replay rewrites both). Losing that member as well would be a
    /// second failure in the row.
    fn journal_member(
        &self,
        lay: &Layout,
        row: u64,
        pdev: &Option<SharedDevice>,
    ) -> Option<(u32, SharedDevice)> {
        let pslot = lay.parity_member(row);
        match pdev {
            Some(d) => Some((pslot, d.clone())),
            None => (0..lay.members)
                .filter(|&s| s != pslot)
                .find_map(|s| self.usable(s, row).map(|d| (s, d))),
        }
    }

    /// A buffer of `len` bytes for parity, reused when one is free. Its
    /// content is stale; the caller overwrites all of it.
    fn parity_buffer(&self, len: usize) -> BytesMut {
        let mut pool = self.inner.parity_pool.lock().expect("pool lock");
        match pool.iter().position(|b| b.len() == len) {
            Some(i) => pool.swap_remove(i),
            None => BytesMut::zeroed(len),
        }
    }

    /// Returns a whole parity chunk's buffer (with its tag blocks) to the
    /// pool if no one else holds it.
    fn recycle_parity_buffer(&self, buf: Bytes, lay: &Layout) {
        let whole = lay.row_blocks() as usize * self.inner.block_size as usize;
        if buf.len() != whole {
            return;
        }
        if let Ok(b) = buf.try_into_mut() {
            let mut pool = self.inner.parity_pool.lock().expect("pool lock");
            if pool.len() < PARITY_POOL {
                pool.push(b);
            }
        }
    }

    /// Tags of a chunk about to be wholly rewritten, for the previous
    /// checksums they hold: entries that cannot be read are `None` (the new
    /// entries then allow no previous content). A member error shows again
    /// on the write that follows.
    pub(crate) async fn previous_tags(
        &self,
        lay: &Layout,
        row: u64,
        slot: u32,
        dev: &SharedDevice,
    ) -> ChunkTags {
        self.read_tags(lay, row, slot, dev)
            .await
            .unwrap_or_else(|_| ChunkTags::fresh(lay.chunk_blocks))
    }

    /// Tags of a chunk about to be partly rewritten; a damaged tag block is
    /// repaired first (the untouched blocks need correct entries).
    async fn tags_for_update(
        &self,
        lay: &Layout,
        row: u64,
        slot: u32,
        dev: &SharedDevice,
    ) -> Result<ChunkTags> {
        match self.read_tags(lay, row, slot, dev).await {
            Ok(t) if !t.damaged() => Ok(t),
            Ok(_) | Err(BlockError::Medium { .. }) => {
                self.inner
                    .stats
                    .checksum_errors
                    .fetch_add(1, Ordering::Relaxed);
                let content = self.repair_chunk(lay, row, slot, dev).await?;
                let bs = self.inner.block_size as usize;
                Ok(ChunkTags {
                    entries: content
                        .chunks_exact(bs)
                        .enumerate()
                        .map(|(i, b)| Some(TagEntry::of(tag_addr(lay, row, slot, i as u32), b)))
                        .collect(),
                })
            }
            Err(e) => {
                self.fail_member(slot, &e).await;
                self.check_alive()?;
                Err(RaidError::Member { slot, source: e })
            }
        }
    }
}
