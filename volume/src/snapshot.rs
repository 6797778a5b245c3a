//! Backup snapshots: a volume's content at one instant, read while clients
//! keep writing, for as long as a backup takes.
//!
//! [`Pool::snapshot`](crate::Pool::snapshot) quiesces the volumes (their
//! writes in flight drain, new ones wait, the device is flushed), installs a
//! copy-before-write map ([`crate::cow`]) on each and lets writes go again:
//! every volume of one call is frozen at the same instant (a consistency
//! group). From then on a write into a grain the snapshot still needs first
//! copies the grain's content into the snapshot's *reserve*, a hidden
//! volume of the pool (the seed: space must be reserved for copy-on-write
//! data), sized by the caller. The backup reads the [`Snapshot`] (a
//! read-only [`BlockDevice`]) and [`Snapshot::release`]s what it has read,
//! so the reserve holds at most what changes ahead of the backup.
//!
//! The reserve's copies are not made durable: a snapshot does not outlive
//! the head process (after a crash its reserve is deleted by
//! [`Pool::drop_stale_reserves`](crate::Pool::drop_stale_reserves) and the
//! backup starts again). When the reserve is full or a copy fails, the
//! snapshot is dropped ([`cow`](crate::cow)): client writes go on, snapshot
//! reads fail with [`BlockError::Failed`] naming the reason, and the backup
//! is aborted. [`Pool::drop_snapshot`](crate::Pool::drop_snapshot) ends it
//! after a backup and frees the reserve;
//! [`Pool::abort_snapshot`](crate::Pool::abort_snapshot) ends it after a
//! failed one and gives its changed regions back to the volume's map, so
//! the next backup reads them.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use blockdev::{
    BlockDevice, BlockError, Bytes, BytesMut, DeviceIdentity, DeviceStatus, Extent, Features,
    Geometry, Limits, StatusPublisher, WriteFlags,
};
use futures::future::join_all;
use tokio::sync::Notify;

use crate::changed::ChangedMap;
use crate::cow::{CowMap, ReadPlan, WritePlan};
use crate::volume::Volume;

/// The copy-before-write state a volume's writes consult while it has a
/// snapshot.
#[derive(Debug)]
pub(crate) struct Cow {
    map: Mutex<CowMap>,
    /// Woken on every change of the map that a waiter may be waiting for.
    changed: Notify,
    reserve: Arc<Volume>,
}

impl Cow {
    pub(crate) fn new(map: CowMap, reserve: Arc<Volume>) -> Cow {
        Cow {
            map: Mutex::new(map),
            changed: Notify::new(),
            reserve,
        }
    }

    fn map(&self) -> MutexGuard<'_, CowMap> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn invalidate(&self, why: &str) {
        self.map().invalidate(why.into());
        self.changed.notify_waiters();
    }

    /// Before a write, zeroing or unmap of `blocks` blocks at `lba` on
    /// `origin` changes it: copies what the snapshot still needs of it into
    /// the reserve and waits for the snapshot reads of it. Never fails: a
    /// failed copy drops the snapshot, not the write.
    pub(crate) async fn before_write(&self, origin: &Volume, lba: u64, blocks: u64) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let plan = self.map().plan_write(lba, blocks);
            match plan {
                WritePlan::Go => return,
                WritePlan::Wait => changed.await,
                WritePlan::Copy(grains) => {
                    let done =
                        join_all(grains.iter().map(|&(g, slot)| self.copy(origin, g, slot))).await;
                    {
                        let mut m = self.map();
                        for (&(g, _), ok) in grains.iter().zip(done) {
                            m.copied(g, ok);
                        }
                    }
                    self.changed.notify_waiters();
                }
            }
        }
    }

    /// Copies grain `g` of `origin` into reserve slot `slot`.
    async fn copy(&self, origin: &Volume, g: u64, slot: u32) -> bool {
        let (grain, end) = {
            let m = self.map();
            (m.grain(), m.blocks())
        };
        let from = g * grain;
        let blocks = grain.min(end - from);
        let r = async {
            for (at, n) in transfers(from, blocks, origin.limits().max_transfer) {
                let data = origin.read(at, n).await?;
                let to = u64::from(slot) * grain + (at - from);
                self.reserve.write(to, data, WriteFlags::default()).await?;
            }
            Ok::<_, BlockError>(())
        }
        .await;
        if let Err(e) = &r {
            tracing::warn!(grain = g, error = %e, "copy into the snapshot reserve failed");
        }
        r.is_ok()
    }
}

/// `blocks` blocks from `lba` in transfers of at most `max` blocks (0: no
/// limit).
fn transfers(lba: u64, blocks: u64, max: u32) -> impl Iterator<Item = (u64, u32)> {
    let max = if max == 0 {
        u64::from(u32::MAX)
    } else {
        u64::from(max)
    };
    let mut at = lba;
    let end = lba + blocks;
    std::iter::from_fn(move || {
        (at < end).then(|| {
            let n = (end - at).min(max);
            let r = (at, n as u32);
            at += n;
            r
        })
    })
}

/// A backup snapshot of one volume: its content at the snapshot instant,
/// read-only. See the module doc.
#[derive(Debug)]
pub struct Snapshot {
    pub(crate) origin: Arc<Volume>,
    pub(crate) cow: Arc<Cow>,
    pub(crate) reserve_name: String,
    pub(crate) changed: ChangedMap,
    identity: DeviceIdentity,
    geometry: Geometry,
    status: StatusPublisher,
}

