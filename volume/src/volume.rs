//! One volume as a [`BlockDevice`]: its blocks mapped through its extents
//! onto the pool's device.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use async_trait::async_trait;
use blockdev::{
    BlockDevice, BlockError, Bytes, BytesMut, DeviceIdentity, DeviceStatus, Extent, Features,
    FileSlice, Geometry, Limits, SharedDevice, StatusPublisher, WriteFlags,
};
use futures::future::join_all;

use crate::mapping::{ExtentMap, Piece};
use crate::snapshot::Cow;
use crate::table::Entry;
use crate::tracker::Tracker;

/// A volume of a [`Pool`](crate::Pool), open: a [`BlockDevice`] whose
/// blocks live in its extents on the pool's device.
///
/// - A request that spans extents is split at their boundaries and its
///   pieces run at once; the call returns only when every piece has ended
///   (so nothing it started is left running), with the first error.
/// - Flush and FUA go to the device as they are; zeroing and unmap are
///   passed down piece by piece (the device keeps its own promises: a RAID5
///   array writes zeroes and keeps parity right).
/// - Its identity is derived from the volume's uuid in the table, so it is
///   the same on every head and across restarts.
/// - A grow publishes the new capacity on [`BlockDevice::status`], which
///   `scsi-disk` turns into CAPACITY DATA HAS CHANGED.
/// - Errors that name a block ([`BlockError::Medium`],
///   [`BlockError::WriteFault`]) name the volume's block, not the device's.
///
/// - While it has a backup snapshot ([`crate::Pool::snapshot`]), a write, zeroing
///   or unmap first copies what the snapshot still needs of its blocks.
/// - Every write, zeroing and unmap marks its regions in the volume's
///   [`ChangedMap`](crate::changed::ChangedMap) before it is issued, and
///   waits until their bits are on the device when they are not yet (see
///   the tracker); a snapshot freezes the map. A failed map write fails the
///   client write.
///
/// Every `Arc<Volume>` alive counts as an open handle: the pool refuses to
/// delete the volume meanwhile.
#[derive(Debug)]
pub struct Volume {
    dev: SharedDevice,
    name: String,
    uuid: [u8; 16],
    identity: DeviceIdentity,
    unit_blocks: u64,
    map: RwLock<Arc<ExtentMap>>,
    read_only: AtomicBool,
    status: StatusPublisher,
    /// Held shared by every write, zeroing and unmap while it runs, and
    /// exclusively to quiesce the volume for a snapshot.
    gate: tokio::sync::RwLock<()>,
    /// The copy-before-write state of its backup snapshot, if it has one.
    cow: RwLock<Option<Arc<Cow>>>,
    /// What changed since its last backup snapshot, in memory and on the
    /// device (the pool keeps it across handles).
    tracker: Arc<Tracker>,
}

/// Changed-block tracking records regions of this many bytes.
pub const CHANGED_REGION_BYTES: u64 = 4 << 20;

impl Volume {
    /// The volume of `entry` on `dev`.
    pub(crate) fn new(
        dev: SharedDevice,
        entry: &Entry,
        unit_blocks: u64,
        tracker: Arc<Tracker>,
    ) -> Volume {
        let map = ExtentMap::new(&entry.extents, unit_blocks);
        let geometry = Geometry {
            block_size: dev.geometry().block_size,
            num_blocks: map.num_blocks(),
        };
        Volume {
            dev,
            name: entry.name.clone(),
            uuid: entry.uuid,
            identity: DeviceIdentity::from_uuid(entry.uuid),
            unit_blocks,
            map: RwLock::new(Arc::new(map)),
            read_only: AtomicBool::new(entry.read_only()),
            status: StatusPublisher::new(geometry),
            gate: tokio::sync::RwLock::new(()),
            cow: RwLock::new(None),
            tracker,
        }
    }

    /// The volume's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The volume's uuid (its identity derives from it).
    pub fn uuid(&self) -> [u8; 16] {
        self.uuid
    }

