//! Which frames may be on the wire together: the write-ordering rule (the
//! crate docs explain it; this is its code).
//!
//! - Two frames whose sectors overlap, one of them a write, are never
//!   outstanding together: the later one (by submission) waits until the
//!   earlier one is finished.
//! - A write finished while some copy of it was unanswered leaves a
//!   [`Fence`] over its sectors: a later write to any of them waits until
//!   every such copy is answered or [`crate::Settings::stale_horizon`] has
//!   passed since the last of them was sent.

use std::time::Instant;

/// A run of sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First sector.
    pub lba: u64,
    /// Number of sectors (at least 1).
    pub sectors: u32,
}

impl Extent {
    /// Whether the two runs share a sector.
    pub fn overlaps(&self, other: &Extent) -> bool {
        let end = self.lba + u64::from(self.sectors);
        let other_end = other.lba + u64::from(other.sectors);
        self.lba < other_end && other.lba < end
    }
}

/// What a frame does to its sectors, for ordering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// The sectors (None: a frame that addresses none, such as FLUSH).
    pub extent: Option<Extent>,
    /// Whether it writes them.
    pub write: bool,
}

impl Access {
    /// Whether `self` must wait for `earlier`, a frame submitted before it
    /// and not finished: they overlap and one of them writes.
    pub fn conflicts(&self, earlier: &Access) -> bool {
        (self.write || earlier.write)
            && match (self.extent, earlier.extent) {
                (Some(a), Some(b)) => a.overlaps(&b),
                _ => false,
            }
    }
}

/// Copies of a finished write that may still land.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The sectors they write.
    pub extent: Extent,
    /// Their tags (each one leaves when its reply arrives).
    pub tags: Vec<u32>,
    /// When the last of them is presumed gone.
    pub expires: Instant,
}

/// The fences of one target.
#[derive(Debug, Clone, Default)]
pub struct Fences {
    fences: Vec<Fence>,
}

impl Fences {
    /// Adds a fence (nothing when `tags` is empty: every copy was answered).
    pub fn add(&mut self, extent: Extent, tags: Vec<u32>, expires: Instant) {
        if !tags.is_empty() {
            self.fences.push(Fence {
                extent,
                tags,
                expires,
            });
        }
    }

    /// The reply to copy `tag` arrived: whether it was one of a fence's.
    pub fn answered(&mut self, tag: u32) -> bool {
        let mut hit = false;
        for f in &mut self.fences {
            if let Some(i) = f.tags.iter().position(|t| *t == tag) {
                f.tags.swap_remove(i);
                hit = true;
            }
        }
        self.fences.retain(|f| !f.tags.is_empty());
        hit
    }

    /// Drops the fences expired at `now`; returns their tags, which no
    /// reply may claim any more.
    pub fn expire(&mut self, now: Instant) -> Vec<u32> {
        let mut gone = Vec::new();
        self.fences.retain(|f| {
            let keep = f.expires > now;
            if !keep {
                gone.extend_from_slice(&f.tags);
            }
            keep
        });
        gone
    }

    /// Whether a write of `extent` must wait.
    pub fn blocks_write(&self, extent: &Extent) -> bool {
        self.fences.iter().any(|f| f.extent.overlaps(extent))
    }

    /// When the next fence expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.fences.iter().map(|f| f.expires).min()
    }

    /// Whether `tag` belongs to a fence.
    pub fn holds(&self, tag: u32) -> bool {
        self.fences.iter().any(|f| f.tags.contains(&tag))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn x(lba: u64, sectors: u32) -> Extent {
        Extent { lba, sectors }
    }

    #[test]
    fn overlap_is_sharing_a_sector() {
        assert!(x(0, 2).overlaps(&x(1, 1)));
        assert!(!x(0, 2).overlaps(&x(2, 1)));
        assert!(x(5, 1).overlaps(&x(0, 6)));
        assert!(!x(6, 1).overlaps(&x(0, 6)));
    }

    #[test]
    fn only_a_write_orders_overlapping_frames() {
        let r = |l, n| Access {
            extent: Some(x(l, n)),
            write: false,
        };
        let w = |l, n| Access {
            extent: Some(x(l, n)),
            write: true,
        };
        let flush = Access {
            extent: None,
            write: false,
        };
        assert!(!r(0, 4).conflicts(&r(2, 4)));
        assert!(w(0, 4).conflicts(&r(2, 4)));
        assert!(r(0, 4).conflicts(&w(2, 4)));
        assert!(!w(0, 2).conflicts(&w(2, 4)));
        assert!(!flush.conflicts(&w(0, 4)));
    }

    #[test]
    fn a_fence_holds_until_every_copy_answers_or_it_expires() {
        let t0 = Instant::now();
        let mut f = Fences::default();
        f.add(x(10, 2), vec![], t0);
        assert!(!f.blocks_write(&x(10, 1)), "no unanswered copy, no fence");
        f.add(x(10, 2), vec![7, 8], t0 + Duration::from_secs(1));
        assert!(f.blocks_write(&x(11, 4)));
        assert!(!f.blocks_write(&x(12, 4)));
        assert!(f.answered(7));
        assert!(!f.answered(99));
        assert!(f.blocks_write(&x(10, 1)));
        assert!(f.answered(8));
        assert!(!f.blocks_write(&x(10, 1)));
        f.add(x(0, 1), vec![9], t0 + Duration::from_secs(1));
        assert_eq!(f.next_expiry(), Some(t0 + Duration::from_secs(1)));
        assert!(f.expire(t0).is_empty());
        assert_eq!(f.expire(t0 + Duration::from_secs(1)), vec![9]);
        assert!(!f.blocks_write(&x(0, 1)));
    }
}
