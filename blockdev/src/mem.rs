//! A sparse in-memory block device, for tests and benchmarks.

use std::sync::RwLock;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use crate::{
    BlockDevice, BlockError, DeviceIdentity, Extent, Features, Geometry, Limits, Result, WriteFlags,
};

/// Bytes per allocation chunk: unwritten chunks take no memory.
const CHUNK: usize = 64 * 1024;

/// A sparse in-memory block device. Every completed write is "durable" (it
/// survives until the object is dropped); wrap it in a
/// [`FaultyDevice`](crate::FaultyDevice) to model a volatile cache and crashes.
///
/// Its limits: no write is ever torn (a write cannot fail part-way, and
/// nothing crashes), so every write is atomic; no transfer limit. A test may
/// make it promise less ([`MemDevice::set_limits`]); it then refuses
/// requests longer than the maximum transfer it states, as the contract says.
#[derive(Debug)]
pub struct MemDevice {
    geometry: Geometry,
    identity: DeviceIdentity,
    read_only: bool,
    limits: Limits,
    chunks: Vec<RwLock<Option<Box<[u8]>>>>,
}

impl MemDevice {
    /// A zero-filled device of `num_blocks` blocks of `block_size` bytes.
    pub fn new(block_size: u32, num_blocks: u64, identity: DeviceIdentity) -> Self {
        assert!(
            block_size.is_power_of_two() && (512..=65536).contains(&block_size),
            "block size must be a power of two in 512..=65536"
        );
        let bytes = num_blocks * u64::from(block_size);
        let n = bytes.div_ceil(CHUNK as u64) as usize;
        MemDevice {
            geometry: Geometry {
                block_size,
                num_blocks,
            },
            identity,
            read_only: false,
            limits: Limits {
                atomic_write: u32::MAX,
                ..Limits::default()
            },
            chunks: (0..n).map(|_| RwLock::new(None)).collect(),
        }
    }

    /// A device named `name` (identity derived from the name) of `bytes` bytes in 512-byte blocks.
    pub fn with_name(name: &str, bytes: u64) -> Self {
        Self::new(512, bytes / 512, DeviceIdentity::from_name(name))
    }

    /// Marks the device read-only.
    pub fn set_read_only(mut self, ro: bool) -> Self {
        self.read_only = ro;
        self
    }

    /// Reports `limits` instead (every write stays atomic whatever they
    /// say; a maximum transfer is enforced).
    pub fn set_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Refuses a request longer than the stated maximum transfer.
    fn check_transfer(&self, blocks: u64) -> Result<()> {
        let max = self.limits.max_transfer;
        if max != 0 && blocks > u64::from(max) {
            return Err(BlockError::Invalid(format!(
                "{blocks} blocks exceed the maximum transfer of {max}"
            )));
        }
        Ok(())
    }

    /// Copies bytes out synchronously (for tests that inspect the medium).
    pub fn read_bytes(&self, offset: u64, out: &mut [u8]) {
        let mut pos = offset as usize;
        let mut done = 0;
        while done < out.len() {
            let (ci, co) = (pos / CHUNK, pos % CHUNK);
            let n = (CHUNK - co).min(out.len() - done);
            match &*self.chunks[ci].read().unwrap() {
                Some(c) => out[done..done + n].copy_from_slice(&c[co..co + n]),
                None => out[done..done + n].fill(0),
            }
            pos += n;
            done += n;
        }
    }

    /// Copies bytes in synchronously, bypassing read-only (for tests that damage the medium).
    pub fn write_bytes(&self, offset: u64, data: &[u8]) {
        let mut pos = offset as usize;
        let mut done = 0;
        while done < data.len() {
            let (ci, co) = (pos / CHUNK, pos % CHUNK);
            let n = (CHUNK - co).min(data.len() - done);
            let mut slot = self.chunks[ci].write().unwrap();
            let c = slot.get_or_insert_with(|| vec![0u8; CHUNK].into_boxed_slice());
            c[co..co + n].copy_from_slice(&data[done..done + n]);
            pos += n;
            done += n;
        }
    }

    /// Bytes of memory held by allocated chunks.
    pub fn allocated_bytes(&self) -> u64 {
        self.chunks
            .iter()
            .filter(|c| c.read().unwrap().is_some())
            .count() as u64
            * CHUNK as u64
    }

