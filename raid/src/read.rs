//! The read path: volume reads, each block checked against its tag; a
//! missing member's chunk or a block that fails its check is reconstructed
//! from the others, and a damaged block rewritten from that reconstruction.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use blockdev::{BlockError, Bytes, BytesMut, Geometry, SharedDevice, WriteFlags};
use futures::future::join_all;
use tracing::debug;

use crate::array::RaidArray;
use crate::cache::concat_bytes;
use crate::error::{RaidError, Result};
use crate::integrity::{tag_addr, ChunkTags, TagEntry};
use crate::layout::Layout;
use crate::member_io::member_key;
use crate::parity::xor_into;
use crate::tag_cache::cached_tags;

impl RaidArray {
    /// Volume read: verified blocks, rebuilt from parity where a member is
    /// missing or a block fails its check; cached writes overlay the members.
    pub async fn read_blocks(&self, lba: u64, n: u32) -> Result<Bytes> {
        let bs = self.inner.block_size as usize;
        let geo = self.inner.geo.read().await;
        let g = Geometry {
            block_size: self.inner.block_size,
            num_blocks: geo.capacity(),
        };
        g.check_range(lba, u64::from(n))
            .map_err(RaidError::Request)?;
        let mut out = BytesMut::zeroed(n as usize * bs);
        for (lay, row, pieces) in geo.split(lba, u64::from(n)) {
            // Under the row lock to the end: a repair it writes must not
            // land after a later write of the row.
            let read = self
                .on_row(
                    row,
                    move |a| async move { a.read_row(&lay, row, &pieces).await },
                )
                .await?;
            for (l, buf) in read {
                let off = (l - lba) as usize * bs;
                out[off..off + buf.len()].copy_from_slice(&buf);
            }
        }
        self.settle_journal().await?;
        Ok(out.freeze())
    }

    /// Reads `pieces` (`(lba, blocks)` runs, each inside one chunk) of `row`
    /// of `lay`, each with its first block: the stripe cache's blocks over
    /// what the members hold.
    async fn read_row(
        &self,
        lay: &Layout,
        row: u64,
        pieces: &[(u64, u64)],
    ) -> Result<Vec<(u64, Bytes)>> {
        let bs = self.inner.block_size as usize;
        let mut out = Vec::with_capacity(pieces.len());
        for &(l, cnt) in pieces {
            let cached = self.inner.cache.get(l..l + cnt);
            if cached.len() as u64 == cnt && cnt > 0 {
                out.push((l, concat_bytes(cached.iter().map(|(_, b)| b))));
                continue;
            }
            let (_, k, i) = lay.locate(l);
            let buf = self.read_chunk(lay, row, k, i, i + cnt as u32).await?;
            if cached.is_empty() {
                out.push((l, buf));
                continue;
            }
            let mut merged = BytesMut::from(&buf[..]);
            for (b, v) in cached {
                let o = (b - l) as usize * bs;
                merged[o..o + bs].copy_from_slice(&v);
            }
            out.push((l, merged.freeze()));
        }
        Ok(out)
    }

    /// Reads the tag blocks of `row` on a member, from the tag cache when
    /// it holds them ([`crate::tag_cache`]); what is read from the member
    /// and decodes intact is cached.
    pub(crate) async fn read_tags(
        &self,
        lay: &Layout,
        row: u64,
        slot: u32,
        dev: &SharedDevice,
    ) -> std::result::Result<ChunkTags, BlockError> {
        let (tags, _) = self.read_tags_noting(lay, row, slot, dev).await?;
        Ok(Arc::unwrap_or_clone(tags))
    }

    /// [`RaidArray::read_tags`], shared with the cache, and whether they
    /// came from it.
    async fn read_tags_noting(
        &self,
        lay: &Layout,
        row: u64,
        slot: u32,
        dev: &SharedDevice,
    ) -> std::result::Result<(Arc<ChunkTags>, bool), BlockError> {
        cached_tags(
            &self.inner.tag_cache,
            dev,
            lay.tag_block(row, 0),
            lay.tag_blocks,
            self.place(row, slot),
            |buf| self.decode_tags(buf, lay, row, slot),
        )
        .await
    }

