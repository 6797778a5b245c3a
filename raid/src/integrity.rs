//! Per-block checksums and expected addresses ("tags"), stored on the members.
//!
//! Every chunk on a member is followed by its tag blocks. A tag block starts
//! with a 40-byte header and then holds one 20-byte entry per chunk block:
//!
//! ```text
//! header: magic "RTAG" u32 | crc32c of the tag block u32 | row u64
//!         | member slot u32 | reserved u32 | array uuid (first 8 bytes)
//!         | flush epoch u64
//! entry:  crc32c(address ‖ data) u32 | previous crc u32
//!         | flags u32 (bit 0: written, bit 1: previous written) | address u64
//! ```
//!
//! The address of a data block is its volume LBA; parity blocks use
//! [`parity_addr`]. Seeding the checksum with the address makes a block that
//! landed at the wrong place fail its check even if its content is intact, and
//! the explicit address says where it belongs. A block whose entry was never
//! written must read as zeroes. All multi-byte fields are little-endian.
//!
//! The **previous** checksum is that of the block's content when the array
//! was last flushed (the start of the *flush epoch* in the header): an entry
//! updated again within one epoch keeps its previous checksum, an entry
//! carried into a new epoch moves its current one there. Reads accept only
//! the current checksum (a block matching the previous one is a lost write).
//! After a crash, though, an unflushed overwrite may have reverted on the
//! member while its tag landed, so resync also accepts the previous content,
//! and only that: a block that rotted before it was overwritten matches
//! neither, and is rebuilt instead of being blessed with a fresh tag.
//!
//! A FUA write makes its content durable without a flush, so it writes its
//! entries with that content as the previous one too: a crash may take a
//! later write of the block back to it, never to what it replaced.
//!
//! The previous content is a possible outcome of a crash only while the tag's
//! epoch is still open. Once a later flush has completed, the entry's current
//! content is durable and its previous one is history: a tag block of such a
//! *closed* epoch that a crash left in place (because the member lost the
//! rewrite of its tag but kept the rewrite of the data) must not vouch for the
//! old content, or a reconstruction that happens to produce it would bring
//! back data that was overwritten and flushed. The superblock records the
//! lowest epoch not yet known closed ([`crate::superblock::Superblock::closed_epoch`]);
//! [`ChunkTags::vouch_after_crash`] takes it.

use crate::layout::{ChunkRole, Layout};

/// Bytes of the tag-block header.
pub const TAG_HEADER: usize = 40;
/// Bytes of one tag entry.
pub const TAG_ENTRY: usize = 20;
const TAG_MAGIC: u32 = u32::from_le_bytes(*b"RTAG");
const FLAG_WRITTEN: u32 = 1;
const FLAG_PREV_WRITTEN: u32 = 2;

/// Checksum of a block's content bound to the address it belongs at:
/// CRC-32C of the address (8 bytes, little-endian) followed by the data.
///
/// Every block written or read goes through this, so it uses `crc-fast`'s
/// carry-less-multiply CRC-32C (several times the speed of the SSE 4.2
/// `crc32` instruction loop on 4 KiB blocks); the value is the same CRC-32C
/// the `crc32c` crate computes, as the tests check.
pub fn block_crc(addr: u64, data: &[u8]) -> u32 {
    let mut d = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
    d.update(&addr.to_le_bytes());
    d.update(data);
    d.finalize() as u32
}

/// The tag of an XOR of blocks, derived from the blocks' own tags without
/// reading the XOR: a full-stripe write uses it for the parity blocks, so the
/// parity is checksummed from the data's checksums instead of a pass of its
/// own, and a parity block computed wrongly would fail its check on read.
///
/// CRC-32C is affine over GF(2). With `S` the (linear) effect of `len` bytes
/// on the CRC state, `block_crc(a, D) = S(crc32c(a)) ^ crc32c(D)`, and for
/// blocks `D1..Dm` of one length `crc32c(D1 ^ .. ^ Dm) = crc32c(D1) ^ .. ^
/// crc32c(Dm)`, plus `crc32c(0^len)` when `m` is even. `S` is applied with
/// four 256-entry tables built from its values on the 32 basis states.
#[derive(Clone)]
pub struct XorTagger {
    shift: [[u32; 256]; 4],
    zero_crc: u32,
}