    fn zero_range(&self, offset: u64, len: u64, release: bool) {
        let mut pos = offset as usize;
        let end = (offset + len) as usize;
        while pos < end {
            let (ci, co) = (pos / CHUNK, pos % CHUNK);
            let n = (CHUNK - co).min(end - pos);
            let mut slot = self.chunks[ci].write().unwrap();
            if release && co == 0 && n == CHUNK {
                *slot = None;
            } else if let Some(c) = slot.as_mut() {
                c[co..co + n].fill(0);
            }
            pos += n;
        }
    }
}

#[async_trait]
impl BlockDevice for MemDevice {
    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn identity(&self) -> &DeviceIdentity {
        &self.identity
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn features(&self) -> Features {
        Features {
            thin: true,
            unmap_reads_zero: true,
            volatile_cache: false,
        }
    }

    fn limits(&self) -> Limits {
        self.limits
    }

    async fn read(&self, lba: u64, blocks: u32) -> Result<Bytes> {
        let g = self.geometry;
        g.check_range(lba, u64::from(blocks))?;
        self.check_transfer(u64::from(blocks))?;
        let mut buf = BytesMut::zeroed(blocks as usize * g.block_size as usize);
        self.read_bytes(lba * u64::from(g.block_size), &mut buf);
        Ok(buf.freeze())
    }

    async fn write(&self, lba: u64, data: Bytes, _flags: WriteFlags) -> Result<()> {
        let g = self.geometry;
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let blocks = g.blocks_in(data.len())?;
        g.check_range(lba, blocks)?;
        self.check_transfer(blocks)?;
        self.write_bytes(lba * u64::from(g.block_size), &data);
        Ok(())
    }

    async fn flush(&self) -> Result<()> {
        Ok(())
    }

    async fn write_zeroes(&self, lba: u64, blocks: u64, unmap: bool) -> Result<()> {
        let g = self.geometry;
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        g.check_range(lba, blocks)?;
        let bs = u64::from(g.block_size);
        self.zero_range(lba * bs, blocks * bs, unmap);
        Ok(())
    }

    async fn block_status(&self, lba: u64, max_blocks: u64) -> Result<Extent> {
        let g = self.geometry;
        g.check_range(lba, 1)?;
        let bs = u64::from(g.block_size);
        let limit = max_blocks.max(1).min(g.num_blocks - lba);
        let mapped_at = |blk: u64| {
            self.chunks[(blk * bs) as usize / CHUNK]
                .read()
                .unwrap()
                .is_some()
        };
        let first = mapped_at(lba);
        let mut n = 1;
        while n < limit && mapped_at(lba + n) == first {
            n += 1;
        }
        Ok(Extent {
            mapped: first,
            blocks: n,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn write_read_unmap() {
        let d = MemDevice::with_name("m", 1 << 20);
        let data = Bytes::from((0..4096u32).map(|i| i as u8).collect::<Vec<_>>());
        d.write(10, data.clone(), WriteFlags::NONE).await.unwrap();
        assert_eq!(d.read(10, 8).await.unwrap(), data);
        assert!(d.read(2047, 2).await.is_err());
        assert!(d
            .write(1, Bytes::from_static(&[1, 2, 3]), WriteFlags::NONE)
            .await
            .is_err());
        d.unmap(0, 2048).await.unwrap();
        assert!(d.read(10, 8).await.unwrap().iter().all(|&b| b == 0));
        assert_eq!(d.allocated_bytes(), 0);
        let e = d.block_status(0, 100).await.unwrap();
        assert!(!e.mapped && e.blocks == 100);
    }

    #[tokio::test]
    async fn every_write_is_atomic_and_a_stated_maximum_is_kept() {
        let d = MemDevice::with_name("m", 1 << 20);
        assert_eq!(d.limits().atomic_write, u32::MAX);
        assert_eq!(d.limits().max_transfer, 0);
        let d = d.set_limits(Limits {
            max_transfer: 4,
            ..Limits::default()
        });
        assert_eq!(d.limits().atomic_write, 0);
        d.write(0, Bytes::from(vec![1u8; 4 * 512]), WriteFlags::NONE)
            .await
            .unwrap();
        let five = Bytes::from(vec![1u8; 5 * 512]);
        let e = d.write(0, five, WriteFlags::NONE).await.unwrap_err();
        assert_eq!(e.class(), crate::ErrorClass::Invalid);
        assert!(d.read(0, 5).await.is_err());
        assert_eq!(d.read(0, 4).await.unwrap().len(), 4 * 512);
    }
}