    /// Reads the tag blocks of `row` on a member from the member itself,
    /// never from the tag cache: for scrub and resync, which check the
    /// media, and to check a cached copy that failed to verify its data.
    pub(crate) async fn read_tags_from_disk(
        &self,
        lay: &Layout,
        row: u64,
        slot: u32,
        dev: &SharedDevice,
    ) -> std::result::Result<ChunkTags, BlockError> {
        let buf = dev.read(lay.tag_block(row, 0), lay.tag_blocks).await?;
        Ok(self.decode_tags(&buf, lay, row, slot))
    }

    fn decode_tags(&self, buf: &[u8], lay: &Layout, row: u64, slot: u32) -> ChunkTags {
        ChunkTags::decode(
            buf,
            self.inner.block_size,
            lay.chunk_blocks,
            self.place(row, slot),
        )
    }

    /// Whether every block of `data` (blocks `[i0, ..)` of a member's chunk
    /// in `row`) is what `tags` say belongs there.
    fn all_verify(
        &self,
        lay: &Layout,
        row: u64,
        slot: u32,
        i0: u32,
        data: &[u8],
        tags: &ChunkTags,
    ) -> bool {
        data.chunks_exact(self.inner.block_size as usize)
            .enumerate()
            .all(|(j, blk)| {
                let i = i0 + j as u32;
                tags.verifies(i as usize, tag_addr(lay, row, slot, i), blk)
            })
    }

    /// Reads blocks `[i0, i1)` of a member's chunk in `row` with the
    /// chunk's tags, and checks the blocks against them. When the tags came
    /// from the cache and fail to verify a block, or decode damaged, the
    /// cached copy is dropped and the tags are read again from the member:
    /// the cache never makes a good block look bad, and every block is
    /// still checked against a tag. The flag says whether every block
    /// verified against the tags returned (then the caller need not check
    /// them again; when it is false, the caller finds which failed).
    async fn read_with_tags(
        &self,
        lay: &Layout,
        row: u64,
        slot: u32,
        dev: &SharedDevice,
        i0: u32,
        i1: u32,
    ) -> (
        std::result::Result<Bytes, BlockError>,
        std::result::Result<Arc<ChunkTags>, BlockError>,
        bool,
    ) {
        let (data, tags) = tokio::join!(
            dev.read(lay.member_block(row, i0), i1 - i0),
            self.read_tags_noting(lay, row, slot, dev)
        );
        let (data, (tags, cached)) = match (data, tags) {
            (Ok(d), Ok(t)) => (d, t),
            (d, t) => return (d, t.map(|(t, _)| t), false),
        };
        // (Every block's entry is checked, and a damaged entry verifies
        // nothing: the rest of the chunk's tags need no scan.)
        if self.all_verify(lay, row, slot, i0, &data, &tags) {
            return (Ok(data), Ok(tags), true);
        }
        if !cached {
            // The caller finds the blocks that fail, in tags read from the member.
            return (Ok(data), Ok(tags), false);
        }
        let cache = &self.inner.tag_cache;
        cache.drop_range(member_key(dev), lay.tag_block(row, 0));
        let again = self.read_tags_noting(lay, row, slot, dev).await;
        (Ok(data), again.map(|(t, _)| t), false)
    }

