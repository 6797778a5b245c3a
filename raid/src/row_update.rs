//! One row's update on the members: the new data, parity computed by
//! read-modify-write, reconstruct-write or, for a whole row, from the new data
//! alone, the tags of every block written, the journal record, and the member
//! writes, with the row counted in the write-intent bitmap meanwhile.

use std::sync::atomic::Ordering;

use blockdev::{BlockError, Bytes, BytesMut, SharedDevice, WriteFlags};
use futures::future::join_all;

use crate::array::RaidArray;
use crate::cache::concat_bytes;
use crate::error::{RaidError, Result};
use crate::geometry::Piece;
use crate::integrity::{parity_addr, tag_addr, ChunkTags, TagEntry};
use crate::layout::Layout;
use crate::parity::xor_into;

/// Parity buffers kept for reuse by full-stripe writes.
const PARITY_POOL: usize = 4;

impl RaidArray {
    /// Writes `pieces` (each inside one data chunk of `row`) to the members,
    /// keeping parity, tags, bitmap and journal right.
    pub(crate) async fn write_row(
        &self,
        lay: &Layout,
        row: u64,
        pieces: &[Piece],
        fua: bool,
    ) -> Result<()> {
        let mut guard = self.begin_row_write(row).await?;
        guard.writing = true;
        let r = self.write_row_inner(lay, row, pieces, fua).await;
        guard.writing = false;
        r
    }

