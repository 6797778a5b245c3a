//! The copy-before-write map of a backup snapshot, sans-I/O: which grains
//! of the volume the snapshot still needs from the volume itself, which
//! have their old content in the reserve, and which the backup is done with.
//!
//! A grain is a run of `grain` blocks. At the snapshot every grain is
//! [`Grain::Needed`]: the volume still holds the snapshot's content. A write
//! into a needed grain first copies its content into a free reserve slot
//! ([`CowMap::plan_write`] hands the copy out, [`CowMap::copied`] records it)
//! and only then goes ahead; the grain is then [`Grain::Preserved`] and the
//! snapshot reads it from the reserve. Grains the backup has read are
//! [`CowMap::release`]d: their slot is free again and no write copies them
//! any more, so the reserve holds at most what changes in the grains the
//! backup has not reached yet.
//!
//! A snapshot read of a needed grain reads the volume, so a write must not
//! start on that grain while the read runs: the read *pins* the grain
//! ([`CowMap::plan_read`]), and a write into a pinned grain waits (after
//! its copy, which does not change the volume). A grain being copied makes
//! writes into it and snapshot reads of it wait too.
//!
//! When the reserve has no free slot for a copy, or a copy fails, the
//! snapshot is invalid ([`CowMap::invalidate`]): every grain is released,
//! every write goes ahead without copying, and every later snapshot read
//! fails with the reason. Client writes never fail because of a snapshot.

/// The state of one grain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grain {
    /// The volume still holds the snapshot's content; `pins` snapshot reads
    /// of it are running.
    Needed {
        /// Snapshot reads of the grain running on the volume.
        pins: u32,
    },
    /// Its content is being copied into reserve slot `slot`.
    Copying {
        /// The reserve slot.
        slot: u32,
    },
    /// Its snapshot content is in reserve slot `slot`.
    Preserved {
        /// The reserve slot.
        slot: u32,
    },
    /// The backup is done with it (or the snapshot is invalid).
    Released,
}

/// What a write must do before it may go ahead.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WritePlan {
    /// Nothing: go ahead.
    Go,
    /// Copy each grain's content to its slot (then [`CowMap::copied`] each,
    /// and plan again).
    Copy(Vec<(u64, u32)>),
    /// Another copy or a snapshot read is running on a grain of the write:
    /// wait for a change and plan again.
    Wait,
}

/// Where a snapshot read of one grain finds its content.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadPlan {
    /// On the volume; the grain is pinned until [`CowMap::unpin`].
    Volume,
    /// In this reserve slot.
    Reserve(u32),
    /// Being copied: wait for a change and plan again.
    Wait,
}

/// The copy-before-write map of one snapshot.
#[derive(Debug)]
pub(crate) struct CowMap {
    grain: u64,
    /// Blocks of the volume at the snapshot (the snapshot's size).
    blocks: u64,
    grains: Vec<Grain>,
    free: Vec<u32>,
    slots: u32,
    invalid: Option<String>,
}

impl CowMap {
    /// The map of a volume of `blocks` blocks in grains of `grain` blocks,
    /// with `slots` reserve slots of one grain each.
    pub(crate) fn new(blocks: u64, grain: u64, slots: u32) -> CowMap {
        assert!(grain > 0, "a grain holds at least one block");
        let n = blocks.div_ceil(grain) as usize;
        CowMap {
            grain,
            blocks,
            grains: vec![Grain::Needed { pins: 0 }; n],
            free: (0..slots).rev().collect(),
            slots,
            invalid: None,
        }
    }

    /// Blocks per grain.
    pub(crate) fn grain(&self) -> u64 {
        self.grain
    }

    /// The snapshot's size in blocks.
    pub(crate) fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Why the snapshot is no longer usable, if it is not.
    pub(crate) fn invalid(&self) -> Option<&str> {
        self.invalid.as_deref()
    }

