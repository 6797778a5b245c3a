//! The array: members, their state, metadata updates, and the volume itself.
//!
//! Locking, outermost first: the geometry lock (`geo`, shared by all I/O,
//! exclusive for a reshape step), one row lock per stripe (hashed into a fixed
//! table), then the short synchronous `meta` and `cache` mutexes. The
//! superblock, bitmap and journal writers have their own async locks taken
//! inside row locks and never the other way round.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use blockdev::{
    BlockDevice, BlockError, Bytes, BytesMut, DeviceIdentity, Features, Geometry, SharedDevice,
    WriteFlags,
};
use futures::future::join_all;
use tokio::sync::{Mutex as AsyncMutex, RwLock as AsyncRwLock};
use tracing::{debug, info, warn};

use crate::bitmap::Bitmap;
use crate::clock::Clock;
use crate::error::{RaidError, Result};
use crate::integrity::{
    parity_addr, tag_addr, tag_blocks_for, ChunkTags, TagEntry, TagPlace, XorTagger,
};
use crate::journal::JournalState;
use crate::layout::Layout;
use crate::parity::xor_into;
use crate::rebuild::RebuildState;
use crate::superblock::{
    SlotEntry, SlotState, Superblock, FLAG_CLEAN, FLAG_JOURNAL, FLAG_REBUILD, MAX_SLOTS,
    REBUILD_BITMAP, SPARE,
};

const ROW_LOCKS: usize = 256;
/// Parity buffers kept for reuse by full-stripe writes.
const PARITY_POOL: usize = 4;

/// Tunables of an array.
#[derive(Debug, Clone)]
pub struct Config {
    /// Blocks per chunk.
    pub chunk_blocks: u32,
    /// Rows per write-intent bitmap bit.
    pub region_rows: u64,
    /// Blocks of journal per member; 0 disables the journal.
    pub journal_blocks: u64,
    /// Most members a reshape may grow the array to (sizes the backup area).
    pub max_members: u32,
    /// Most blocks the stripe cache holds before it writes rows out.
    pub cache_blocks: usize,
    /// How long a member stays failed before a hot spare replaces it.
    pub spare_timeout: Duration,
    /// Rebuild rate limit in rows per second (`None`: unlimited).
    pub rebuild_rows_per_sec: Option<u64>,
    /// Rows between persisted rebuild checkpoints.
    pub checkpoint_rows: u64,
    /// Rows a reshape moves per step at most.
    pub reshape_step_rows: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            chunk_blocks: 128,
            region_rows: 64,
            journal_blocks: 0,
            max_members: 16,
            cache_blocks: 4096,
            spare_timeout: Duration::from_secs(60),
            rebuild_rows_per_sec: None,
            checkpoint_rows: 256,
            reshape_step_rows: 64,
        }
    }
}

/// Options of [`RaidArray::assemble`].
#[derive(Debug, Clone, Default)]
pub struct AssembleOptions {
    /// Start a dirty degraded array even though parity may be inconsistent.
    pub force: bool,
}

/// What assembly found.
#[derive(Debug, Clone, Default)]
pub struct AssemblyReport {
    /// Devices not used and why.
    pub refused: Vec<(DeviceIdentity, String)>,
    /// Slots with no usable member.
    pub missing_slots: Vec<u32>,
    /// Journal records replayed.
    pub journal_replayed: u64,
    /// Rows resynced because the array was not shut down cleanly.
    pub resynced_rows: u64,
}

/// Member sizes and the space lost to the smallest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeReport {
    /// Volume capacity in blocks.
    pub capacity_blocks: u64,
    /// Member blocks used by the array on each member.
    pub used_per_member: u64,
    /// Blocks on larger members that the array cannot use.
    pub wasted_blocks: u64,
}

/// Counters of what the engine detected and fixed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IntegrityStats {
    /// Data blocks that failed their checksum or address check.
    pub checksum_errors: u64,
    /// Blocks rebuilt from parity and rewritten.
    pub repaired_blocks: u64,
    /// Read requests that found no correct copy.
    pub unrecoverable: u64,
    /// Member read errors seen.
    pub read_errors: u64,
    /// Blocks a crash resync kept although neither their tags nor parity
    /// could vouch for them (without the journal; with it, only when the
    /// crash also cost a member).
    pub resync_unverified: u64,
}

/// State of one member slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// In sync and used.
    InSync,
    /// Failed or missing since the given clock time.
    Faulty {
        /// When it failed.
        since: Duration,
    },
    /// Being rebuilt.
    Rebuilding,
}

#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub(crate) dev: Option<SharedDevice>,
    pub(crate) uuid: [u8; 16],
    pub(crate) state: MemberState,
}

#[derive(Debug)]
pub(crate) struct Meta {
    pub(crate) sb: Superblock,
    pub(crate) slots: Vec<Slot>,
    pub(crate) spares: Vec<SharedDevice>,
    pub(crate) rebuild: Option<RebuildState>,
    pub(crate) bitmap: Bitmap,
    pub(crate) clean_on_disk: bool,
}

/// The current layout, and the new one while a reshape runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geo {
    pub(crate) cur: Layout,
    /// New layout and the number of its rows already reshaped.
    pub(crate) reshape: Option<(Layout, u64)>,
}

impl Geo {
    /// The layout holding volume block `lba`, and where that layout ends in
    /// volume blocks.
    pub(crate) fn layout_for(&self, lba: u64) -> (Layout, u64) {
        match self.reshape {
            Some((new, pos)) => {
                let boundary = pos * new.row_data_blocks();
                if lba < boundary {
                    (new, boundary)
                } else {
                    (self.cur, self.cur.capacity())
                }
            }
            None => (self.cur, self.cur.capacity()),
        }
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.cur.capacity()
    }

    /// The layout physical `row` of the members holds (a row below the
    /// reshape position holds the new one), or `None` past that layout's end.
    pub(crate) fn layout_of_row(&self, row: u64) -> Option<Layout> {
        let lay = match self.reshape {
            Some((new, pos)) if row < pos => new,
            _ => self.cur,
        };
        (row < lay.rows).then_some(lay)
    }

