//! Flushes, and the tags' flush epochs they close.
//!
//! A flush waits for the row work begun before it (also that of requests
//! whose callers went away), writes the stripe cache out, makes every completed member write
//! durable, records on the members that the epochs before it are closed
//! ([`crate::superblock::Superblock::closed_epoch`], see [`crate::integrity`]),
//! checkpoints the journal and clears the bitmap regions it made clean.

use std::sync::atomic::Ordering;

use futures::future::join_all;

use crate::array::RaidArray;
use crate::error::Result;
use crate::geometry::Geo;
use crate::members::MemberState;
use crate::superblock::FLAG_CLEAN;

impl RaidArray {
    /// Starts the tags' flush epochs above any used before: call once the
    /// superblocks of this assembly are durable.
    pub(crate) fn begin_epochs(&self) {
        let events = self.meta().sb.events;
        self.inner.epoch.store(events << 32, Ordering::SeqCst);
    }

    /// The tags' current flush epoch.
    pub(crate) fn epoch(&self) -> u64 {
        self.inner.epoch.load(Ordering::SeqCst)
    }

    /// The current flush epoch, for a write about to update tag entries
    /// (giving them a previous content): the next flush must then record
    /// the epoch closed on the members.
    pub(crate) fn write_epoch(&self) -> u64 {
        let e = self.epoch();
        self.inner.written_epoch.fetch_max(e, Ordering::SeqCst);
        e
    }

    /// Records on the members that every flush epoch below `epoch` is
    /// durable (`Superblock::closed_epoch`), unless they say so already or
    /// (`lazy`) no write of this assembly updated tags since they last did.
    pub(crate) async fn close_epochs_below(&self, epoch: u64, lazy: bool) -> Result<()> {
        let written = self.inner.written_epoch.load(Ordering::SeqCst);
        let persist = {
            let mut m = self.meta();
            let due = epoch > m.sb.closed_epoch && (!lazy || written >= m.sb.closed_epoch);
            if due {
                m.sb.closed_epoch = epoch;
            }
            due
        };
        if persist {
            self.write_superblocks().await?;
        }
        Ok(())
    }

    /// Writes the cache out and makes every completed write durable; then
    /// clears bitmap bits that are no longer needed and empties the journal.
    pub async fn flush_all(&self) -> Result<()> {
        let geo = self.inner.geo.read().await;
        self.flush_locked(&geo).await
    }

    /// [`RaidArray::flush_all`] under a geometry guard the caller holds.
    /// Row work that outlived its caller (a dropped request's) ends first:
    /// its writes were begun before this flush was.
    pub(crate) async fn flush_locked(&self, geo: &Geo) -> Result<()> {
        self.inner.rows.wait_for_earlier().await;
        self.destage_all(geo).await?;
        let epoch = self.meta().bitmap.begin_flush();
        // Tags written from now on count what this flush makes durable as
        // their previous content.
        let started = self.inner.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        self.flush_members().await?;
        // The epochs before this one are durable now: say so on the members
        // (FUA) before a later overwrite could leave a tag of theirs naming a
        // previous content that is gone (integrity module docs). Not before
        // the flush: a crash in its middle could then land the record ahead
        // of the writes it vouches for, and resync would distrust blocks the
        // crash legitimately reverted.
        self.close_epochs_below(started, true).await?;
        if let Some(j) = &self.inner.journal {
            j.checkpoint(self).await?;
        }
        let clear = {
            let mut m = self.meta();
            let keep = m.slots.iter().any(|s| s.state != MemberState::InSync);
            !keep && m.bitmap.clear_flushed(epoch)
        };
        if clear {
            self.persist_bitmap().await?;
        }
        Ok(())
    }

    /// Flushes every live member (and a replace's target); a member whose
    /// flush fails is failed.
    pub(crate) async fn flush_members(&self) -> Result<()> {
        let targets = self.metadata_targets();
        let res = join_all(targets.iter().map(|(_, d)| d.flush())).await;
        for ((slot, _), r) in targets.iter().zip(res) {
            if let Err(e) = r {
                self.fail_member(*slot, &e).await;
            }
        }
        self.check_alive()
    }

    /// Flushes and marks the array clean on its members: the orderly stop.
    pub async fn close(&self) -> Result<()> {
        let geo = self.inner.geo.write().await;
        self.flush_locked(&geo).await?;
        {
            let mut m = self.meta();
            m.sb.flags |= FLAG_CLEAN;
            m.clean_on_disk = true;
        }
        self.write_superblocks().await?;
        self.flush_members().await
    }

    /// Runs the journal checkpoint a member failure asked for
    /// ([`crate::journal::JournalState::request_checkpoint`]); called at the
    /// end of reads, writes and maintenance, where no journal guard is held.
    pub(crate) async fn settle_journal(&self) -> Result<()> {
        match &self.inner.journal {
            Some(j) => j.checkpoint_if_requested(self).await,
            None => Ok(()),
        }
    }
}