impl std::fmt::Debug for XorTagger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XorTagger").finish_non_exhaustive()
    }
}

impl XorTagger {
    /// A tagger for blocks of `len` bytes.
    pub fn new(len: usize) -> Self {
        let zeros = vec![0u8; len];
        let zero_crc = crc32c::crc32c(&zeros);
        // S(s) = append(s, 0^len) ^ append(0, 0^len), linear in s.
        let basis: Vec<u32> = (0..32)
            .map(|b| crc32c::crc32c_append(1 << b, &zeros) ^ zero_crc)
            .collect();
        let mut shift = [[0u32; 256]; 4];
        for (byte, table) in shift.iter_mut().enumerate() {
            for (v, out) in table.iter_mut().enumerate() {
                *out = (0..8)
                    .filter(|j| v >> j & 1 == 1)
                    .fold(0, |acc, j| acc ^ basis[8 * byte + j]);
            }
        }
        XorTagger { shift, zero_crc }
    }

    fn apply_shift(&self, s: u32) -> u32 {
        let t = &self.shift;
        t[0][(s & 0xff) as usize]
            ^ t[1][(s >> 8 & 0xff) as usize]
            ^ t[2][(s >> 16 & 0xff) as usize]
            ^ t[3][(s >> 24) as usize]
    }

    fn address_part(&self, addr: u64) -> u32 {
        self.apply_shift(crc32c::crc32c(&addr.to_le_bytes()))
    }

    /// [`block_crc`]`(addr, D1 ^ .. ^ Dm)` from the `(address, block_crc)`
    /// pairs of `D1..Dm`.
    pub fn xor_crc(&self, addr: u64, parts: impl IntoIterator<Item = (u64, u32)>) -> u32 {
        let mut acc = self.address_part(addr);
        let mut even = true;
        for (a, crc) in parts {
            acc ^= crc ^ self.address_part(a);
            even = !even;
        }
        if even {
            acc ^= self.zero_crc;
        }
        acc
    }
}

/// Tag address of block `i` of the parity chunk of `row`.
pub fn parity_addr(row: u64, chunk_blocks: u32, i: u32) -> u64 {
    (1 << 63) | (row * u64::from(chunk_blocks) + u64::from(i))
}

/// Tag address of block `i` of the chunk `slot` holds in `row` of `lay`:
/// the volume block for data, [`parity_addr`] for parity.
pub fn tag_addr(lay: &Layout, row: u64, slot: u32, i: u32) -> u64 {
    match lay.role_of(row, slot) {
        ChunkRole::Parity => parity_addr(row, lay.chunk_blocks, i),
        ChunkRole::Data(k) => lay.lba_of(row, k, i),
    }
}

/// Tag entries that fit in one tag block of `block_size` bytes.
pub fn tags_per_block(block_size: u32) -> u32 {
    (block_size - TAG_HEADER as u32) / TAG_ENTRY as u32
}

/// Tag blocks needed after a chunk of `chunk_blocks` blocks.
pub fn tag_blocks_for(block_size: u32, chunk_blocks: u32) -> u32 {
    chunk_blocks.div_ceil(tags_per_block(block_size))
}

/// One block's tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TagEntry {
    /// Whether the block was ever written (an unwritten block reads as zeroes).
    pub written: bool,
    /// [`block_crc`] of the block.
    pub crc: u32,
    /// Address the block belongs at.
    pub addr: u64,
    /// Whether the block was written at the start of the flush epoch.
    pub prev_written: bool,
    /// [`block_crc`] of the block's content at the start of the flush epoch.
    pub prev_crc: u32,
    /// Flush epoch the entry was last written in (from its tag block's header).
    pub epoch: u64,
}

