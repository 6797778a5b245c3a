//! Suspending a member for maintenance, and resuming it.
//!
//! A suspended member gets no I/O at all: the array serves degraded, every
//! write marks the write-intent bitmap on the other members (whose bits are
//! never cleared while a member is away), and no hot spare is pulled in, for
//! the member has not failed; the superblocks say "suspended", so a restart
//! keeps it out as well. Before it is suspended the array is flushed with
//! I/O held off, so its copy is consistent as of that moment. When it is
//! resumed (the same device, checked by identity and superblock), only the
//! rows of regions written meanwhile are rebuilt onto it, as for a returning
//! member ([`RaidArray::re_add`]). A member suspended for too long may be
//! turned into a failure by the caller ([`RaidArray::fail_suspended_longer_than`]
//! or [`RaidArray::fail`]); a spare may then take its place.

use std::time::Duration;

use blockdev::{BlockError, SharedDevice};
use tracing::info;

use crate::array::RaidArray;
use crate::error::{RaidError, Result};
use crate::members::MemberState;

/// What resuming a suspended member will resync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeReport {
    /// The slot resumed.
    pub slot: u32,
    /// Rows to be resynced onto it: those of the bitmap regions written
    /// while it was suspended (the rebuild that follows does exactly these;
    /// [`crate::RebuildProgress::rows_rebuilt`] counts them as it goes).
    pub rows_to_resync: u64,
    /// Member blocks of chunk data and parity those rows rewrite on it (tag
    /// blocks aside): `rows_to_resync` times the chunk size.
    pub blocks_to_resync: u64,
    /// Rows in the array: what a full rebuild would have copied.
    pub total_rows: u64,
}

impl RaidArray {
    /// Suspends the member in `slot`: flushes the array with I/O held off,
    /// then stops all I/O to it, and persists that on the others. The array
    /// serves degraded until [`RaidArray::resume`].
    ///
    /// Refused ([`RaidError::Config`]) for a slot that is not active, while
    /// any other member is unavailable or being rebuilt (that would leave
    /// the array without redundancy for two members), while a reshape runs,
    /// and for a slot being replaced.
    pub async fn suspend(&self, slot: u32) -> Result<()> {
        let geo = self.inner.geo.write().await;
        let refuse = |why: String| Err(RaidError::Config(why));
        if geo.reshape.is_some() {
            return refuse("cannot suspend a member while a reshape runs".into());
        }
        {
            let m = self.meta();
            let Some(s) = m.slots.get(slot as usize) else {
                return refuse(format!("no member slot {slot}"));
            };
            if s.state != MemberState::InSync {
                return refuse(format!("slot {slot} is not active ({:?})", s.state));
            }
            if m.degraded() || m.rebuild.is_some() {
                return refuse(format!(
                    "another member is unavailable or rebuilding: suspending slot {slot} would fail the array"
                ));
            }
            if m.replace.as_ref().is_some_and(|r| r.slot == slot) {
                return refuse(format!("slot {slot} is being replaced"));
            }
        }
        // Its copy is complete and durable as of now; from here on the
        // bitmap counts what it misses.
        self.flush_locked(&geo).await?;
        let now = self.now();
        self.meta().slots[slot as usize].state = MemberState::Suspended { since: now };
        self.write_superblocks().await?;
        info!(slot, "member suspended; array serves degraded");
        Ok(())
    }

    /// Resumes the suspended member in `slot` with its device `dev` (the
    /// same device: its identity and superblock are checked), and starts
    /// resyncing the regions written while it was away; [`RaidArray::maintain`]
    /// (or [`RaidArray::rebuild_step`]) carries that out, and
    /// [`RaidArray::rebuild_progress`] follows it.
    ///
    /// Refused with [`RaidError::Assembly`] for another device and with
    /// [`RaidError::Config`] for a slot not suspended or while a rebuild runs.
    pub async fn resume(&self, slot: u32, dev: SharedDevice) -> Result<ResumeReport> {
        let dev = self.as_member(dev);
        {
            let m = self.meta();
            let Some(s) = m.slots.get(slot as usize) else {
                return Err(RaidError::Config(format!("no member slot {slot}")));
            };
            if !matches!(s.state, MemberState::Suspended { .. }) {
                return Err(RaidError::Config(format!("slot {slot} is not suspended")));
            }
            if s.uuid != dev.identity().uuid {
                return Err(RaidError::Assembly(format!(
                    "slot {slot} was suspended with another device"
                )));
            }
            if m.rebuild.is_some() {
                return Err(RaidError::Config(
                    "a rebuild is running; resume when it ends".into(),
                ));
            }
        }
        let sb = crate::superblock::read_newest(&dev).await?;
        if sb.array_uuid != self.inner.array_uuid || sb.role != slot {
            return Err(RaidError::Assembly(format!(
                "the device's superblock does not name it slot {slot} of this array"
            )));
        }
        // Rows still in the stripe cache are written out first, so the
        // bitmap counts every row the member misses.
        self.flush_all().await?;
        let lay = self.inner.geo.read().await.cur;
        let rows_to_resync = {
            let m = self.meta();
            m.bitmap
                .dirty_regions()
                .into_iter()
                .map(|r| {
                    let rows = m.bitmap.rows_of(r);
                    rows.end.min(lay.rows).saturating_sub(rows.start)
                })
                .sum::<u64>()
        };
        info!(
            slot,
            rows_to_resync, "member resumed; resyncing what was written meanwhile"
        );
        self.install(slot, dev, true).await?;
        Ok(ResumeReport {
            slot,
            rows_to_resync,
            blocks_to_resync: rows_to_resync * u64::from(lay.chunk_blocks),
            total_rows: lay.rows,
        })
    }

    /// Fails every member suspended for at least `bound` (the caller's
    /// policy: a maintenance that overran), so a hot spare may replace it
    /// after [`crate::Config::spare_timeout`]. Returns the slots failed. The
    /// suspension time of a member restarts at assembly.
    pub async fn fail_suspended_longer_than(&self, bound: Duration) -> Vec<u32> {
        let now = self.now();
        let overdue: Vec<u32> = self
            .meta()
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s.state, MemberState::Suspended { since } if now >= since + bound))
            .map(|(i, _)| i as u32)
            .collect();
        for &slot in &overdue {
            let why = format!("suspended longer than {bound:?}");
            self.fail_member(slot, &BlockError::Failed(why)).await;
        }
        overdue
    }
}