impl Snapshot {
    pub(crate) fn new(
        origin: Arc<Volume>,
        cow: Arc<Cow>,
        reserve_name: String,
        changed: ChangedMap,
    ) -> Snapshot {
        let geometry = Geometry {
            block_size: origin.geometry().block_size,
            num_blocks: cow.map().blocks(),
        };
        Snapshot {
            origin,
            cow,
            reserve_name,
            changed,
            identity: DeviceIdentity::from_uuid(rand::random()),
            geometry,
            status: StatusPublisher::new(geometry),
        }
    }

    /// The volume it is a snapshot of.
    pub fn volume(&self) -> &str {
        self.origin.name()
    }

    /// The backup is done with `blocks` blocks at `lba`: whole grains in the
    /// range no longer need copying, and their reserve space is free. Read
    /// them again and the read fails.
    pub fn release(&self, lba: u64, blocks: u64) {
        self.cow.map().release(lba, blocks);
        self.cow.changed.notify_waiters();
    }

    /// The regions written between the volume's previous snapshot and this
    /// one (all of them if this process did not see every write since):
    /// what an incremental backup must read.
    pub fn changed(&self) -> &ChangedMap {
        &self.changed
    }

    /// Blocks of the reserve holding copied content now.
    pub fn reserve_used_blocks(&self) -> u64 {
        let m = self.cow.map();
        u64::from(m.slots_used()) * m.grain()
    }

    /// Why the snapshot was dropped (the reserve filled, a copy failed),
    /// if it was.
    pub fn invalid(&self) -> Option<String> {
        self.cow.map().invalid().map(str::to_owned)
    }

    /// Reads grain-aligned pieces of a request; every piece on the volume is
    /// pinned until all are read.
    async fn read_pieces(&self, lba: u64, blocks: u64) -> blockdev::Result<Bytes> {
        let grain = self.cow.map().grain();
        let first = lba / grain;
        let last = (lba + blocks).div_ceil(grain);
        let plans = loop {
            let changed = self.cow.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let planned = {
                let mut m = self.cow.map();
                let mut plans = Vec::new();
                let mut outcome = Ok(true);
                for g in first..last {
                    match m.plan_read(g) {
                        Ok(ReadPlan::Wait) => outcome = Ok(false),
                        Ok(p) => plans.push((g, p)),
                        Err(why) => {
                            outcome = Err(why);
                            break;
                        }
                    }
                }
                if outcome != Ok(true) {
                    unpin_all(&mut m, &plans);
                }
                outcome.map(|ready| ready.then_some(plans))
            };
            match planned {
                Ok(Some(plans)) => break plans,
                Ok(None) => changed.await,
                Err(why) => return Err(BlockError::Failed(format!("backup snapshot: {why}"))),
            }
        };
        let reads = plans.iter().map(|&(g, ref p)| {
            let from = (g * grain).max(lba);
            let to = ((g + 1) * grain).min(lba + blocks);
            let n = (to - from) as u32;
            async move {
                match p {
                    ReadPlan::Volume => self.origin.read(from, n).await,
                    ReadPlan::Reserve(slot) => {
                        let at = u64::from(*slot) * grain + (from - g * grain);
                        self.cow.reserve.read(at, n).await
                    }
                    ReadPlan::Wait => unreachable!("waited above"),
                }
            }
        });
        let parts = join_all(reads).await;
        let invalid = {
            let mut m = self.cow.map();
            unpin_all(&mut m, &plans);
            m.invalid().map(str::to_owned)
        };
        self.cow.changed.notify_waiters();
        // A copy failed or the reserve filled while the pieces were read:
        // what came from the reserve may be gone.
        if let Some(why) = invalid {
            return Err(BlockError::Failed(format!("backup snapshot: {why}")));
        }
        let bs = self.geometry.block_size as usize;
        let mut buf = BytesMut::with_capacity(blocks as usize * bs);
        for part in parts {
            buf.extend_from_slice(&part?);
        }
        Ok(buf.freeze())
    }
}

fn unpin_all(m: &mut CowMap, plans: &[(u64, ReadPlan)]) {
    for (g, p) in plans {
        if *p == ReadPlan::Volume {
            m.unpin(*g);
        }
    }
}

#[async_trait]
impl BlockDevice for Snapshot {
    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn identity(&self) -> &DeviceIdentity {
        &self.identity
    }

    fn read_only(&self) -> bool {
        true
    }

    fn features(&self) -> Features {
        self.origin.features()
    }

    fn limits(&self) -> Limits {
        self.origin.limits()
    }

    fn status(&self) -> tokio::sync::watch::Receiver<DeviceStatus> {
        self.status.subscribe()
    }

    async fn read(&self, lba: u64, blocks: u32) -> blockdev::Result<Bytes> {
        self.geometry.check_range(lba, u64::from(blocks))?;
        self.read_pieces(lba, u64::from(blocks)).await
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
        self.geometry.check_range(lba, 1)?;
        Ok(Extent {
            mapped: true,
            blocks: max_blocks.max(1).min(self.geometry.num_blocks - lba),
        })
    }
}
