//! Write ordering over block ranges, sans-I/O: a write whose outcome is
//! not settled (sent and not answered, whether or not its caller still
//! waits; being aborted) holds its blocks, and no later write overlapping
//! them goes out until it is settled (answered, ABORT TASK or LUN RESET
//! answered, or the session reinstated: the target ended it). Without
//! this, a foreign target free to reorder overlapping tasks could let an
//! abandoned write land over a newer one.
//!
//! Among the commands waiting to go out, order is kept too: a write waits
//! behind every earlier waiting write that overlaps it. Commands that
//! change no blocks (reads, flushes) are not held back.

/// Blocks of one logical unit: `lba..lba + blocks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// The LUN.
    pub lun: u64,
    /// The first block.
    pub lba: u64,
    /// How many blocks.
    pub blocks: u64,
}

impl Extent {
    /// Whether the two share a block.
    pub fn overlaps(&self, other: &Extent) -> bool {
        let end = |e: &Extent| e.lba.saturating_add(e.blocks);
        self.lun == other.lun && self.lba < end(other) && other.lba < end(self)
    }
}

/// The extents held by unsettled writes, by their key (few: at most the
/// queue depth, so a list).
#[derive(Debug, Clone)]
pub struct RangeLocks<K> {
    held: Vec<(K, Extent)>,
}

impl<K> Default for RangeLocks<K> {
    fn default() -> RangeLocks<K> {
        RangeLocks { held: Vec::new() }
    }
}

impl<K: PartialEq + Copy> RangeLocks<K> {
    /// Whether no unsettled write holds a block of `e`.
    pub fn is_free(&self, e: &Extent) -> bool {
        self.held.iter().all(|(_, h)| !h.overlaps(e))
    }

    /// The write `key` went out over `e`.
    pub fn lock(&mut self, key: K, e: Extent) {
        self.held.push((key, e));
    }

    /// The write `key` is settled: its blocks are free again.
    pub fn unlock(&mut self, key: K) {
        self.held.retain(|(k, _)| *k != key);
    }

    /// Every write is settled (the session was reinstated).
    pub fn clear(&mut self) {
        self.held.clear();
    }

    /// How many writes hold blocks.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether none does.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Which of the commands waiting to go out (in order; each with the
    /// extent it writes, None for one that writes nothing) may go now: a
    /// write when no unsettled write and no earlier waiting write overlaps
    /// it; anything else always. Their indices, in order.
    pub fn admissible(&self, waiting: impl IntoIterator<Item = Option<Extent>>) -> Vec<usize> {
        let mut earlier: Vec<Extent> = Vec::new();
        let mut out = Vec::new();
        for (i, w) in waiting.into_iter().enumerate() {
            match w {
                None => out.push(i),
                Some(e) => {
                    if self.is_free(&e) && earlier.iter().all(|x| !x.overlaps(&e)) {
                        out.push(i);
                    }
                    earlier.push(e);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ext(lba: u64, blocks: u64) -> Extent {
        Extent {
            lun: 0,
            lba,
            blocks,
        }
    }

    #[test]
    fn overlap_is_a_shared_block_of_one_lun() {
        assert!(ext(0, 4).overlaps(&ext(3, 1)));
        assert!(!ext(0, 4).overlaps(&ext(4, 1)));
        assert!(!ext(0, 4).overlaps(&Extent {
            lun: 1,
            ..ext(0, 4)
        }));
        assert!(ext(5, u64::MAX).overlaps(&ext(u64::MAX - 1, 1)));
    }

    #[test]
    fn a_write_waits_for_an_unsettled_overlapping_one_and_keeps_its_place() {
        let mut locks = RangeLocks::default();
        locks.lock(1, ext(0, 8));
        // Blocked by the lock; then a read, a write elsewhere, and a write
        // overlapping the blocked one (which must not overtake it).
        let waiting = [Some(ext(4, 2)), None, Some(ext(20, 1)), Some(ext(5, 10))];
        assert_eq!(locks.admissible(waiting), [1, 2]);
        locks.unlock(1);
        assert_eq!(locks.admissible(waiting), [0, 1, 2]);
        assert!(locks.is_empty());
    }

    /// One step of a simulated session: queue a write, or settle one of
    /// the writes in flight (by its position among them).
    #[derive(Debug, Clone)]
    enum Op {
        Write(u64, u64),
        Settle(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..32, 1u64..8).prop_map(|(l, n)| Op::Write(l, n)),
            (0usize..8).prop_map(Op::Settle),
        ]
    }

    proptest! {
        /// Whatever the order writes are queued and settled in, with up to
        /// `depth` in flight: no two writes in flight overlap, of two
        /// overlapping writes the earlier goes out first, and once all are
        /// settled every write has gone out.
        #[test]
        fn overlapping_writes_go_out_in_order_one_at_a_time(
            ops in proptest::collection::vec(op(), 1..80),
            depth in 1usize..6,
        ) {
            let mut locks = RangeLocks::default();
            let mut waiting: Vec<(usize, Extent)> = Vec::new();
            let mut in_flight: Vec<(usize, Extent)> = Vec::new();
            let mut sent: Vec<(usize, Extent)> = Vec::new();
            let mut queued = 0;
            let pump = |locks: &mut RangeLocks<usize>,
                        waiting: &mut Vec<(usize, Extent)>,
                        in_flight: &mut Vec<(usize, Extent)>,
                        sent: &mut Vec<(usize, Extent)>| {
                let go = locks.admissible(waiting.iter().map(|(_, e)| Some(*e)));
                let mut taken = Vec::new();
                for i in go {
                    if in_flight.len() >= depth {
                        break;
                    }
                    let (k, e) = waiting[i];
                    locks.lock(k, e);
                    in_flight.push((k, e));
                    sent.push((k, e));
                    taken.push(i);
                }
                for i in taken.into_iter().rev() {
                    waiting.remove(i);
                }
            };
            for op in ops.iter().cloned().chain((0..200).map(|_| Op::Settle(0))) {
                match op {
                    Op::Write(l, n) => {
                        waiting.push((queued, ext(l, n)));
                        queued += 1;
                    }
                    Op::Settle(i) if !in_flight.is_empty() => {
                        let (k, _) = in_flight.remove(i % in_flight.len());
                        locks.unlock(k);
                    }
                    Op::Settle(_) => {}
                }
                pump(&mut locks, &mut waiting, &mut in_flight, &mut sent);
                for (a, (ka, ea)) in in_flight.iter().enumerate() {
                    for (kb, eb) in &in_flight[a + 1..] {
                        prop_assert!(!ea.overlaps(eb), "{ka} and {kb} overlap in flight");
                    }
                }
            }
            prop_assert!(waiting.is_empty() && in_flight.is_empty());
            prop_assert_eq!(sent.len(), queued);
            for (a, (ka, ea)) in sent.iter().enumerate() {
                for (kb, eb) in &sent[a + 1..] {
                    prop_assert!(!(ea.overlaps(eb) && kb < ka), "{kb} overtook {ka}");
                }
            }
        }
    }
}
