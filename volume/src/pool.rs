//! The volume manager of one device: format, open, and the online
//! operations (create, grow, delete, read-only), each one table commit.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use blockdev::{BlockDevice, DeviceIdentity, SharedDevice};

use crate::alloc::{
    allocate, allocate_high, append, free_extents, mark_dirty, needs_zero, subtract,
};
use crate::changed_store::map_blocks;
use crate::cow::CowMap;
use crate::error::{CopyFault, Result, VolumeError};
use crate::mapping::ExtentMap;
use crate::snapshot::{Cow, Snapshot};
use crate::store::{self, Current};
use crate::table::{
    self, change_map_name, reserved_units, valid_name, Entry, Table, UnitExtent, FLAG_CHANGE_MAP,
    FLAG_READ_ONLY,
};
use crate::tracker::{region_blocks, Tracker};
use crate::volume::Volume;

/// Where creation times come from (injected for tests).
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// What the table says of one volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    /// Its name.
    pub name: String,
    /// Its uuid, fixed at creation.
    pub uuid: [u8; 16],
    /// The identity it is exported with (derived from the uuid).
    pub identity: DeviceIdentity,
    /// Whether it refuses writes.
    pub read_only: bool,
    /// When it was created (millisecond precision).
    pub created: SystemTime,
    /// Its capacity in blocks.
    pub size_blocks: u64,
    /// Its extents on the device, in allocation units, in volume order.
    pub extents: Vec<UnitExtent>,
    /// Open handles ([`Pool::open_volume`]'s `Arc`s alive).
    pub open_handles: usize,
}

/// Space on the device, in blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Blocks of the device in whole allocation units.
    pub total_blocks: u64,
    /// Blocks before the first allocatable unit (the two table copies).
    pub reserved_blocks: u64,
    /// Blocks in volumes.
    pub used_blocks: u64,
    /// Blocks free.
    pub free_blocks: u64,
    /// The largest volume [`Pool::create`] can make now, in blocks: the
    /// largest free run, less the units of its changed-block map when no
    /// other free unit can hold them.
    pub largest_free_blocks: u64,
    /// Free blocks not known to read zeroes (a deleted volume's, or never
    /// known zero): a volume that gets them has them zeroed first.
    pub unzeroed_free_blocks: u64,
}

/// The volumes of one device (a RAID5 array) and its mapping table.
///
/// Table changes are serialized and each is one commit (see the crate
/// docs); the space a change takes is zeroed and flushed before the commit,
/// so new space always reads zeroes and a deleted volume's data never shows
/// in another. I/O to open volumes never waits on a change: a grown volume
/// takes its new map at once, after the commit.
///
/// A change whose future is dropped, or that fails with a device error, is
/// not in effect in this process, but its table copy may have reached the
/// device, and a later open may show it: a caller that must know runs each
/// change to its end (the head's control API does).
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Shared>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state();
        f.debug_struct("Pool")
            .field("device", self.inner.dev.identity())
            .field("seq", &s.current.table.seq)
            .field("volumes", &s.current.table.volumes.len())
            .finish()
    }
}

struct Shared {
    dev: SharedDevice,
    /// Held for the whole of a table change.
    changes: tokio::sync::Mutex<()>,
    state: Mutex<State>,
    clock: Mutex<Clock>,
}

struct State {
    current: Current,
    open: HashMap<[u8; 16], Weak<Volume>>,
    deleting: HashSet<[u8; 16]>,
    /// The changed-block tracker of each volume, kept while the pool is
    /// open (a volume closed and opened again keeps its map).
    trackers: HashMap<[u8; 16], Arc<Tracker>>,
}

impl State {
    fn handles(&self, uuid: &[u8; 16]) -> usize {
        self.open.get(uuid).map_or(0, Weak::strong_count)
    }

    fn live(&self, uuid: &[u8; 16]) -> Option<Arc<Volume>> {
        self.open.get(uuid).and_then(Weak::upgrade)
    }
}

fn units_of(dev: &dyn BlockDevice, unit_blocks: u64) -> u64 {
    dev.geometry().num_blocks / unit_blocks
}

