//! Unmap and zeroing of volume blocks, passed down to the members where
//! parity stays right.
//!
//! A row (full stripe) wholly inside the range is deallocated on every
//! member, chunk and tag blocks together, when every member reads zeroes
//! after an unmap (`Features::unmap_reads_zero`, SCSI LBPRZ): zero data has
//! zero parity, and all-zero tag blocks mean "never written, reads zeroes"
//! (`DESIGN.md` section 3), so the row is then exactly what a new array
//! holds. Consecutive whole rows are one member unmap each (rows are
//! contiguous on the members). A row whose members cannot all take it
//! (a member missing, rebuilding behind the row, being replaced, or one
//! that does not read zeroes after an unmap) gets a full-stripe write of
//! zeroes instead, and the partial rows at either end go through the normal
//! write path (read-modify-write or reconstruct-write).
//!
//! The rules of a write hold: the rows are locked, counted in the
//! write-intent bitmap while the members change (a crash resyncs them),
//! their cached blocks are dropped, and with the journal each row's zero
//! content is logged first (replay writes zeroes with tags that vouch for
//! them). A member that fails its unmap is failed as on a write; the rows
//! then read zeroes from the others.

use std::ops::Range;

use blockdev::{Bytes, Geometry};
use futures::future::join_all;

use crate::array::RaidArray;
use crate::error::{RaidError, Result};
use crate::geometry::Piece;
use crate::journal::RowContent;
use crate::layout::Layout;

/// Most whole rows deallocated under one set of row locks (well below the
/// row lock table's size, so a batch never takes one lock twice).
const BATCH_ROWS: u64 = 64;

/// Most bytes of zeroes one write of a partial row carries.
const ZERO_WRITE_BYTES: u64 = 1 << 20;

/// How a range splits: partial rows written, whole rows deallocated.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// Volume blocks `[lba, lba + n)` of a row not wholly in the range.
    Partial(u64, u64),
    /// Whole rows of the layout.
    Rows(Range<u64>),
}

/// Splits `[lba, lba + n)` of `lay` into its partial and whole rows.
fn split(lay: &Layout, lba: u64, n: u64) -> Vec<Part> {
    let per = lay.row_data_blocks();
    let end = lba + n;
    let first_whole = lba.div_ceil(per);
    let end_whole = end / per;
    if first_whole >= end_whole {
        return vec![Part::Partial(lba, n)];
    }
    let mut parts = Vec::new();
    if lba < first_whole * per {
        parts.push(Part::Partial(lba, first_whole * per - lba));
    }
    parts.push(Part::Rows(first_whole..end_whole));
    if end > end_whole * per {
        parts.push(Part::Partial(end_whole * per, end - end_whole * per));
    }
    parts
}