    /// Physical rows of the members in use by either layout.
    pub(crate) fn physical_rows(&self) -> u64 {
        self.reshape
            .map_or(self.cur.rows, |(new, _)| new.rows.max(self.cur.rows))
    }

    /// Volume blocks of `row` of `lay` that live in that layout: during a
    /// reshape the old layout's row at the boundary is partly moved already.
    pub(crate) fn row_range(&self, lay: &Layout, row: u64) -> std::ops::Range<u64> {
        let start = row * lay.row_data_blocks();
        let end = start + lay.row_data_blocks();
        match self.reshape {
            Some((new, pos)) if *lay == self.cur => {
                start.max(pos * new.row_data_blocks()).min(end)..end
            }
            _ => start..end,
        }
    }
}

pub(crate) struct Inner {
    pub(crate) cfg: Config,
    pub(crate) block_size: u32,
    pub(crate) identity: DeviceIdentity,
    pub(crate) array_uuid: [u8; 16],
    pub(crate) clock: Arc<dyn Clock>,
    /// Geometry; shared so that row writes handed to other tasks can hold
    /// the read guard their call took ([`RaidArray::write_blocks`]).
    pub(crate) geo: Arc<AsyncRwLock<Geo>>,
    pub(crate) meta: Mutex<Meta>,
    pub(crate) row_locks: Vec<AsyncMutex<()>>,
    pub(crate) cache: Mutex<BTreeMap<u64, Bytes>>,
    pub(crate) parity_pool: Mutex<Vec<BytesMut>>,
    pub(crate) xor_tagger: XorTagger,
    pub(crate) sb_lock: AsyncMutex<()>,
    pub(crate) bitmap_lock: AsyncMutex<()>,
    pub(crate) journal: Option<JournalState>,
    pub(crate) stats: Stats,
    pub(crate) capacity: AtomicU64,
    /// Current flush epoch of the tags ([`crate::integrity`]): the superblock
    /// event counter at assembly in the high half (so no later assembly
    /// reuses an epoch), the flushes since then in the low half.
    pub(crate) epoch: AtomicU64,
    /// Highest epoch in which a write updated tag entries.
    pub(crate) written_epoch: AtomicU64,
}

#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) checksum_errors: AtomicU64,
    pub(crate) repaired: AtomicU64,
    pub(crate) unrecoverable: AtomicU64,
    pub(crate) read_errors: AtomicU64,
    pub(crate) resync_unverified: AtomicU64,
}

/// A RAID5 array over block devices; itself a [`BlockDevice`].
#[derive(Clone)]
pub struct RaidArray {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for RaidArray {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RaidArray({})", self.inner.identity)
    }
}

/// The part of a volume request in one row: layout, row, and `(lba, blocks)`
/// runs each inside one chunk.
pub(crate) type RowSpan = (Layout, u64, Vec<(u64, u64)>);

/// A piece of a row write: blocks starting at `lba`, all within one chunk.
pub(crate) type Piece = (u64, Bytes);

/// Reads both superblock copies of a device and returns the newest valid one.
pub(crate) async fn read_superblock(dev: &SharedDevice) -> Result<Superblock> {
    let bs = dev.geometry().block_size;
    let n = Superblock::blocks(bs);
    let mut best: Option<Superblock> = None;
    let mut last_err = RaidError::BadSuperblock("no superblock".into());
    for slot in 0..2u64 {
        match dev.read(slot * n, n as u32).await {
            Ok(buf) => match Superblock::decode(&buf) {
                Ok(sb) if best.as_ref().is_none_or(|b| sb.events > b.events) => best = Some(sb),
                Ok(_) => {}
                Err(e) => last_err = e,
            },
            Err(e) => last_err = RaidError::Member { slot: 0, source: e },
        }
    }
    best.ok_or(last_err)
}

fn uuid_of(dev: &SharedDevice) -> [u8; 16] {
    dev.identity().uuid
}

