//! Write-intent bitmap: one bit per region of rows, set on the members before
//! any row in the region is written and cleared lazily once the writes are on
//! stable storage.
//!
//! After a crash only regions whose bit is set can have inconsistent parity, so
//! resync walks those alone. While the array is degraded bits are never cleared,
//! so when the missing member returns, the set bits are exactly the regions it
//! missed (plus some that were dirty anyway) and only those are rebuilt.
//! Every member holds a full copy; assembly takes the union.

/// In-memory state of the bitmap.
#[derive(Debug, Clone)]
pub struct Bitmap {
    region_rows: u64,
    dirty: Vec<bool>,
    pending: Vec<u32>,
    touched: Vec<u64>,
    epoch: u64,
}

impl Bitmap {
    /// A clean bitmap covering `rows` rows, `region_rows` per bit.
    pub fn new(rows: u64, region_rows: u64) -> Self {
        let n = rows.div_ceil(region_rows).max(1) as usize;
        Bitmap {
            region_rows,
            dirty: vec![false; n],
            pending: vec![0; n],
            touched: vec![0; n],
            epoch: 1,
        }
    }

    /// On-disk blocks needed for `rows` rows.
    pub fn blocks_for(rows: u64, region_rows: u64, block_size: u32) -> u64 {
        rows.div_ceil(region_rows)
            .div_ceil(8)
            .div_ceil(u64::from(block_size))
            .max(1)
    }

    /// Region of `row`.
    pub fn region(&self, row: u64) -> usize {
        (row / self.region_rows) as usize
    }

    /// Rows covered by region `r`.
    pub fn rows_of(&self, r: usize) -> std::ops::Range<u64> {
        r as u64 * self.region_rows..(r as u64 + 1) * self.region_rows
    }

    /// Number of regions.
    pub fn regions(&self) -> usize {
        self.dirty.len()
    }

    /// Whether region `r` is dirty.
    pub fn is_dirty(&self, r: usize) -> bool {
        self.dirty.get(r).copied().unwrap_or(false)
    }

    /// Whether the region of `row` is dirty.
    pub fn row_dirty(&self, row: u64) -> bool {
        self.is_dirty(self.region(row))
    }

    /// Dirty regions.
    pub fn dirty_regions(&self) -> Vec<usize> {
        (0..self.dirty.len()).filter(|&r| self.dirty[r]).collect()
    }

    /// Grows to cover `rows` rows (after a reshape or on assembly).
    pub fn resize(&mut self, rows: u64) {
        let n = rows.div_ceil(self.region_rows).max(1) as usize;
        if n > self.dirty.len() {
            self.dirty.resize(n, false);
            self.pending.resize(n, 0);
            self.touched.resize(n, 0);
        }
    }

    /// A write to `row` begins. Returns the on-disk block index that must be
    /// persisted before the write may touch the members, if the bit was clear.
    pub fn start_write(&mut self, row: u64, block_size: u32) -> Option<u64> {
        let r = self.region(row);
        self.resize((r as u64 + 1) * self.region_rows);
        self.pending[r] += 1;
        self.touched[r] = self.epoch;
        if self.dirty[r] {
            None
        } else {
            self.dirty[r] = true;
            Some(r as u64 / (8 * u64::from(block_size)))
        }
    }

    /// A write to `row` finished (successfully or not).
    pub fn end_write(&mut self, row: u64) {
        let r = self.region(row);
        self.pending[r] = self.pending[r].saturating_sub(1);
    }

    /// Marks region `r` dirty (assembly: merging the members' copies).
    pub fn set(&mut self, r: usize) {
        self.resize((r as u64 + 1) * self.region_rows);
        self.dirty[r] = true;
    }

    /// Clears region `r` (after it has been resynced).
    pub fn clear(&mut self, r: usize) {
        if r < self.dirty.len() && self.pending[r] == 0 {
            self.dirty[r] = false;
        }
    }

    /// Starts a flush: returns the epoch the flush covers.
    pub fn begin_flush(&mut self) -> u64 {
        self.epoch += 1;
        self.epoch - 1
    }

    /// After the members were flushed: clears the bits of regions untouched since
    /// `epoch` began and with no write in flight. Returns whether any changed.
    pub fn clear_flushed(&mut self, epoch: u64) -> bool {
        let mut changed = false;
        for r in 0..self.dirty.len() {
            if self.dirty[r] && self.pending[r] == 0 && self.touched[r] <= epoch {
                self.dirty[r] = false;
                changed = true;
            }
        }
        changed
    }

    /// Encodes on-disk block `b`.
    pub fn encode_block(&self, b: u64, block_size: u32) -> Vec<u8> {
        let bs = block_size as usize;
        let mut out = vec![0u8; bs];
        let first = b as usize * bs * 8;
        for (i, byte) in out.iter_mut().enumerate() {
            for bit in 0..8 {
                if self.is_dirty(first + i * 8 + bit) {
                    *byte |= 1 << bit;
                }
            }
        }
        out
    }

    /// Encodes the whole bitmap (`blocks` blocks).
    pub fn encode(&self, blocks: u64, block_size: u32) -> Vec<u8> {
        (0..blocks)
            .flat_map(|b| self.encode_block(b, block_size))
            .collect()
    }

    /// Sets every bit set in an on-disk copy.
    pub fn merge(&mut self, disk: &[u8]) {
        for (i, byte) in disk.iter().enumerate() {
            for bit in 0..8 {
                if byte & (1 << bit) != 0 {
                    let r = i * 8 + bit;
                    if r < self.dirty.len() {
                        self.dirty[r] = true;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_persist_clear_cycle() {
        let mut b = Bitmap::new(100, 10);
        assert_eq!(b.regions(), 10);
        assert_eq!(b.start_write(35, 512), Some(0));
        assert_eq!(b.start_write(36, 512), None, "bit already set");
        let e = b.begin_flush();
        b.end_write(35);
        b.end_write(36);
        // Touched during the flushed epoch, nothing pending: cleared.
        assert!(b.clear_flushed(e));
        assert!(!b.row_dirty(35));
        // A write that starts after the flush began survives the clear.
        let e = b.begin_flush();
        b.start_write(55, 512);
        b.end_write(55);
        assert!(!b.clear_flushed(e));
        assert!(b.row_dirty(55));
        let enc = b.encode(1, 512);
        assert_eq!(enc[0], 1 << 5);
        let mut c = Bitmap::new(100, 10);
        c.merge(&enc);
        assert_eq!(c.dirty_regions(), vec![5]);
    }
}
