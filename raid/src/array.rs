//! The array: its configuration, the state every part of the engine shares,
//! the public view of it, and its face as a [`BlockDevice`].
//!
//! The engine's work is split by concern, each an `impl RaidArray` of its
//! own: [`crate::assembly`] (creation and assembly), `metadata`
//! (superblocks, member failures, the write-intent bitmap on the members),
//! `read` (verified reads, reconstruction, repair),
//! `write` (volume writes and the stripe cache's destaging),
//! `row_update` (one row's update on the members: parity, tags,
//! journal), `flush` (flushes and the tags' flush epochs), and
//! [`crate::rebuild`], [`crate::reshape`], [`crate::scrub`]. The state they
//! share lives in modules that know nothing of the array:
//! `members`, `geometry`, `cache`,
//! `rows` and [`crate::journal`].
//!
//! Locking, outermost first: the geometry lock (`geo`, shared by all I/O,
//! exclusive for a reshape step), one row lock per stripe (hashed into a fixed
//! table), then the short synchronous `meta` and cache mutexes. The
//! superblock, bitmap and journal writers have their own async locks taken
//! inside row locks and never the other way round.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use blockdev::{
    BlockDevice, Bytes, BytesMut, DeviceIdentity, Features, Geometry, SharedDevice, WriteFlags,
};
use tokio::sync::{Mutex as AsyncMutex, RwLock as AsyncRwLock};

use crate::cache::StripeCache;
use crate::clock::Clock;
use crate::geometry::Geo;
use crate::integrity::{TagPlace, XorTagger};
use crate::journal::JournalState;
use crate::layout::Layout;
use crate::member_io::MemberDevice;
use crate::members::{MemberState, Meta};
use crate::rows::{RowGuard, RowLocks, RowWork};
use crate::tag_cache::{TagCache, TagCacheStats};

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
    /// Most blocks the stripe cache holds before it writes rows out; 0
    /// turns it off: a partial row is written (read-modify-write) before
    /// its write is answered, so nothing answered lives only in memory.
    pub cache_blocks: usize,
    /// How long a member stays failed before a hot spare replaces it.
    pub spare_timeout: Duration,
    /// Rebuild rate limit in rows per second (`None`: unlimited).
    pub rebuild_rows_per_sec: Option<u64>,
    /// Rows between persisted rebuild checkpoints.
    pub checkpoint_rows: u64,
    /// Rows a reshape moves per step at most.
    pub reshape_step_rows: u64,
    /// How long a member may answer nothing but transient errors (its path
    /// is down, it is busy, it timed out) before it is failed; its requests
    /// wait and are retried meanwhile. Zero fails it at the first one.
    pub member_timeout: Duration,
    /// Bytes of member tag blocks the read path keeps cached
    /// ([`crate::tag_cache`]), so a read whose chunk's tags are cached
    /// costs one member I/O; 0 turns the cache off.
    pub tag_cache_bytes: usize,
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
            member_timeout: Duration::from_secs(30),
            tag_cache_bytes: 64 << 20,
        }
    }
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

#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) checksum_errors: AtomicU64,
    pub(crate) repaired: AtomicU64,
    pub(crate) unrecoverable: AtomicU64,
    pub(crate) read_errors: AtomicU64,
    pub(crate) resync_unverified: AtomicU64,
}

