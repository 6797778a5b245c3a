//! Scrub: read every row of every member, check each block against its tag and
//! the row's parity, and repair what redundancy allows.
//!
//! Per block position of a row: if exactly one member's block fails its check
//! (bad checksum, wrong address, damaged tag block, read error), it is rebuilt
//! from the others and rewritten; if every block checks but parity does not
//! match the data, parity is recomputed (the data checksums vouch for the
//! data); two or more bad blocks at one position cannot be repaired and are
//! reported.

use blockdev::{BlockError, Bytes, WriteFlags};
use tracing::{info, warn};

use crate::array::RaidArray;
use crate::error::Result;
use crate::integrity::{ChunkTags, TagEntry};
use crate::layout::Layout;
use crate::parity::xor_into;

/// What a scrub found and fixed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// Rows checked.
    pub rows: u64,
    /// Rows skipped because a member was missing.
    pub skipped_rows: u64,
    /// Data blocks that failed their check and were rewritten.
    pub data_repaired: u64,
    /// Parity blocks rewritten (damaged, or disagreeing with the data).
    pub parity_repaired: u64,
    /// Block positions with no correct copy.
    pub unrecoverable: u64,
}

impl RaidArray {
    /// Scrubs the whole array (writes out the stripe cache first).
    pub async fn scrub(&self) -> Result<ScrubReport> {
        let geo = *self.inner.geo.read().await;
        self.destage_all(&geo).await?;
        let mut report = ScrubReport::default();
        let lay = geo.cur;
        let rows = match geo.reshape {
            Some(_) => 0,
            None => lay.rows,
        };
        for row in 0..rows {
            let _g = self.row_lock(row).await;
            self.scrub_row(&lay, row, &mut report).await?;
        }
        info!(?report, "scrub finished");
        Ok(report)
    }

    async fn scrub_row(&self, lay: &Layout, row: u64, report: &mut ScrubReport) -> Result<()> {
        let bs = self.inner.block_size as usize;
        let c = lay.chunk_blocks as usize;
        let n = lay.members as usize;
        let mut devs = Vec::with_capacity(n);
        for s in 0..lay.members {
            match self.usable(s, row) {
                Some(d) => devs.push(d),
                None => {
                    report.skipped_rows += 1;
                    return Ok(());
                }
            }
        }
        let mut chunks: Vec<Vec<u8>> = Vec::with_capacity(n);
        let mut tags: Vec<ChunkTags> = Vec::with_capacity(n);
        let mut unreadable = vec![false; n];
        for (s, dev) in devs.iter().enumerate() {
            let data = dev.read(lay.member_block(row, 0), lay.chunk_blocks).await;
            let t = self.read_tags(lay, row, s as u32, dev).await;
            match (data, t) {
                (Ok(d), Ok(t)) => {
                    chunks.push(d.to_vec());
                    tags.push(t);
                }
                (d, t) => {
                    for e in [d.err(), t.err()].into_iter().flatten() {
                        if !matches!(e, BlockError::Medium { .. }) {
                            self.fail_member(s as u32, &e).await;
                            report.skipped_rows += 1;
                            return Ok(());
                        }
                    }
                    unreadable[s] = true;
                    chunks.push(vec![0; c * bs]);
                    tags.push(ChunkTags {
                        entries: vec![None; c],
                    });
                }
            }
        }
        report.rows += 1;
        let pslot = lay.parity_member(row) as usize;
        let mut dirty = vec![false; n];
        for i in 0..c {
            let range = i * bs..(i + 1) * bs;
            let bad: Vec<usize> = (0..n)
                .filter(|&s| {
                    unreadable[s]
                        || !tags[s].verifies(
                            i,
                            Self::addr_of(lay, row, s as u32, i as u32),
                            &chunks[s][range.clone()],
                        )
                })
                .collect();
            match bad.len() {
                0 => {
                    let mut x = vec![0u8; bs];
                    for ch in &chunks {
                        xor_into(&mut x, &ch[range.clone()]);
                    }
                    if x.iter().any(|&b| b != 0) {
                        // Data checks out against its checksums: parity is stale.
                        xor_into(&mut chunks[pslot][range.clone()], &x);
                        dirty[pslot] = true;
                        report.parity_repaired += 1;
                    }
                }
                1 => {
                    let s = bad[0];
                    let mut x = vec![0u8; bs];
                    for (o, ch) in chunks.iter().enumerate() {
                        if o != s {
                            xor_into(&mut x, &ch[range.clone()]);
                        }
                    }
                    let addr = Self::addr_of(lay, row, s as u32, i as u32);
                    if tags[s].entries[i].is_some_and(|e| !e.verifies(addr, &x)) {
                        warn!(
                            row,
                            slot = s,
                            block = i,
                            "rebuilt block disagrees with its checksum"
                        );
                        report.unrecoverable += 1;
                        continue;
                    }
                    chunks[s][range].copy_from_slice(&x);
                    dirty[s] = true;
                    if s == pslot {
                        report.parity_repaired += 1;
                    } else {
                        report.data_repaired += 1;
                    }
                }
                _ => {
                    warn!(row, block = i, bad = ?bad, "no correct copy of block");
                    report.unrecoverable += 1;
                }
            }
        }
        for s in 0..n {
            if dirty[s] || tags[s].damaged() {
                let fresh = ChunkTags {
                    entries: chunks[s]
                        .chunks_exact(bs)
                        .enumerate()
                        .map(|(i, b)| {
                            let addr = Self::addr_of(lay, row, s as u32, i as u32);
                            match tags[s].entries[i] {
                                Some(e) if !e.verifies(addr, b) => Some(e),
                                _ => Some(TagEntry::of(addr, b)),
                            }
                        })
                        .collect(),
                };
                let mut buf = chunks[s].clone();
                buf.extend_from_slice(&fresh.encode(
                    self.inner.block_size,
                    self.place(row, s as u32),
                    self.epoch(),
                ));
                if let Err(e) = devs[s]
                    .write(lay.member_block(row, 0), Bytes::from(buf), WriteFlags::FUA)
                    .await
                {
                    self.fail_member(s as u32, &e).await;
                }
            }
        }
        Ok(())
    }
}