impl TagEntry {
    /// The tag of `data` stored at `addr`, with no other content allowed
    /// after a crash (for writes that make the block durable, or whose
    /// previous content is unknown).
    pub fn of(addr: u64, data: &[u8]) -> Self {
        Self::with_crc(addr, block_crc(addr, data))
    }

    /// [`TagEntry::of`] a block whose [`block_crc`] is `crc`.
    pub fn with_crc(addr: u64, crc: u32) -> Self {
        TagEntry {
            written: true,
            crc,
            addr,
            prev_written: true,
            prev_crc: crc,
            epoch: 0,
        }
    }

    /// This entry updated to say the block holds `data` in flush epoch
    /// `epoch`. The previous checksum stays what it was at the start of the
    /// epoch: unchanged if the entry was already updated in `epoch`, else its
    /// current checksum.
    pub fn overwritten(self, epoch: u64, addr: u64, data: &[u8]) -> Self {
        self.overwritten_crc(epoch, addr, block_crc(addr, data))
    }

    /// [`TagEntry::overwritten`] by a block whose [`block_crc`] is `crc`.
    pub fn overwritten_crc(self, epoch: u64, addr: u64, crc: u32) -> Self {
        let base = self.carried_to(epoch);
        TagEntry {
            written: true,
            crc,
            addr,
            ..base
        }
    }

    /// This entry once its current content is durable (written with FUA):
    /// that content is its previous one as well, so a crash may take a
    /// later overwrite back to it but not to what it replaced.
    pub fn made_durable(self) -> Self {
        TagEntry {
            prev_written: self.written,
            prev_crc: self.crc,
            ..self
        }
    }

    /// This entry as it stands in flush epoch `epoch`: from an older epoch,
    /// its current content is the flushed one and becomes its previous.
    pub fn carried_to(self, epoch: u64) -> Self {
        if self.epoch == epoch {
            self
        } else {
            TagEntry {
                prev_written: self.written,
                prev_crc: self.crc,
                epoch,
                ..self
            }
        }
    }

    /// [`TagEntry::vouch`] after a crash, where epochs below `closed` are
    /// known to be flushed: in a tag block of such an epoch the previous
    /// content is no longer a possible state of the block.
    pub fn vouch_after_crash(&self, addr: u64, data: &[u8], closed: u64) -> Vouch {
        match self.vouch(addr, data) {
            Vouch::Previous if self.epoch < closed => Vouch::Neither,
            v => v,
        }
    }

    /// Whether `data` is what this tag says belongs at `addr`.
    pub fn verifies(&self, addr: u64, data: &[u8]) -> bool {
        self.vouch(addr, data) == Vouch::Current
    }

    /// Which of the block's versions `data` is: the current one, the one at
    /// the start of the entry's flush epoch (which a crash may legitimately
    /// bring back), or neither. The checksum is computed once.
    pub fn vouch(&self, addr: u64, data: &[u8]) -> Vouch {
        let mut crc = None;
        let mut is = |written: bool, want: u32| {
            if written {
                self.addr == addr && *crc.get_or_insert_with(|| block_crc(addr, data)) == want
            } else {
                data.iter().all(|&b| b == 0)
            }
        };
        if is(self.written, self.crc) {
            Vouch::Current
        } else if is(self.prev_written, self.prev_crc) {
            Vouch::Previous
        } else {
            Vouch::Neither
        }
    }
}

/// What a tag says of a block's content ([`TagEntry::vouch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vouch {
    /// The block's current content.
    Current,
    /// Its content at the last flush: after a crash, an overwrite reverted.
    Previous,
    /// Neither: damaged, rotted, misplaced, or a version the tag never knew.
    Neither,
}

/// Where a tag block sits: the identity its header must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TagPlace {
    /// First 8 bytes of the array uuid.
    pub array: [u8; 8],
    /// Row of the chunk.
    pub row: u64,
    /// Member slot holding the chunk.
    pub slot: u32,
}

