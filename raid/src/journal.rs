//! Write-through journal that closes the RAID5 write hole.
//!
//! Before a row is updated on the members, the new content of every block the
//! update writes (data and parity) goes, as one record, into a ring on the
//! row's *parity member*, written with FUA. Only then are the members written.
//! After a crash every record since the last checkpoint is replayed in sequence
//! order, so each interrupted row ends up with its new data and matching parity
//! and tags. Keeping the record on the parity member is enough: if that member
//! is lost, the row's data chunks were written in place and need no parity; if
//! any other member is lost, the record survives and replay makes parity agree
//! with the new data, so the lost chunk (touched by the update or not) is
//! reconstructed correctly. While the parity member is missing (a degraded
//! row) the record goes to the first usable member of the row instead: with no
//! parity to decide, only the record keeps a data block and its tag from
//! tearing apart in a crash.
//!
//! A checkpoint (on every flush, and whenever a ring is full) flushes the
//! members and restarts every ring at a new sequence number, written to the
//! ring's header block. Records below the highest header sequence are stale.
//!
//! A row's records since the last checkpoint all live in one ring. When the
//! ring a row's record would go to changes (its parity member went missing,
//! or came back), a checkpoint comes first. Otherwise a crash that also
//! cost the member holding the newer record would replay only the older one
//! from the other ring, over content written since: with a FUA write in
//! between, over acknowledged data (the property test found this: a row
//! written while its parity member was away, its parity rebuilt, a FUA write,
//! a crash, and the parity member lost).
//!
//! Ring layout per member: block 0 header (`"RJSB"`, crc32c, start sequence),
//! then records, each `H` header blocks and one payload block per entry:
//!
//! ```text
//! record header: magic "RJRC" u32 | crc32c of header and payload u32 | seq u64
//!                | row u64 | layout members u32 | entries u32 | header blocks u32
//!                | reserved u32 | entries x (slot u32, block index u32)
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use blockdev::{BlockError, Bytes, BytesMut, SharedDevice, WriteFlags};
use tokio::sync::{Mutex as AsyncMutex, OwnedRwLockReadGuard, RwLock as AsyncRwLock};
use tracing::{info, warn};

use crate::error::{RaidError, Result};
use crate::layout::Layout;
use crate::superblock::Superblock;

const SB_MAGIC: u32 = u32::from_le_bytes(*b"RJSB");
const REC_MAGIC: u32 = u32::from_le_bytes(*b"RJRC");
const REC_FIXED: usize = 40;

/// What the journal needs of the array it serves, and all it may do to it.
#[async_trait]
pub(crate) trait JournalHost: Send + Sync {
    /// Block size of the members.
    fn journal_block_size(&self) -> usize;

    /// Members that hold a ring: present and not failed.
    fn ring_members(&self) -> Vec<(u32, SharedDevice)>;

    /// The member usable for `row` in `slot`, if any.
    fn row_member(&self, slot: u32, row: u64) -> Option<SharedDevice>;

    /// A member's I/O failed: fail the member.
    async fn member_failed(&self, slot: u32, err: &BlockError);

    /// Makes every completed member write durable.
    async fn make_durable(&self) -> Result<()>;

    /// Replay: writes `blocks` (index in the chunk, content) of the chunk
    /// `slot` holds in `row` of `lay` to `dev`, with tags that vouch for them.
    async fn restore_blocks(
        &self,
        lay: &Layout,
        row: u64,
        slot: u32,
        dev: &SharedDevice,
        blocks: &[(u32, &[u8])],
    );
}

/// The new content of a row update, as the journal records it.
pub(crate) struct RowContent<'a> {
    /// Layout of the row.
    pub(crate) lay: &'a Layout,
    /// The row.
    pub(crate) row: u64,
    /// New content per data chunk and block (`None`: unchanged).
    pub(crate) data: &'a [Vec<Option<&'a [u8]>>],
    /// First block of the parity chunk that `parity` holds.
    pub(crate) parity_from: u32,
    /// The new parity blocks from `parity_from` on (empty when the row's
    /// parity member is missing).
    pub(crate) parity: &'a [u8],
}