    async fn write_row_inner(
        &self,
        lay: &Layout,
        row: u64,
        pieces: &[Piece],
        fua: bool,
    ) -> Result<()> {
        let bs = self.inner.block_size as usize;
        let covered: u64 = pieces.iter().map(|(_, d)| (d.len() / bs) as u64).sum();
        if covered == lay.row_data_blocks() {
            return self.write_full_row(lay, row, pieces, fua).await;
        }
        let c = lay.chunk_blocks;
        let d = lay.data_chunks();
        // New content per data chunk and block.
        let mut newb: Vec<Vec<Option<Bytes>>> = vec![vec![None; c as usize]; d as usize];
        for (lba, data) in pieces {
            for (j, blk) in (0..data.len() / bs).map(|j| (j, data.slice(j * bs..(j + 1) * bs))) {
                let (_, k, i) = lay.locate(lba + j as u64);
                newb[k as usize][i as usize] = Some(blk);
            }
        }
        let touched: Vec<bool> = newb.iter().map(|v| v.iter().any(Option::is_some)).collect();
        let (mut lo, mut hi) = (u32::MAX, 0u32);
        for v in &newb {
            for (i, b) in v.iter().enumerate() {
                if b.is_some() {
                    lo = lo.min(i as u32);
                    hi = hi.max(i as u32 + 1);
                }
            }
        }
        if hi == 0 {
            return Ok(());
        }
        let pslot = lay.parity_member(row);
        let pdev = self.usable(pslot, row);
        let span = (hi - lo) as usize;

        let parity: Option<Vec<u8>> = match &pdev {
            None => None,
            Some(pdev) => {
                let rmw_ok = (0..d).all(|k| {
                    !touched[k as usize] || self.usable(lay.data_member(row, k), row).is_some()
                });
                let touched_blocks: usize = newb
                    .iter()
                    .map(|v| v.iter().filter(|b| b.is_some()).count())
                    .sum();
                let rmw_cost = touched_blocks + span;
                let rcw_cost: usize = newb
                    .iter()
                    .map(|v| {
                        v[lo as usize..hi as usize]
                            .iter()
                            .filter(|b| b.is_none())
                            .count()
                    })
                    .sum();
                let mut p = None;
                if rmw_ok && rmw_cost < rcw_cost {
                    p = self
                        .parity_rmw(lay, row, pslot, pdev, &newb, lo, hi)
                        .await?;
                }
                match p {
                    Some(p) => Some(p),
                    None => Some(self.parity_rcw(lay, row, &newb, lo, hi).await?),
                }
            }
        };

        let _journaled = match (&self.inner.journal, self.journal_member(lay, row, &pdev)) {
            (Some(j), Some((jslot, jdev))) => {
                let p = parity.as_deref().unwrap_or_default();
                Some(j.log(self, lay, row, jslot, &jdev, &newb, lo, p).await?)
            }
            _ => None,
        };

        let flags = WriteFlags { fua };
        // One flush epoch for all the row's tags.
        let epoch = self.write_epoch();
        let mut writes = Vec::new();
        for k in 0..d {
            if !touched[k as usize] {
                continue;
            }
            let slot = lay.data_member(row, k);
            let Some(dev) = self.usable(slot, row) else {
                continue;
            };
            let blocks = &newb[k as usize];
            let mut tags = if blocks.iter().all(Option::is_some) {
                self.previous_tags(lay, row, slot, &dev).await
            } else {
                self.tags_for_update(lay, row, slot, &dev).await?
            };
            for (i, b) in blocks.iter().enumerate() {
                if let Some(b) = b {
                    tags.overwrite(i, epoch, lay.lba_of(row, k, i as u32), b, fua);
                }
            }
            // The pieces are disjoint and each lies in one chunk: write them as given.
            for (lba, data) in pieces {
                let (_, pk, i) = lay.locate(*lba);
                if pk == k {
                    writes.push((slot, dev.clone(), lay.member_block(row, i), data.clone()));
                }
            }
            let tb = Bytes::from(tags.encode(self.inner.block_size, self.place(row, slot), epoch));
            writes.push((slot, dev.clone(), lay.tag_block(row, 0), tb));
        }
        if let (Some(pdev), Some(p)) = (&pdev, parity) {
            // Parity has no previous content worth keeping: resync rebuilds
            // it from the data whatever it holds.
            let mut tags = if lo == 0 && hi == c {
                ChunkTags::fresh(c)
            } else {
                self.tags_for_update(lay, row, pslot, pdev).await?
            };
            for (j, blk) in p.chunks_exact(bs).enumerate() {
                let i = lo + j as u32;
                tags.overwrite(i as usize, epoch, parity_addr(row, c, i), blk, fua);
            }
            writes.push((
                pslot,
                pdev.clone(),
                lay.member_block(row, lo),
                Bytes::from(p),
            ));
            let tb = Bytes::from(tags.encode(self.inner.block_size, self.place(row, pslot), epoch));
            writes.push((pslot, pdev.clone(), lay.tag_block(row, 0), tb));
        }
        let results = join_all(
            writes
                .iter()
                .map(|(_, dev, at, buf)| dev.write(*at, buf.clone(), flags)),
        )
        .await;
        for ((slot, ..), r) in writes.iter().zip(results) {
            if let Err(e) = r {
                self.fail_member(*slot, &e).await;
            }
        }
        self.check_alive()
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

    /// Writes a whole row whose new data is `pieces` (disjoint, together
    /// covering every data block): a full-stripe write. Nothing old is read.
    /// One pass per block position computes the data tags, the parity block
    /// and its tag while those blocks are in cache; each data chunk goes to
    /// its member as one buffer (the caller's, when one piece is the whole
    /// chunk), and the parity chunk with its tag blocks as one more, taken
    /// from a pool of reused buffers.
    async fn write_full_row(
        &self,
        lay: &Layout,
        row: u64,
        pieces: &[Piece],
        fua: bool,
    ) -> Result<()> {
        let bs = self.inner.block_size as usize;
        let c = lay.chunk_blocks;
        let chunk_bytes = c as usize * bs;
        let chunks = Self::chunk_buffers(lay, pieces, chunk_bytes);
        let pslot = lay.parity_member(row);
        let pdev = self.usable(pslot, row);
        let mut parity = pdev
            .as_ref()
            .map(|_| self.parity_buffer(chunk_bytes + lay.tag_blocks as usize * bs));
        // The data chunks' old tags: their checksums become the "previous"
        // ones that resync accepts after a crash (see `integrity`).
        let mut data_tags: Vec<ChunkTags> =
            join_all((0..chunks.len() as u32).map(|k| async move {
                let slot = lay.data_member(row, k);
                match self.usable(slot, row) {
                    Some(dev) => self.previous_tags(lay, row, slot, &dev).await,
                    None => ChunkTags::fresh(c),
                }
            }))
            .await;
        let epoch = self.write_epoch();
        let mut parity_tags = ChunkTags {
            entries: Vec::with_capacity(c as usize),
        };
        let mut sources: Vec<&[u8]> = Vec::with_capacity(chunks.len());
        for i in 0..c {
            let r = i as usize * bs..(i as usize + 1) * bs;
            sources.clear();
            for (k, (chunk, tags)) in chunks.iter().zip(&mut data_tags).enumerate() {
                let blk = &chunk[r.clone()];
                tags.overwrite(i as usize, epoch, lay.lba_of(row, k as u32, i), blk, fua);
                sources.push(blk);
            }
            if let Some(p) = parity.as_mut() {
                let dst = &mut p[r];
                crate::parity::xor_many(dst, &sources);
                let addr = parity_addr(row, c, i);
                let crc = self.inner.xor_tagger.xor_crc(
                    addr,
                    data_tags.iter().map(|t| {
                        let e = t.entries[i as usize].unwrap_or_default();
                        (e.addr, e.crc)
                    }),
                );
                debug_assert_eq!(crc, crate::integrity::block_crc(addr, dst));
                parity_tags.entries.push(Some(TagEntry {
                    written: true,
                    crc,
                    addr,
                    prev_written: true,
                    prev_crc: crc,
                    epoch,
                }));
            }
        }
        drop(sources);
        if let Some(p) = parity.as_mut() {
            let tb = parity_tags.encode(self.inner.block_size, self.place(row, pslot), epoch);
            p[chunk_bytes..].copy_from_slice(&tb);
        }

        let _journaled = match (&self.inner.journal, self.journal_member(lay, row, &pdev)) {
            (Some(j), Some((jslot, jdev))) => {
                // The journal takes per-block buffers; it copies them anyway.
                let newb: Vec<Vec<Option<Bytes>>> = chunks
                    .iter()
                    .map(|ch| {
                        (0..c as usize)
                            .map(|i| Some(ch.slice(i * bs..(i + 1) * bs)))
                            .collect()
                    })
                    .collect();
                let p = parity.as_ref().map_or(&[][..], |p| &p[..chunk_bytes]);
                Some(j.log(self, lay, row, jslot, &jdev, &newb, 0, p).await?)
            }
            _ => None,
        };

        let flags = WriteFlags { fua };
        let mut writes: Vec<(u32, SharedDevice, u64, Bytes)> = Vec::new();
        for (k, (chunk, tags)) in chunks.into_iter().zip(&data_tags).enumerate() {
            let slot = lay.data_member(row, k as u32);
            let Some(dev) = self.usable(slot, row) else {
                continue;
            };
            let tb = Bytes::from(tags.encode(self.inner.block_size, self.place(row, slot), epoch));
            writes.push((slot, dev.clone(), lay.member_block(row, 0), chunk));
            writes.push((slot, dev, lay.tag_block(row, 0), tb));
        }
        if let (Some(pdev), Some(p)) = (pdev, parity) {
            writes.push((pslot, pdev, lay.member_block(row, 0), p.freeze()));
        }
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
            self.recycle_parity_buffer(p);
        }
        drop(writes);
        for (slot, e) in failed {
            self.fail_member(slot, &e).await;
        }
        self.check_alive()
    }