/// Tags of one chunk: an entry per block, `None` where its tag block is damaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkTags {
    /// Entry of every block of the chunk.
    pub entries: Vec<Option<TagEntry>>,
}

impl ChunkTags {
    /// Tags of a never-written chunk.
    pub fn unwritten(chunk_blocks: u32) -> Self {
        ChunkTags {
            entries: vec![Some(TagEntry::default()); chunk_blocks as usize],
        }
    }

    /// Tags with no entry known (every block about to be written afresh).
    pub fn fresh(chunk_blocks: u32) -> Self {
        ChunkTags {
            entries: vec![None; chunk_blocks as usize],
        }
    }

    /// Whether any tag block was damaged.
    pub fn damaged(&self) -> bool {
        self.entries.iter().any(Option::is_none)
    }

    /// Whether block `i` holding `data` is what belongs at `addr`.
    pub fn verifies(&self, i: usize, addr: u64, data: &[u8]) -> bool {
        matches!(self.entries[i], Some(e) if e.verifies(addr, data))
    }

    /// [`TagEntry::vouch`] for block `i` holding `data` ([`Vouch::Neither`]
    /// where the tag block is damaged).
    pub fn vouch(&self, i: usize, addr: u64, data: &[u8]) -> Vouch {
        self.entries[i].map_or(Vouch::Neither, |e| e.vouch(addr, data))
    }

    /// [`TagEntry::vouch_after_crash`] for block `i` holding `data`
    /// ([`Vouch::Neither`] where the tag block is damaged).
    pub fn vouch_after_crash(&self, i: usize, addr: u64, data: &[u8], closed: u64) -> Vouch {
        self.entries[i].map_or(Vouch::Neither, |e| e.vouch_after_crash(addr, data, closed))
    }

    /// Whether block `i` holding `data` is what belongs at `addr` now or was
    /// there at the start of its flush epoch, if that epoch is not below
    /// `closed` (what a crash may leave).
    pub fn verifies_after_crash(&self, i: usize, addr: u64, data: &[u8], closed: u64) -> bool {
        self.vouch_after_crash(i, addr, data, closed) != Vouch::Neither
    }

    /// Sets block `i` to hold `data` at `addr`, written in flush epoch `epoch`
    /// (a damaged entry starts afresh, with no previous content); `durable`
    /// for a FUA write, whose content is then also the previous one
    /// ([`TagEntry::made_durable`]).
    pub fn overwrite(&mut self, i: usize, epoch: u64, addr: u64, data: &[u8], durable: bool) {
        self.overwrite_crc(i, epoch, addr, block_crc(addr, data), durable);
    }

    /// [`ChunkTags::overwrite`] with a block whose [`block_crc`] is `crc`.
    pub fn overwrite_crc(&mut self, i: usize, epoch: u64, addr: u64, crc: u32, durable: bool) {
        let e = match self.entries[i] {
            Some(e) => e.overwritten_crc(epoch, addr, crc),
            None => TagEntry::with_crc(addr, crc),
        };
        self.entries[i] = Some(if durable { e.made_durable() } else { e });
    }