    /// Takes the entry's extents and flags after a committed change; a
    /// grown volume publishes its new capacity.
    pub(crate) fn update(&self, entry: &Entry) {
        let map = ExtentMap::new(&entry.extents, self.unit_blocks);
        let blocks = map.num_blocks();
        *self.map.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(map);
        self.read_only.store(entry.read_only(), Ordering::Release);
        self.status.resized(blocks);
    }

    /// Waits for the writes in flight to end and holds new ones back until
    /// the guard is dropped.
    pub(crate) async fn quiesce(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.gate.write().await
    }

    /// The copy-before-write state of its snapshot.
    pub(crate) fn cow(&self) -> Option<Arc<Cow>> {
        self.cow
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Its changed-block tracker.
    pub(crate) fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// Installs (or removes) the copy-before-write state of a snapshot.
    pub(crate) fn set_cow(&self, cow: Option<Arc<Cow>>) {
        *self.cow.write().unwrap_or_else(PoisonError::into_inner) = cow;
    }

    /// Before a change of `blocks` blocks at `lba`: holds the gate shared,
    /// has its regions' bits on the device (or fails: the change must not
    /// happen unrecorded) and lets a snapshot copy what it still needs of
    /// them.
    async fn before_change(
        &self,
        lba: u64,
        blocks: u64,
    ) -> blockdev::Result<tokio::sync::RwLockReadGuard<'_, ()>> {
        let gate = self.gate.read().await;
        self.tracker.mark(lba, blocks).await.map_err(|e| match e {
            // The map's block is not the volume's: name the request's.
            BlockError::Medium { .. } | BlockError::WriteFault { .. } => {
                tracing::warn!(volume = %self.name, error = %e, "changed-block map write failed");
                BlockError::WriteFault { lba }
            }
            other => other,
        })?;
        if let Some(cow) = self.cow() {
            cow.before_write(self, lba, blocks).await;
        }
        Ok(gate)
    }

    fn map(&self) -> Arc<ExtentMap> {
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The pieces of a request, checked against the map and the transfer limit.
    fn pieces(&self, lba: u64, blocks: u64, transfer: bool) -> blockdev::Result<Vec<Piece>> {
        let map = self.map();
        let g = Geometry {
            block_size: self.dev.geometry().block_size,
            num_blocks: map.num_blocks(),
        };
        g.check_range(lba, blocks)?;
        let max = self.dev.limits().max_transfer;
        if transfer && max != 0 && blocks > u64::from(max) {
            return Err(BlockError::Invalid(format!(
                "{blocks} blocks exceed the maximum transfer of {max}"
            )));
        }
        Ok(map.pieces(lba, blocks))
    }

    fn check_writable(&self) -> blockdev::Result<()> {
        if self.read_only() {
            return Err(BlockError::ReadOnly);
        }
        Ok(())
    }

    /// `e` with a device block it names turned into the volume's block.
    fn translate(e: BlockError, lba: u64, p: &Piece) -> BlockError {
        let back = |dev_lba: u64| {
            if (p.dev_lba..p.dev_lba + p.blocks).contains(&dev_lba) {
                lba + p.offset + (dev_lba - p.dev_lba)
            } else {
                lba + p.offset
            }
        };
        match e {
            BlockError::Medium { lba: d } => BlockError::Medium { lba: back(d) },
            BlockError::WriteFault { lba: d } => BlockError::WriteFault { lba: back(d) },
            other => other,
        }
    }

    /// Runs `op` on every piece at once and waits for all of them: the
    /// first error (in volume order), translated, or their results.
    async fn each<T, F, Fut>(lba: u64, pieces: &[Piece], op: F) -> blockdev::Result<Vec<T>>
    where
        F: Fn(Piece) -> Fut,
        Fut: std::future::Future<Output = blockdev::Result<T>>,
    {
        let results = join_all(pieces.iter().map(|&p| op(p))).await;
        results
            .into_iter()
            .zip(pieces)
            .map(|(r, p)| r.map_err(|e| Self::translate(e, lba, p)))
            .collect()
    }
}

#[async_trait]
impl BlockDevice for Volume {
    fn geometry(&self) -> Geometry {
        Geometry {
            block_size: self.dev.geometry().block_size,
            num_blocks: self.map().num_blocks(),
        }
    }