pub(crate) struct Inner {
    pub(crate) cfg: Config,
    pub(crate) block_size: u32,
    pub(crate) identity: DeviceIdentity,
    pub(crate) array_uuid: [u8; 16],
    pub(crate) clock: Arc<dyn Clock>,
    /// Geometry: shared by I/O, exclusive for a change of layout (which
    /// first waits for row work that outlived its caller, [`crate::rows`]).
    pub(crate) geo: AsyncRwLock<Geo>,
    pub(crate) meta: Mutex<Meta>,
    pub(crate) rows: RowLocks,
    pub(crate) cache: StripeCache,
    /// Tag blocks read from the members ([`crate::tag_cache`]).
    pub(crate) tag_cache: Arc<TagCache>,
    /// Parity buffers kept for reuse by full-stripe writes.
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

impl RaidArray {
    pub(crate) fn from_parts(
        cfg: Config,
        block_size: u32,
        array_uuid: [u8; 16],
        clock: Arc<dyn Clock>,
        geo: Geo,
        meta: Meta,
        tag_cache: Arc<TagCache>,
    ) -> RaidArray {
        let journal = (meta.sb.journal_blocks > 0).then(|| JournalState::new(&meta.sb));
        let meta_events = meta.sb.events;
        let cache = StripeCache::new(cfg.cache_blocks);
        RaidArray {
            inner: Arc::new(Inner {
                cfg,
                block_size,
                identity: DeviceIdentity::from_uuid(array_uuid),
                array_uuid,
                clock,
                geo: AsyncRwLock::new(geo),
                meta: Mutex::new(meta),
                rows: RowLocks::new(),
                cache,
                tag_cache,
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

    /// Counters and memory of the tag-block cache ([`crate::tag_cache`]).
    pub fn tag_cache_stats(&self) -> TagCacheStats {
        self.inner.tag_cache.stats()
    }

    /// Whether any member is failed, missing or still rebuilding.
    pub fn degraded(&self) -> bool {
        self.meta().degraded()
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

    /// The member device usable for `row` in `slot`, if any.
    pub(crate) fn usable(&self, slot: u32, row: u64) -> Option<SharedDevice> {
        self.meta().usable(slot, row)
    }

    /// Devices that hold metadata (bitmap, superblock): present and not faulty.
    pub(crate) fn live_members(&self) -> Vec<(u32, SharedDevice)> {
        self.meta().live_members()
    }

    /// The identity the tag blocks of `slot`'s chunk in `row` carry.
    pub(crate) fn place(&self, row: u64, slot: u32) -> TagPlace {
        let mut array = [0u8; 8];
        array.copy_from_slice(&self.inner.array_uuid[..8]);
        TagPlace { array, row, slot }
    }

    /// Locks `row` against other updates and reads of it.
    pub(crate) async fn row_lock(&self, row: u64) -> RowGuard {
        self.inner.rows.lock(row).await
    }

    /// Locks `row`, then runs `work` (given a handle to the array) under the
    /// lock to its end, even if the caller goes away ([`crate::rows`]).
    pub(crate) async fn on_row<T, Fut>(&self, row: u64, work: impl FnOnce(RaidArray) -> Fut) -> T
    where
        Fut: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let guard = self.row_lock(row).await;
        self.run_locked(guard, work).await
    }

    /// Runs `work` under the row lock `guard` to its end, even if the
    /// returned future is dropped ([`crate::rows`]).
    pub(crate) fn run_locked<T, Fut>(
        &self,
        guard: RowGuard,
        work: impl FnOnce(RaidArray) -> Fut,
    ) -> RowWork<T>
    where
        Fut: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let work = work(self.clone());
        self.inner.rows.run(async move {
            let _locked = guard;
            work.await
        })
    }

    /// Stops the array at once, as a crash of its process would: work on
    /// its rows that goes on after its caller went away (a dropped
    /// request's, see the `rows` module) is aborted where it stands, and nothing
    /// more of it reaches the members. Requests still awaited by their
    /// callers are theirs to drop. The array must not be used afterwards;
    /// assemble it anew from its members. For a head that must stop
    /// writing at once, and for tests that simulate power loss.
    pub fn halt(&self) {
        self.inner.rows.halt();
    }

    /// `dev` as a member of this array ([`MemberDevice`]).
    pub(crate) fn as_member(&self, dev: SharedDevice) -> SharedDevice {
        MemberDevice::wrap(
            dev,
            self.inner.cfg.member_timeout,
            self.inner.clock.clone(),
            self.inner.tag_cache.clone(),
        )
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

    /// With `unmap`, [`RaidArray::discard`]: whole rows are deallocated on
    /// the members where parity stays right. Without, zeroes are written.
    async fn write_zeroes(&self, lba: u64, blocks: u64, unmap: bool) -> blockdev::Result<()> {
        if unmap {
            return Ok(self.discard(lba, blocks).await?);
        }
        blockdev::write_zeroes_by_writes(self, lba, blocks, 1 << 20).await
    }

    /// [`RaidArray::discard`]: the blocks read zeroes afterwards.
    async fn unmap(&self, lba: u64, blocks: u64) -> blockdev::Result<()> {
        Ok(self.discard(lba, blocks).await?)
    }
}
