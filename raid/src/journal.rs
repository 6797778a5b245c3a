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
//! members and restarts every ring at a new sequence number and a new random
//! nonce, written to the ring's header block. Records below the highest
//! header sequence are stale, and so is any record without its ring's
//! current nonce.
//!
//! Records are written concurrently: a writer takes its record's place in the
//! ring (and its sequence number) under the rings' lock, and writes the
//! record after dropping it, so the FUA writes of many rows (of one ring or
//! of several) are in flight together. A ring may then hold a record whose
//! predecessor has not landed, and a crash leaves holes: replay tries every
//! block position after the header and takes every current record (magic,
//! the header's nonce, crc, sequence from the header's on), skipping whatever
//! else is there, and replays them in sequence order. A record missing
//! before a landed one is harmless: its row was not written yet (a row is
//! written only once its record is on the ring) and the two records are of
//! different rows, since row locks serialise the updates of one row (a row's
//! next record is logged only after its last update is on the members). The
//! nonce keeps replay from taking stale records, or a block of a record's
//! payload (any content a volume's user wrote) left in a hole, for a record.
//!
//! The gate keeps checkpoints apart from updates: a writer holds it shared
//! from taking its record's place until its row is on the members, a
//! checkpoint holds it exclusively, so a checkpoint waits for every record in
//! flight and the rows they log, and no record is written into a ring being
//! reset.
//!
//! A write of several whole rows at once ([`crate::batch`]) logs them with
//! group commit ([`JournalState::log_group`]): their places are taken
//! together, so the records of one ring are consecutive, and each ring gets
//! its records in one FUA write. The ring holds exactly what logging them
//! one by one would have put there, so replay is unchanged.
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
//! A full-stripe update (every data block of the row new, the whole parity
//! chunk rewritten) is recorded without its parity: parity is then the XOR
//! of the record's data, which replay computes and writes to the parity
//! member like any recorded block. The record says so with a flag, and is a
//! third smaller for three members (the rings take 2.5 bytes per client
//! byte instead of 3 for full stripes). Losing a data member after the
//! crash still finds its new data in the record; losing the parity member
//! loses the record, as before, with every data chunk written in place.
//!
//! Ring layout per member: block 0 header (`"RJSB"`, crc32c, start sequence,
//! nonce), then records, each `H` header blocks and one payload block per
//! entry:
//!
//! ```text
//! ring header:   magic "RJSB" u32 | crc32c u32 | start seq u64 | nonce u64 (never 0)
//! record header: magic "RJRC" u32 | crc32c of header and payload u32 | seq u64
//!                | row u64 | layout members u32 | entries u32 | header blocks u32
//!                | flags u32 | nonce u64 | entries x (slot u32, block index u32)
//! ```
//!
//! Record flags: bit 0, parity derived (a full stripe's data entries only).
//! The flags word was reserved (always 0) before parity-derived records, so
//! a ring written by an older version replays as it did. A record with a
//! flag this version does not know fails assembly with a clear error rather
//! than being replayed wrong.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use blockdev::{BlockError, Bytes, BytesMut, SharedDevice, WriteFlags};
use tokio::sync::{Mutex as AsyncMutex, OwnedRwLockReadGuard, RwLock as AsyncRwLock};
use tracing::{info, warn};

use crate::error::{RaidError, Result};
use crate::layout::Layout;
use crate::parity::xor_into;
use crate::superblock::Superblock;

const SB_MAGIC: u32 = u32::from_le_bytes(*b"RJSB");
const REC_MAGIC: u32 = u32::from_le_bytes(*b"RJRC");
const REC_FIXED: usize = 48;
/// Record flag: the record holds a full stripe's data and no parity; replay
/// derives the parity chunk from the data (module docs).
const FLAG_PARITY_DERIVED: u32 = 1;
/// Every record flag this version knows.
const KNOWN_FLAGS: u32 = FLAG_PARITY_DERIVED;
/// Ring blocks read per request when scanning a ring.
const SCAN_BLOCKS: u64 = 256;

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
    /// The rings' nonce since the last reset: in every ring header and
    /// record, so replay takes no stale record and no block of payload for
    /// a record.
    nonce: u64,
}

