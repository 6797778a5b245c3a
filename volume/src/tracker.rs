//! The changed-block tracker of one volume: its [`ChangedMap`] in memory
//! and on the device ([`crate::changed_store`] has the format).
//!
//! A write, zeroing or unmap into a region whose bit is not on the device
//! yet goes ahead only once it is: the bit block is written with FUA (and,
//! the first time after the pool was opened or closed, the header is
//! rewritten as *open* before it). Concurrent first writes are one group:
//! each sets its bits in memory and takes a ticket; one of them writes
//! every bit block changed so far while the others wait, and a waiter whose
//! ticket that write covered goes on without writing (so a burst of first
//! writes costs one or two map writes, not one each). A write into a region
//! already on the device (and a header already open) costs a lock and a
//! look at the bits. A failed map write fails the client write: it never
//! succeeds without its bit.
//!
//! What the device holds is a superset of what changed since the last
//! *successful* backup: a snapshot's freeze starts an empty map in memory
//! but leaves the bits on the device (the frozen regions stay there until
//! the next close writes the map whole), so a freeze writes nothing while
//! the volume's writes are held, and a backup that fails (or a process that
//! ends before it succeeds) finds them there. [`Tracker::close`] writes the
//! map whole (the current map and the frozen map of a snapshot still
//! running) and then the header as *closed* with the bits' checksum; only
//! such a map is trusted at the next open ([`crate::changed_store::load`]).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use blockdev::{BlockError, Bytes, BytesMut, SharedDevice, WriteFlags};

use crate::changed::ChangedMap;
use crate::changed_store::{bit_bytes, bits_crc, encode_bits, load, Header};
use crate::mapping::ExtentMap;

/// The tracker of one volume. See the module doc.
#[derive(Debug)]
pub(crate) struct Tracker {
    dev: SharedDevice,
    uuid: [u8; 16],
    state: Mutex<State>,
    /// Held while the map is written: one map write at a time, so a later
    /// write of a bit block never lands before an earlier one.
    io: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct State {
    /// What changed since the last snapshot.
    map: ChangedMap,
    /// The map of the running snapshot, kept on the device until its backup
    /// succeeds.
    frozen: Option<ChangedMap>,
    /// Where the map lives (the hidden map volume's blocks); `None`: not
    /// stored (a pool made before maps, until its next change).
    place: Option<Arc<ExtentMap>>,
    /// The bit bytes as they are on the device (as last read or written).
    disk: Vec<u8>,
    /// The header on the device may say *closed*: it is rewritten as open
    /// before any bit or client write.
    header_closed: bool,
    /// Bit blocks with bits set in memory that the device lacks.
    pending: BTreeSet<u64>,
    /// Tickets handed out to writes waiting for their bits.
    wanted: u64,
    /// Tickets whose bits are on the device.
    durable: u64,
}

impl State {
    fn on_disk(&self, r: u64) -> bool {
        self.disk
            .get((r / 8) as usize)
            .is_some_and(|b| b & (1 << (r % 8)) != 0)
    }

    fn set_disk(&mut self, block: u64, bytes: &[u8]) {
        let at = block as usize * bytes.len();
        if self.disk.len() < at + bytes.len() {
            self.disk.resize(at + bytes.len(), 0);
        }
        self.disk[at..at + bytes.len()].copy_from_slice(bytes);
    }
}

/// A map write: the header (as open or closed) and bit blocks.
struct Batch {
    ticket: u64,
    place: Arc<ExtentMap>,
    header: Option<Vec<u8>>,
    blocks: Vec<(u64, Vec<u8>)>,
}

impl Tracker {
    /// A tracker whose map is not stored: all dirty, in memory only.
    pub(crate) fn untracked(dev: SharedDevice, uuid: [u8; 16], blocks: u64) -> Tracker {
        let region = region_blocks(&dev);
        Tracker::with(dev, uuid, ChangedMap::all_dirty(blocks, region), None)
    }

    fn with(
        dev: SharedDevice,
        uuid: [u8; 16],
        map: ChangedMap,
        place: Option<Arc<ExtentMap>>,
    ) -> Tracker {
        Tracker {
            dev,
            uuid,
            state: Mutex::new(State {
                map,
                frozen: None,
                place,
                disk: Vec::new(),
                header_closed: false,
                pending: BTreeSet::new(),
                wanted: 0,
                durable: 0,
            }),
            io: tokio::sync::Mutex::new(()),
        }
    }