    /// Decodes the tag blocks of a chunk (`buf` holds all of them).
    pub fn decode(buf: &[u8], block_size: u32, chunk_blocks: u32, place: TagPlace) -> Self {
        let per = tags_per_block(block_size) as usize;
        let bs = block_size as usize;
        let mut entries = Vec::with_capacity(chunk_blocks as usize);
        for (t, blk) in buf.chunks_exact(bs).enumerate() {
            let n = per.min(chunk_blocks as usize - t * per);
            if n == 0 {
                break;
            }
            match decode_block(blk, place) {
                BlockState::Unwritten => entries.extend((0..n).map(|_| Some(TagEntry::default()))),
                BlockState::Corrupt => entries.extend((0..n).map(|_| None)),
                BlockState::Valid => {
                    let epoch = u64::from_le_bytes(blk[32..40].try_into().expect("8 bytes"));
                    for e in blk[TAG_HEADER..].chunks_exact(TAG_ENTRY).take(n) {
                        let crc = u32::from_le_bytes(e[0..4].try_into().expect("4 bytes"));
                        let prev_crc = u32::from_le_bytes(e[4..8].try_into().expect("4 bytes"));
                        let flags = u32::from_le_bytes(e[8..12].try_into().expect("4 bytes"));
                        let addr = u64::from_le_bytes(e[12..20].try_into().expect("8 bytes"));
                        entries.push(Some(TagEntry {
                            written: flags & FLAG_WRITTEN != 0,
                            crc,
                            addr,
                            prev_written: flags & FLAG_PREV_WRITTEN != 0,
                            prev_crc,
                            epoch,
                        }));
                    }
                }
            }
        }
        entries.resize(chunk_blocks as usize, None);
        ChunkTags { entries }
    }

    /// What [`ChunkTags::decode`] returns for [`ChunkTags::encode`]`(..,
    /// epoch)` of these tags: every entry carried into `epoch`, a damaged
    /// one as unwritten. Lets a writer keep the tags it wrote without
    /// decoding its own output.
    pub fn as_written(&self, epoch: u64) -> Self {
        ChunkTags {
            entries: self
                .entries
                .iter()
                .map(|e| Some(e.unwrap_or_default().carried_to(epoch)))
                .collect(),
        }
    }

    /// Encodes the tag blocks of a chunk as written in flush epoch `epoch`
    /// (entries from older epochs are carried into it); damaged entries are
    /// written as unwritten.
    pub fn encode(&self, block_size: u32, place: TagPlace, epoch: u64) -> Vec<u8> {
        let per = tags_per_block(block_size) as usize;
        let bs = block_size as usize;
        let nblocks = self.entries.len().div_ceil(per);
        let mut out = vec![0u8; nblocks * bs];
        for (t, blk) in out.chunks_exact_mut(bs).enumerate() {
            blk[0..4].copy_from_slice(&TAG_MAGIC.to_le_bytes());
            blk[8..16].copy_from_slice(&place.row.to_le_bytes());
            blk[16..20].copy_from_slice(&place.slot.to_le_bytes());
            blk[24..32].copy_from_slice(&place.array);
            blk[32..40].copy_from_slice(&epoch.to_le_bytes());
            let ents = &self.entries[t * per..((t + 1) * per).min(self.entries.len())];
            for (e, dst) in ents
                .iter()
                .zip(blk[TAG_HEADER..].chunks_exact_mut(TAG_ENTRY))
            {
                let e = e.unwrap_or_default().carried_to(epoch);
                dst[0..4].copy_from_slice(&e.crc.to_le_bytes());
                dst[4..8].copy_from_slice(&e.prev_crc.to_le_bytes());
                let mut flags = 0;
                if e.written {
                    flags |= FLAG_WRITTEN;
                }
                if e.prev_written {
                    flags |= FLAG_PREV_WRITTEN;
                }
                dst[8..12].copy_from_slice(&flags.to_le_bytes());
                dst[12..20].copy_from_slice(&e.addr.to_le_bytes());
            }
            let crc = crc32c::crc32c(blk);
            blk[4..8].copy_from_slice(&crc.to_le_bytes());
        }
        out
    }
}

enum BlockState {
    Unwritten,
    Valid,
    Corrupt,
}

