//! Helpers shared by the volume crate's integration tests.

// Each test binary uses some of them.
#![allow(dead_code)]

use std::ops::Range;
use std::sync::Mutex;

use async_trait::async_trait;
use blockdev::{BlockDevice, Bytes, DeviceIdentity, Geometry, MemDevice, WriteFlags};
use volume::table::{reserved_units, Entry, Table, UnitExtent};

/// A memory device that counts the writes and zeroings reaching into a
/// range of blocks it watches (none at first).
#[derive(Debug)]
pub struct Counting {
    inner: MemDevice,
    /// The watched range, writes into it and their blocks.
    watch: Mutex<(Range<u64>, u64, u64)>,
}

impl Counting {
    /// A device of `mib` MiB in 512-byte blocks named `name`.
    pub fn new(name: &str, mib: u64) -> Counting {
        Counting {
            inner: MemDevice::with_name(name, mib << 20),
            watch: Mutex::new((0..0, 0, 0)),
        }
    }

    /// Counts from now on what reaches into `range` (from zero).
    pub fn watch(&self, range: Range<u64>) {
        *self.watch.lock().unwrap() = (range, 0, 0);
    }

    /// Writes and zeroings that reached into the range since the last call.
    pub fn take_writes(&self) -> u64 {
        std::mem::take(&mut self.watch.lock().unwrap().1)
    }

    /// Blocks of the writes and zeroings that reached into the range since
    /// the last call.
    pub fn take_blocks(&self) -> u64 {
        std::mem::take(&mut self.watch.lock().unwrap().2)
    }

    fn count(&self, lba: u64, blocks: u64) {
        let mut w = self.watch.lock().unwrap();
        if lba < w.0.end && w.0.start < lba + blocks {
            w.1 += 1;
            w.2 += blocks;
        }
    }
}

#[async_trait]
impl BlockDevice for Counting {
    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }
    fn identity(&self) -> &DeviceIdentity {
        self.inner.identity()
    }
    async fn read(&self, lba: u64, blocks: u32) -> blockdev::Result<Bytes> {
        self.inner.read(lba, blocks).await
    }
    async fn write(&self, lba: u64, data: Bytes, flags: WriteFlags) -> blockdev::Result<()> {
        let bs = u64::from(self.geometry().block_size);
        self.count(lba, data.len() as u64 / bs);
        // Let concurrent callers run meanwhile, as a real device would.
        tokio::task::yield_now().await;
        self.inner.write(lba, data, flags).await
    }
    async fn flush(&self) -> blockdev::Result<()> {
        self.inner.flush().await
    }
    async fn write_zeroes(&self, lba: u64, blocks: u64, unmap: bool) -> blockdev::Result<()> {
        self.count(lba, blocks);
        self.inner.write_zeroes(lba, blocks, unmap).await
    }
}

/// `copy` (an encoded table) as format `version` wrote it: its version
/// field set and its checksum redone.
pub fn as_version(mut copy: Vec<u8>, version: u32) -> Vec<u8> {
    copy[8..12].copy_from_slice(&version.to_le_bytes());
    copy[12..16].fill(0);
    let crc = crc32c::crc32c(&copy);
    copy[12..16].copy_from_slice(&crc.to_le_bytes());
    copy
}

/// A version 2 table (before changed-block maps) with one volume `v` of
/// `units` units, as the first copy of a device.
pub fn version_2_copy(block_size: u32, unit_blocks: u64, units: u64) -> Vec<u8> {
    let first_unit = reserved_units(block_size, unit_blocks);
    let old = Table {
        seq: 1,
        block_size,
        unit_blocks,
        first_unit,
        volumes: vec![Entry {
            uuid: [9; 16],
            name: "v".into(),
            flags: 0,
            created_ms: 0,
            extents: vec![UnitExtent {
                start: first_unit,
                len: units,
            }],
        }],
        zero_known: 0,
        dirty: Vec::new(),
    };
    as_version(old.encode().unwrap(), 2)
}