    /// The tracker of a volume of `blocks` blocks whose map lives at
    /// `place`: the stored map if it was closed cleanly, else all dirty. A
    /// map that cannot be read is all dirty (and its header is rewritten
    /// before the first write, whatever it says).
    pub(crate) async fn load(
        dev: SharedDevice,
        uuid: [u8; 16],
        blocks: u64,
        place: Option<ExtentMap>,
    ) -> Tracker {
        let Some(place) = place.map(Arc::new) else {
            return Tracker::untracked(dev, uuid, blocks);
        };
        let region = region_blocks(&dev);
        let bs = u64::from(dev.geometry().block_size);
        let read = async {
            let header = Header::decode(&read_map(&dev, &place, 0, 1).await?);
            let bits = match header {
                Some(h) if h.closed => {
                    let n = bit_bytes(h.regions).div_ceil(bs).max(1);
                    let n = n.min(place.num_blocks().saturating_sub(1));
                    read_map(&dev, &place, 1, n).await?.to_vec()
                }
                _ => Vec::new(),
            };
            Ok::<_, BlockError>((header, bits))
        }
        .await;
        match read {
            Ok((header, bits)) => {
                let map = load(header, &bits, uuid, blocks, region);
                let t = Tracker::with(dev, uuid, map, Some(place));
                {
                    let mut st = t.st();
                    st.header_closed = header.is_some_and(|h| h.closed);
                    st.disk = bits;
                }
                t
            }
            Err(e) => {
                tracing::warn!(error = %e, "changed-block map unreadable: all dirty");
                let t = Tracker::with(
                    dev,
                    uuid,
                    ChangedMap::all_dirty(blocks, region),
                    Some(place),
                );
                t.st().header_closed = true;
                t
            }
        }
    }