    /// The data chunks of a full row as one buffer each: the piece itself
    /// when it is the whole chunk (no copy), else the pieces joined.
    fn chunk_buffers(lay: &Layout, pieces: &[Piece], chunk_bytes: usize) -> Vec<Bytes> {
        let d = lay.data_chunks() as usize;
        let mut parts: Vec<Vec<(u32, &Bytes)>> = vec![Vec::new(); d];
        for (lba, data) in pieces {
            let (_, k, i) = lay.locate(*lba);
            parts[k as usize].push((i, data));
        }
        parts
            .into_iter()
            .map(|mut v| {
                if let [(0, b)] = v.as_slice() {
                    if b.len() == chunk_bytes {
                        return (*b).clone();
                    }
                }
                v.sort_by_key(|(i, _)| *i);
                concat_bytes(v.iter().map(|(_, b)| *b))
            })
            .collect()
    }

    /// A buffer of `len` bytes for a parity chunk, reused when one is free.
    /// Its content is stale; the caller overwrites all of it.
    fn parity_buffer(&self, len: usize) -> BytesMut {
        let mut pool = self.inner.parity_pool.lock().expect("pool lock");
        match pool.iter().position(|b| b.len() == len) {
            Some(i) => pool.swap_remove(i),
            None => BytesMut::zeroed(len),
        }
    }

