//! Changed-block tracking, sans-I/O: which regions of a volume were written
//! since its last backup snapshot, so an incremental backup reads only those.
//!
//! The map has one bit per region of `region` blocks. Every write, zeroing
//! and unmap sets its regions' bits before it is issued, so before it is
//! acknowledged. A snapshot [freezes](ChangedMap::freeze) the map: the
//! frozen map says what changed between the previous snapshot and this one,
//! and a new, empty map goes on recording. A backup that fails gives its
//! frozen map back ([`ChangedMap::merge_back`]), so the next one still reads
//! those regions.
//!
//! A map that does not cover the whole history since the last backup (a
//! volume whose stored map was not closed cleanly, a new volume, one of a
//! pool made before maps were stored) is *all dirty*: the next backup
//! reads everything rather than trusting it. How the map is kept on the
//! device across restarts is [`crate::changed_store`] (its format) and the
//! tracker of each volume (its I/O).

/// The changed regions of one volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedMap {
    region: u64,
    blocks: u64,
    bits: Vec<u64>,
}

impl ChangedMap {
    /// A map of `blocks` blocks in regions of `region` blocks, every region
    /// marked changed (nothing is known of the volume's history).
    pub fn all_dirty(blocks: u64, region: u64) -> ChangedMap {
        let mut m = ChangedMap::clean(blocks, region);
        m.mark(0, blocks);
        m
    }

    /// A map with nothing changed.
    pub fn clean(blocks: u64, region: u64) -> ChangedMap {
        assert!(region > 0, "a region holds at least one block");
        let regions = blocks.div_ceil(region);
        ChangedMap {
            region,
            blocks,
            bits: vec![0; regions.div_ceil(64) as usize],
        }
    }

    /// Blocks per region.
    pub fn region(&self) -> u64 {
        self.region
    }

    /// Blocks the map covers.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Regions the map covers (the last may be shorter).
    pub(crate) fn regions(&self) -> u64 {
        self.blocks.div_ceil(self.region)
    }

    /// Byte `i` of the map as stored ([`crate::changed_store`]): the bits
    /// of regions `8i..8i+8`, region `8i + k` in bit `k`; zero past the end.
    pub(crate) fn byte(&self, i: u64) -> u8 {
        let word = self.bits.get((i / 8) as usize).copied().unwrap_or(0);
        (word >> ((i % 8) * 8)) as u8
    }

    /// A map of `blocks` blocks in regions of `region` blocks whose first
    /// `known` regions are as `bytes` says (laid out as [`ChangedMap::byte`]);
    /// the regions past them are marked changed (nothing is known of them).
    pub(crate) fn from_bytes(blocks: u64, region: u64, bytes: &[u8], known: u64) -> ChangedMap {
        let mut m = ChangedMap::clean(blocks, region);
        let known = known.min(m.regions()).min(bytes.len() as u64 * 8);
        for r in 0..known {
            if bytes[(r / 8) as usize] & (1 << (r % 8)) != 0 {
                m.bits[(r / 64) as usize] |= 1 << (r % 64);
            }
        }
        if known < m.regions() {
            m.mark(known * region, blocks - known * region);
        }
        m
    }

    /// Marks the regions of `blocks` blocks at `lba` changed. Blocks past
    /// the map's end grow it (a volume grown since), marked changed.
    pub fn mark(&mut self, lba: u64, blocks: u64) {
        if blocks == 0 {
            return;
        }
        let end = lba.saturating_add(blocks);
        if end > self.blocks {
            self.grow(end);
        }
        for r in lba / self.region..end.div_ceil(self.region) {
            self.bits[(r / 64) as usize] |= 1 << (r % 64);
        }
    }

    /// Covers `blocks` blocks; the new regions are marked changed (the new
    /// space's content is new to any backup).
    pub fn grow(&mut self, blocks: u64) {
        if blocks <= self.blocks {
            return;
        }
        let old_end = self.blocks;
        self.blocks = blocks;
        self.bits.resize(self.regions().div_ceil(64) as usize, 0);
        self.mark(old_end, blocks - old_end);
    }

    /// Whether region `r` changed.
    pub fn is_changed(&self, r: u64) -> bool {
        r < self.regions() && self.bits[(r / 64) as usize] & (1 << (r % 64)) != 0
    }