    fn st(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn block_size(&self) -> u32 {
        self.dev.geometry().block_size
    }

    /// Takes the map's place after a table change: a map area just made
    /// (zeroed: no header, no bits) or grown; the map covers `blocks`
    /// blocks (a grown volume's new regions are changed).
    pub(crate) fn update(&self, blocks: u64, place: Option<ExtentMap>) {
        let mut st = self.st();
        st.map.grow(blocks);
        match (place, st.place.is_some()) {
            (Some(p), true) => st.place = Some(Arc::new(p)),
            (Some(p), false) => {
                st.place = Some(Arc::new(p));
                st.disk.clear();
                st.header_closed = false;
            }
            (None, _) => st.place = None,
        }
    }

    /// Marks `blocks` blocks at `lba` changed and returns once their bits
    /// are on the device (at once when they are already).
    pub(crate) async fn mark(&self, lba: u64, blocks: u64) -> blockdev::Result<()> {
        let ticket = {
            let mut st = self.st();
            st.map.mark(lba, blocks);
            if st.place.is_none() || blocks == 0 {
                return Ok(());
            }
            let region = st.map.region();
            let per_block = u64::from(self.block_size()) * 8;
            let mut need = st.header_closed;
            for r in lba / region..(lba + blocks).div_ceil(region) {
                if !st.on_disk(r) {
                    st.pending.insert(r / per_block);
                    need = true;
                }
            }
            if !need {
                return Ok(());
            }
            st.wanted += 1;
            st.wanted
        };
        self.sync(ticket).await
    }

    /// Waits until the bits of `ticket` are on the device, writing them
    /// (with every other bit set meanwhile) unless another write does.
    async fn sync(&self, ticket: u64) -> blockdev::Result<()> {
        if self.st().durable >= ticket {
            return Ok(());
        }
        let _io = self.io.lock().await;
        let batch = {
            let mut st = self.st();
            if st.durable >= ticket {
                return Ok(());
            }
            let Some(place) = st.place.clone() else {
                return Ok(());
            };
            let bs = self.block_size();
            let header = st.header_closed.then(|| {
                Header {
                    uuid: self.uuid,
                    closed: false,
                    region: st.map.region(),
                    regions: st.map.regions(),
                    bits_crc: 0,
                }
                .encode(bs)
            });
            let pending = std::mem::take(&mut st.pending);
            let blocks = pending
                .into_iter()
                .map(|b| (b, encode_bits(&st.map, st.frozen.as_ref(), b, bs)))
                .collect();
            Batch {
                ticket: st.wanted,
                place,
                header,
                blocks,
            }
        };
        self.write_batch(batch, WriteFlags::FUA).await
    }

    /// Writes `batch`; the header first (so no bit is written under a
    /// header still saying closed). On failure the bit blocks not known
    /// written are pending again.
    async fn write_batch(&self, batch: Batch, flags: WriteFlags) -> blockdev::Result<()> {
        if let Some(h) = &batch.header {
            if let Err(e) = self.write_map(&batch.place, 0, h, flags).await {
                self.st()
                    .pending
                    .extend(batch.blocks.iter().map(|(b, _)| *b));
                return Err(e);
            }
            self.st().header_closed = false;
        }
        for (i, (b, bytes)) in batch.blocks.iter().enumerate() {
            if let Err(e) = self.write_map(&batch.place, 1 + b, bytes, flags).await {
                self.st()
                    .pending
                    .extend(batch.blocks[i..].iter().map(|(b, _)| *b));
                return Err(e);
            }
            self.st().set_disk(*b, bytes);
        }
        let mut st = self.st();
        st.durable = st.durable.max(batch.ticket);
        Ok(())
    }

    /// Writes the map whole and then its header as closed with the bits'
    /// checksum: the next open trusts it. A write after this opens it again.
    pub(crate) async fn close(&self) -> blockdev::Result<()> {
        let _io = self.io.lock().await;
        let bs = self.block_size();
        let (batch, header) = {
            let mut st = self.st();
            let Some(place) = st.place.clone() else {
                return Ok(());
            };
            let regions = st.map.regions();
            let n = bit_bytes(regions).div_ceil(u64::from(bs)).max(1);
            let blocks: Vec<(u64, Vec<u8>)> = (0..n)
                .map(|b| (b, encode_bits(&st.map, st.frozen.as_ref(), b, bs)))
                .collect();
            let all: Vec<u8> = blocks.iter().flat_map(|(_, b)| b.iter().copied()).collect();
            let header = Header {
                uuid: self.uuid,
                closed: true,
                region: st.map.region(),
                regions,
                bits_crc: bits_crc(&all, regions),
            }
            .encode(bs);
            st.pending.clear();
            let batch = Batch {
                ticket: st.wanted,
                place,
                // The bits are rewritten under a header that says open.
                header: st.header_closed.then(|| {
                    Header {
                        closed: false,
                        bits_crc: 0,
                        ..Header::decode(&header).expect("just encoded")
                    }
                    .encode(bs)
                }),
                blocks,
            };
            (batch, header)
        };
        let place = batch.place.clone();
        self.write_batch(batch, WriteFlags::NONE).await?;
        self.dev.flush().await?;
        self.write_map(&place, 0, &header, WriteFlags::FUA).await?;
        self.st().header_closed = true;
        Ok(())
    }

    /// What changed until now, for a snapshot; the map starts again empty
    /// in memory (the device keeps the frozen regions until
    /// [`Tracker::backup_done`] and the next close).
    pub(crate) fn freeze(&self) -> ChangedMap {
        let mut st = self.st();
        let frozen = st.map.freeze();
        st.frozen = Some(frozen.clone());
        frozen
    }

    /// The snapshot's backup failed: its regions count as changed again.
    pub(crate) fn merge_back(&self, frozen: &ChangedMap) {
        let mut st = self.st();
        st.map.merge_back(frozen);
        st.frozen = None;
    }

    /// The snapshot's backup succeeded: its regions no longer need keeping.
    pub(crate) fn backup_done(&self) {
        self.st().frozen = None;
    }

    /// Writes `data` (whole blocks) at block `lba` of the map area.
    async fn write_map(
        &self,
        place: &ExtentMap,
        lba: u64,
        data: &[u8],
        flags: WriteFlags,
    ) -> blockdev::Result<()> {
        let bs = u64::from(self.block_size());
        let blocks = data.len() as u64 / bs;
        if lba + blocks > place.num_blocks() {
            return Err(BlockError::Failed(format!(
                "changed-block map block {lba} past its area of {} blocks",
                place.num_blocks()
            )));
        }
        let data = Bytes::copy_from_slice(data);
        for p in place.pieces(lba, blocks) {
            let at = (p.offset * bs) as usize;
            let piece = data.slice(at..at + (p.blocks * bs) as usize);
            self.dev.write(p.dev_lba, piece, flags).await?;
        }
        Ok(())
    }
}

/// Regions of [`crate::CHANGED_REGION_BYTES`] in blocks of `dev`.
pub(crate) fn region_blocks(dev: &SharedDevice) -> u64 {
    (crate::CHANGED_REGION_BYTES / u64::from(dev.geometry().block_size)).max(1)
}

/// Reads `blocks` blocks at block `lba` of the map area at `place`.
async fn read_map(
    dev: &SharedDevice,
    place: &ExtentMap,
    lba: u64,
    blocks: u64,
) -> blockdev::Result<Bytes> {
    if lba + blocks > place.num_blocks() {
        return Err(BlockError::Failed("changed-block map past its area".into()));
    }
    let max = match dev.limits().max_transfer {
        0 => u64::from(u32::MAX),
        m => u64::from(m),
    };
    let mut out = BytesMut::new();
    for p in place.pieces(lba, blocks) {
        let mut at = 0;
        while at < p.blocks {
            let n = (p.blocks - at).min(max);
            out.extend_from_slice(&dev.read(p.dev_lba + at, n as u32).await?);
            at += n;
        }
    }
    Ok(out.freeze())
}