impl RaidArray {
    /// Creates a new array over `members` (their order gives the slots) with
    /// optional hot `spares`, writing fresh metadata and zeroing the data area.
    pub async fn create(
        members: Vec<SharedDevice>,
        spares: Vec<SharedDevice>,
        cfg: Config,
        clock: Arc<dyn Clock>,
    ) -> Result<RaidArray> {
        if members.len() < 2 || members.len() > MAX_SLOTS {
            return Err(RaidError::Config(format!(
                "need 2..={MAX_SLOTS} members, got {}",
                members.len()
            )));
        }
        if cfg.chunk_blocks == 0 || cfg.region_rows == 0 || cfg.checkpoint_rows == 0 {
            return Err(RaidError::Config(
                "chunk, region and checkpoint sizes must be > 0".into(),
            ));
        }
        let bs = members[0].geometry().block_size;
        if members
            .iter()
            .chain(&spares)
            .any(|d| d.geometry().block_size != bs)
        {
            return Err(RaidError::Config("members differ in block size".into()));
        }
        let max_members = cfg.max_members.max(members.len() as u32);
        let tag_blocks = tag_blocks_for(bs, cfg.chunk_blocks);
        let row_blocks = u64::from(cfg.chunk_blocks) + u64::from(tag_blocks);
        let smallest = members
            .iter()
            .map(|d| d.geometry().num_blocks)
            .min()
            .unwrap_or(0);
        let sbb = Superblock::blocks(bs);
        let bitmap_start = 2 * sbb;
        let bitmap_blocks = Bitmap::blocks_for(smallest / row_blocks, cfg.region_rows, bs);
        let journal_start = bitmap_start + bitmap_blocks;
        let journal_blocks = cfg.journal_blocks;
        let backup_start = journal_start + journal_blocks;
        let backup_rows = u64::from(max_members);
        let data_start = backup_start + backup_rows * row_blocks;
        if smallest <= data_start + row_blocks {
            return Err(RaidError::Config(format!(
                "members of {smallest} blocks are too small for the metadata ({data_start} blocks)"
            )));
        }
        let rows = (smallest - data_start) / row_blocks;
        let array_uuid: [u8; 16] = rand::random();
        let sb = Superblock {
            array_uuid,
            device_uuid: [0; 16],
            role: 0,
            flags: FLAG_CLEAN | if journal_blocks > 0 { FLAG_JOURNAL } else { 0 },
            events: 0,
            block_size: bs,
            chunk_blocks: cfg.chunk_blocks,
            tag_blocks,
            members: members.len() as u32,
            rows,
            data_start,
            bitmap_start,
            bitmap_blocks,
            region_rows: cfg.region_rows,
            journal_start,
            journal_blocks,
            backup_start,
            backup_rows,
            rebuild_slot: 0,
            rebuild_flags: 0,
            rebuild_pos: 0,
            reshape_members: 0,
            reshape_pos: 0,
            closed_epoch: 0,
            slots: members
                .iter()
                .map(|d| SlotEntry {
                    device: uuid_of(d),
                    state: SlotState::Active,
                })
                .collect(),
        };
        let layout = Layout {
            members: members.len() as u32,
            chunk_blocks: cfg.chunk_blocks,
            tag_blocks,
            data_start,
            rows,
        };
        for d in members.iter().chain(&spares) {
            // Metadata areas and data area start out zeroed: a zero tag block
            // means "never written", whose blocks must read as zeroes.
            d.write_zeroes(0, layout.member_blocks_needed(), true)
                .await
                .map_err(|e| RaidError::Member { slot: 0, source: e })?;
        }
        let slots = members
            .iter()
            .map(|d| Slot {
                dev: Some(d.clone()),
                uuid: uuid_of(d),
                state: MemberState::InSync,
            })
            .collect();
        let meta = Meta {
            sb,
            slots,
            spares,
            rebuild: None,
            bitmap: Bitmap::new(rows, cfg.region_rows),
            clean_on_disk: true,
        };
        let array = Self::from_parts(
            cfg,
            bs,
            array_uuid,
            clock,
            Geo {
                cur: layout,
                reshape: None,
            },
            meta,
        );
        if let Some(j) = &array.inner.journal {
            j.reset_all(&array).await?;
        }
        array.write_superblocks().await?;
        array.begin_epochs();
        info!(uuid = %array.inner.identity, rows, members = layout.members, "raid5 array created");
        Ok(array)
    }

    pub(crate) fn from_parts(
        cfg: Config,
        block_size: u32,
        array_uuid: [u8; 16],
        clock: Arc<dyn Clock>,
        geo: Geo,
        meta: Meta,
    ) -> RaidArray {
        let journal = (meta.sb.journal_blocks > 0).then(|| JournalState::new(&meta.sb));
        let meta_events = meta.sb.events;
        RaidArray {
            inner: Arc::new(Inner {
                cfg,
                block_size,
                identity: DeviceIdentity::from_uuid(array_uuid),
                array_uuid,
                clock,
                geo: Arc::new(AsyncRwLock::new(geo)),
                meta: Mutex::new(meta),
                row_locks: (0..ROW_LOCKS).map(|_| AsyncMutex::new(())).collect(),
                cache: Mutex::new(BTreeMap::new()),
                parity_pool: Mutex::new(Vec::new()),
                xor_tagger: XorTagger::new(block_size as usize),
                sb_lock: AsyncMutex::new(()),
                bitmap_lock: AsyncMutex::new(()),
                journal,
                stats: Stats::default(),
                capacity: AtomicU64::new(geo.cur.capacity()),
                epoch: AtomicU64::new((meta_events + 1) << 32),
                written_epoch: AtomicU64::new(0),
            }),
        }
    }

    /// Starts the tags' flush epochs above any used before: call once the
    /// superblocks of this assembly are durable.
    pub(crate) fn begin_epochs(&self) {
        let events = self.meta().sb.events;
        self.inner.epoch.store(events << 32, Ordering::SeqCst);
    }

    /// The tags' current flush epoch.
    pub(crate) fn epoch(&self) -> u64 {
        self.inner.epoch.load(Ordering::SeqCst)
    }

    /// The current flush epoch, for a write about to update tag entries
    /// (giving them a previous content): the next flush must then record
    /// the epoch closed on the members.
    fn write_epoch(&self) -> u64 {
        let e = self.epoch();
        self.inner.written_epoch.fetch_max(e, Ordering::SeqCst);
        e
    }

    /// Records on the members that every flush epoch below `epoch` is
    /// durable (`Superblock::closed_epoch`), unless they say so already or
    /// (`lazy`) no write of this assembly updated tags since they last did.
    pub(crate) async fn close_epochs_below(&self, epoch: u64, lazy: bool) -> Result<()> {
        let written = self.inner.written_epoch.load(Ordering::SeqCst);
        let persist = {
            let mut m = self.meta();
            let due = epoch > m.sb.closed_epoch && (!lazy || written >= m.sb.closed_epoch);
            if due {
                m.sb.closed_epoch = epoch;
            }
            due
        };
        if persist {
            self.write_superblocks().await?;
        }
        Ok(())
    }