    /// Whether any block of `blocks` blocks at `lba` may have changed.
    pub fn changed_in(&self, lba: u64, blocks: u64) -> bool {
        let end = lba.saturating_add(blocks).min(self.blocks);
        (lba / self.region..end.div_ceil(self.region)).any(|r| self.is_changed(r))
    }

    /// Regions marked changed.
    pub fn changed_regions(&self) -> u64 {
        self.bits.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// The changed runs as (first block, blocks), in order, clipped to the
    /// map's end.
    pub fn runs(&self) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for r in (0..self.regions()).filter(|&r| self.is_changed(r)) {
            let start = r * self.region;
            let len = self.region.min(self.blocks - start);
            match runs.last_mut() {
                Some((s, l)) if *s + *l == start => *l += len,
                _ => runs.push((start, len)),
            }
        }
        runs
    }

    /// What changed until now; this map starts again empty.
    pub fn freeze(&mut self) -> ChangedMap {
        let empty = ChangedMap::clean(self.blocks, self.region);
        std::mem::replace(self, empty)
    }

    /// Gives back a frozen map whose backup failed: its regions count as
    /// changed again.
    pub fn merge_back(&mut self, frozen: &ChangedMap) {
        if frozen.region != self.region {
            // Another layout: nothing of it can be trusted to line up.
            let blocks = self.blocks.max(frozen.blocks);
            *self = ChangedMap::all_dirty(blocks, self.region);
            return;
        }
        self.grow(frozen.blocks);
        for (w, f) in self.bits.iter_mut().zip(&frozen.bits) {
            *w |= f;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn writes_mark_their_regions_and_a_freeze_starts_over() {
        let mut m = ChangedMap::clean(1000, 100);
        m.mark(150, 100);
        m.mark(999, 1);
        assert_eq!(m.runs(), vec![(100, 200), (900, 100)]);
        let frozen = m.freeze();
        assert_eq!(frozen.changed_regions(), 3);
        assert_eq!(m.changed_regions(), 0);
        m.mark(0, 1);
        m.merge_back(&frozen);
        assert_eq!(m.runs(), vec![(0, 300), (900, 100)]);
    }

    #[test]
    fn bytes_round_trip_and_unknown_regions_are_dirty() {
        let mut m = ChangedMap::clean(2000, 100);
        m.mark(0, 1);
        m.mark(950, 1);
        m.mark(1999, 1);
        let bytes: Vec<u8> = (0..3).map(|i| m.byte(i)).collect();
        assert_eq!(bytes, vec![0b1, 0b10, 0b1000]);
        assert_eq!(ChangedMap::from_bytes(2000, 100, &bytes, 20), m);
        // Only 12 regions known: 12..20 changed.
        let partial = ChangedMap::from_bytes(2000, 100, &bytes, 12);
        assert_eq!(partial.runs(), vec![(0, 100), (900, 100), (1200, 800)]);
    }

    #[test]
    fn an_unknown_history_is_all_dirty_and_growth_is_new() {
        let m = ChangedMap::all_dirty(950, 100);
        assert_eq!(m.runs(), vec![(0, 950)]);
        let mut m = ChangedMap::clean(950, 100);
        m.grow(1200);
        assert_eq!(m.runs(), vec![(900, 300)]);
        m.mark(1500, 10);
        assert_eq!(m.blocks(), 1510);
        assert!(m.changed_in(1505, 1));
    }

    proptest! {
        #[test]
        fn every_written_block_is_in_a_changed_run(
            writes in prop::collection::vec((0u64..5000, 1u64..300), 0..40),
            region in 1u64..700,
        ) {
            let mut m = ChangedMap::clean(5000, region);
            for &(lba, n) in &writes {
                m.mark(lba, n);
            }
            let runs = m.runs();
            for &(lba, n) in &writes {
                for b in lba..lba + n {
                    prop_assert!(runs.iter().any(|&(s, l)| (s..s + l).contains(&b)), "block {b}");
                }
            }
            // No run is wider than the regions the writes touched.
            let touched: u64 = (0..m.blocks().div_ceil(region))
                .filter(|r| writes.iter().any(|&(lba, n)| lba / region <= *r && *r <= (lba + n - 1) / region))
                .count() as u64;
            prop_assert_eq!(m.changed_regions(), touched);
        }
    }
}