fn decode_block(blk: &[u8], place: TagPlace) -> BlockState {
    if blk.iter().all(|&b| b == 0) {
        return BlockState::Unwritten;
    }
    let magic = u32::from_le_bytes(blk[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(blk[4..8].try_into().expect("4 bytes"));
    let mut copy = blk.to_vec();
    copy[4..8].fill(0);
    let ok = magic == TAG_MAGIC
        && crc == crc32c::crc32c(&copy)
        && blk[8..16] == place.row.to_le_bytes()
        && blk[16..20] == place.slot.to_le_bytes()
        && blk[24..32] == place.array;
    if ok {
        BlockState::Valid
    } else {
        BlockState::Corrupt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLACE: TagPlace = TagPlace {
        array: *b"arrayid!",
        row: 9,
        slot: 2,
    };

    #[test]
    fn tag_blocks_per_chunk() {
        // (512 - 40-byte header) / 20-byte entries.
        assert_eq!(tags_per_block(512), 23);
        assert_eq!(tag_blocks_for(512, 64), 3);
        assert_eq!(tags_per_block(4096), 202);
        assert_eq!(tag_blocks_for(4096, 64), 1);
    }

    #[test]
    fn block_crc_is_crc32c_of_address_then_data() {
        for len in [0usize, 1, 7, 64, 512, 4095, 4096, 65536] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
            for addr in [0u64, 1, 0xdead_beef, parity_addr(7, 64, 3), u64::MAX] {
                let want = crc32c::crc32c_append(crc32c::crc32c(&addr.to_le_bytes()), &data);
                assert_eq!(block_crc(addr, &data), want, "len {len} addr {addr:#x}");
            }
        }
    }

    #[test]
    fn xor_tag_matches_the_tag_of_the_xor() {
        for len in [512usize, 4096] {
            let t = XorTagger::new(len);
            for m in 1..=5usize {
                let blocks: Vec<Vec<u8>> = (0..m)
                    .map(|k| (0..len).map(|i| (i * (k + 3) + k * 7 + m) as u8).collect())
                    .collect();
                let addrs: Vec<u64> = (0..m as u64).map(|k| 1000 * k + 17).collect();
                let mut p = vec![0u8; len];
                for b in &blocks {
                    crate::parity::xor_into(&mut p, b);
                }
                let paddr = parity_addr(9, 64, 5);
                let got = t.xor_crc(
                    paddr,
                    addrs
                        .iter()
                        .zip(&blocks)
                        .map(|(&a, b)| (a, block_crc(a, b))),
                );
                assert_eq!(got, block_crc(paddr, &p), "len {len} m {m}");
                // A wrong parity block does not match the derived tag.
                p[len / 2] ^= 4;
                assert_ne!(got, block_crc(paddr, &p));
            }
        }
    }

    #[test]
    fn round_trip_and_damage() {
        let data = vec![7u8; 512];
        let mut tags = ChunkTags::unwritten(40);
        tags.entries[3] = Some(TagEntry::of(1234, &data));
        let enc = tags.encode(512, PLACE, 5);
        assert_eq!(enc.len(), 2 * 512);
        let dec = ChunkTags::decode(&enc, 512, 40, PLACE);
        let carried: Vec<_> = tags
            .entries
            .iter()
            .map(|e| e.map(|e| e.carried_to(5)))
            .collect();
        assert_eq!(dec.entries, carried);
        assert_eq!(dec, tags.as_written(5));
        assert!(dec.verifies(3, 1234, &data));
        // Right content at the wrong address, or wrong content, fails.
        assert!(!dec.verifies(3, 1235, &data));
        assert!(!dec.verifies(3, 1234, &[6u8; 512]));
        // Unwritten blocks must be zero.
        assert!(dec.verifies(4, 99, &[0u8; 512]));
        assert!(!dec.verifies(4, 99, &data));
        // A tag block of another row or with a flipped bit is damaged.
        let other = ChunkTags::decode(&enc, 512, 40, TagPlace { row: 10, ..PLACE });
        assert!(other.entries[..30].iter().all(Option::is_none));
        let mut bad = enc.clone();
        bad[600] ^= 1;
        let dec = ChunkTags::decode(&bad, 512, 40, PLACE);
        assert!(dec.entries[3].is_some() && dec.entries[35].is_none());
        // An all-zero tag block reads as unwritten.
        let zero = ChunkTags::decode(&vec![0; 1024], 512, 40, PLACE);
        assert_eq!(zero, ChunkTags::unwritten(40));
    }

    #[test]
    fn previous_content_is_that_of_the_last_flush() {
        let (a, b, c) = (vec![1u8; 512], vec![2u8; 512], vec![3u8; 512]);
        let round =
            |t: &ChunkTags, epoch| ChunkTags::decode(&t.encode(512, PLACE, epoch), 512, 4, PLACE);
        // Never written: zeroes now and before.
        let mut t = ChunkTags::unwritten(4);
        // Epoch 7: written twice; the previous content stays "never written".
        t.overwrite(1, 7, 100, &a, false);
        t.overwrite(1, 7, 100, &b, false);
        let t7 = round(&t, 7);
        assert!(t7.verifies(1, 100, &b) && !t7.verifies(1, 100, &a));
        assert!(t7.verifies_after_crash(1, 100, &[0; 512], 0));
        assert!(
            !t7.verifies_after_crash(1, 100, &a, 0),
            "a was never flushed"
        );
        // Epoch 8 (after a flush): b is the previous content now.
        let mut t8 = t7.clone();
        t8.overwrite(1, 8, 100, &c, false);
        let t8 = round(&t8, 8);
        assert!(t8.verifies(1, 100, &c) && !t8.verifies(1, 100, &b));
        assert!(t8.verifies_after_crash(1, 100, &b, 0));
        assert!(!t8.verifies_after_crash(1, 100, &[0; 512], 0));
        // Entries not written in an epoch are carried into it when their
        // tag block is rewritten: only their current content is allowed.
        let t9 = round(&t8, 9);
        assert!(t9.verifies_after_crash(1, 100, &c, 0));
        assert!(!t9.verifies_after_crash(1, 100, &b, 0));
        // A rotted copy of the previous content matches nothing.
        let mut rotted = b.clone();
        rotted[9] ^= 0x10;
        assert!(!t8.verifies_after_crash(1, 100, &rotted, 0));
        // Once epoch 8 is closed (a later flush completed), c is durable and
        // b no longer a state a crash can leave, though the tag block still
        // names it: only the current content passes.
        assert_eq!(t8.vouch_after_crash(1, 100, &b, 8), Vouch::Previous);
        assert_eq!(t8.vouch_after_crash(1, 100, &b, 9), Vouch::Neither);
        assert!(t8.verifies_after_crash(1, 100, &c, 9));
        assert!(!t8.verifies_after_crash(1, 100, &b, 9));
    }

    #[test]
    fn a_fua_write_is_the_previous_content_of_later_writes_in_its_epoch() {
        let (a, b, c) = (vec![1u8; 512], vec![2u8; 512], vec![3u8; 512]);
        let round =
            |t: &ChunkTags, epoch| ChunkTags::decode(&t.encode(512, PLACE, epoch), 512, 4, PLACE);
        let mut t = ChunkTags::unwritten(4);
        t.overwrite(1, 7, 100, &a, false);
        // b written with FUA in the same epoch: durable at once, so neither a
        // nor the never-written zeroes are states a crash may leave.
        t.overwrite(1, 7, 100, &b, true);
        let fua = round(&t, 7);
        assert_eq!(fua.vouch_after_crash(1, 100, &b, 0), Vouch::Current);
        assert!(!fua.verifies_after_crash(1, 100, &a, 0));
        assert!(!fua.verifies_after_crash(1, 100, &[0; 512], 0));
        // c written later in the epoch, without FUA: a crash may take it
        // back to b, and no further.
        t.overwrite(1, 7, 100, &c, false);
        let later = round(&t, 7);
        assert_eq!(later.vouch_after_crash(1, 100, &c, 0), Vouch::Current);
        assert_eq!(later.vouch_after_crash(1, 100, &b, 0), Vouch::Previous);
        assert!(!later.verifies_after_crash(1, 100, &a, 0));
    }
}