    pub(crate) fn meta(&self) -> std::sync::MutexGuard<'_, Meta> {
        self.inner.meta.lock().expect("meta lock poisoned")
    }

    pub(crate) fn now(&self) -> Duration {
        self.inner.clock.now()
    }

    /// The array's identity (derived from its uuid).
    pub fn array_uuid(&self) -> [u8; 16] {
        self.inner.array_uuid
    }

    /// State of every member slot.
    pub fn member_states(&self) -> Vec<MemberState> {
        self.meta().slots.iter().map(|s| s.state).collect()
    }

    /// Identity of the device in every member slot (`None`: no device).
    pub fn member_identities(&self) -> Vec<Option<DeviceIdentity>> {
        self.meta()
            .slots
            .iter()
            .map(|s| s.dev.as_ref().map(|d| d.identity().clone()))
            .collect()
    }

    /// Number of hot spares waiting.
    pub fn spare_count(&self) -> usize {
        self.meta().spares.len()
    }

    /// Counters of detected and repaired corruption.
    pub fn integrity_stats(&self) -> IntegrityStats {
        let s = &self.inner.stats;
        IntegrityStats {
            checksum_errors: s.checksum_errors.load(Ordering::Relaxed),
            repaired_blocks: s.repaired.load(Ordering::Relaxed),
            unrecoverable: s.unrecoverable.load(Ordering::Relaxed),
            read_errors: s.read_errors.load(Ordering::Relaxed),
            resync_unverified: s.resync_unverified.load(Ordering::Relaxed),
        }
    }

    /// Whether any member is failed, missing or still rebuilding.
    pub fn degraded(&self) -> bool {
        self.meta()
            .slots
            .iter()
            .any(|s| s.state != MemberState::InSync)
    }

    /// The current layout (the old one while a reshape runs).
    pub async fn layout(&self) -> Layout {
        self.inner.geo.read().await.cur
    }

    /// Capacity, per-member use and the space wasted on larger members.
    pub async fn size_report(&self) -> SizeReport {
        let geo = *self.inner.geo.read().await;
        let used = geo.cur.member_blocks_needed();
        let wasted = self
            .meta()
            .slots
            .iter()
            .filter_map(|s| s.dev.as_ref())
            .map(|d| d.geometry().num_blocks.saturating_sub(used))
            .sum();
        SizeReport {
            capacity_blocks: geo.capacity(),
            used_per_member: used,
            wasted_blocks: wasted,
        }
    }

    /// The member device usable for `row` of `lay` in `slot`, if any.
    pub(crate) fn usable(&self, slot: u32, row: u64) -> Option<SharedDevice> {
        let m = self.meta();
        let s = m.slots.get(slot as usize)?;
        match s.state {
            MemberState::InSync => s.dev.clone(),
            MemberState::Rebuilding => match &m.rebuild {
                Some(r) if r.slot == slot && r.in_sync(row, &m.bitmap) => s.dev.clone(),
                _ => None,
            },
            MemberState::Faulty { .. } => None,
        }
    }

    pub(crate) fn place(&self, row: u64, slot: u32) -> TagPlace {
        let mut array = [0u8; 8];
        array.copy_from_slice(&self.inner.array_uuid[..8]);
        TagPlace { array, row, slot }
    }

    // ---------------------------------------------------------------- metadata

    /// Writes a new superblock version (events + 1) to every present member and spare.
    pub(crate) async fn write_superblocks(&self) -> Result<()> {
        let _g = self.inner.sb_lock.lock().await;
        for _attempt in 0..MAX_SLOTS {
            let (targets, sb) = {
                let mut m = self.meta();
                m.sb.events += 1;
                m.sb.slots = m
                    .slots
                    .iter()
                    .map(|s| SlotEntry {
                        device: s.uuid,
                        state: match s.state {
                            MemberState::InSync => SlotState::Active,
                            MemberState::Faulty { .. } => SlotState::Faulty,
                            MemberState::Rebuilding => SlotState::Rebuilding,
                        },
                    })
                    .collect();
                match m.rebuild.clone() {
                    Some(r) => {
                        m.sb.flags |= FLAG_REBUILD;
                        m.sb.rebuild_slot = r.slot;
                        m.sb.rebuild_pos = r.checkpoint;
                        m.sb.rebuild_flags = if r.bitmap_only { REBUILD_BITMAP } else { 0 };
                    }
                    None => m.sb.flags &= !FLAG_REBUILD,
                }
                let mut targets: Vec<(u32, SharedDevice)> = m
                    .slots
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| !matches!(s.state, MemberState::Faulty { .. }))
                    .filter_map(|(i, s)| s.dev.clone().map(|d| (i as u32, d)))
                    .collect();
                targets.extend(m.spares.iter().map(|d| (SPARE, d.clone())));
                (targets, m.sb.clone())
            };
            let bs = self.inner.block_size;
            let at = Superblock::slot_block(bs, sb.events);
            let writes = targets.iter().map(|(role, d)| {
                let mut copy = sb.clone();
                copy.role = *role;
                copy.device_uuid = uuid_of(d);
                let buf = Bytes::from(copy.encode());
                let d = d.clone();
                async move { d.write(at, buf, WriteFlags::FUA).await }
            });
            let results = join_all(writes).await;
            let mut failed = false;
            for ((role, _), r) in targets.iter().zip(results) {
                if let Err(e) = r {
                    warn!(slot = role, error = %e, "superblock write failed");
                    failed = true;
                    self.mark_faulty(*role);
                }
            }
            if !failed {
                return self.check_alive();
            }
        }
        self.check_alive()
    }

    /// Marks a slot (or spare) faulty in memory. Returns whether it changed.
    fn mark_faulty(&self, slot: u32) -> bool {
        let now = self.now();
        let mut m = self.meta();
        if slot == SPARE {
            return false;
        }
        let Some(s) = m.slots.get_mut(slot as usize) else {
            return false;
        };
        if matches!(s.state, MemberState::Faulty { .. }) {
            return false;
        }
        s.state = MemberState::Faulty { since: now };
        if m.rebuild.as_ref().is_some_and(|r| r.slot == slot) {
            m.rebuild = None;
        }
        true
    }

    fn check_alive(&self) -> Result<()> {
        let m = self.meta();
        let members = m.sb.members.max(m.sb.reshape_members) as usize;
        let bad = m.slots[..members.min(m.slots.len())]
            .iter()
            .filter(|s| matches!(s.state, MemberState::Faulty { .. }))
            .count();
        if bad > 1 {
            Err(RaidError::Failed(format!("{bad} members failed")))
        } else {
            Ok(())
        }
    }

    /// A member failed an I/O: mark it faulty and persist that on the others.
    pub(crate) async fn fail_member(&self, slot: u32, err: &BlockError) {
        if self.mark_faulty(slot) {
            warn!(slot, error = %err, "member failed; array degraded");
            if let Some(j) = &self.inner.journal {
                // Its ring held the records of the rows it was parity for,
                // written in place on the others: those writes must become
                // durable before a crash could tear them unprotected.
                j.request_checkpoint();
            }
            if let Err(e) = self.write_superblocks().await {
                warn!(error = %e, "could not persist member failure");
            }
        }
    }

    /// Persists "dirty" before the first write after a clean state.
    async fn mark_dirty(&self) -> Result<()> {
        if !self.meta().clean_on_disk {
            return Ok(());
        }
        {
            let mut m = self.meta();
            m.clean_on_disk = false;
            m.sb.flags &= !FLAG_CLEAN;
        }
        self.write_superblocks().await
    }

    /// Devices that hold metadata (bitmap, superblock): present and not faulty.
    pub(crate) fn live_members(&self) -> Vec<(u32, SharedDevice)> {
        self.meta()
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| !matches!(s.state, MemberState::Faulty { .. }))
            .filter_map(|(i, s)| s.dev.clone().map(|d| (i as u32, d)))
            .collect()
    }

    /// Writes the whole bitmap to every live member.
    pub(crate) async fn persist_bitmap(&self) -> Result<()> {
        let blocks = self.meta().sb.bitmap_blocks;
        for b in 0..blocks {
            self.persist_bitmap_block(b).await?;
        }
        Ok(())
    }

    /// Writes bitmap block `b` to every live member.
    pub(crate) async fn persist_bitmap_block(&self, b: u64) -> Result<()> {
        let _g = self.inner.bitmap_lock.lock().await;
        let bs = self.inner.block_size;
        let (buf, at) = {
            let m = self.meta();
            (
                Bytes::from(m.bitmap.encode_block(b, bs)),
                m.sb.bitmap_start + b,
            )
        };
        let targets = self.live_members();
        let res = join_all(
            targets
                .iter()
                .map(|(_, d)| d.write(at, buf.clone(), WriteFlags::FUA)),
        )
        .await;
        for ((slot, _), r) in targets.iter().zip(res) {
            if let Err(e) = r {
                self.fail_member(*slot, &e).await;
            }
        }
        self.check_alive()
    }

    /// A write to `row` is about to touch the members: its bitmap region is
    /// dirty (and persisted) until the returned guard ends the write.
    pub(crate) async fn begin_row_write(&self, row: u64) -> Result<RowWrite<'_>> {
        self.mark_dirty().await?;
        let need = self.meta().bitmap.start_write(row, self.inner.block_size);
        // From here on the write is counted in the bitmap; the guard ends it
        // however this function or the write returns, or is dropped.
        let guard = RowWrite {
            array: self,
            row,
            writing: false,
        };
        if let Some(b) = need {
            self.persist_bitmap_block(b).await?;
        }
        Ok(guard)
    }

    // ---------------------------------------------------------------- member I/O

    pub(crate) async fn row_lock(&self, row: u64) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.row_locks[(row % ROW_LOCKS as u64) as usize]
            .lock()
            .await
    }

    /// Reads the tag blocks of `row` on a member.
    pub(crate) async fn read_tags(
        &self,
        lay: &Layout,
        row: u64,
        slot: u32,
        dev: &SharedDevice,
    ) -> std::result::Result<ChunkTags, BlockError> {
        let buf = dev.read(lay.tag_block(row, 0), lay.tag_blocks).await?;
        Ok(ChunkTags::decode(
            &buf,
            self.inner.block_size,
            lay.chunk_blocks,
            self.place(row, slot),
        ))
    }

    /// Reads blocks `[i0, i1)` of a member's chunk in `row` and checks them
    /// against their tags. `Ok(None)` when the member is unusable or a block
    /// fails its check (counted).
    async fn read_verified(
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
        let n = i1 - i0;
        let (data, tags) = tokio::join!(
            dev.read(lay.member_block(row, i0), n),
            self.read_tags(lay, row, slot, &dev)
        );
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
        let bs = self.inner.block_size as usize;
        for (j, blk) in data.chunks_exact(bs).enumerate() {
            let i = i0 + j as u32;
            if !tags.verifies(i as usize, tag_addr(lay, row, slot, i), blk) {
                self.inner
                    .stats
                    .checksum_errors
                    .fetch_add(1, Ordering::Relaxed);
                return Ok(None);
            }
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
        let n = i1 - i0;
        let (data, tags) = tokio::join!(
            dev.read(lay.member_block(row, i0), n),
            self.read_tags(lay, row, slot, &dev)
        );
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
                if let Err(e) = dev
                    .write(
                        lay.member_block(row, b0),
                        Bytes::from(fixed.clone()),
                        WriteFlags::FUA,
                    )
                    .await
                {
                    self.fail_member(slot, &e).await;
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

    /// Writes a whole chunk and its freshly computed tags to a member.
    pub(crate) async fn write_chunk_with_tags(
        &self,
        lay: &Layout,
        row: u64,
        slot: u32,
        dev: &SharedDevice,
        content: &[u8],
        flags: WriteFlags,
    ) -> bool {
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
        match dev
            .write(lay.member_block(row, 0), buf.freeze(), flags)
            .await
        {
            Ok(()) => true,
            Err(e) => {
                self.fail_member(slot, &e).await;
                false
            }
        }
    }

    // ---------------------------------------------------------------- row writes

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

    // ---------------------------------------------------------------- volume I/O

    /// Splits `[lba, lba + n)` into rows of their layouts: `(layout, row, pieces of (lba, blocks))`.
    pub(crate) fn split(geo: &Geo, lba: u64, n: u64) -> Vec<RowSpan> {
        let mut out: Vec<RowSpan> = Vec::new();
        let mut pos = lba;
        let end = lba + n;
        while pos < end {
            let (lay, lay_end) = geo.layout_for(pos);
            let (row, _, i) = lay.locate(pos);
            let chunk_end = pos - u64::from(i) + u64::from(lay.chunk_blocks);
            let stop = end.min(chunk_end).min(lay_end);
            match out.last_mut() {
                Some((l, r, v)) if *l == lay && *r == row => v.push((pos, stop - pos)),
                _ => out.push((lay, row, vec![(pos, stop - pos)])),
            }
            pos = stop;
        }
        out
    }

    /// Takes the cached blocks of a row out of the cache as pieces.
    fn take_cached(&self, geo: &Geo, lay: &Layout, row: u64) -> BTreeMap<u64, Bytes> {
        let mut cache = self.inner.cache.lock().expect("cache lock");
        let keys: Vec<u64> = cache
            .range(geo.row_range(lay, row))
            .map(|(k, _)| *k)
            .collect();
        keys.into_iter()
            .filter_map(|k| cache.remove(&k).map(|v| (k, v)))
            .collect()
    }

    /// Turns single cached blocks into per-chunk contiguous pieces.
    fn pieces_of(&self, lay: &Layout, blocks: BTreeMap<u64, Bytes>) -> Vec<Piece> {
        let mut out: Vec<Piece> = Vec::new();
        let mut run: Vec<(u64, Bytes)> = Vec::new();
        let flush = |run: &mut Vec<(u64, Bytes)>, out: &mut Vec<Piece>| {
            if let Some((first, _)) = run.first() {
                let buf = concat_bytes(run.iter().map(|(_, b)| b));
                out.push((*first, buf));
                run.clear();
            }
        };
        for (lba, b) in blocks {
            let contiguous = run
                .last()
                .is_some_and(|(l, _)| *l + 1 == lba && lay.locate(lba).2 != 0);
            if !contiguous {
                flush(&mut run, &mut out);
            }
            run.push((lba, b));
        }
        flush(&mut run, &mut out);
        out
    }

    /// Writes out every cached row.
    pub(crate) async fn destage_all(&self, geo: &Geo) -> Result<()> {
        while self.destage_first(geo).await? {}
        Ok(())
    }

    /// Writes out cached rows, lowest first, until the cache fits its limit.
    async fn evict(&self, geo: &Geo) -> Result<()> {
        while self.inner.cache.lock().expect("cache lock").len() > self.inner.cfg.cache_blocks {
            if !self.destage_first(geo).await? {
                break;
            }
        }
        Ok(())
    }

    /// Writes out the row of the lowest cached block; false if the cache is empty.
    async fn destage_first(&self, geo: &Geo) -> Result<bool> {
        let first = self
            .inner
            .cache
            .lock()
            .expect("cache lock")
            .keys()
            .next()
            .copied();
        let Some(lba) = first else { return Ok(false) };
        let (lay, _) = geo.layout_for(lba);
        let (row, ..) = lay.locate(lba);
        let _g = self.row_lock(row).await;
        let blocks = self.take_cached(geo, &lay, row);
        if !blocks.is_empty() {
            let pieces = self.pieces_of(&lay, blocks);
            self.write_row(&lay, row, &pieces, false).await?;
        }
        Ok(true)
    }

    /// Volume write. Whole rows go straight to the members as full-stripe
    /// writes; partial rows wait in the stripe cache, which writes a row out
    /// as soon as it is complete, when it overflows, on flush, or at once for FUA.
    ///
    /// When a request covers several whole rows, each row is its own task, so
    /// their parity, checksums and member transfers run on as many cores as
    /// the runtime has. The tasks share the geometry read guard of the call
    /// and take their row locks themselves: if the caller goes away, the rows
    /// already started still finish under the layout they were planned with.
    pub async fn write_blocks(&self, lba: u64, data: Bytes, fua: bool) -> Result<()> {
        let bs = self.inner.block_size as usize;
        let geo = Arc::new(self.inner.geo.clone().read_owned().await);
        let g = Geometry {
            block_size: self.inner.block_size,
            num_blocks: geo.capacity(),
        };
        let n = g.blocks_in(data.len()).map_err(RaidError::Request)?;
        g.check_range(lba, n).map_err(RaidError::Request)?;
        // Each row of the request, with whether the request covers all of it.
        let spans: Vec<(RowSpan, bool)> = Self::split(&geo, lba, n)
            .into_iter()
            .map(|span| {
                let range = geo.row_range(&span.0, span.1);
                let whole = span.2.iter().map(|p| p.1).sum::<u64>() == range.end - range.start;
                (span, whole)
            })
            .collect();
        let whole_rows = spans.iter().filter(|(_, whole)| *whole).count();
        let mut tasks = Vec::new();
        let mut first_err = None;
        for ((lay, row, pieces), whole) in spans {
            let slices: Vec<Piece> = pieces
                .iter()
                .map(|&(l, cnt)| {
                    let off = (l - lba) as usize * bs;
                    (l, data.slice(off..off + cnt as usize * bs))
                })
                .collect();
            let r = if whole {
                if whole_rows > 1 {
                    let (this, geo) = (self.clone(), geo.clone());
                    tasks.push(tokio::spawn(async move {
                        this.write_whole_row(&geo, &lay, row, &slices, fua).await
                    }));
                    continue;
                }
                self.write_whole_row(&geo, &lay, row, &slices, fua).await
            } else {
                self.write_partial_row(&geo, &lay, row, &slices, fua).await
            };
            if let Err(e) = r {
                first_err = Some(e);
                break;
            }
        }
        // The request ends when its rows do, failed or not.
        for t in tasks {
            if let Err(e) = join_row_task(t.await) {
                first_err.get_or_insert(e);
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        self.settle_journal().await?;
        self.evict(&geo).await
    }

    /// Puts the blocks `pieces` of row `row` (not all of it) in the stripe
    /// cache, and writes the row out once the cache holds all of it, or at
    /// once for FUA.
    async fn write_partial_row(
        &self,
        geo: &Geo,
        lay: &Layout,
        row: u64,
        pieces: &[Piece],
        fua: bool,
    ) -> Result<()> {
        let bs = self.inner.block_size as usize;
        let range = geo.row_range(lay, row);
        let _g = self.row_lock(row).await;
        let complete = {
            let mut cache = self.inner.cache.lock().expect("cache lock");
            for (l, buf) in pieces {
                for j in 0..buf.len() / bs {
                    cache.insert(l + j as u64, buf.slice(j * bs..(j + 1) * bs));
                }
            }
            fua || cache.range(range.clone()).count() as u64 == range.end - range.start
        };
        if complete {
            let blocks = self.take_cached(geo, lay, row);
            let pieces = self.pieces_of(lay, blocks);
            self.write_row(lay, row, &pieces, fua).await?;
        }
        Ok(())
    }

    /// Writes row `row`, wholly covered by `pieces`, as a full stripe; the
    /// stripe cache's older blocks of that row are dropped.
    async fn write_whole_row(
        &self,
        geo: &Geo,
        lay: &Layout,
        row: u64,
        pieces: &[Piece],
        fua: bool,
    ) -> Result<()> {
        let _g = self.row_lock(row).await;
        self.take_cached(geo, lay, row);
        self.write_row(lay, row, pieces, fua).await
    }

    /// Runs the journal checkpoint a member failure asked for
    /// ([`JournalState::request_checkpoint`]); called at the end of reads,
    /// writes and maintenance, where no journal guard is held.
    pub(crate) async fn settle_journal(&self) -> Result<()> {
        match &self.inner.journal {
            Some(j) => j.checkpoint_if_requested(self).await,
            None => Ok(()),
        }
    }

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
        for (lay, row, pieces) in Self::split(&geo, lba, u64::from(n)) {
            let _g = self.row_lock(row).await;
            for (l, cnt) in pieces {
                let off = (l - lba) as usize * bs;
                let dst = &mut out[off..off + cnt as usize * bs];
                let cached: Vec<(u64, Bytes)> = {
                    let cache = self.inner.cache.lock().expect("cache lock");
                    cache
                        .range(l..l + cnt)
                        .map(|(k, v)| (*k, v.clone()))
                        .collect()
                };
                if cached.len() as u64 != cnt {
                    let (_, k, i) = lay.locate(l);
                    let buf = self.read_chunk(&lay, row, k, i, i + cnt as u32).await?;
                    dst.copy_from_slice(&buf);
                }
                for (k, v) in cached {
                    let o = (k - l) as usize * bs;
                    dst[o..o + bs].copy_from_slice(&v);
                }
            }
        }
        self.settle_journal().await?;
        Ok(out.freeze())
    }

    /// Writes the cache out and makes every completed write durable; then
    /// clears bitmap bits that are no longer needed and empties the journal.
    pub async fn flush_all(&self) -> Result<()> {
        let geo = self.inner.geo.read().await;
        self.flush_locked(&geo).await
    }

    pub(crate) async fn flush_locked(&self, geo: &Geo) -> Result<()> {
        self.destage_all(geo).await?;
        let epoch = self.meta().bitmap.begin_flush();
        // Tags written from now on count what this flush makes durable as
        // their previous content.
        let started = self.inner.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        self.flush_members().await?;
        // The epochs before this one are durable now: say so on the members
        // (FUA) before a later overwrite could leave a tag of theirs naming a
        // previous content that is gone (integrity module docs). Not before
        // the flush: a crash in its middle could then land the record ahead
        // of the writes it vouches for, and resync would distrust blocks the
        // crash legitimately reverted.
        self.close_epochs_below(started, true).await?;
        if let Some(j) = &self.inner.journal {
            j.checkpoint(self).await?;
        }
        let clear = {
            let mut m = self.meta();
            let keep = m.slots.iter().any(|s| s.state != MemberState::InSync);
            !keep && m.bitmap.clear_flushed(epoch)
        };
        if clear {
            self.persist_bitmap().await?;
        }
        Ok(())
    }

    pub(crate) async fn flush_members(&self) -> Result<()> {
        let targets = self.live_members();
        let res = join_all(targets.iter().map(|(_, d)| d.flush())).await;
        for ((slot, _), r) in targets.iter().zip(res) {
            if let Err(e) = r {
                self.fail_member(*slot, &e).await;
            }
        }
        self.check_alive()
    }

    /// Flushes and marks the array clean on its members: the orderly stop.
    pub async fn close(&self) -> Result<()> {
        let geo = self.inner.geo.write().await;
        self.flush_locked(&geo).await?;
        {
            let mut m = self.meta();
            m.sb.flags |= FLAG_CLEAN;
            m.clean_on_disk = true;
        }
        self.write_superblocks().await?;
        self.flush_members().await
    }

    /// Adds a hot spare: it is pulled in when a member has been failed for
    /// [`Config::spare_timeout`].
    pub async fn add_spare(&self, dev: SharedDevice) -> Result<()> {
        if dev.geometry().block_size != self.inner.block_size {
            return Err(RaidError::Config("spare block size differs".into()));
        }
        let need = self.inner.geo.read().await.cur.member_blocks_needed();
        if dev.geometry().num_blocks < need {
            return Err(RaidError::Config(format!(
                "spare has fewer than the {need} blocks needed"
            )));
        }
        self.meta().spares.push(dev);
        self.write_superblocks().await
    }

    /// Takes a member out (administratively failed), as if it had failed.
    pub async fn fail(&self, slot: u32) {
        self.fail_member(slot, &BlockError::Failed("failed by administrator".into()))
            .await;
    }

    pub(crate) fn set_flag(&self, flag: u32, on: bool) {
        let mut m = self.meta();
        if on {
            m.sb.flags |= flag;
        } else {
            m.sb.flags &= !flag;
        }
    }

    pub(crate) fn set_capacity(&self, blocks: u64) {
        self.inner.capacity.store(blocks, Ordering::Relaxed);
    }
}

/// The outcome of a row task of a volume write: its panic goes on
/// unwinding in the request, a runtime shutting down fails it.
fn join_row_task(r: std::result::Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    match r {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(RaidError::Failed(
            "row task cancelled: the runtime is shutting down".into(),
        )),
    }
}

fn concat_bytes<'a>(mut it: impl Iterator<Item = &'a Bytes> + Clone) -> Bytes {
    let count = it.clone().count();
    if count == 1 {
        return it.next().cloned().unwrap_or_default();
    }
    let mut buf = BytesMut::new();
    for b in it {
        buf.extend_from_slice(b);
    }
    buf.freeze()
}

#[async_trait]
impl BlockDevice for RaidArray {
    fn geometry(&self) -> Geometry {
        Geometry {
            block_size: self.inner.block_size,
            num_blocks: self.inner.capacity.load(Ordering::Relaxed),
        }
    }

    fn identity(&self) -> &DeviceIdentity {
        &self.inner.identity
    }

    fn features(&self) -> Features {
        Features {
            thin: false,
            unmap_reads_zero: true,
            volatile_cache: true,
        }
    }

    async fn read(&self, lba: u64, blocks: u32) -> blockdev::Result<Bytes> {
        Ok(self.read_blocks(lba, blocks).await?)
    }

    async fn write(&self, lba: u64, data: Bytes, flags: WriteFlags) -> blockdev::Result<()> {
        Ok(self.write_blocks(lba, data, flags.fua).await?)
    }

    async fn flush(&self) -> blockdev::Result<()> {
        Ok(self.flush_all().await?)
    }

    async fn write_zeroes(&self, lba: u64, blocks: u64, _unmap: bool) -> blockdev::Result<()> {
        blockdev::write_zeroes_by_writes(self, lba, blocks, 1 << 20).await
    }
}

/// A row write counted in the write-intent bitmap ([`RaidArray::begin_row_write`]).
///
/// Dropped once the write has returned (done or failed), or before it began
/// writing the members, it ends the write in the bitmap. Dropped while the
/// members were being written (the write's future was dropped half-way, or
/// it panicked), it leaves the write counted: the row may be torn against its
/// parity, so its region must stay dirty until a resync (the next assembly)
/// rather than be cleared by the next flush.
pub(crate) struct RowWrite<'a> {
    array: &'a RaidArray,
    row: u64,
    /// The members are being written.
    writing: bool,
}

impl Drop for RowWrite<'_> {
    fn drop(&mut self) {
        if self.writing {
            tracing::warn!(
                row = self.row,
                "row write abandoned half-way: its bitmap region stays dirty until a resync"
            );
            return;
        }
        self.array.meta().bitmap.end_write(self.row);
    }
}

