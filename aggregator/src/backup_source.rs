//! A volume's backup snapshot as the source of a backup run: it carries the
//! volume's identity (the manifest names the volume, not the snapshot),
//! gives each chunk back to the snapshot ([`volume::Snapshot::release`]) as
//! soon as the backup has read all of it, so the copy-on-write reserve only
//! holds what clients change ahead of the backup, and turns the snapshot's
//! changed regions into the backup's changed chunks.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use blockdev::{
    BlockDevice, BlockError, Bytes, DeviceIdentity, DeviceStatus, Extent, Features, Geometry,
    Limits, WriteFlags,
};
use volume::Snapshot;

/// The backup's changed chunks of `chunk_size` bytes from a snapshot's
/// changed regions, by byte ranges (so region and chunk sizes may differ:
/// a chunk overlapping any changed region is changed). Chunks past the
/// map's end (a volume grown since) count as changed.
pub fn changed_chunks(
    changed: &volume::changed::ChangedMap,
    block_size: u32,
    chunk_size: u32,
    size_bytes: u64,
) -> backup::ChangedMap {
    let bs = u64::from(block_size);
    let chunks = size_bytes.div_ceil(u64::from(chunk_size));
    let mut out = backup::ChangedMap::new(chunk_size, chunks);
    for (lba, blocks) in changed.runs() {
        out.mark_bytes(lba * bs, blocks * bs);
    }
    let covered = changed.blocks() * bs;
    if covered < size_bytes {
        out.mark_bytes(covered, size_bytes - covered);
    }
    out
}

/// A snapshot read by a backup: releases each chunk once it is read whole.
#[derive(Debug)]
pub struct ReleasingSource<'a> {
    snap: &'a Snapshot,
    identity: DeviceIdentity,
    chunk_blocks: u64,
    /// Blocks read so far of each chunk not yet released.
    read: Mutex<HashMap<u64, u64>>,
}

impl<'a> ReleasingSource<'a> {
    /// `snap` as a source whose identity is `identity` (the volume's),
    /// releasing in chunks of `chunk_size` bytes.
    pub fn new(snap: &'a Snapshot, identity: DeviceIdentity, chunk_size: u32) -> Self {
        let bs = snap.geometry().block_size;
        ReleasingSource {
            snap,
            identity,
            chunk_blocks: u64::from(chunk_size / bs).max(1),
            read: Mutex::new(HashMap::new()),
        }
    }

    /// Releases every chunk the backup takes from its parent unread
    /// (`changed` says which it reads): nothing will read them.
    pub fn release_unchanged(&self, changed: &backup::ChangedMap) {
        let blocks = self.snap.geometry().num_blocks;
        for c in (0..blocks.div_ceil(self.chunk_blocks)).filter(|&c| !changed.is_changed(c)) {
            let lba = c * self.chunk_blocks;
            self.snap.release(lba, self.chunk_blocks.min(blocks - lba));
        }
    }

    /// Counts `blocks` read at `lba`; releases the chunks now read whole.
    fn account(&self, lba: u64, blocks: u64) {
        let total = self.snap.geometry().num_blocks;
        let mut done = Vec::new();
        {
            let mut read = self.read.lock().unwrap_or_else(|p| p.into_inner());
            let mut at = lba;
            let end = lba + blocks;
            while at < end {
                let c = at / self.chunk_blocks;
                let chunk_end = ((c + 1) * self.chunk_blocks).min(total);
                let n = chunk_end.min(end) - at;
                let got = read.entry(c).or_insert(0);
                *got += n;
                if *got >= chunk_end - c * self.chunk_blocks {
                    read.remove(&c);
                    done.push((c * self.chunk_blocks, chunk_end - c * self.chunk_blocks));
                }
                at += n;
            }
        }
        for (lba, blocks) in done {
            self.snap.release(lba, blocks);
        }
    }
}

#[async_trait]
impl BlockDevice for ReleasingSource<'_> {
    fn geometry(&self) -> Geometry {
        self.snap.geometry()
    }

    fn identity(&self) -> &DeviceIdentity {
        &self.identity
    }

    fn read_only(&self) -> bool {
        true
    }

    fn features(&self) -> Features {
        self.snap.features()
    }

    fn limits(&self) -> Limits {
        self.snap.limits()
    }

    fn status(&self) -> tokio::sync::watch::Receiver<DeviceStatus> {
        self.snap.status()
    }

    async fn read(&self, lba: u64, blocks: u32) -> blockdev::Result<Bytes> {
        let data = self.snap.read(lba, blocks).await?;
        self.account(lba, u64::from(blocks));
        Ok(data)
    }

    async fn write(&self, _lba: u64, _data: Bytes, _flags: WriteFlags) -> blockdev::Result<()> {
        Err(BlockError::ReadOnly)
    }

    async fn flush(&self) -> blockdev::Result<()> {
        Ok(())
    }

    async fn write_zeroes(&self, _lba: u64, _blocks: u64, _unmap: bool) -> blockdev::Result<()> {
        Err(BlockError::ReadOnly)
    }

    async fn block_status(&self, lba: u64, max_blocks: u64) -> blockdev::Result<Extent> {
        self.snap.block_status(lba, max_blocks).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_regions_become_the_chunks_they_overlap_by_bytes() {
        // 1 MiB regions of 512-byte blocks, 4 MiB chunks, 16 MiB volume.
        let mut m = volume::changed::ChangedMap::clean(32768, 2048);
        m.mark(2048 * 5, 1); // region 5: bytes 5..6 MiB, chunk 1
        m.mark(2048 * 8, 2048 * 2); // regions 8-9: chunk 2
        let c = changed_chunks(&m, 512, 4 << 20, 16 << 20);
        let got: Vec<bool> = (0..4).map(|i| c.is_changed(i)).collect();
        assert_eq!(got, [false, true, true, false]);
        // 8 MiB regions, 4 MiB chunks: one region marks two chunks.
        let mut m = volume::changed::ChangedMap::clean(32768, 16384);
        m.mark(16384, 1);
        let c = changed_chunks(&m, 512, 4 << 20, 16 << 20);
        let got: Vec<bool> = (0..4).map(|i| c.is_changed(i)).collect();
        assert_eq!(got, [false, false, true, true]);
        // A map shorter than the volume (grown since): the rest changed.
        let m = volume::changed::ChangedMap::clean(8192, 2048);
        let c = changed_chunks(&m, 512, 4 << 20, 16 << 20);
        let got: Vec<bool> = (0..4).map(|i| c.is_changed(i)).collect();
        assert_eq!(got, [false, true, true, true]);
    }
}