    /// Reads blocks `[i0, i1)` of a member's chunk in `row` and checks them
    /// against their tags. `Ok(None)` when the member is unusable or a block
    /// fails its check (counted).
    pub(crate) async fn read_verified(
        &self,
        lay: &Layout,
        row: u64,
        slot: u32,
        i0: u32,
        i1: u32,
    ) -> Result<Option<Bytes>> {
        let Some(dev) = self.usable(slot, row) else {
            return Ok(None);
        };
        let (data, tags, verified) = self.read_with_tags(lay, row, slot, &dev, i0, i1).await;
        let (data, tags) = match (data, tags) {
            (Ok(d), Ok(t)) => (d, t),
            (Err(e), _) | (_, Err(e)) => {
                self.inner.stats.read_errors.fetch_add(1, Ordering::Relaxed);
                if !matches!(e, BlockError::Medium { .. }) {
                    self.fail_member(slot, &e).await;
                }
                return Ok(None);
            }
        };
        if !verified && !self.all_verify(lay, row, slot, i0, &data, &tags) {
            self.inner
                .stats
                .checksum_errors
                .fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        Ok(Some(data))
    }

    /// Rebuilds blocks `[i0, i1)` of the chunk `missing` holds in `row` from
    /// every other member, each source checked against its tags.
    pub(crate) async fn reconstruct(
        &self,
        lay: &Layout,
        row: u64,
        missing: u32,
        i0: u32,
        i1: u32,
    ) -> Result<Vec<u8>> {
        let others: Vec<u32> = (0..lay.members).filter(|&s| s != missing).collect();
        let reads = join_all(
            others
                .iter()
                .map(|&s| self.read_verified(lay, row, s, i0, i1)),
        )
        .await;
        let mut out: Option<Vec<u8>> = None;
        for r in reads {
            let Some(buf) = r? else {
                return Err(self.unrecoverable(lay, row, i0));
            };
            match &mut out {
                None => out = Some(buf.to_vec()),
                Some(acc) => xor_into(acc, &buf),
            }
        }
        out.ok_or_else(|| RaidError::Failed("no members".into()))
    }

    fn unrecoverable(&self, lay: &Layout, row: u64, i: u32) -> RaidError {
        self.inner
            .stats
            .unrecoverable
            .fetch_add(1, Ordering::Relaxed);
        RaidError::Unrecoverable {
            lba: lay.lba_of(row, 0, i),
        }
    }

    /// Reads blocks `[i0, i1)` of data chunk `k` of `row`, verified; damaged or
    /// unreadable blocks are rebuilt from parity and rewritten.
    pub(crate) async fn read_chunk(
        &self,
        lay: &Layout,
        row: u64,
        k: u32,
        i0: u32,
        i1: u32,
    ) -> Result<Bytes> {
        let slot = lay.data_member(row, k);
        let bs = self.inner.block_size as usize;
        let Some(dev) = self.usable(slot, row) else {
            return self
                .reconstruct(lay, row, slot, i0, i1)
                .await
                .map(Bytes::from);
        };
        let (data, tags, verified) = self.read_with_tags(lay, row, slot, &dev, i0, i1).await;
        if let (true, Ok(data)) = (verified, &data) {
            return Ok(data.clone());
        }
        // A medium error leaves the member in service (the block is rewritten
        // below); anything else fails it and the range is reconstructed.
        let mut member_failed = false;
        let tags = self.note_read(slot, tags, &mut member_failed).await;
        let data = self.note_read(slot, data, &mut member_failed).await;
        if member_failed {
            return self
                .reconstruct(lay, row, slot, i0, i1)
                .await
                .map(Bytes::from);
        }
        if let (Some(data), Some(tags)) = (&data, &tags) {
            let bad: Vec<u32> = data
                .chunks_exact(bs)
                .enumerate()
                .filter(|(j, blk)| {
                    !tags.verifies(i0 as usize + j, lay.lba_of(row, k, i0 + *j as u32), blk)
                })
                .map(|(j, _)| i0 + j as u32)
                .collect();
            if bad.is_empty() {
                return Ok(data.clone());
            }
            self.inner
                .stats
                .checksum_errors
                .fetch_add(bad.len() as u64, Ordering::Relaxed);
            if !tags.damaged() {
                let (b0, b1) = (bad[0], bad[bad.len() - 1] + 1);
                let fixed = self.reconstruct(lay, row, slot, b0, b1).await?;
                for (j, blk) in fixed.chunks_exact(bs).enumerate() {
                    let i = b0 + j as u32;
                    if !tags.verifies(i as usize, lay.lba_of(row, k, i), blk) {
                        // Parity disagrees with the checksum too: no correct copy.
                        return Err(self.unrecoverable(lay, row, i));
                    }
                }
                debug!(
                    row,
                    slot,
                    blocks = bad.len(),
                    "repairing damaged blocks from parity"
                );
                let at = lay.member_block(row, b0);
                let buf = Bytes::from(fixed.clone());
                match dev.write(at, buf.clone(), WriteFlags::FUA).await {
                    Ok(()) => self.mirror_write(slot, row, at, buf, WriteFlags::FUA).await,
                    Err(e) => self.fail_member(slot, &e).await,
                }
                self.inner
                    .stats
                    .repaired
                    .fetch_add(bad.len() as u64, Ordering::Relaxed);
                let mut out = data.to_vec();
                let off = (b0 - i0) as usize * bs;
                out[off..off + fixed.len()].copy_from_slice(&fixed);
                return Ok(Bytes::from(out));
            }
        }
        // The tags are damaged or unreadable, or the data unreadable: rebuild
        // the whole chunk and rewrite it with fresh tags.
        let full = self.repair_chunk(lay, row, slot, &dev).await?;
        Ok(Bytes::from(full).slice(i0 as usize * bs..i1 as usize * bs))
    }

    /// Counts a member read error and fails the member unless it was a medium
    /// error; returns the value read, if any.
    async fn note_read<T>(
        &self,
        slot: u32,
        r: std::result::Result<T, BlockError>,
        member_failed: &mut bool,
    ) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.inner.stats.read_errors.fetch_add(1, Ordering::Relaxed);
                if !matches!(e, BlockError::Medium { .. }) {
                    self.fail_member(slot, &e).await;
                    *member_failed = true;
                }
                None
            }
        }
    }

    /// Rebuilds the whole chunk `slot` holds in `row` from the other members
    /// and rewrites it with fresh tags. Returns its content.
    pub(crate) async fn repair_chunk(
        &self,
        lay: &Layout,
        row: u64,
        slot: u32,
        dev: &SharedDevice,
    ) -> Result<Vec<u8>> {
        let c = lay.chunk_blocks;
        let full = self.reconstruct(lay, row, slot, 0, c).await?;
        // Repairs are made durable at once: a crash must not bring the damage back.
        self.write_chunk_with_tags(lay, row, slot, dev, &full, WriteFlags::FUA)
            .await;
        self.inner
            .stats
            .repaired
            .fetch_add(u64::from(c), Ordering::Relaxed);
        Ok(full)
    }

    /// A whole chunk followed by its freshly computed tag blocks.
    pub(crate) fn chunk_with_tags(
        &self,
        lay: &Layout,
        row: u64,
        slot: u32,
        content: &[u8],
    ) -> Bytes {
        let bs = self.inner.block_size as usize;
        let tags = ChunkTags {
            entries: content
                .chunks_exact(bs)
                .enumerate()
                .map(|(i, b)| Some(TagEntry::of(tag_addr(lay, row, slot, i as u32), b)))
                .collect(),
        };
        let tbuf = tags.encode(self.inner.block_size, self.place(row, slot), self.epoch());
        let mut buf = BytesMut::with_capacity(content.len() + tbuf.len());
        buf.extend_from_slice(content);
        buf.extend_from_slice(&tbuf);
        buf.freeze()
    }

    /// Writes a whole chunk and its freshly computed tags to a member (and
    /// to a replacement that has copied the row already).
    pub(crate) async fn write_chunk_with_tags(
        &self,
        lay: &Layout,
        row: u64,
        slot: u32,
        dev: &SharedDevice,
        content: &[u8],
        flags: WriteFlags,
    ) -> bool {
        let buf = self.chunk_with_tags(lay, row, slot, content);
        let at = lay.member_block(row, 0);
        match dev.write(at, buf.clone(), flags).await {
            Ok(()) => {
                self.mirror_write(slot, row, at, buf, flags).await;
                true
            }
            Err(e) => {
                self.fail_member(slot, &e).await;
                false
            }
        }
    }
}
