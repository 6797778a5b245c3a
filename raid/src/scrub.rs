//! Scrub: read every row of every member, check each block against its tag and
//! the row's parity, and repair what redundancy allows.
//!
//! Per block position of a row: if exactly one member's block fails its check
//! (bad checksum, wrong address, damaged tag block, read error), it is rebuilt
//! from the others and rewritten; if every block checks but parity does not
//! match the data, parity is recomputed (the data checksums vouch for the
//! data); two or more bad blocks at one position cannot be repaired and are
//! reported.
//!
//! Check ([`RaidArray::check`]) reads the same way and repairs nothing: it
//! reports the blocks their tags do not vouch for and the positions where
//! parity alone is wrong.
//!
//! Both read the tags from the members, never from the tag cache
//! ([`crate::tag_cache`]): they verify the media.

use blockdev::{BlockError, Bytes, WriteFlags};
use tracing::{info, warn};

use crate::array::RaidArray;
use crate::error::Result;
use crate::integrity::{tag_addr, ChunkTags, TagEntry, Vouch};
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
    /// Whether the scrub ended early because a reshape was running (rows
    /// move under it); the rows after [`ScrubReport::rows`] were not read.
    pub stopped_by_reshape: bool,
}

impl RaidArray {
    /// Scrubs the whole array (writes out the stripe cache first).
    ///
    /// The geometry lock is taken per row, as I/O takes it, so a grow or a
    /// reshape step can run between two rows but never under one. Rows move
    /// while a reshape runs, so the scrub stops when it finds one running
    /// ([`ScrubReport::stopped_by_reshape`]); run it again afterwards.
    pub async fn scrub(&self) -> Result<ScrubReport> {
        {
            let geo = self.inner.geo.read().await;
            self.destage_all(&geo).await?;
        }
        let mut report = ScrubReport::default();
        let mut row = 0;
        loop {
            let geo = self.inner.geo.read().await;
            if geo.reshape.is_some() {
                warn!(row, "scrub stopped: a reshape is running");
                report.stopped_by_reshape = true;
                break;
            }
            let lay = geo.cur;
            if row >= lay.rows {
                break;
            }
            // Under the row lock to the end: a repair must not land after
            // a later write of the row.
            report = self
                .on_row(row, move |a| async move {
                    let mut report = report;
                    a.scrub_row(&lay, row, &mut report).await.map(|()| report)
                })
                .await?;
            row += 1;
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
            let t = self.read_tags_from_disk(lay, row, s as u32, dev).await;
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
        // Blocks given new content here (member-major): their chunks are
        // rewritten and their tags made afresh.
        let mut fixed = vec![false; n * c];
        for i in 0..c {
            let range = i * bs..(i + 1) * bs;
            let bad: Vec<usize> = (0..n)
                .filter(|&s| {
                    unreadable[s]
                        || !tags[s].verifies(
                            i,
                            tag_addr(lay, row, s as u32, i as u32),
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
                        fixed[pslot * c + i] = true;
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
                    let addr = tag_addr(lay, row, s as u32, i as u32);
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
                    fixed[s * c + i] = true;
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
            if fixed[s * c..(s + 1) * c].contains(&true) || tags[s].damaged() {
                let fresh = ChunkTags {
                    entries: chunks[s]
                        .chunks_exact(bs)
                        .enumerate()
                        .map(|(i, b)| {
                            let addr = tag_addr(lay, row, s as u32, i as u32);
                            // A block left bad keeps the tag that says so.
                            match tags[s].entries[i] {
                                Some(e) if !fixed[s * c + i] && !e.verifies(addr, b) => Some(e),
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
                let (at, buf) = (lay.member_block(row, 0), Bytes::from(buf));
                match devs[s].write(at, buf.clone(), WriteFlags::FUA).await {
                    Ok(()) => {
                        self.mirror_write(s as u32, row, at, buf, WriteFlags::FUA)
                            .await
                    }
                    Err(e) => self.fail_member(s as u32, &e).await,
                }
            }
        }
        Ok(())
    }
}

/// What a read-only [`RaidArray::check`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Rows read.
    pub rows: u64,
    /// Rows whose parity could not be checked because a member was missing,
    /// unreadable there or still rebuilding (their present blocks were
    /// checked against their tags).
    pub incomplete_rows: u64,
    /// Blocks whose tag does not vouch for their content (rot, a misdirected,
    /// torn or lost write, a damaged tag block).
    pub bad_blocks: u64,
    /// Block positions of complete rows where every block matches its tag
    /// yet parity is not the XOR of the data (a lost write that took a
    /// block's tag with it, or stale parity). A bad block already explains
    /// the mismatch at its own position, which is not counted again.
    pub parity_mismatches: u64,
    /// The first [`CheckReport::MAX_FINDINGS`] problems, for the log and the admin.
    pub findings: Vec<Finding>,
}

impl CheckReport {
    /// Findings kept in [`CheckReport::findings`]; the counts go on.
    pub const MAX_FINDINGS: usize = 64;

    /// Whether nothing was found.
    pub fn clean(&self) -> bool {
        self.bad_blocks == 0 && self.parity_mismatches == 0
    }

    fn note(&mut self, f: Finding) {
        match f {
            Finding::BadBlock { .. } => self.bad_blocks += 1,
            Finding::ParityMismatch { .. } => self.parity_mismatches += 1,
        }
        if self.findings.len() < Self::MAX_FINDINGS {
            self.findings.push(f);
        }
    }
}

/// One problem a [`RaidArray::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finding {
    /// A block its tag does not vouch for.
    BadBlock {
        /// Physical row.
        row: u64,
        /// Member slot.
        slot: u32,
        /// Block within the chunk.
        block: u32,
        /// Whether it is the row's parity block.
        parity: bool,
        /// What the tag says of the content.
        vouch: Vouch,
    },
    /// Parity that is not the XOR of the data at a block position where
    /// every block matches its tag.
    ParityMismatch {
        /// Physical row.
        row: u64,
        /// Block within the chunk.
        block: u32,
    },
}

impl RaidArray {
    /// Reads every row of every usable member and reports, without
    /// repairing anything, each block its tag does not vouch for and each
    /// position whose parity is wrong: the read-only counterpart of
    /// [`RaidArray::scrub`] (md's "check" to its "repair"). It looks at what
    /// the members hold: writes still in the stripe cache are not destaged.
    /// While a reshape runs, rows below its position are read in the new
    /// layout and the others in the old one (the geometry lock is taken per
    /// row, so each row is read in the layout it holds at that moment). A
    /// member read error fails the member as any read would; a medium error
    /// makes the row incomplete.
    pub async fn check(&self) -> Result<CheckReport> {
        let bs = self.inner.block_size as usize;
        let mut report = CheckReport::default();
        let mut next = 0;
        loop {
            // Per row, as I/O does: a reshape step may move rows in between.
            let geo = self.inner.geo.read().await;
            let row = next;
            if row >= geo.physical_rows() {
                break;
            }
            next += 1;
            let Some(lay) = geo.layout_of_row(row) else {
                continue;
            };
            let _g = self.row_lock(row).await;
            report.rows += 1;
            let pslot = lay.parity_member(row);
            let mut xor = vec![0u8; lay.chunk_blocks as usize * bs];
            let mut explained = vec![false; lay.chunk_blocks as usize];
            let mut complete = true;
            for slot in 0..lay.members {
                let Some(dev) = self.usable(slot, row) else {
                    complete = false;
                    continue;
                };
                let (data, tags) = tokio::join!(
                    dev.read(lay.member_block(row, 0), lay.chunk_blocks),
                    self.read_tags_from_disk(&lay, row, slot, &dev)
                );
                let (data, tags) = match (data, tags) {
                    (Ok(d), Ok(t)) => (d, t),
                    (Err(e), _) | (_, Err(e)) => {
                        if !matches!(e, BlockError::Medium { .. }) {
                            self.fail_member(slot, &e).await;
                        }
                        complete = false;
                        continue;
                    }
                };
                for (i, blk) in data.chunks_exact(bs).enumerate() {
                    let addr = tag_addr(&lay, row, slot, i as u32);
                    let vouch = tags.vouch(i, addr, blk);
                    if vouch != Vouch::Current {
                        explained[i] = true;
                        report.note(Finding::BadBlock {
                            row,
                            slot,
                            block: i as u32,
                            parity: slot == pslot,
                            vouch,
                        });
                    }
                }
                xor_into(&mut xor, &data);
            }
            if !complete {
                report.incomplete_rows += 1;
                continue;
            }
            for (i, x) in xor.chunks_exact(bs).enumerate() {
                if !explained[i] && x.iter().any(|&b| b != 0) {
                    report.note(Finding::ParityMismatch {
                        row,
                        block: i as u32,
                    });
                }
            }
        }
        if !report.clean() {
            warn!(
                bad_blocks = report.bad_blocks,
                parity_mismatches = report.parity_mismatches,
                "check found problems"
            );
        }
        Ok(report)
    }
}
