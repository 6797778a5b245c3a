//! The block-device layer shared by every opie crate.
//!
//! One async trait, [`BlockDevice`], carries I/O from the SCSI and ATA emulation
//! down through volumes, RAID, multipath and initiators to the backends that
//! finally touch storage. Because every layer speaks the same trait, any layer
//! can be tested over [`MemDevice`] or wrapped in a [`FaultyDevice`] that injects
//! errors, latency, bit flips, misdirected, torn and lost writes.
//!
//! Addresses and lengths are in logical blocks of [`Geometry::block_size`]
//! bytes. Data moves in owned [`Bytes`] buffers so backends may hand the I/O to
//! another thread (the file backend does) without copying.
//!
//! Durability contract, which every implementation keeps:
//! - a `write` with [`WriteFlags::fua`] set returns only once the data is on
//!   stable storage;
//! - `flush` returns only once every write that completed before it was called
//!   is on stable storage;
//! - a write that returned an error may have changed none, some or all of the
//!   addressed blocks (a torn write), but no block outside them.
//!
//! Cancellation contract (what dropping a future means), which every
//! implementation keeps too:
//! - a call whose future has returned, with success or an error, has no I/O
//!   left running: nothing it started changes the medium afterwards;
//! - dropping a future before it returns does not cancel what it started: a
//!   write (or zeroing, or unmap) may still land, whole or torn, after the
//!   drop. The implementation makes it land before any overlapping write,
//!   zeroing or unmap called after the drop, and before any flush called
//!   after the drop returns, so a dropped write never overwrites newer
//!   data. ([`FileDevice`] waits for such writes; [`MemDevice`] finishes
//!   each call in its first poll; [`FaultyDevice`] can hold writes that
//!   break this rule, to test the layers above. The RAID5 array keeps it
//!   over such members: what a request does under a row lock runs to its
//!   end, and a flush waits for it; `raid/tests/cancel.rs`.)
//! - so a caller that tells someone a request was aborted (SCSI task
//!   management, the end of a session) must not count a dropped future as
//!   ended: it drives the future to completion, or keeps whatever orders its
//!   I/O (an LBA range lock, a row lock) until the call has returned, and
//!   answers only then. The iSCSI target runs every command to its end for
//!   this reason, even when its initiator aborted it or went away.
//!
//! Error contract: every error says what the caller may do through
//! [`BlockError::class`] ([`ErrorClass`]): retry on another path
//! (`PathDown`: the request was not carried out), retry later (`Busy`), make
//! sure the attempt can no longer land and then retry (`TimedOut`), repair
//! the blocks from redundancy (`Medium`, `WriteFault`), give up on the device
//! (`Failed`), or give up on the request (out of range, misaligned, invalid,
//! unsupported, read-only, no space, reservation conflict). A layer that
//! fails a member or a path for good does so only on `Failed`.
//!
//! Limits contract: [`BlockDevice::limits`] states the largest transfer, the
//! preferred granularity, the largest write that is never torn (0: none) and
//! a queue depth hint; nothing above a device promises more than these.
//!
//! Events: [`BlockDevice::status`] publishes resizes, disappearance and
//! return on a watch channel ([`events`]). [`FileDevice`] learns of a grown
//! file or block device when its owner calls [`FileDevice::rescan`].

#![warn(missing_docs)]

pub mod claim;
mod error;
pub mod events;
pub mod fault;
pub mod file;
mod identity;
pub mod mem;
pub mod statefile;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
pub use bytes::{Bytes, BytesMut};

pub use error::{BlockError, ErrorClass, Result};
pub use events::{DeviceStatus, StatusPublisher};
pub use fault::FaultyDevice;
pub use file::{FileDevice, FileSlice};
pub use identity::DeviceIdentity;
pub use mem::MemDevice;

/// Shape of a block device: block size and capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Logical block size in bytes (a power of two, 512..=65536).
    pub block_size: u32,
    /// Capacity in logical blocks.
    pub num_blocks: u64,
}

impl Geometry {
    /// Capacity in bytes.
    pub fn bytes(&self) -> u64 {
        self.num_blocks * u64::from(self.block_size)
    }

    /// Checks that `blocks` blocks starting at `lba` lie inside the device.
    pub fn check_range(&self, lba: u64, blocks: u64) -> Result<()> {
        match lba.checked_add(blocks) {
            Some(end) if end <= self.num_blocks => Ok(()),
            _ => Err(BlockError::OutOfRange {
                lba,
                blocks,
                capacity: self.num_blocks,
            }),
        }
    }

    /// Checks that a buffer of `len` bytes is a whole number of blocks and
    /// returns that number.
    pub fn blocks_in(&self, len: usize) -> Result<u64> {
        let bs = self.block_size as usize;
        if !len.is_multiple_of(bs) {
            return Err(BlockError::Misaligned {
                len,
                block_size: self.block_size,
            });
        }
        Ok((len / bs) as u64)
    }
}

/// Options of a single write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteFlags {
    /// Force Unit Access: the write is durable when it completes.
    pub fua: bool,
}

impl WriteFlags {
    /// A write that must be durable when it completes.
    pub const FUA: WriteFlags = WriteFlags { fua: true };
    /// An ordinary write (durable after the next flush).
    pub const NONE: WriteFlags = WriteFlags { fua: false };
}