fn units_for(dev: &dyn BlockDevice, size_bytes: u64, unit_blocks: u64) -> Result<u64> {
    if size_bytes == 0 {
        return Err(VolumeError::InvalidSize(
            "a volume needs at least one block".into(),
        ));
    }
    let bs = u64::from(dev.geometry().block_size);
    Ok(size_bytes.div_ceil(bs).div_ceil(unit_blocks))
}

/// [`allocate`], or [`VolumeError::NoSpace`] with the figures.
fn allocate_or_refuse(
    free: &[UnitExtent],
    units: u64,
    after: Option<u64>,
    unit_blocks: u64,
) -> Result<Vec<UnitExtent>> {
    allocate(free, units, after).ok_or_else(|| VolumeError::NoSpace {
        needed_blocks: units * unit_blocks,
        free_blocks: free.iter().map(|e| e.len).sum::<u64>() * unit_blocks,
    })
}

/// Units of the largest volume that fits in `free` with its changed-block
/// map: the largest run, or less when the map must come out of it.
fn largest_with_map(dev: &dyn BlockDevice, table: &Table, free: &[UnitExtent]) -> u64 {
    let largest = free.iter().map(|e| e.len).max().unwrap_or(0);
    let total: u64 = free.iter().map(|e| e.len).sum();
    let region = (crate::CHANGED_REGION_BYTES / u64::from(dev.geometry().block_size)).max(1);
    let blocks = largest * table.unit_blocks;
    let map = map_blocks(blocks.div_ceil(region), table.block_size).div_ceil(table.unit_blocks);
    largest.min(total.saturating_sub(map))
}

/// The entry of volume `name` in `table`, to change (not a changed-block
/// map: those change only with their volume).
fn entry_mut<'t>(table: &'t mut Table, name: &str) -> Result<&'t mut Entry> {
    table
        .volumes
        .iter_mut()
        .find(|v| v.name == name && !v.change_map())
        .ok_or_else(|| VolumeError::NotFound(name.into()))
}

/// Where the changed-block map of volume `uuid` lives in `table`, if it
/// has one.
fn map_place(table: &Table, uuid: &[u8; 16]) -> Option<ExtentMap> {
    table
        .find(&change_map_name(uuid))
        .filter(|m| m.change_map())
        .map(|m| ExtentMap::new(&m.extents, table.unit_blocks))
}

impl Pool {
    /// Writes an empty table to `dev` with an allocation unit of
    /// `unit_blocks` blocks (the array's full stripe). A device that holds
    /// a table (or what looks like a damaged one) is refused unless `force`;
    /// a forced format destroys every volume on it. Nothing is known of the
    /// device's contents: every unit is zeroed before a volume gets it.
    pub async fn format(dev: SharedDevice, unit_blocks: u64, force: bool) -> Result<Pool> {
        Self::format_as(dev, unit_blocks, force, false).await
    }

    /// [`Pool::format`] for a device the caller knows reads zeroes beyond
    /// the table (a RAID5 array it has just created, nothing written to it
    /// since): the table records every unit as zero, so creating a volume
    /// there writes nothing, and only space a deleted volume used is zeroed
    /// before reuse. A device that holds a table (or what looks like a
    /// damaged one) is refused: it is not new.
    pub async fn format_zeroed(dev: SharedDevice, unit_blocks: u64) -> Result<Pool> {
        Self::format_as(dev, unit_blocks, false, true).await
    }