    /// Returns a parity buffer to the pool if no one else holds it.
    fn recycle_parity_buffer(&self, buf: Bytes) {
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
    async fn previous_tags(
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

    /// Read-modify-write parity: old parity xor old data xor new data.
    /// `Ok(None)` when the old parity fails its check (the caller reconstructs).
    #[allow(clippy::too_many_arguments)]
    async fn parity_rmw(
        &self,
        lay: &Layout,
        row: u64,
        pslot: u32,
        _pdev: &SharedDevice,
        newb: &[Vec<Option<Bytes>>],
        lo: u32,
        hi: u32,
    ) -> Result<Option<Vec<u8>>> {
        let bs = self.inner.block_size as usize;
        let Some(old_parity) = self.read_verified(lay, row, pslot, lo, hi).await? else {
            return Ok(None);
        };
        let mut p = old_parity.to_vec();
        for (k, blocks) in newb.iter().enumerate() {
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
            for (i, nb) in blocks.iter().enumerate().take(b).skip(a) {
                if let Some(nb) = nb {
                    let po = (i - lo as usize) * bs;
                    let oo = (i - a) * bs;
                    xor_into(&mut p[po..po + bs], &old[oo..oo + bs]);
                    xor_into(&mut p[po..po + bs], nb);
                }
            }
        }
        Ok(Some(p))
    }

    /// Reconstruct-write parity: xor of the new data and the untouched old data.
    async fn parity_rcw(
        &self,
        lay: &Layout,
        row: u64,
        newb: &[Vec<Option<Bytes>>],
        lo: u32,
        hi: u32,
    ) -> Result<Vec<u8>> {
        let bs = self.inner.block_size as usize;
        let mut p = vec![0u8; (hi - lo) as usize * bs];
        if newb
            .iter()
            .all(|v| v[lo as usize..hi as usize].iter().all(Option::is_some))
        {
            // Everything is new (a full-stripe write): one pass per block.
            for (j, dst) in p.chunks_exact_mut(bs).enumerate() {
                let srcs: Vec<&[u8]> = newb
                    .iter()
                    .filter_map(|v| v[lo as usize + j].as_deref())
                    .collect();
                crate::parity::xor_many(dst, &srcs);
            }
            return Ok(p);
        }
        for (k, blocks) in newb.iter().enumerate() {
            let mut i = lo as usize;
            while i < hi as usize {
                let po = (i - lo as usize) * bs;
                if let Some(nb) = &blocks[i] {
                    xor_into(&mut p[po..po + bs], nb);
                    i += 1;
                    continue;
                }
                let start = i;
                while i < hi as usize && blocks[i].is_none() {
                    i += 1;
                }
                let old = self
                    .read_chunk(lay, row, k as u32, start as u32, i as u32)
                    .await?;
                let po = (start - lo as usize) * bs;
                xor_into(&mut p[po..po + old.len()], &old);
            }
        }
        Ok(p)
    }
}