#[cfg(test)]
mod tests {
    use std::task::{Context, Waker};

    use blockdev::{FaultyDevice, MemDevice};

    use super::*;
    use crate::clock::SystemClock;

    const ROW_BLOCKS: u64 = 8; // 2 data chunks of 4 blocks
    const BS: usize = 512;

    async fn array() -> (RaidArray, Vec<Arc<FaultyDevice>>) {
        let members: Vec<Arc<FaultyDevice>> = (0..3)
            .map(|i| {
                let mem = MemDevice::new(512, 4096, DeviceIdentity::from_name(&format!("m{i}")));
                Arc::new(FaultyDevice::new(Arc::new(mem), i))
            })
            .collect();
        let cfg = Config {
            chunk_blocks: 4,
            region_rows: 4,
            cache_blocks: 64,
            ..Config::default()
        };
        let shared = members.iter().map(|m| m.clone() as SharedDevice).collect();
        let a = RaidArray::create(shared, vec![], cfg, Arc::new(SystemClock::new()))
            .await
            .expect("create");
        (a, members)
    }

    /// Polls a write of row `row` until member 0 holds one of its writes,
    /// then drops it, as a caller that gives up on it would.
    async fn drop_while_held(a: &RaidArray, m0: &FaultyDevice, row: u64) {
        let data = Bytes::from(vec![row as u8 + 1; ROW_BLOCKS as usize * BS]);
        let mut w = a.write(row * ROW_BLOCKS, data, WriteFlags::FUA);
        while m0.held_writes() == 0 {
            let p = w.as_mut().poll(&mut Context::from_waker(Waker::noop()));
            assert!(
                p.is_pending(),
                "the write finished although a member holds it"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        drop(w);
        m0.release_writes();
        while m0.held_writes() > 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_row_write_dropped_half_way_keeps_its_region_dirty_only_if_it_wrote() {
        let (a, m) = array().await;
        let block = || Bytes::from(vec![9u8; ROW_BLOCKS as usize * BS]);
        // The array is dirty already: the next member write of a write to a
        // clean region is its bitmap block.
        a.write(0, block(), WriteFlags::FUA).await.unwrap();
        a.flush().await.unwrap();

        // Dropped while its bitmap block was being persisted: nothing of the
        // row was written, so the write ends and the next flush cleans up.
        m[0].hold_next_writes(1);
        drop_while_held(&a, &m[0], 8).await;
        a.flush().await.unwrap();
        assert!(
            !a.meta().bitmap.row_dirty(8),
            "a write dropped before it touched the row kept its region dirty for good"
        );

        // Dropped while writing the row (its region dirty and persisted by a
        // write to another row of it): the row may be torn against its
        // parity, so its region stays dirty after the flush.
        a.write(9 * ROW_BLOCKS, block(), WriteFlags::FUA)
            .await
            .unwrap();
        m[0].hold_next_writes(1);
        drop_while_held(&a, &m[0], 8).await;
        a.flush().await.unwrap();
        assert!(
            a.meta().bitmap.row_dirty(8),
            "a row write dropped half-way had its region cleared"
        );
    }
}