/// One replayable record.
#[derive(Debug, Clone)]
struct Record {
    seq: u64,
    row: u64,
    members: u32,
    /// Record flags ([`FLAG_PARITY_DERIVED`]).
    flags: u32,
    entries: Vec<(u32, u32)>,
    payload: Vec<u8>,
}

fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn get64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A ring's header block.
fn encode_ring_header(start_seq: u64, nonce: u64, bs: usize) -> Vec<u8> {
    let mut head = vec![0u8; bs];
    head[0..4].copy_from_slice(&SB_MAGIC.to_le_bytes());
    head[8..16].copy_from_slice(&start_seq.to_le_bytes());
    head[16..24].copy_from_slice(&nonce.to_le_bytes());
    let crc = crc32c::crc32c(&head);
    head[4..8].copy_from_slice(&crc.to_le_bytes());
    head
}

/// What a record header says besides its entries.
struct RecordHead {
    seq: u64,
    row: u64,
    members: u32,
    flags: u32,
    nonce: u64,
}

/// A record as written to a ring: header blocks, then the `blocks` of its
/// payload (one per entry), copied once, straight into the record's buffer.
#[cfg(test)]
fn encode_record(rh: &RecordHead, entries: &[(u32, u32)], blocks: &[&[u8]], bs: usize) -> BytesMut {
    let mut rec = BytesMut::new();
    encode_record_into(&mut rec, rh, entries, blocks, bs);
    rec
}