    async fn format_as(
        dev: SharedDevice,
        unit_blocks: u64,
        force: bool,
        zeroed: bool,
    ) -> Result<Pool> {
        if dev.read_only() {
            return Err(VolumeError::ReadOnly);
        }
        let bs = dev.geometry().block_size;
        if unit_blocks == 0 {
            return Err(VolumeError::InvalidUnit("zero blocks".into()));
        }
        let first_unit = reserved_units(bs, unit_blocks);
        if units_of(&*dev, unit_blocks) <= first_unit {
            return Err(VolumeError::InvalidUnit(format!(
                "a device of {} blocks has no room for a unit of {unit_blocks} blocks after the table",
                dev.geometry().num_blocks
            )));
        }
        let copies = store::read_both(&*dev).await?;
        let found = copies.iter().any(|c| !matches!(c, Err(CopyFault::NoMagic)));
        let old = copies
            .iter()
            .filter_map(|c| c.as_ref().ok())
            .max_by_key(|t| t.seq);
        if found && !force {
            return Err(VolumeError::AlreadyFormatted {
                seq: old.map_or(0, |t| t.seq),
                volumes: old.map_or(0, |t| t.volumes.iter().filter(|v| !v.hidden()).count()),
            });
        }
        // Into the copy not holding the current table, with a higher
        // sequence; then the other is wiped. A crash before the new copy is
        // whole leaves the old table.
        let (seq, slot) = match store::pick(copies) {
            Ok(cur) => (cur.table.seq + 1, 1 - cur.slot),
            Err(_) => (1, 0),
        };
        let table = Table {
            seq,
            block_size: bs,
            unit_blocks,
            first_unit,
            volumes: Vec::new(),
            zero_known: if zeroed {
                units_of(&*dev, unit_blocks)
            } else {
                0
            },
            dirty: Vec::new(),
        };
        store::commit(&*dev, slot, &table).await?;
        store::erase(&*dev, 1 - slot).await?;
        tracing::info!(device = %dev.identity(), unit_blocks, zeroed, "volume table formatted");
        Ok(Pool::with(dev, Current { table, slot }, HashMap::new()))
    }

    /// Opens the volume table of `dev`: the valid copy with the higher
    /// sequence number. Both copies unusable is [`VolumeError::Corrupt`]
    /// (or [`VolumeError::Unformatted`] when neither was ever written).
    ///
    /// Each volume's changed-block map is read: as stored if the last
    /// process closed the pool in order ([`Pool::close`]), else all dirty
    /// (a crash, a map that cannot be read, a pool made before maps were
    /// stored). Nothing is written.
    pub async fn open(dev: SharedDevice) -> Result<Pool> {
        let cur = store::load(&*dev).await?;
        let t = &cur.table;
        let bs = dev.geometry().block_size;
        if t.block_size != bs {
            return Err(VolumeError::DeviceMismatch(format!(
                "table for {}-byte blocks, device has {bs}",
                t.block_size
            )));
        }
        let units = units_of(&*dev, t.unit_blocks);
        if let Some(v) = t
            .volumes
            .iter()
            .find(|v| v.extents.iter().any(|e| e.end() > units))
        {
            return Err(VolumeError::DeviceMismatch(format!(
                "volume {:?} reaches past the device's {units} units",
                v.name
            )));
        }
        let mut trackers = HashMap::new();
        for e in t.volumes.iter().filter(|e| !e.hidden()) {
            let place = map_place(t, &e.uuid);
            let blocks = e.units() * t.unit_blocks;
            let tracker = Tracker::load(dev.clone(), e.uuid, blocks, place).await;
            trackers.insert(e.uuid, Arc::new(tracker));
        }
        Ok(Pool::with(dev, cur, trackers))
    }

