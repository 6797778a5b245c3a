//! The stripe cache: blocks of partly written rows waiting for the rest of
//! their row (so adjacent small writes merge into one full-stripe write),
//! for a flush, or for room. It makes the volume a device with a volatile
//! write cache. The write path ([`crate::write`]) fills and destages it under
//! the row locks; reads overlay it on what the members hold.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Mutex, MutexGuard};

use blockdev::{Bytes, BytesMut};

use crate::geometry::Piece;
use crate::layout::Layout;

/// Cached blocks by volume block.
#[derive(Debug)]
pub(crate) struct StripeCache {
    blocks: Mutex<BTreeMap<u64, Bytes>>,
    /// Most blocks held before rows are written out.
    limit: usize,
}

impl StripeCache {
    /// An empty cache holding at most `limit` blocks between evictions.
    pub(crate) fn new(limit: usize) -> Self {
        StripeCache {
            blocks: Mutex::new(BTreeMap::new()),
            limit,
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Bytes>> {
        self.blocks.lock().expect("cache lock")
    }

    /// Caches the blocks of `pieces` (of `bs` bytes each); returns whether
    /// every block of `row` (a range of volume blocks) is cached now.
    pub(crate) fn insert(&self, pieces: &[Piece], bs: usize, row: Range<u64>) -> bool {
        let mut cache = self.lock();
        for (l, buf) in pieces {
            for j in 0..buf.len() / bs {
                cache.insert(l + j as u64, buf.slice(j * bs..(j + 1) * bs));
            }
        }
        cache.range(row.clone()).count() as u64 == row.end - row.start
    }

    /// Takes the cached blocks of `range` out of the cache.
    pub(crate) fn take(&self, range: Range<u64>) -> BTreeMap<u64, Bytes> {
        let mut cache = self.lock();
        let keys: Vec<u64> = cache.range(range).map(|(k, _)| *k).collect();
        keys.into_iter()
            .filter_map(|k| cache.remove(&k).map(|v| (k, v)))
            .collect()
    }

    /// The cached blocks of `range`, left in the cache.
    pub(crate) fn get(&self, range: Range<u64>) -> Vec<(u64, Bytes)> {
        self.lock()
            .range(range)
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }

    /// The lowest cached block.
    pub(crate) fn first(&self) -> Option<u64> {
        self.lock().keys().next().copied()
    }

    /// Whether the cache holds nothing between requests (a limit of 0):
    /// every row a write touches goes to the members before it is answered.
    pub(crate) fn write_through(&self) -> bool {
        self.limit == 0
    }

    /// Whether the cache holds more than its limit.
    pub(crate) fn over_limit(&self) -> bool {
        self.lock().len() > self.limit
    }
}

/// Turns single cached blocks of one row of `lay` into per-chunk contiguous
/// pieces.
pub(crate) fn pieces_of(lay: &Layout, blocks: BTreeMap<u64, Bytes>) -> Vec<Piece> {
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

/// The buffers joined into one (the buffer itself when there is one).
pub(crate) fn concat_bytes<'a>(mut it: impl Iterator<Item = &'a Bytes> + Clone) -> Bytes {
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
