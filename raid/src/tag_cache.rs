//! The tag-block cache: the tags of recently read chunks, decoded, as the
//! members hold them, so a volume read of a block whose chunk's tags are
//! cached costs one member I/O (the data) instead of two, and no decoding.
//!
//! It caches member contents, keyed by the member's
//! [`crate::member_io::MemberDevice`] and the member LBA of the tag blocks:
//! each entry holds those blocks decoded ([`ChunkTags`], shared) with the
//! [`TagPlace`] they were decoded for (a lookup for another place misses).
//! It cannot go stale through the array:
//!
//! - every write, zeroing or unmap through a member's `MemberDevice` (the
//!   only way the array writes members) invalidates the entries it overlaps,
//!   when it starts and again when it has returned;
//! - a read of tags that a write overlapped while it was in flight is not
//!   inserted: each range carries a generation (per member and granule of
//!   [`GRANULE`] blocks) that writes bump, and an insert checks it against
//!   the value taken before its read was issued ([`TagCache::ticket`]);
//! - a member that fails, or whose `MemberDevice` goes away (replaced,
//!   removed), drops its entries;
//! - it is bounded by the bytes of tag blocks it stands for
//!   ([`crate::Config::tag_cache_bytes`]) and evicts the least recently used
//!   entry (a hit only stamps its entry; the order is mended lazily when
//!   an eviction meets an entry used since it was queued).
//!
//! What it cannot see is a member changed behind the array's back (bit rot,
//! another writer). The read path therefore still checks every data block
//! against its tag, and a cached tag that fails to verify is dropped and read
//! again from the member before the block is declared bad; scrub and resync
//! read tags from the member, never from here.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use blockdev::{BlockError, SharedDevice};

use crate::integrity::{ChunkTags, TagPlace};
use crate::member_io::member_key;

/// Blocks per generation granule.
pub(crate) const GRANULE: u64 = 64;
/// Generation counters (granules of all members hash onto them).
const GENERATIONS: usize = 4096;
/// Most granules a cached range may span (longer reads are not cached).
const MAX_SPAN: u64 = 4;

/// Key of a member: the address of its `MemberDevice` while it lives.
pub(crate) type MemberKey = usize;

#[derive(Debug)]
struct Entry {
    tags: Arc<ChunkTags>,
    place: TagPlace,
    /// Bytes of the tag blocks it stands for.
    bytes: usize,
    blocks: u64,
    /// Its key in the recency queue.
    queued: u64,
    /// When it was last used (`queued` or later).
    used: u64,
}

#[derive(Debug, Default)]
struct State {
    /// Members whose `MemberDevice` is alive (only their reads are cached).
    members: HashSet<MemberKey>,
    entries: BTreeMap<(MemberKey, u64), Entry>,
    /// Recency queue, oldest first: tick -> key. An entry used since it
    /// was queued is queued again when it reaches the front.
    lru: BTreeMap<u64, (MemberKey, u64)>,
    tick: u64,
    bytes: usize,
    /// Longest cached range in blocks (bounds the overlap search).
    max_blocks: u64,
    generations: Vec<u64>,
    hits: u64,
    misses: u64,
}

/// Counters of the tag-block cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TagCacheStats {
    /// Bytes of tag blocks held.
    pub bytes: usize,
    /// Bound on `bytes`.
    pub limit: usize,
    /// Cached ranges held.
    pub entries: usize,
    /// Tag reads answered from the cache.
    pub hits: u64,
    /// Tag reads that went to the member.
    pub misses: u64,
}

/// What an insert checks: the generations of the range when its read was
/// issued.
#[derive(Debug)]
pub(crate) struct Ticket {
    gens: Vec<(usize, u64)>,
}

/// The cache shared by the members of one array.
#[derive(Debug)]
pub(crate) struct TagCache {
    state: Mutex<State>,
    limit: usize,
}