impl RaidArray {
    /// Sets `blocks` volume blocks at `lba` to zero, deallocating whole rows
    /// on the members where they all read zeroes after an unmap (module
    /// docs). Afterwards the range reads zeroes, healthy or degraded, and
    /// parity is consistent.
    pub async fn discard(&self, lba: u64, blocks: u64) -> Result<()> {
        let lay = {
            let geo = self.inner.geo.read().await;
            let g = Geometry {
                block_size: self.inner.block_size,
                num_blocks: geo.capacity(),
            };
            g.check_range(lba, blocks).map_err(RaidError::Request)?;
            // During a reshape rows move under us: plain writes of zeroes.
            geo.reshape.is_none().then_some(geo.cur)
        };
        let Some(lay) = lay else {
            return self.zero_by_writes(lba, blocks).await;
        };
        for part in split(&lay, lba, blocks) {
            match part {
                Part::Partial(at, n) => self.zero_by_writes(at, n).await?,
                Part::Rows(rows) => {
                    let mut at = rows.start;
                    while at < rows.end {
                        let batch = at..rows.end.min(at + BATCH_ROWS);
                        at = batch.end;
                        self.discard_rows(lay, batch).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Zeroes `[lba, lba + n)` through the normal write path.
    async fn zero_by_writes(&self, lba: u64, n: u64) -> Result<()> {
        let bs = u64::from(self.inner.block_size);
        let per = (ZERO_WRITE_BYTES / bs).max(1);
        let zero = Bytes::from(vec![0u8; (per.min(n) * bs) as usize]);
        let mut done = 0;
        while done < n {
            let k = per.min(n - done);
            self.write_blocks(lba + done, zero.slice(..(k * bs) as usize), false)
                .await?;
            done += k;
        }
        Ok(())
    }

    /// Deallocates (or zeroes) whole `rows` of `lay` under their locks.
    async fn discard_rows(&self, lay: Layout, rows: Range<u64>) -> Result<()> {
        let geo = self.inner.geo.read().await;
        if geo.reshape.is_some() || geo.cur != lay {
            drop(geo);
            let per = lay.row_data_blocks();
            let (lba, n) = (rows.start * per, (rows.end - rows.start) * per);
            return self.zero_by_writes(lba, n).await;
        }
        let mut guards = Vec::new();
        for row in rows.clone() {
            guards.push(self.row_lock(row).await);
        }
        let a = self.clone();
        let r = self
            .inner
            .rows
            .run(async move {
                let _locked = guards;
                a.discard_locked(&lay, rows).await
            })
            .await;
        drop(geo);
        r?;
        self.settle_journal().await
    }

    /// Whether every member can deallocate `rows` keeping them right: all
    /// in sync there, none being replaced, each reading zeroes after an
    /// unmap.
    fn can_pass_down(&self, lay: &Layout, rows: &Range<u64>) -> bool {
        let m = self.meta();
        (0..lay.members).all(|slot| {
            rows.clone().all(|row| {
                m.mirror(slot, row).is_none()
                    && m.usable(slot, row)
                        .is_some_and(|d| d.features().unmap_reads_zero)
            })
        })
    }

    async fn discard_locked(&self, lay: &Layout, rows: Range<u64>) -> Result<()> {
        let per = lay.row_data_blocks();
        for row in rows.clone() {
            // The cache's older blocks of the row are overwritten.
            self.inner.cache.take(row * per..(row + 1) * per);
        }
        let bs = self.inner.block_size as usize;
        let c = lay.chunk_blocks as usize;
        let zero_chunk = Bytes::from(vec![0u8; c * bs]);
        if !self.can_pass_down(lay, &rows) {
            for row in rows {
                let pieces: Vec<Piece> = (0..lay.data_chunks())
                    .map(|k| (lay.lba_of(row, k, 0), zero_chunk.clone()))
                    .collect();
                self.write_row(lay, row, &pieces, false).await?;
            }
            return Ok(());
        }
        let mut counted = Vec::new();
        for row in rows.clone() {
            let mut g = self.begin_row_write(row).await?;
            g.writing = true;
            counted.push(g);
        }
        // The members change in this epoch: the next flush closes it.
        self.write_epoch();
        let r = match &self.inner.journal {
            None => self.unmap_members(lay, rows).await,
            Some(j) => {
                // Each row's zeroes are logged before its members change;
                // a record's guard is held until they have.
                let zero_block = &zero_chunk[..bs];
                let data: Vec<Vec<Option<&[u8]>>> =
                    vec![vec![Some(zero_block); c]; lay.data_chunks() as usize];
                let mut r = Ok(());
                for row in rows {
                    let pslot = lay.parity_member(row);
                    let Some(pdev) = self.usable(pslot, row) else {
                        // Lost meanwhile: this row's zeroes are written.
                        let pieces: Vec<Piece> = (0..lay.data_chunks())
                            .map(|k| (lay.lba_of(row, k, 0), zero_chunk.clone()))
                            .collect();
                        r = self.write_row(lay, row, &pieces, false).await;
                        if r.is_err() {
                            break;
                        }
                        continue;
                    };
                    let content = RowContent {
                        lay,
                        row,
                        data: &data,
                        parity_from: 0,
                        parity: &zero_chunk,
                    };
                    let logged = j.log(self, pslot, &pdev, &content).await;
                    r = match logged {
                        Ok(_record) => self.unmap_members(lay, row..row + 1).await,
                        Err(e) => Err(e),
                    };
                    if r.is_err() {
                        break;
                    }
                }
                r
            }
        };
        for g in &mut counted {
            g.writing = false;
        }
        r
    }

    /// Deallocates `rows` (chunks and tag blocks) on every member at once.
    /// A member that fails is failed; the others then hold the rows as
    /// zeroes, which is what the failed one's chunk reconstructs to.
    async fn unmap_members(&self, lay: &Layout, rows: Range<u64>) -> Result<()> {
        let at = lay.member_block(rows.start, 0);
        let n = (rows.end - rows.start) * lay.row_blocks();
        let devs: Vec<_> = (0..lay.members)
            .filter_map(|slot| self.usable(slot, rows.start).map(|d| (slot, d)))
            .collect();
        let results = join_all(devs.iter().map(|(_, d)| d.unmap(at, n))).await;
        for ((slot, _), r) in devs.iter().zip(results) {
            if let Err(e) = r {
                self.fail_member(*slot, &e).await;
            }
        }
        self.check_alive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lay() -> Layout {
        Layout {
            members: 3,
            chunk_blocks: 4,
            tag_blocks: 1,
            data_start: 100,
            rows: 10,
        }
    }

    #[test]
    fn a_range_splits_into_partial_and_whole_rows() {
        // 8 volume blocks per row.
        assert_eq!(split(&lay(), 3, 2), vec![Part::Partial(3, 2)]);
        assert_eq!(split(&lay(), 3, 10), vec![Part::Partial(3, 10)]);
        assert_eq!(split(&lay(), 8, 8), vec![Part::Rows(1..2)]);
        assert_eq!(
            split(&lay(), 5, 30),
            vec![Part::Partial(5, 3), Part::Rows(1..4), Part::Partial(32, 3)]
        );
        assert_eq!(
            split(&lay(), 0, 20),
            vec![Part::Rows(0..2), Part::Partial(16, 4)]
        );
    }
}