    /// Reserve slots holding a grain now.
    pub(crate) fn slots_used(&self) -> u32 {
        self.slots - self.free.len() as u32
    }

    /// The grains a request of `blocks` blocks at `lba` touches, clipped to
    /// the snapshot (a volume grown since has blocks the snapshot lacks).
    fn span(&self, lba: u64, blocks: u64) -> std::ops::Range<usize> {
        let end = lba.saturating_add(blocks).min(self.blocks);
        if lba >= end {
            return 0..0;
        }
        (lba / self.grain) as usize..end.div_ceil(self.grain) as usize
    }

    /// What a write (or zeroing, or unmap) of `blocks` blocks at `lba` must
    /// do first. Needed grains are handed out for copying all at once, or
    /// none if the write must wait for another grain first.
    pub(crate) fn plan_write(&mut self, lba: u64, blocks: u64) -> WritePlan {
        let span = self.span(lba, blocks);
        let mut copy = Vec::new();
        for g in span.clone() {
            match self.grains[g] {
                Grain::Needed { pins: 0 } => copy.push(g),
                Grain::Needed { .. } | Grain::Copying { .. } => return WritePlan::Wait,
                Grain::Preserved { .. } | Grain::Released => {}
            }
        }
        if copy.is_empty() {
            return WritePlan::Go;
        }
        if copy.len() > self.free.len() {
            self.invalidate(format!(
                "the copy-on-write reserve is full ({} slots of {} blocks)",
                self.slots, self.grain
            ));
            return WritePlan::Go;
        }
        let out = copy
            .into_iter()
            .map(|g| {
                let slot = self.free.pop().expect("counted above");
                self.grains[g] = Grain::Copying { slot };
                (g as u64, slot)
            })
            .collect();
        WritePlan::Copy(out)
    }

    /// The copy of `grain` into its slot ended.
    pub(crate) fn copied(&mut self, grain: u64, ok: bool) {
        let g = grain as usize;
        if let Grain::Copying { slot } = self.grains[g] {
            if ok {
                self.grains[g] = Grain::Preserved { slot };
            } else {
                self.free.push(slot);
                self.grains[g] = Grain::Released;
                self.invalidate(format!("copying grain {grain} into the reserve failed"));
            }
        }
    }

    /// Where a snapshot read of `grain` finds it; an error once the
    /// snapshot is invalid or the grain was released.
    pub(crate) fn plan_read(&mut self, grain: u64) -> Result<ReadPlan, String> {
        if let Some(why) = &self.invalid {
            return Err(why.clone());
        }
        let g = grain as usize;
        match &mut self.grains[g] {
            Grain::Needed { pins } => {
                *pins += 1;
                Ok(ReadPlan::Volume)
            }
            Grain::Copying { .. } => Ok(ReadPlan::Wait),
            Grain::Preserved { slot } => Ok(ReadPlan::Reserve(*slot)),
            Grain::Released => Err(format!("grain {grain} was released by the backup")),
        }
    }

    /// A snapshot read of `grain` on the volume ended.
    pub(crate) fn unpin(&mut self, grain: u64) {
        if let Grain::Needed { pins } = &mut self.grains[grain as usize] {
            *pins = pins.saturating_sub(1);
        }
    }

    /// The backup is done with the grains of `blocks` blocks at `lba`
    /// (whole grains only: a grain partly inside is kept): their slots are
    /// free and writes no longer copy them. A pinned grain is kept.
    pub(crate) fn release(&mut self, lba: u64, blocks: u64) {
        let end = lba.saturating_add(blocks).min(self.blocks);
        let first = lba.div_ceil(self.grain) as usize;
        let last = if end == self.blocks {
            self.grains.len()
        } else {
            (end / self.grain) as usize
        };
        for g in first..last.max(first) {
            match self.grains[g] {
                Grain::Needed { pins: 0 } => self.grains[g] = Grain::Released,
                Grain::Preserved { slot } => {
                    self.free.push(slot);
                    self.grains[g] = Grain::Released;
                }
                Grain::Needed { .. } | Grain::Copying { .. } | Grain::Released => {}
            }
        }
    }