    fn identity(&self) -> &DeviceIdentity {
        &self.identity
    }

    fn read_only(&self) -> bool {
        self.read_only.load(Ordering::Acquire) || self.dev.read_only()
    }

    fn features(&self) -> Features {
        self.dev.features()
    }

    /// The device's transfer limit and queue depth; the allocation unit as
    /// the preferred granularity (extents start on units, so a unit-aligned
    /// request is stripe-aligned on the array). No write is promised atomic:
    /// one that crosses an extent boundary is two writes.
    fn limits(&self) -> Limits {
        let d = self.dev.limits();
        Limits {
            max_transfer: d.max_transfer,
            optimal_granularity: u32::try_from(self.unit_blocks).unwrap_or(d.optimal_granularity),
            atomic_write: 0,
            queue_depth: d.queue_depth,
        }
    }

    fn status(&self) -> tokio::sync::watch::Receiver<DeviceStatus> {
        self.status.subscribe()
    }

    async fn read(&self, lba: u64, blocks: u32) -> blockdev::Result<Bytes> {
        let pieces = self.pieces(lba, u64::from(blocks), true)?;
        if let [p] = pieces[..] {
            return self
                .dev
                .read(p.dev_lba, blocks)
                .await
                .map_err(|e| Self::translate(e, lba, &p));
        }
        let parts = Self::each(lba, &pieces, |p| self.dev.read(p.dev_lba, p.blocks as u32)).await?;
        let bs = self.dev.geometry().block_size as usize;
        let mut buf = BytesMut::with_capacity(blocks as usize * bs);
        for part in parts {
            buf.extend_from_slice(&part);
        }
        Ok(buf.freeze())
    }

    async fn write(&self, lba: u64, data: Bytes, flags: WriteFlags) -> blockdev::Result<()> {
        self.check_writable()?;
        let g = self.geometry();
        let blocks = g.blocks_in(data.len())?;
        let pieces = self.pieces(lba, blocks, true)?;
        let bs = g.block_size as usize;
        let _gate = self.before_change(lba, blocks).await?;
        Self::each(lba, &pieces, |p| {
            let at = p.offset as usize * bs;
            self.dev.write(
                p.dev_lba,
                data.slice(at..at + p.blocks as usize * bs),
                flags,
            )
        })
        .await?;
        Ok(())
    }

    async fn flush(&self) -> blockdev::Result<()> {
        self.dev.flush().await
    }

    async fn write_zeroes(&self, lba: u64, blocks: u64, unmap: bool) -> blockdev::Result<()> {
        self.check_writable()?;
        let pieces = self.pieces(lba, blocks, false)?;
        let _gate = self.before_change(lba, blocks).await?;
        Self::each(lba, &pieces, |p| {
            self.dev.write_zeroes(p.dev_lba, p.blocks, unmap)
        })
        .await?;
        Ok(())
    }

    async fn unmap(&self, lba: u64, blocks: u64) -> blockdev::Result<()> {
        self.check_writable()?;
        let pieces = self.pieces(lba, blocks, false)?;
        let _gate = self.before_change(lba, blocks).await?;
        Self::each(lba, &pieces, |p| self.dev.unmap(p.dev_lba, p.blocks)).await?;
        Ok(())
    }

    fn cached_slice(&self, lba: u64, blocks: u32) -> Option<FileSlice> {
        match self.pieces(lba, u64::from(blocks), true).ok()?[..] {
            [p] => self.dev.cached_slice(p.dev_lba, blocks),
            _ => None,
        }
    }

    async fn block_status(&self, lba: u64, max_blocks: u64) -> blockdev::Result<Extent> {
        let cap = self.geometry().num_blocks;
        let want = max_blocks.max(1).min(cap.saturating_sub(lba)).max(1);
        let pieces = self.pieces(lba, want, false)?;
        let p = pieces[0];
        let e = self
            .dev
            .block_status(p.dev_lba, p.blocks)
            .await
            .map_err(|e| Self::translate(e, lba, &p))?;
        Ok(Extent {
            mapped: e.mapped,
            blocks: e.blocks.min(p.blocks),
        })
    }
}