/// Appends a record to `buf` as written to a ring: header blocks, then the
/// `blocks` of its payload (one per entry), copied once, straight into the
/// buffer.
fn encode_record_into(
    buf: &mut BytesMut,
    rh: &RecordHead,
    entries: &[(u32, u32)],
    blocks: &[&[u8]],
    bs: usize,
) {
    let h = JournalState::header_blocks(entries.len(), bs);
    let start = buf.len();
    buf.reserve((h + blocks.len()) * bs);
    buf.resize(start + h * bs, 0);
    let head = &mut buf[start..];
    head[0..4].copy_from_slice(&REC_MAGIC.to_le_bytes());
    head[8..16].copy_from_slice(&rh.seq.to_le_bytes());
    head[16..24].copy_from_slice(&rh.row.to_le_bytes());
    head[24..28].copy_from_slice(&rh.members.to_le_bytes());
    head[28..32].copy_from_slice(&(entries.len() as u32).to_le_bytes());
    head[32..36].copy_from_slice(&(h as u32).to_le_bytes());
    head[36..40].copy_from_slice(&rh.flags.to_le_bytes());
    head[40..48].copy_from_slice(&rh.nonce.to_le_bytes());
    for (n, (s, i)) in entries.iter().enumerate() {
        let o = REC_FIXED + 8 * n;
        head[o..o + 4].copy_from_slice(&s.to_le_bytes());
        head[o + 4..o + 8].copy_from_slice(&i.to_le_bytes());
    }
    for b in blocks {
        buf.extend_from_slice(b);
    }
    // Header (crc field zero) and payload in one pass.
    let crc = crc32c::crc32c(&buf[start..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// A row update's record before its place in a ring is known: its
/// entries, payload and flags.
struct PlannedRecord<'a> {
    entries: Vec<(u32, u32)>,
    payload: Vec<&'a [u8]>,
    flags: u32,
}

impl<'a> PlannedRecord<'a> {
    fn of(update: &RowContent<'a>, bs: usize) -> Self {
        let &RowContent {
            lay,
            row,
            data,
            parity_from: lo,
            parity,
        } = update;
        let c = lay.chunk_blocks as usize;
        // A full stripe's parity is the XOR of its data: left out, and
        // derived at replay (module docs).
        let derived = lo == 0
            && parity.len() == c * bs
            && data
                .iter()
                .all(|b| b.len() == c && b.iter().all(Option::is_some));
        let mut entries = Vec::new();
        let mut payload: Vec<&[u8]> = Vec::new();
        for (k, blocks) in data.iter().enumerate() {
            let slot = lay.data_member(row, k as u32);
            for (i, b) in blocks.iter().enumerate() {
                if let Some(b) = b {
                    entries.push((slot, i as u32));
                    payload.push(b);
                }
            }
        }
        let pslot = lay.parity_member(row);
        if !derived {
            for (j, blk) in parity.chunks_exact(bs).enumerate() {
                entries.push((pslot, lo + j as u32));
                payload.push(blk);
            }
        }
        PlannedRecord {
            entries,
            payload,
            flags: if derived { FLAG_PARITY_DERIVED } else { 0 },
        }
    }

    /// Ring blocks the record takes.
    fn blocks(&self, bs: usize) -> u64 {
        (JournalState::header_blocks(self.entries.len(), bs) + self.entries.len()) as u64
    }
}

/// The parity chunk of a parity-derived record: the XOR of its data chunks
/// block by block; `None` (with a warning) unless the record holds every
/// data block of its row exactly once.
fn derive_parity(lay: &Layout, rec: &Record, bs: usize) -> Option<Vec<u8>> {
    let c = lay.chunk_blocks as usize;
    let pslot = lay.parity_member(rec.row);
    let mut parity = vec![0u8; c * bs];
    let mut seen = vec![0u32; c];
    for (n, &(slot, i)) in rec.entries.iter().enumerate() {
        let i = i as usize;
        if slot >= lay.members || slot == pslot || i >= c {
            continue;
        }
        seen[i] += 1;
        let blk = &rec.payload[n * bs..(n + 1) * bs];
        xor_into(&mut parity[i * bs..(i + 1) * bs], blk);
    }
    if seen.iter().any(|&k| k != lay.data_chunks()) {
        warn!(
            seq = rec.seq,
            row = rec.row,
            "parity-derived journal record without every data block: its parity is left to resync"
        );
        return None;
    }
    Some(parity)
}

/// Parses a ring read whole (`ring`, whole blocks of `bs`): the header's
/// start sequence and every current record (the header's nonce, a valid crc,
/// a sequence from the start on), found at any block position; 0 and none
/// without a valid header. Ring content is input from a member: a ring of
/// any content yields some records or none, never a panic.
fn parse_ring(ring: &[u8], bs: usize) -> (u64, Vec<Record>) {
    let blocks = ring.len() / bs;
    if blocks == 0 || bs < REC_FIXED {
        return (0, Vec::new());
    }
    let mut h = ring[..bs].to_vec();
    let crc = get32(&h, 4);
    h[4..8].fill(0);
    if get32(&h, 0) != SB_MAGIC || crc32c::crc32c(&h) != crc {
        return (0, Vec::new());
    }
    let start_seq = get64(&h, 8);
    let nonce = get64(&h, 16);
    if nonce == 0 {
        return (0, Vec::new());
    }
    let mut out = Vec::new();
    let mut at = 1;
    while at < blocks {
        match parse_record(&ring[at * bs..blocks * bs], bs, start_seq, nonce) {
            Some((rec, len)) => {
                out.push(rec);
                at += len;
            }
            // A hole (a record not written yet, or torn, or stale content):
            // records may follow it.
            None => at += 1,
        }
    }
    (start_seq, out)
}

/// The current record at the start of `rest`, if one is there, and its
/// length in blocks.
fn parse_record(rest: &[u8], bs: usize, start_seq: u64, nonce: u64) -> Option<(Record, usize)> {
    if get32(rest, 0) != REC_MAGIC || get64(rest, 40) != nonce {
        return None;
    }
    let n = get32(rest, 28) as usize;
    let hb = get32(rest, 32) as usize;
    let len = hb.checked_add(n)?;
    if hb != JournalState::header_blocks(n, bs) || len > rest.len() / bs {
        return None;
    }
    let mut head = rest[..hb * bs].to_vec();
    let crc = get32(&head, 4);
    head[4..8].fill(0);
    let payload = &rest[hb * bs..len * bs];
    let seq = get64(&head, 8);
    if crc32c::crc32c_append(crc32c::crc32c(&head), payload) != crc || seq < start_seq {
        return None;
    }
    let rec = Record {
        seq,
        row: get64(&head, 16),
        members: get32(&head, 24),
        flags: get32(&head, 36),
        entries: (0..n)
            .map(|e| {
                (
                    get32(&head, REC_FIXED + 8 * e),
                    get32(&head, REC_FIXED + 8 * e + 4),
                )
            })
            .collect(),
        payload: payload.to_vec(),
    };
    Some((rec, len))
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
        self.log_group(host, &[(ring_slot, ring_dev.clone(), update)])
            .await
    }

    /// Logs the updates of several rows (each `(ring slot, ring member,
    /// content)`, every row once) with group commit: their places are taken
    /// together under one gate guard, and the records of one ring, which
    /// are then consecutive, go to it in one FUA write. Replay sees the
    /// same records as if each had been logged alone. The returned guard
    /// must be held until every row is on the members. A member whose ring
    /// write fails is failed and reported as [`RaidError::Member`] (the
    /// other rings' records may have landed: records of rows not written
    /// yet, which replay may apply or not, as for any unanswered write).
    pub(crate) async fn log_group(
        &self,
        host: &dyn JournalHost,
        updates: &[(u32, SharedDevice, &RowContent<'_>)],
    ) -> Result<OwnedRwLockReadGuard<()>> {
        let bs = host.journal_block_size();
        let records: Vec<PlannedRecord<'_>> = updates
            .iter()
            .map(|(_, _, u)| PlannedRecord::of(u, bs))
            .collect();
        // Blocks per ring, in the order of first use.
        let mut rings_used: Vec<(u32, SharedDevice, u64)> = Vec::new();
        for ((slot, dev, _), rec) in updates.iter().zip(&records) {
            match rings_used.iter_mut().find(|r| r.0 == *slot) {
                Some(r) => r.2 += rec.blocks(bs),
                None => rings_used.push((*slot, dev.clone(), rec.blocks(bs))),
            }
        }
        if let Some((_, _, total)) = rings_used.iter().find(|r| r.2 + 1 > self.blocks) {
            return Err(RaidError::Config(format!(
                "journal of {} blocks cannot hold a {total}-block record",
                self.blocks
            )));
        }
        let (guard, starts, seqs, nonce) = loop {
            let guard = self.gate.clone().read_owned().await;
            let mut rings = self.rings.lock().await;
            // A record of a row in another ring must be stale before this
            // one is written (module docs).
            let moved = updates.iter().any(|(slot, _, u)| {
                rings
                    .of_row
                    .get(&(u.lay.members, u.row))
                    .is_some_and(|s| s != slot)
            });
            let full = rings_used
                .iter()
                .any(|(slot, _, total)| *rings.next.get(slot).unwrap_or(&1) + total > self.blocks);
            if moved || full {
                let seen = self.resets.load(Ordering::SeqCst);
                drop(rings);
                drop(guard);
                self.checkpoint_since(host, seen).await?;
                continue;
            }
            // The records' places are taken under the lock; they are
            // written after, concurrently with other records (module docs).
            let mut starts = Vec::with_capacity(rings_used.len());
            for (slot, _, total) in &rings_used {
                let at = *rings.next.get(slot).unwrap_or(&1);
                rings.next.insert(*slot, at + total);
                starts.push(at);
            }
            for (slot, _, u) in updates {
                rings.of_row.insert((u.lay.members, u.row), *slot);
            }
            let first = self
                .next_seq
                .fetch_add(updates.len() as u64, Ordering::SeqCst);
            let seqs: Vec<u64> = (first..first + updates.len() as u64).collect();
            break (guard, starts, seqs, rings.nonce);
        };
        // Per ring, its records one after the other in one buffer.
        let writes: Vec<(u32, SharedDevice, u64, Bytes)> = rings_used
            .iter()
            .zip(&starts)
            .map(|((slot, dev, total), &at)| {
                let mut buf = BytesMut::with_capacity(*total as usize * bs);
                for (((s, _, u), rec), &seq) in updates.iter().zip(&records).zip(&seqs) {
                    if s != slot {
                        continue;
                    }
                    let head = RecordHead {
                        seq,
                        row: u.row,
                        members: u.lay.members,
                        flags: rec.flags,
                        nonce,
                    };
                    encode_record_into(&mut buf, &head, &rec.entries, &rec.payload, bs);
                }
                (*slot, dev.clone(), self.start + at, buf.freeze())
            })
            .collect();
        let results = futures::future::join_all(
            writes
                .iter()
                .map(|(_, dev, at, buf)| dev.write(*at, buf.clone(), WriteFlags::FUA)),
        )
        .await;
        let mut first_err = None;
        for ((slot, ..), r) in writes.iter().zip(results) {
            if let Err(e) = r {
                // The reserved places stay holes, which replay skips.
                host.member_failed(*slot, &e).await;
                first_err.get_or_insert(RaidError::Member {
                    slot: *slot,
                    source: e,
                });
            }
        }
        match first_err {
            None => Ok(guard),
            Some(e) => Err(e),
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
        self.checkpoint_unless_reset(host, None).await
    }

    /// [`JournalState::checkpoint`] for a writer that found its ring full
    /// (or its row in another ring) when `seen` resets had been made: none
    /// if another came since, as every ring is fresh again then. Writers
    /// waiting on a full ring would otherwise each flush every member and
    /// rewrite every ring header in turn, one after the other, for the
    /// space the first one freed (head-bench: a dozen checkpoints per
    /// full-stripe record at QD32).
    async fn checkpoint_since(&self, host: &dyn JournalHost, seen: u64) -> Result<()> {
        self.checkpoint_unless_reset(host, Some(seen)).await
    }

    /// A checkpoint, skipped when `seen` is given and the rings were reset
    /// since that count.
    async fn checkpoint_unless_reset(
        &self,
        host: &dyn JournalHost,
        seen: Option<u64>,
    ) -> Result<()> {
        let _w = self.gate.write().await;
        if seen.is_some_and(|n| self.resets.load(Ordering::SeqCst) != n) {
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
        // Never 0: a header without a nonce is a ring of the old format.
        let nonce: u64 = rand::random::<u64>() | 1;
        let buf = Bytes::from(encode_ring_header(seq, nonce, host.journal_block_size()));
        let mut rings = self.rings.lock().await;
        self.resets.fetch_add(1, Ordering::SeqCst);
        rings.of_row.clear();
        rings.nonce = nonce;
        let members = host.ring_members();
        let writes = members
            .iter()
            .map(|(_, dev)| dev.write(self.start, buf.clone(), WriteFlags::FUA));
        let results = futures::future::join_all(writes).await;
        for ((slot, _), r) in members.iter().zip(results) {
            if let Err(e) = r {
                host.member_failed(*slot, &e).await;
            }
            rings.next.insert(*slot, 1);
        }
        Ok(())
    }

    /// The ring of one member: its header's start sequence and every
    /// current record in it, in ring order (module docs: records land out of
    /// order, around holes).
    async fn scan(&self, dev: &SharedDevice, bs: usize) -> (u64, Vec<Record>) {
        let mut ring = Vec::with_capacity(self.blocks as usize * bs);
        let mut at = 0;
        while at < self.blocks {
            let n = (self.blocks - at).min(SCAN_BLOCKS);
            let Ok(part) = dev.read(self.start + at, n as u32).await else {
                break;
            };
            ring.extend_from_slice(&part);
            at += n;
        }
        parse_ring(&ring, bs)
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
        if let Some(rec) = records.iter().find(|r| r.flags & !KNOWN_FLAGS != 0) {
            return Err(RaidError::Assembly(format!(
                "journal record {} (row {}) has flags {:#x} this version does not know; \
                 assemble the array with the version that wrote it",
                rec.seq, rec.row, rec.flags
            )));
        }
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
            let parity = (rec.flags & FLAG_PARITY_DERIVED != 0)
                .then(|| derive_parity(lay, rec, bs))
                .flatten();
            if let Some(p) = &parity {
                let blocks = p.chunks_exact(bs).enumerate();
                by_slot.insert(
                    lay.parity_member(rec.row),
                    blocks.map(|(i, b)| (i as u32, b)).collect(),
                );
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BS: usize = 512;

    /// A record of `blocks` payload blocks (entries `(0, i)`) of row `seq`,
    /// each block filled with `seq`.
    fn record(seq: u64, nonce: u64, blocks: u32) -> Vec<u8> {
        let entries: Vec<(u32, u32)> = (0..blocks).map(|i| (0, i)).collect();
        let payload = vec![seq as u8; blocks as usize * BS];
        let rh = RecordHead {
            seq,
            row: seq,
            members: 3,
            flags: 0,
            nonce,
        };
        let blocks: Vec<&[u8]> = payload.chunks_exact(BS).collect();
        encode_record(&rh, &entries, &blocks, BS).to_vec()
    }

    /// A ring of `blocks` holding, after a header (start 10, nonce 7), the
    /// records of sequence 10.. of `sizes` payload blocks in turn, each
    /// landed if `landed` says so; holes and the rest hold `fill`.
    fn ring(blocks: usize, sizes: &[u32], landed: &[bool], fill: &[u8]) -> Vec<u8> {
        let mut r: Vec<u8> = fill.iter().copied().cycle().take(blocks * BS).collect();
        r[..BS].copy_from_slice(&encode_ring_header(10, 7, BS));
        let mut at = BS;
        for (k, (&n, &l)) in sizes.iter().zip(landed).enumerate() {
            let rec = record(10 + k as u64, 7, n);
            if l {
                r[at..at + rec.len()].copy_from_slice(&rec);
            }
            at += rec.len();
        }
        r
    }

    #[test]
    fn a_record_after_a_hole_is_found() {
        // Record 10 never landed, 11 did: 11 is replayed.
        let r = ring(64, &[4, 3, 2], &[false, true, true], &[0]);
        let (start, recs) = parse_ring(&r, BS);
        assert_eq!(start, 10);
        let seqs: Vec<u64> = recs.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [11, 12]);
        assert_eq!(recs[0].payload, vec![11u8; 3 * BS]);
    }

    #[test]
    fn stale_records_and_forged_payload_are_not_records() {
        // An old epoch's records (another nonce, lower sequences) fill the
        // ring; a payload block holds a record header of this ring's start
        // sequence, with a valid crc, but not the nonce (a user cannot know it).
        let mut r = vec![0u8; 64 * BS];
        let mut at = BS;
        for seq in 1..6 {
            let rec = record(seq, 99, 5);
            r[at..at + rec.len()].copy_from_slice(&rec);
            at += rec.len();
        }
        let forged = record(1_000, 0xdead, 0);
        r[40 * BS..40 * BS + forged.len()].copy_from_slice(&forged);
        r[..BS].copy_from_slice(&encode_ring_header(10, 7, BS));
        assert!(parse_ring(&r, BS).1.is_empty());
        // Of the nonce but below the start sequence: stale too.
        let old = record(9, 7, 2);
        r[BS..BS + old.len()].copy_from_slice(&old);
        assert!(parse_ring(&r, BS).1.is_empty());
        // Without a header's nonce (the old format), nothing.
        r[..BS].copy_from_slice(&encode_ring_header(10, 0, BS));
        assert!(parse_ring(&r, BS).1.is_empty());
    }

    #[test]
    fn a_full_stripe_record_carries_its_flag_and_derives_its_parity() {
        let lay = Layout {
            members: 3,
            chunk_blocks: 2,
            tag_blocks: 1,
            data_start: 0,
            rows: 8,
        };
        let row = 4;
        let pslot = lay.parity_member(row);
        let data: Vec<u32> = (0..3).filter(|&s| s != pslot).collect();
        // Data chunk k, block i: every byte 16 * k + i + 1.
        let entries: Vec<(u32, u32)> = data
            .iter()
            .flat_map(|&s| (0..2).map(move |i| (s, i)))
            .collect();
        let payload: Vec<Vec<u8>> = (0..2u8)
            .flat_map(|k| (0..2u8).map(move |i| vec![16 * k + i + 1; BS]))
            .collect();
        let blocks: Vec<&[u8]> = payload.iter().map(Vec::as_slice).collect();
        let rh = RecordHead {
            seq: 10,
            row,
            members: 3,
            flags: FLAG_PARITY_DERIVED,
            nonce: 7,
        };
        let mut r = vec![0u8; 16 * BS];
        r[..BS].copy_from_slice(&encode_ring_header(10, 7, BS));
        let rec = encode_record(&rh, &entries, &blocks, BS);
        r[BS..BS + rec.len()].copy_from_slice(&rec);
        let recs = parse_ring(&r, BS).1;
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].flags, FLAG_PARITY_DERIVED);
        assert_eq!(recs[0].entries, entries);
        let parity = derive_parity(&lay, &recs[0], BS).expect("a whole stripe");
        assert!(parity[..BS].iter().all(|&b| b == 1 ^ 17));
        assert!(parity[BS..].iter().all(|&b| b == 2 ^ 18));
        // Missing a data block: no parity is made up.
        let mut short = recs[0].clone();
        short.entries.pop();
        assert!(derive_parity(&lay, &short, BS).is_none());
    }

    #[test]
    fn a_record_of_the_older_format_has_no_flags() {
        // The flags word was reserved and always 0: an older ring's record
        // (its parity among the entries) parses with no flag set.
        let r = ring(64, &[3], &[true], &[0]);
        let recs = parse_ring(&r, BS).1;
        assert_eq!(recs[0].flags, 0);
        assert_eq!(recs[0].entries.len(), 3);
    }

    proptest! {
        /// Any landing pattern of records written concurrently, over any
        /// stale content: exactly the landed records are found, in order.
        #[test]
        fn landed_records_are_found_around_holes(
            recs in prop::collection::vec((0u32..6, any::<bool>()), 0..12),
            fill in prop::collection::vec(any::<u8>(), 1..64),
        ) {
            let sizes: Vec<u32> = recs.iter().map(|r| r.0).collect();
            let landed: Vec<bool> = recs.iter().map(|r| r.1).collect();
            let r = ring(1 + 12 * 7, &sizes, &landed, &fill);
            let (_, found) = parse_ring(&r, BS);
            let want: Vec<u64> = (0..recs.len())
                .filter(|&k| landed[k])
                .map(|k| 10 + k as u64)
                .collect();
            let got: Vec<u64> = found.iter().map(|r| r.seq).collect();
            prop_assert_eq!(got, want);
        }

        /// A ring of any content parses without a panic.
        #[test]
        fn any_ring_parses(bytes in prop::collection::vec(any::<u8>(), 0..8 * BS), nonce in any::<u64>()) {
            let mut r = bytes;
            if r.len() >= BS {
                r[..BS].copy_from_slice(&encode_ring_header(0, nonce | 1, BS));
            }
            let _ = parse_ring(&r, BS);
        }
    }
}