/// What a device can do beyond plain read and write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    /// `unmap` releases storage (thin provisioning) rather than only zeroing.
    pub thin: bool,
    /// Unmapped blocks read back as zeroes (SCSI LBPRZ).
    pub unmap_reads_zero: bool,
    /// The device has a volatile write cache that `flush` empties (SCSI WCE).
    pub volatile_cache: bool,
}

/// Transfer and atomicity limits of a device, in logical blocks; 0 means
/// "none" (no limit, no preference, no guarantee). The SCSI Block Limits VPD
/// page and the ATA IDENTIFY words are derived from them, so a device never
/// advertises more than it keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Largest request taken in one call; larger ones fail with
    /// [`BlockError::Invalid`].
    pub max_transfer: u32,
    /// Requests aligned to and a multiple of this many blocks are served
    /// best (a RAID stripe's data, a flash erase unit).
    pub optimal_granularity: u32,
    /// Largest write that is never torn: after any failure or crash it has
    /// landed whole or not at all. 0: no write is atomic, not even one block.
    pub atomic_write: u32,
    /// How many requests the device serves well at once (a hint).
    pub queue_depth: u32,
}

/// Allocation state of a run of blocks, as reported by [`BlockDevice::block_status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Whether the blocks are allocated (mapped) on the backing storage.
    pub mapped: bool,
    /// Number of consecutive blocks with that state, starting at the queried LBA (at least 1).
    pub blocks: u64,
}

/// An asynchronous block device. See the crate docs for the durability and
/// cancellation contracts: in short, a returned future leaves no I/O behind,
/// and a dropped one may, but its writes land before any later overlapping
/// write or flush, never after.
#[async_trait]
pub trait BlockDevice: Send + Sync + fmt::Debug {
    /// Block size and capacity. Constant for the life of the object unless the
    /// device is resized by its owner.
    fn geometry(&self) -> Geometry;

    /// Stable identity, the same on every path and across restarts.
    fn identity(&self) -> &DeviceIdentity;

    /// Whether writes are refused.
    fn read_only(&self) -> bool {
        false
    }

    /// Optional capabilities.
    fn features(&self) -> Features {
        Features::default()
    }

    /// Transfer and atomicity limits. The default promises nothing.
    fn limits(&self) -> Limits {
        Limits::default()
    }

    /// The device's status (geometry and presence) as a watch channel: the
    /// layers above learn of a resize, a disappearance or a return from it
    /// instead of polling. The default never changes.
    fn status(&self) -> tokio::sync::watch::Receiver<DeviceStatus> {
        events::fixed(self.geometry())
    }

    /// Reads `blocks` blocks starting at `lba`.
    async fn read(&self, lba: u64, blocks: u32) -> Result<Bytes>;

    /// Writes `data` (a whole number of blocks) starting at `lba`.
    async fn write(&self, lba: u64, data: Bytes, flags: WriteFlags) -> Result<()>;

    /// Makes every completed write durable.
    async fn flush(&self) -> Result<()>;

    /// Sets `blocks` blocks at `lba` to zero; with `unmap`, the device may
    /// deallocate them instead (they still read back as zeroes).
    async fn write_zeroes(&self, lba: u64, blocks: u64, unmap: bool) -> Result<()>;

    /// Deallocates `blocks` blocks at `lba` (SCSI UNMAP, ATA TRIM). Contents
    /// afterwards read as zeroes when [`Features::unmap_reads_zero`] is set and
    /// are otherwise unspecified. The default implementation writes zeroes.
    async fn unmap(&self, lba: u64, blocks: u64) -> Result<()> {
        self.write_zeroes(lba, blocks, true).await
    }

    /// The bytes of `blocks` blocks at `lba` as a range of a file whose
    /// pages are all in the page cache now, for a transport that sends them
    /// without copying (`sendfile`). None when the device is not a plain
    /// file or block device, the range is not fully cached, or it is too
    /// small to gain from it: the caller then uses [`BlockDevice::read`].
    /// The default is None.
    fn cached_slice(&self, lba: u64, blocks: u32) -> Option<FileSlice> {
        let _ = (lba, blocks);
        None
    }

    /// Allocation state of the run of blocks starting at `lba` (at most
    /// `max_blocks` long). The default reports everything mapped.
    async fn block_status(&self, lba: u64, max_blocks: u64) -> Result<Extent> {
        let g = self.geometry();
        g.check_range(lba, 1)?;
        Ok(Extent {
            mapped: true,
            blocks: max_blocks.min(g.num_blocks - lba).max(1),
        })
    }
}

/// A shared, dynamically typed block device: what layers hold of each other.
pub type SharedDevice = Arc<dyn BlockDevice>;

/// Writes zeroes in chunks of at most `chunk_bytes` with plain writes. A helper
/// for backends without a native zeroing primitive.
pub async fn write_zeroes_by_writes<D: BlockDevice + ?Sized>(
    dev: &D,
    lba: u64,
    blocks: u64,
    chunk_bytes: usize,
) -> Result<()> {
    let g = dev.geometry();
    g.check_range(lba, blocks)?;
    let per = (chunk_bytes / g.block_size as usize).max(1) as u64;
    let zero = Bytes::from(vec![
        0u8;
        (per.min(blocks.max(1)) * u64::from(g.block_size))
            as usize
    ]);
    let mut done = 0;
    while done < blocks {
        let n = per.min(blocks - done);
        let buf = zero.slice(..(n * u64::from(g.block_size)) as usize);
        dev.write(lba + done, buf, WriteFlags::NONE).await?;
        done += n;
    }
    Ok(())
}