fn gen_index(member: MemberKey, granule: u64) -> usize {
    let h = (member as u64 ^ granule.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_mul(0xff51_afd7_ed55_8ccd);
    (h >> 32) as usize % GENERATIONS
}

impl TagCache {
    /// An empty cache of at most `limit` bytes (0: nothing is cached).
    pub(crate) fn new(limit: usize) -> Self {
        TagCache {
            state: Mutex::new(State {
                generations: vec![0; GENERATIONS],
                ..State::default()
            }),
            limit,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("tag cache lock")
    }

    /// Starts caching reads of `member`.
    pub(crate) fn register(&self, member: MemberKey) {
        if self.limit > 0 {
            self.lock().members.insert(member);
        }
    }

    /// Stops caching reads of `member` and drops its entries (its
    /// `MemberDevice` goes away).
    pub(crate) fn unregister(&self, member: MemberKey) {
        let mut st = self.lock();
        st.members.remove(&member);
        Self::drop_member(&mut st, member);
    }

    /// Whether reads of `member` are cached (a live member, a cache of
    /// some size).
    pub(crate) fn caches(&self, member: MemberKey) -> bool {
        self.limit > 0 && self.lock().members.contains(&member)
    }

    /// Drops every entry of `member` (it failed, or was taken out).
    pub(crate) fn forget(&self, member: MemberKey) {
        Self::drop_member(&mut self.lock(), member);
    }

    fn drop_member(st: &mut State, member: MemberKey) {
        let keys: Vec<(MemberKey, u64)> = st
            .entries
            .range((member, 0)..=(member, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            Self::remove(st, k);
        }
    }

    fn remove(st: &mut State, key: (MemberKey, u64)) {
        if let Some(e) = st.entries.remove(&key) {
            st.lru.remove(&e.queued);
            st.bytes -= e.bytes;
        }
    }

    /// Evicts the least recently used entry; false when there is none.
    fn evict_one(st: &mut State) -> bool {
        while let Some((queued, key)) = st.lru.pop_first() {
            let Some(e) = st.entries.get_mut(&key) else {
                continue;
            };
            if e.used != queued {
                // Used since it was queued: its turn comes again.
                e.queued = e.used;
                st.lru.insert(e.used, key);
                continue;
            }
            let e = st.entries.remove(&key).expect("looked up above");
            st.bytes -= e.bytes;
            return true;
        }
        false
    }

    /// The cached tags of the `blocks` tag blocks at `lba` on `member`,
    /// decoded for `place`.
    pub(crate) fn get(
        &self,
        member: MemberKey,
        lba: u64,
        blocks: u64,
        place: TagPlace,
    ) -> Option<Arc<ChunkTags>> {
        let mut st = self.lock();
        st.tick += 1;
        let tick = st.tick;
        let hit = match st.entries.get_mut(&(member, lba)) {
            Some(e) if e.blocks == blocks && e.place == place => {
                e.used = tick;
                Some(e.tags.clone())
            }
            _ => None,
        };
        match hit {
            Some(_) => st.hits += 1,
            // (Reads of a member it does not cache are not misses.)
            None if st.members.contains(&member) => st.misses += 1,
            None => {}
        }
        hit
    }

    /// Taken before reading `blocks` at `lba` on `member` from the member,
    /// for [`TagCache::insert`] afterwards.
    pub(crate) fn ticket(&self, member: MemberKey, lba: u64, blocks: u64) -> Ticket {
        let st = self.lock();
        let gens = granules(lba, blocks)
            .map(|g| {
                let i = gen_index(member, g);
                (i, st.generations[i])
            })
            .collect();
        Ticket { gens }
    }

    /// Caches the tags a read of `blocks` blocks (`bytes` bytes) at `lba` on
    /// `member` returned, decoded for `place`, unless a write overlapped the
    /// range since `ticket` was taken.
    pub(crate) fn insert(
        &self,
        ticket: Ticket,
        (member, lba, blocks, bytes): (MemberKey, u64, u64, usize),
        place: TagPlace,
        tags: Arc<ChunkTags>,
    ) {
        if blocks == 0 || bytes > self.limit || blocks > MAX_SPAN * GRANULE {
            return;
        }
        let mut st = self.lock();
        if !st.members.contains(&member) || ticket.gens.iter().any(|&(i, g)| st.generations[i] != g)
        {
            return;
        }
        Self::remove(&mut st, (member, lba));
        while st.bytes + bytes > self.limit {
            if !Self::evict_one(&mut st) {
                break;
            }
        }
        st.tick += 1;
        let tick = st.tick;
        st.bytes += bytes;
        st.max_blocks = st.max_blocks.max(blocks);
        st.lru.insert(tick, (member, lba));
        st.entries.insert(
            (member, lba),
            Entry {
                tags,
                place,
                bytes,
                blocks,
                queued: tick,
                used: tick,
            },
        );
    }

    /// A write (or zeroing, or unmap) of `blocks` at `lba` on `member`
    /// starts or has ended: drops the entries it overlaps and fails the
    /// inserts of reads in flight over it.
    pub(crate) fn invalidate(&self, member: MemberKey, lba: u64, blocks: u64) {
        if self.limit == 0 || blocks == 0 {
            return;
        }
        let mut st = self.lock();
        if blocks.div_ceil(GRANULE) + 1 >= GENERATIONS as u64 {
            st.generations.iter_mut().for_each(|g| *g += 1);
        } else {
            for g in granules(lba, blocks) {
                let i = gen_index(member, g);
                st.generations[i] += 1;
            }
        }
        let from = lba.saturating_sub(st.max_blocks.saturating_sub(1));
        let end = lba.saturating_add(blocks);
        let keys: Vec<(MemberKey, u64)> = st
            .entries
            .range((member, from)..(member, end))
            .filter(|(&(_, l), e)| l + e.blocks > lba)
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            Self::remove(&mut st, k);
        }
    }

    /// Drops the entry at `lba` on `member` (it failed to verify what it
    /// was read with).
    pub(crate) fn drop_range(&self, member: MemberKey, lba: u64) {
        Self::remove(&mut self.lock(), (member, lba));
    }

    /// Its counters and memory.
    pub(crate) fn stats(&self) -> TagCacheStats {
        let st = self.lock();
        TagCacheStats {
            bytes: st.bytes,
            limit: self.limit,
            entries: st.entries.len(),
            hits: st.hits,
            misses: st.misses,
        }
    }
}

/// Reads the `blocks` tag blocks at `lba` on member `dev` through `cache`,
/// decoded for `place` by `decode`: the cached tags if held, else what the
/// member returns, decoded, and cached if intact and no write overlapped
/// the range meanwhile. The flag says whether they came from the cache.
pub(crate) async fn cached_tags(
    cache: &TagCache,
    dev: &SharedDevice,
    lba: u64,
    blocks: u32,
    place: TagPlace,
    decode: impl FnOnce(&[u8]) -> ChunkTags,
) -> Result<(Arc<ChunkTags>, bool), BlockError> {
    let key = member_key(dev);
    let n = u64::from(blocks);
    if cache.limit == 0 {
        return Ok((Arc::new(decode(&dev.read(lba, blocks).await?)), false));
    }
    if let Some(tags) = cache.get(key, lba, n, place) {
        return Ok((tags, true));
    }
    let ticket = cache.ticket(key, lba, n);
    let buf = dev.read(lba, blocks).await?;
    let tags = Arc::new(decode(&buf));
    if !tags.damaged() {
        cache.insert(ticket, (key, lba, n, buf.len()), place, tags.clone());
    }
    Ok((tags, false))
}

/// The granules `blocks` blocks at `lba` span.
fn granules(lba: u64, blocks: u64) -> impl Iterator<Item = u64> {
    let last = lba.saturating_add(blocks.max(1) - 1) / GRANULE;
    lba / GRANULE..=last
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLACE: TagPlace = TagPlace {
        array: [7; 8],
        row: 3,
        slot: 1,
    };

    fn tags(crc: u32) -> Arc<ChunkTags> {
        let mut t = ChunkTags::unwritten(8);
        t.overwrite_crc(0, 1, 100, crc, true);
        Arc::new(t)
    }

    fn put(c: &TagCache, member: MemberKey, lba: u64, blocks: u64, t: Arc<ChunkTags>) {
        let ticket = c.ticket(member, lba, blocks);
        c.insert(ticket, (member, lba, blocks, 4096), PLACE, t);
    }

    #[test]
    fn a_write_in_flight_keeps_the_read_it_raced_out() {
        let c = TagCache::new(1 << 20);
        c.register(1);
        let t = c.ticket(1, 128, 1);
        c.invalidate(1, 100, 40);
        c.insert(t, (1, 128, 1, 4096), PLACE, tags(1));
        assert_eq!(c.get(1, 128, 1, PLACE), None);
        put(&c, 1, 128, 1, tags(2));
        assert_eq!(c.get(1, 128, 1, PLACE), Some(tags(2)));
    }

    #[test]
    fn writes_drop_overlapping_entries_only() {
        let c = TagCache::new(1 << 20);
        c.register(1);
        c.register(2);
        for (m, l) in [(1, 128), (1, 300), (2, 128)] {
            put(&c, m, l, 2, tags(3));
        }
        c.invalidate(1, 129, 1);
        assert_eq!(c.get(1, 128, 2, PLACE), None);
        assert!(c.get(1, 300, 2, PLACE).is_some());
        assert!(c.get(2, 128, 2, PLACE).is_some());
        c.unregister(2);
        assert_eq!(c.get(2, 128, 2, PLACE), None);
        assert_eq!(c.stats().bytes, 4096);
    }

    #[test]
    fn it_is_bounded_and_evicts_the_least_recently_used() {
        let c = TagCache::new(2 * 4096);
        c.register(1);
        for l in [0, 1000] {
            put(&c, 1, l, 1, tags(1));
        }
        assert!(c.get(1, 0, 1, PLACE).is_some());
        put(&c, 1, 2000, 1, tags(1));
        assert!(c.get(1, 1000, 1, PLACE).is_none());
        assert!(c.get(1, 0, 1, PLACE).is_some());
        // 2000 is now the least recently used.
        put(&c, 1, 3000, 1, tags(1));
        assert!(c.get(1, 2000, 1, PLACE).is_none());
        assert!(c.get(1, 0, 1, PLACE).is_some());
        assert!(c.get(1, 3000, 1, PLACE).is_some());
        assert_eq!(c.stats().bytes, 2 * 4096);
        assert_eq!(c.stats().entries, 2);
    }

    #[test]
    fn tags_decoded_for_another_place_are_not_returned() {
        let c = TagCache::new(1 << 20);
        c.register(1);
        put(&c, 1, 128, 1, tags(4));
        let other = TagPlace { row: 4, ..PLACE };
        assert_eq!(c.get(1, 128, 1, other), None);
        assert_eq!(c.get(1, 128, 1, PLACE), Some(tags(4)));
        let s = c.stats();
        assert_eq!((s.hits, s.misses), (1, 1));
    }
}