    /// Makes the snapshot unusable for `why`: every grain released, every
    /// slot free, copies in flight ignored when they end.
    pub(crate) fn invalidate(&mut self, why: String) {
        if self.invalid.is_none() {
            tracing::warn!(reason = %why, "backup snapshot dropped");
            self.invalid = Some(why);
        }
        self.grains.iter_mut().for_each(|g| *g = Grain::Released);
        self.free = (0..self.slots).rev().collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_copies_needed_grains_once_then_goes() {
        let mut m = CowMap::new(100, 10, 4);
        assert_eq!(m.plan_write(5, 10), WritePlan::Copy(vec![(0, 0), (1, 1)]));
        assert_eq!(m.plan_write(0, 1), WritePlan::Wait);
        m.copied(0, true);
        m.copied(1, true);
        assert_eq!(m.plan_write(5, 10), WritePlan::Go);
        assert_eq!(m.plan_read(0), Ok(ReadPlan::Reserve(0)));
        assert_eq!(m.plan_read(2), Ok(ReadPlan::Volume));
        assert_eq!(m.slots_used(), 2);
    }

    #[test]
    fn a_pinned_grain_holds_writes_until_its_read_ends() {
        let mut m = CowMap::new(100, 10, 4);
        assert_eq!(m.plan_read(3), Ok(ReadPlan::Volume));
        assert_eq!(m.plan_write(30, 1), WritePlan::Wait);
        m.unpin(3);
        assert!(matches!(m.plan_write(30, 1), WritePlan::Copy(_)));
        assert_eq!(m.plan_read(3), Ok(ReadPlan::Wait));
    }

    #[test]
    fn released_grains_free_their_slots_and_copy_no_more() {
        let mut m = CowMap::new(100, 10, 1);
        assert_eq!(m.plan_write(0, 1), WritePlan::Copy(vec![(0, 0)]));
        m.copied(0, true);
        // Only whole grains inside the range are released.
        m.release(0, 15);
        assert_eq!(m.slots_used(), 0);
        assert_eq!(m.plan_read(1), Ok(ReadPlan::Volume));
        m.unpin(1);
        assert!(m.plan_read(0).is_err());
        assert_eq!(m.plan_write(0, 10), WritePlan::Go);
        assert_eq!(m.plan_write(10, 1), WritePlan::Copy(vec![(1, 0)]));
    }

    #[test]
    fn a_full_reserve_drops_the_snapshot_and_lets_writes_go() {
        let mut m = CowMap::new(100, 10, 1);
        assert!(matches!(m.plan_write(0, 1), WritePlan::Copy(_)));
        m.copied(0, true);
        assert_eq!(m.plan_write(10, 11), WritePlan::Go);
        assert!(m.invalid().unwrap().contains("reserve is full"));
        assert!(m.plan_read(5).is_err());
        assert_eq!(m.slots_used(), 0);
        assert_eq!(m.plan_write(50, 50), WritePlan::Go);
    }

    #[test]
    fn a_failed_copy_drops_the_snapshot() {
        let mut m = CowMap::new(100, 10, 4);
        assert!(matches!(m.plan_write(0, 1), WritePlan::Copy(_)));
        m.copied(0, false);
        assert!(m.invalid().is_some());
        assert_eq!(m.plan_write(0, 1), WritePlan::Go);
    }

    #[test]
    fn blocks_past_the_snapshot_need_no_copy() {
        let mut m = CowMap::new(95, 10, 4);
        assert_eq!(m.plan_write(100, 10), WritePlan::Go);
        assert_eq!(m.plan_write(94, 10), WritePlan::Copy(vec![(9, 0)]));
        m.copied(9, true);
        m.release(90, 5);
        assert_eq!(m.slots_used(), 0);
    }
}