    fn with(
        dev: SharedDevice,
        current: Current,
        trackers: HashMap<[u8; 16], Arc<Tracker>>,
    ) -> Pool {
        Pool {
            inner: Arc::new(Shared {
                dev,
                changes: tokio::sync::Mutex::new(()),
                state: Mutex::new(State {
                    current,
                    open: HashMap::new(),
                    deleting: HashSet::new(),
                    trackers,
                }),
                clock: Mutex::new(Arc::new(SystemTime::now)),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets where creation times come from (the system clock by default).
    pub fn set_clock(&self, clock: Clock) {
        *self
            .inner
            .clock
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = clock;
    }

    /// The device the volumes live on.
    pub fn device(&self) -> &SharedDevice {
        &self.inner.dev
    }

    /// The allocation unit in blocks.
    pub fn unit_blocks(&self) -> u64 {
        self.state().current.table.unit_blocks
    }

    /// The sequence number of the current table (one more per change).
    pub fn seq(&self) -> u64 {
        self.state().current.table.seq
    }

    fn info_of(&self, s: &State, e: &Entry) -> VolumeInfo {
        VolumeInfo {
            name: e.name.clone(),
            uuid: e.uuid,
            identity: DeviceIdentity::from_uuid(e.uuid),
            read_only: e.read_only(),
            created: e.created(),
            size_blocks: e.units() * s.current.table.unit_blocks,
            extents: e.extents.clone(),
            open_handles: s.handles(&e.uuid),
        }
    }

    /// Every volume, in creation order (not the hidden reserves of backup
    /// snapshots nor the changed-block maps: their space counts as used).
    pub fn list(&self) -> Vec<VolumeInfo> {
        let s = self.state();
        s.current
            .table
            .volumes
            .iter()
            .filter(|e| !e.hidden())
            .map(|e| self.info_of(&s, e))
            .collect()
    }

    /// The volume named `name`.
    pub fn info(&self, name: &str) -> Result<VolumeInfo> {
        let s = self.state();
        let e = s
            .current
            .table
            .find(name)
            .ok_or_else(|| VolumeError::NotFound(name.into()))?;
        Ok(self.info_of(&s, e))
    }

    /// Space on the device now (a grown device shows its new units at once).
    pub fn space(&self) -> Space {
        let s = self.state();
        let t = &s.current.table;
        let units = units_of(&*self.inner.dev, t.unit_blocks);
        let free = free_extents(t, units);
        let used: u64 = t.volumes.iter().map(Entry::units).sum();
        let free_units: u64 = free.iter().map(|e| e.len).sum();
        let unzeroed: u64 = needs_zero(t, &free).iter().map(|e| e.len).sum();
        Space {
            total_blocks: units * t.unit_blocks,
            reserved_blocks: t.first_unit * t.unit_blocks,
            used_blocks: used * t.unit_blocks,
            free_blocks: free_units * t.unit_blocks,
            largest_free_blocks: largest_with_map(&*self.inner.dev, t, &free) * t.unit_blocks,
            unzeroed_free_blocks: unzeroed * t.unit_blocks,
        }
    }

    /// Opens the volume `name` as a block device. Every call while one is
    /// open returns the same object; each `Arc` alive is a handle.
    pub fn open_volume(&self, name: &str) -> Result<Arc<Volume>> {
        let mut s = self.state();
        let e = s
            .current
            .table
            .find(name)
            .filter(|e| !e.change_map())
            .ok_or_else(|| VolumeError::NotFound(name.into()))?
            .clone();
        if s.deleting.contains(&e.uuid) {
            return Err(VolumeError::Deleting(name.into()));
        }
        if let Some(v) = s.live(&e.uuid) {
            return Ok(v);
        }
        let ub = s.current.table.unit_blocks;
        let dev = &self.inner.dev;
        let tracker = s
            .trackers
            .entry(e.uuid)
            .or_insert_with(|| Arc::new(Tracker::untracked(dev.clone(), e.uuid, e.units() * ub)))
            .clone();
        let v = Arc::new(Volume::new(self.inner.dev.clone(), &e, ub, tracker));
        s.open.retain(|_, w| w.strong_count() > 0);
        s.open.insert(e.uuid, Arc::downgrade(&v));
        Ok(v)
    }

    /// Hands `extents` out in `table`: zeroes the parts of them not known
    /// to read zeroes and flushes, so a table that hands them out finds
    /// them zero whatever a crash keeps, and takes them off the dirty list.
    /// Returns the blocks zeroed.
    async fn take_zeroed(&self, table: &mut Table, extents: &[UnitExtent]) -> Result<u64> {
        let dev = &self.inner.dev;
        let ub = table.unit_blocks;
        let to_zero = needs_zero(table, extents);
        for e in &to_zero {
            dev.write_zeroes(e.start * ub, e.len * ub, true).await?;
        }
        if !to_zero.is_empty() {
            dev.flush().await?;
        }
        table.dirty = subtract(&table.dirty, extents);
        Ok(to_zero.iter().map(|e| e.len * ub).sum())
    }

    /// Commits `table` (the current one changed, its `seq` not yet bumped)
    /// into the other copy, then makes it current and hands it to `after`
    /// under the state lock.
    async fn commit<T>(&self, mut table: Table, after: impl FnOnce(&mut State) -> T) -> Result<T> {
        table
            .check()
            .map_err(|e| VolumeError::Bug(format!("refusing to commit a bad table: {e}")))?;
        let slot = {
            let s = self.state();
            table.seq = s.current.table.seq + 1;
            1 - s.current.slot
        };
        store::commit(&*self.inner.dev, slot, &table).await?;
        let mut s = self.state();
        s.current = Current { table, slot };
        self.sync_trackers(&mut s);
        Ok(after(&mut s))
    }

    /// After a commit: each volume's tracker takes its size and its map's
    /// place (a new volume gets one, all dirty); those of deleted volumes go.
    fn sync_trackers(&self, s: &mut State) {
        let State {
            current, trackers, ..
        } = s;
        let t = &current.table;
        for e in t.volumes.iter().filter(|e| !e.hidden()) {
            let blocks = e.units() * t.unit_blocks;
            let tracker = trackers.entry(e.uuid).or_insert_with(|| {
                Arc::new(Tracker::untracked(self.inner.dev.clone(), e.uuid, blocks))
            });
            tracker.update(blocks, map_place(t, &e.uuid));
        }
        trackers.retain(|uuid, _| t.volumes.iter().any(|e| e.uuid == *uuid));
    }

    /// Gives every volume of `table` a changed-block map big enough for its
    /// size: a hidden map volume added (a new volume, or one of a pool made
    /// before maps were stored) or grown, its new space zeroed (no header:
    /// all dirty until a close writes it). No space for a new map does not
    /// fail a change: the volume's map is then not stored, and every open
    /// takes it as all dirty; no space to grow one is
    /// [`VolumeError::NoSpace`]. Returns whether `table` changed.
    async fn fit_maps(&self, table: &mut Table) -> Result<bool> {
        let (ub, bs) = (table.unit_blocks, table.block_size);
        let region = region_blocks(&self.inner.dev);
        let units = units_of(&*self.inner.dev, ub);
        let owners: Vec<(String, [u8; 16], u64)> = table
            .volumes
            .iter()
            .filter(|e| !e.hidden())
            .map(|e| (e.name.clone(), e.uuid, e.units() * ub))
            .collect();
        let mut changed = false;
        for (owner, uuid, blocks) in owners {
            let want = map_blocks(blocks.div_ceil(region), bs).div_ceil(ub);
            let name = change_map_name(&uuid);
            let free = free_extents(table, units);
            match table.volumes.iter().position(|e| e.name == name) {
                // A client's volume took the name: this one goes unstored.
                Some(i) if !table.volumes[i].change_map() => continue,
                Some(i) => {
                    let have = table.volumes[i].units();
                    if have >= want {
                        continue;
                    }
                    let end = table.volumes[i].extents.last().map(UnitExtent::end);
                    let extra = if free.iter().any(|e| Some(e.start) == end) {
                        allocate(&free, want - have, end)
                    } else {
                        allocate_high(&free, want - have)
                    };
                    // A map is rarely grown (one unit of bits covers far
                    // more than a device holds at any real unit), and a
                    // map in use cannot be dropped under its writes: a grow
                    // without room for it is refused.
                    let extra = extra.ok_or_else(|| VolumeError::NoSpace {
                        needed_blocks: (want - have) * ub,
                        free_blocks: free.iter().map(|e| e.len).sum::<u64>() * ub,
                    })?;
                    append(&mut table.volumes[i].extents, &extra);
                    self.take_zeroed(table, &extra).await?;
                }
                None => match allocate_high(&free, want) {
                    Some(extents) => {
                        self.take_zeroed(table, &extents).await?;
                        let mut map_uuid: [u8; 16] = rand::random();
                        while table.volumes.iter().any(|v| v.uuid == map_uuid) {
                            map_uuid = rand::random();
                        }
                        table.volumes.push(Entry {
                            uuid: map_uuid,
                            name,
                            flags: FLAG_CHANGE_MAP,
                            created_ms: 0,
                            extents,
                        });
                    }
                    None => {
                        tracing::warn!(volume = %owner, "no space for a changed-block map: not stored (every backup reads the whole volume)");
                        continue;
                    }
                },
            }
            changed = true;
        }
        Ok(changed)
    }

    /// Closes the pool in order: the device is flushed and every volume's
    /// changed-block map is written whole and marked closed, so the next
    /// open trusts it (volumes of a pool made before maps were stored get
    /// theirs first, space permitting). Without it, the next open takes
    /// every map as all dirty. A write after this marks its volume's map
    /// open again before it goes ahead.
    pub async fn close(&self) -> Result<()> {
        if self.inner.dev.read_only() {
            return Ok(());
        }
        {
            let _change = self.inner.changes.lock().await;
            let mut table = self.state().current.table.clone();
            if self.fit_maps(&mut table).await? {
                self.commit(table, |_| ()).await?;
            }
        }
        self.inner.dev.flush().await?;
        let trackers: Vec<Arc<Tracker>> = self.state().trackers.values().cloned().collect();
        for t in trackers {
            t.close().await?;
        }
        Ok(())
    }

    /// Commits `table`, in which volume `name` changed (or was added);
    /// an open handle of it takes the change at once.
    async fn commit_volume(&self, table: Table, name: &str) -> Result<VolumeInfo> {
        self.commit(table, |s| {
            let e = s.current.table.find(name).expect("just committed");
            if let Some(v) = s.live(&e.uuid) {
                v.update(e);
            }
            self.info_of(s, e)
        })
        .await
    }

    fn writable(&self) -> Result<()> {
        if self.inner.dev.read_only() {
            return Err(VolumeError::ReadOnly);
        }
        Ok(())
    }

    /// Creates volume `name` of `size_bytes` bytes, rounded up to the
    /// allocation unit. Its space reads zeroes.
    pub async fn create(&self, name: &str, size_bytes: u64) -> Result<VolumeInfo> {
        self.create_flagged(name, size_bytes, 0).await
    }

    /// [`Pool::create`] with the entry's `flags`.
    async fn create_flagged(&self, name: &str, size_bytes: u64, flags: u32) -> Result<VolumeInfo> {
        if !valid_name(name) {
            return Err(VolumeError::InvalidName(name.into()));
        }
        self.writable()?;
        let _change = self.inner.changes.lock().await;
        let mut table = self.state().current.table.clone();
        if table.find(name).is_some() {
            return Err(VolumeError::Exists(name.into()));
        }
        let ub = table.unit_blocks;
        let units = units_for(&*self.inner.dev, size_bytes, ub)?;
        let free = free_extents(&table, units_of(&*self.inner.dev, ub));
        let extents = allocate_or_refuse(&free, units, None, ub)?;
        let zeroed = if flags & table::FLAG_COW_RESERVE != 0 {
            // A snapshot's reserve is read only where a copy was written
            // first, and deleting it marks its space dirty again: zeroing
            // it would write its whole size before every backup.
            table.dirty = subtract(&table.dirty, &extents);
            0
        } else {
            self.take_zeroed(&mut table, &extents).await?
        };
        let now = (self
            .inner
            .clock
            .lock()
            .unwrap_or_else(PoisonError::into_inner))();
        let mut uuid: [u8; 16] = rand::random();
        while table.volumes.iter().any(|v| v.uuid == uuid) {
            uuid = rand::random();
        }
        table.volumes.push(Entry {
            uuid,
            name: name.into(),
            flags,
            created_ms: now
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            extents,
        });
        if flags == 0 {
            self.fit_maps(&mut table).await?;
        }
        let info = self.commit_volume(table, name).await?;
        tracing::info!(
            volume = name,
            blocks = info.size_blocks,
            zeroed,
            "volume created"
        );
        Ok(info)
    }

    /// Grows volume `name` to `new_size_bytes` bytes (rounded up to the
    /// unit): the new space is zeroed, the table committed, and then an
    /// open volume takes the new size and reports it. The same size is a
    /// no-op; a smaller one is refused.
    pub async fn grow(&self, name: &str, new_size_bytes: u64) -> Result<VolumeInfo> {
        self.writable()?;
        let _change = self.inner.changes.lock().await;
        let mut table = self.state().current.table.clone();
        let ub = table.unit_blocks;
        let want = units_for(&*self.inner.dev, new_size_bytes, ub)?;
        let free = free_extents(&table, units_of(&*self.inner.dev, ub));
        let entry = entry_mut(&mut table, name)?;
        let have = entry.units();
        if want < have {
            return Err(VolumeError::InvalidSize(format!(
                "volume {name:?} has {} blocks; volumes do not shrink",
                have * ub
            )));
        }
        if want == have {
            return self.info(name);
        }
        let after = entry.extents.last().map(UnitExtent::end);
        let extra = allocate_or_refuse(&free, want - have, after, ub)?;
        append(&mut entry.extents, &extra);
        let zeroed = self.take_zeroed(&mut table, &extra).await?;
        self.fit_maps(&mut table).await?;
        let info = self.commit_volume(table, name).await?;
        tracing::info!(
            volume = name,
            blocks = info.size_blocks,
            zeroed,
            "volume grown"
        );
        Ok(info)
    }

    /// Sets or clears the read-only flag of volume `name`; an open volume
    /// follows at once.
    pub async fn set_read_only(&self, name: &str, read_only: bool) -> Result<VolumeInfo> {
        self.writable()?;
        let _change = self.inner.changes.lock().await;
        let mut table = self.state().current.table.clone();
        let entry = entry_mut(&mut table, name)?;
        if entry.read_only() == read_only {
            return self.info(name);
        }
        entry.flags ^= FLAG_READ_ONLY;
        self.commit_volume(table, name).await
    }

    /// Takes a backup snapshot of each volume in `names` at one instant (a
    /// consistency group): each gets a hidden reserve of `reserve_bytes`
    /// (rounded up to the unit) for the copies of what clients overwrite
    /// before the backup has read it, in grains of `grain_bytes` (rounded
    /// up to the unit). Writes in flight to the volumes end and the device
    /// is flushed before the instant; writes wait meanwhile, never longer.
    /// See [`Snapshot`].
    pub async fn snapshot(
        &self,
        names: &[&str],
        reserve_bytes: u64,
        grain_bytes: u64,
    ) -> Result<Vec<Snapshot>> {
        let volumes = names
            .iter()
            .map(|n| self.open_volume(n))
            .collect::<Result<Vec<_>>>()?;
        if let Some(v) = volumes.iter().find(|v| v.cow().is_some()) {
            return Err(snapshot_exists(v));
        }
        let bs = u64::from(self.inner.dev.geometry().block_size);
        let ub = self.unit_blocks();
        let grain = (grain_bytes.div_ceil(bs)).div_ceil(ub).max(1) * ub;
        // Per volume: its reserve's name, slots and open handle.
        let mut reserves: Vec<(String, u32, Arc<Volume>)> = Vec::new();
        for _ in &volumes {
            let name = format!(".cow-{:08x}", rand::random::<u32>());
            let made = self
                .create_flagged(&name, reserve_bytes.max(1), table::FLAG_COW_RESERVE)
                .await;
            let opened = made.and_then(|info| Ok((info, self.open_volume(&name)?)));
            match opened {
                Ok((info, reserve)) => {
                    let slots = u32::try_from(info.size_blocks / grain).unwrap_or(u32::MAX);
                    reserves.push((name, slots, reserve));
                }
                Err(e) => {
                    self.abandon_reserves(reserves).await;
                    return Err(e);
                }
            }
        }
        // The instant: every volume quiet, the device flushed.
        let mut gates = Vec::new();
        for v in &volumes {
            gates.push(v.quiesce().await);
        }
        // A snapshot taken by another call meanwhile wins.
        let failed = match volumes.iter().find(|v| v.cow().is_some()) {
            Some(v) => Err(snapshot_exists(v)),
            None => self.inner.dev.flush().await.map_err(VolumeError::from),
        };
        if let Err(e) = failed {
            drop(gates);
            self.abandon_reserves(reserves).await;
            return Err(e);
        }
        let snaps: Vec<Snapshot> = volumes
            .iter()
            .zip(reserves)
            .map(|(v, (name, slots, reserve))| {
                let map = CowMap::new(v.geometry().num_blocks, grain, slots);
                let cow = Arc::new(Cow::new(map, reserve));
                v.set_cow(Some(cow.clone()));
                let changed = v.tracker().freeze();
                Snapshot::new(v.clone(), cow, name, changed)
            })
            .collect();
        drop(gates);
        tracing::info!(volumes = ?names, grain, "backup snapshot taken");
        Ok(snaps)
    }

    /// Ends a backup snapshot whose backup failed: as
    /// [`Pool::drop_snapshot`], and the regions it said changed count as
    /// changed again, so the next backup reads them.
    pub async fn abort_snapshot(&self, snap: Snapshot) -> Result<()> {
        snap.origin.tracker().merge_back(&snap.changed);
        self.drop_snapshot(snap).await
    }

    /// Ends a backup snapshot (its backup is done): the volume's writes
    /// stop copying, and its reserve is deleted.
    pub async fn drop_snapshot(&self, snap: Snapshot) -> Result<()> {
        let Snapshot {
            origin,
            cow,
            reserve_name,
            ..
        } = snap;
        cow.invalidate("the snapshot was dropped");
        origin.tracker().backup_done();
        {
            // Writes still copying for it end first.
            let _gate = origin.quiesce().await;
            origin.set_cow(None);
        }
        drop(cow);
        drop(origin);
        self.delete(&reserve_name).await
    }

    /// Deletes the reserves no snapshot of this process uses: those a
    /// crash left behind. Returns how many.
    pub async fn drop_stale_reserves(&self) -> Result<usize> {
        let stale: Vec<String> = {
            let s = self.state();
            s.current
                .table
                .volumes
                .iter()
                .filter(|e| e.cow_reserve() && s.handles(&e.uuid) == 0)
                .map(|e| e.name.clone())
                .collect()
        };
        for name in &stale {
            self.delete(name).await?;
            tracing::info!(reserve = %name, "stale snapshot reserve deleted");
        }
        Ok(stale.len())
    }

    /// Deletes the reserves of a snapshot that was not taken (their
    /// handles are dropped first: an open volume cannot be deleted).
    async fn abandon_reserves(&self, reserves: Vec<(String, u32, Arc<Volume>)>) {
        let names: Vec<String> = reserves.into_iter().map(|(name, ..)| name).collect();
        for name in names {
            if let Err(e) = self.delete(&name).await {
                tracing::warn!(reserve = %name, error = %e, "could not delete a snapshot reserve");
            }
        }
    }

    /// Deletes volume `name`. Refused while it is open
    /// ([`VolumeError::InUse`]); opening it meanwhile is refused. Its space
    /// is free once this returns, and zeroed before any volume gets it.
    pub async fn delete(&self, name: &str) -> Result<()> {
        self.writable()?;
        let _change = self.inner.changes.lock().await;
        let (mut table, uuid) = {
            let mut s = self.state();
            let e = s
                .current
                .table
                .find(name)
                .filter(|e| !e.change_map())
                .ok_or_else(|| VolumeError::NotFound(name.into()))?;
            let uuid = e.uuid;
            let handles = s.handles(&uuid);
            if handles > 0 {
                return Err(VolumeError::InUse {
                    name: name.into(),
                    handles,
                });
            }
            s.deleting.insert(uuid);
            (s.current.table.clone(), uuid)
        };
        // Its changed-block map goes with it, in the same commit.
        let map = change_map_name(&uuid);
        let gone = |v: &Entry| v.uuid == uuid || (v.name == map && v.change_map());
        let freed: Vec<UnitExtent> = table
            .volumes
            .iter()
            .filter(|v| gone(v))
            .flat_map(|v| v.extents.iter().copied())
            .collect();
        // Its data stays on the device: the units are zeroed before reuse.
        mark_dirty(&mut table, &freed);
        table.volumes.retain(|v| !gone(v));
        let r = self
            .commit(table, |s| {
                s.open.remove(&uuid);
            })
            .await;
        self.state().deleting.remove(&uuid);
        r?;
        tracing::info!(volume = name, "volume deleted");
        Ok(())
    }
}

/// The refusal of a second snapshot of `v`.
fn snapshot_exists(v: &Volume) -> VolumeError {
    VolumeError::InUse {
        name: format!("{} (it has a backup snapshot already)", v.name()),
        handles: 1,
    }
}