/// Journal bookkeeping of a running array.
#[derive(Debug)]
pub(crate) struct JournalState {
    start: u64,
    blocks: u64,
    next_seq: AtomicU64,
    /// Where the rings stand since the last checkpoint.
    rings: AsyncMutex<Rings>,
    /// Held shared from logging a record until its row is written; held
    /// exclusively by a checkpoint.
    gate: Arc<AsyncRwLock<()>>,
    /// A member failed since the last checkpoint, taking its ring's records.
    checkpoint_wanted: AtomicBool,
    /// Ring resets so far (checkpoints and fresh starts), counted under the
    /// rings' lock: a writer that found its ring full checkpoints only if
    /// no reset came since it looked ([`JournalState::checkpoint_since`]).
    resets: AtomicU64,
}

/// The rings since the last checkpoint.
#[derive(Debug, Default)]
struct Rings {
    /// Next free ring block per member slot.
    next: BTreeMap<u32, u64>,
    /// The ring of each row (by layout width and row) logged since.
    of_row: HashMap<(u32, u64), u32>,
}

/// One replayable record.
#[derive(Debug, Clone)]
struct Record {
    seq: u64,
    row: u64,
    members: u32,
    entries: Vec<(u32, u32)>,
    payload: Vec<u8>,
}

fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn get64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl JournalState {
    pub(crate) fn new(sb: &Superblock) -> Self {
        JournalState {
            start: sb.journal_start,
            blocks: sb.journal_blocks,
            next_seq: AtomicU64::new(1),
            rings: AsyncMutex::new(Rings::default()),
            gate: Arc::new(AsyncRwLock::new(())),
            checkpoint_wanted: AtomicBool::new(false),
            resets: AtomicU64::new(0),
        }
    }

    fn header_blocks(entries: usize, bs: usize) -> usize {
        (REC_FIXED + 8 * entries).div_ceil(bs)
    }

    /// Logs the new content of a row update in the ring of member
    /// `ring_slot`, normally the parity member. The returned guard must be
    /// held until the update is on the members.
    pub(crate) async fn log(
        &self,
        host: &dyn JournalHost,
        ring_slot: u32,
        ring_dev: &SharedDevice,
        update: &RowContent<'_>,
    ) -> Result<OwnedRwLockReadGuard<()>> {
        let &RowContent {
            lay,
            row,
            data,
            parity_from: lo,
            parity,
        } = update;
        let bs = host.journal_block_size();
        let mut entries = Vec::new();
        let mut payload = BytesMut::new();
        for (k, blocks) in data.iter().enumerate() {
            let slot = lay.data_member(row, k as u32);
            for (i, b) in blocks.iter().enumerate() {
                if let Some(b) = b {
                    entries.push((slot, i as u32));
                    payload.extend_from_slice(b);
                }
            }
        }
        let pslot = lay.parity_member(row);
        for (j, blk) in parity.chunks_exact(bs).enumerate() {
            entries.push((pslot, lo + j as u32));
            payload.extend_from_slice(blk);
        }
        let h = Self::header_blocks(entries.len(), bs);
        let total = (h + entries.len()) as u64;
        if total + 1 > self.blocks {
            return Err(RaidError::Config(format!(
                "journal of {} blocks cannot hold a {total}-block record",
                self.blocks
            )));
        }
        loop {
            let guard = self.gate.clone().read_owned().await;
            let mut rings = self.rings.lock().await;
            let at = *rings.next.get(&ring_slot).unwrap_or(&1);
            // A record of this row in another ring must be stale before this
            // one is written (module docs).
            let moved = rings
                .of_row
                .get(&(lay.members, row))
                .is_some_and(|&s| s != ring_slot);
            if moved || at + total > self.blocks {
                let seen = self.resets.load(Ordering::SeqCst);
                drop(rings);
                drop(guard);
                self.checkpoint_since(host, seen).await?;
                continue;
            }
            let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
            let mut head = vec![0u8; h * bs];
            head[0..4].copy_from_slice(&REC_MAGIC.to_le_bytes());
            head[8..16].copy_from_slice(&seq.to_le_bytes());
            head[16..24].copy_from_slice(&row.to_le_bytes());
            head[24..28].copy_from_slice(&lay.members.to_le_bytes());
            head[28..32].copy_from_slice(&(entries.len() as u32).to_le_bytes());
            head[32..36].copy_from_slice(&(h as u32).to_le_bytes());
            for (n, (s, i)) in entries.iter().enumerate() {
                let o = REC_FIXED + 8 * n;
                head[o..o + 4].copy_from_slice(&s.to_le_bytes());
                head[o + 4..o + 8].copy_from_slice(&i.to_le_bytes());
            }
            let crc = crc32c::crc32c_append(crc32c::crc32c(&head), &payload);
            head[4..8].copy_from_slice(&crc.to_le_bytes());
            let mut rec = BytesMut::from(&head[..]);
            rec.extend_from_slice(&payload);
            // Written while the ring is locked, so records land in order.
            match ring_dev
                .write(self.start + at, rec.freeze(), WriteFlags::FUA)
                .await
            {
                Ok(()) => {
                    rings.next.insert(ring_slot, at + total);
                    rings.of_row.insert((lay.members, row), ring_slot);
                    return Ok(guard);
                }
                Err(e) => {
                    drop(rings);
                    drop(guard);
                    host.member_failed(ring_slot, &e).await;
                    return Err(RaidError::Member {
                        slot: ring_slot,
                        source: e,
                    });
                }
            }
        }
    }

    /// Asks for a checkpoint at the next safe point: a member failed, and the
    /// records in its ring went with it. The rows it was parity for were
    /// written in place on the others with no other record; until a
    /// checkpoint makes them durable, a crash could tear a block from its
    /// tag with nothing left to decide between them. (Called from inside
    /// row writes, which hold the gate a checkpoint needs.)
    pub(crate) fn request_checkpoint(&self) {
        self.checkpoint_wanted.store(true, Ordering::SeqCst);
    }

    /// Runs the checkpoint [`JournalState::request_checkpoint`] asked for,
    /// if any; called where no journal guard is held.
    pub(crate) async fn checkpoint_if_requested(&self, host: &dyn JournalHost) -> Result<()> {
        if self.checkpoint_wanted.swap(false, Ordering::SeqCst) {
            info!("member lost with its journal ring: checkpoint");
            self.checkpoint(host).await?;
        }
        Ok(())
    }

    /// Flushes the members and restarts every ring: all logged rows are durable.
    pub(crate) async fn checkpoint(&self, host: &dyn JournalHost) -> Result<()> {
        let _w = self.gate.write().await;
        host.make_durable().await?;
        self.reset_locked(host).await
    }

    /// [`JournalState::checkpoint`] for a writer that found its ring full
    /// (or its row in another ring) when `seen` resets had been made: none
    /// if another came since, as every ring is fresh again then. Writers
    /// waiting on a full ring would otherwise each flush every member and
    /// rewrite every ring header in turn, one after the other, for the
    /// space the first one freed (head-bench: a dozen checkpoints per
    /// full-stripe record at QD32).
    async fn checkpoint_since(&self, host: &dyn JournalHost, seen: u64) -> Result<()> {
        let _w = self.gate.write().await;
        if self.resets.load(Ordering::SeqCst) != seen {
            return Ok(());
        }
        host.make_durable().await?;
        self.reset_locked(host).await
    }

    /// Writes fresh ring headers on every live member (no records pending).
    pub(crate) async fn reset_all(&self, host: &dyn JournalHost) -> Result<()> {
        let _w = self.gate.write().await;
        self.reset_locked(host).await
    }

    async fn reset_locked(&self, host: &dyn JournalHost) -> Result<()> {
        let seq = self.next_seq.load(Ordering::SeqCst);
        let bs = host.journal_block_size();
        let mut head = vec![0u8; bs];
        head[0..4].copy_from_slice(&SB_MAGIC.to_le_bytes());
        head[8..16].copy_from_slice(&seq.to_le_bytes());
        let crc = crc32c::crc32c(&head);
        head[4..8].copy_from_slice(&crc.to_le_bytes());
        let buf = Bytes::from(head);
        let mut rings = self.rings.lock().await;
        self.resets.fetch_add(1, Ordering::SeqCst);
        rings.of_row.clear();
        for (slot, dev) in host.ring_members() {
            if let Err(e) = dev.write(self.start, buf.clone(), WriteFlags::FUA).await {
                host.member_failed(slot, &e).await;
            }
            rings.next.insert(slot, 1);
        }
        Ok(())
    }

    async fn scan(&self, dev: &SharedDevice, bs: usize) -> (u64, Vec<Record>) {
        let Ok(head) = dev.read(self.start, 1).await else {
            return (0, Vec::new());
        };
        let mut h = head.to_vec();
        let crc = get32(&h, 4);
        h[4..8].fill(0);
        if get32(&h, 0) != SB_MAGIC || crc32c::crc32c(&h) != crc {
            return (0, Vec::new());
        }
        let start_seq = get64(&h, 8);
        let mut out = Vec::new();
        let mut at = 1u64;
        let mut last = 0;
        while at < self.blocks {
            let Ok(first) = dev.read(self.start + at, 1).await else {
                break;
            };
            if get32(&first, 0) != REC_MAGIC {
                break;
            }
            let n = get32(&first, 28) as usize;
            let hb = get32(&first, 32) as usize;
            if hb != Self::header_blocks(n, bs) || at + (hb + n) as u64 > self.blocks {
                break;
            }
            let Ok(all) = dev.read(self.start + at, (hb + n) as u32).await else {
                break;
            };
            let mut head = all[..hb * bs].to_vec();
            let crc = get32(&head, 4);
            head[4..8].fill(0);
            if crc32c::crc32c_append(crc32c::crc32c(&head), &all[hb * bs..]) != crc {
                break;
            }
            let seq = get64(&head, 8);
            if seq < start_seq || seq <= last {
                break;
            }
            last = seq;
            out.push(Record {
                seq,
                row: get64(&head, 16),
                members: get32(&head, 24),
                entries: (0..n)
                    .map(|e| {
                        (
                            get32(&head, REC_FIXED + 8 * e),
                            get32(&head, REC_FIXED + 8 * e + 4),
                        )
                    })
                    .collect(),
                payload: all[hb * bs..].to_vec(),
            });
            at += (hb + n) as u64;
        }
        (start_seq, out)
    }

    /// Replays every current record (assembly after an unclean stop). Returns
    /// how many were replayed.
    pub(crate) async fn replay(&self, host: &dyn JournalHost, layouts: &[Layout]) -> Result<u64> {
        let bs = host.journal_block_size();
        let mut max_start = 0;
        let mut records = Vec::new();
        for (_, dev) in host.ring_members() {
            let (start, recs) = self.scan(&dev, bs).await;
            max_start = max_start.max(start);
            records.extend(recs);
        }
        records.retain(|r| r.seq >= max_start);
        records.sort_by_key(|r| r.seq);
        let next = records
            .last()
            .map_or(max_start, |r| r.seq + 1)
            .max(max_start)
            .max(1);
        self.next_seq.store(next, Ordering::SeqCst);
        let mut replayed = 0;
        for rec in &records {
            let Some(lay) = layouts.iter().find(|l| l.members == rec.members) else {
                warn!(seq = rec.seq, "journal record of an unknown layout skipped");
                continue;
            };
            if rec.row >= lay.rows {
                continue;
            }
            let mut by_slot: BTreeMap<u32, Vec<(u32, &[u8])>> = BTreeMap::new();
            for (n, &(slot, i)) in rec.entries.iter().enumerate() {
                if slot < lay.members && i < lay.chunk_blocks {
                    by_slot
                        .entry(slot)
                        .or_default()
                        .push((i, &rec.payload[n * bs..(n + 1) * bs]));
                }
            }
            for (slot, blocks) in by_slot {
                let Some(dev) = host.row_member(slot, rec.row) else {
                    continue;
                };
                host.restore_blocks(lay, rec.row, slot, &dev, &blocks).await;
            }
            replayed += 1;
        }
        if replayed > 0 {
            info!(replayed, "journal replayed");
        }
        self.checkpoint(host).await?;
        Ok(replayed)
    }
}
