//! The block ranges of writes whose first attempts are still being fenced,
//! held until their fences resolve: a later overlapping write (or any
//! flush) waits for them, even when the caller of the fenced write dropped
//! its future and went on. Without this, a caller that gave up on a write
//! could write the same blocks again through another path and have the
//! stale first attempt land over it once the old path's fence lets go.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// The ranges held now, each with an id so a hold removes only itself.
#[derive(Debug)]
pub(crate) struct FencedRanges {
    held: Mutex<Vec<(u64, Range<u64>)>>,
    /// Counts holds taken: ids, and a signal that the set changed.
    changed: watch::Sender<u64>,
}

/// One held range; dropping it (when its fence resolved) lets the writes
/// and flushes waiting for it go on.
#[derive(Debug)]
pub(crate) struct Hold {
    ranges: Arc<FencedRanges>,
    id: u64,
}

impl FencedRanges {
    pub(crate) fn new() -> Arc<FencedRanges> {
        Arc::new(FencedRanges {
            held: Mutex::new(Vec::new()),
            changed: watch::Sender::new(0),
        })
    }

    /// Holds `blocks` until the returned hold is dropped.
    pub(crate) fn hold(self: &Arc<Self>, blocks: Range<u64>) -> Hold {
        let mut id = 0;
        self.changed.send_modify(|n| {
            *n += 1;
            id = *n;
        });
        self.lock().push((id, blocks));
        Hold {
            ranges: Arc::clone(self),
            id,
        }
    }

    /// Waits until no held range overlaps `blocks` (None: until none is
    /// held at all, as a flush must).
    pub(crate) async fn wait_clear(&self, blocks: Option<Range<u64>>) {
        loop {
            let mut changed = self.changed.subscribe();
            let busy = self.lock().iter().any(|(_, r)| match &blocks {
                Some(b) => r.start < b.end && b.start < r.end,
                None => true,
            });
            if !busy {
                return;
            }
            // The sender lives as long as `self`.
            let _ = changed.changed().await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Range<u64>)>> {
        self.held.lock().expect("fenced ranges lock")
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.ranges.lock().retain(|(id, _)| *id != self.id);
        self.ranges.changed.send_modify(|_| {});
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overlapping_waits_and_disjoint_goes_on() {
        let r = FencedRanges::new();
        let a = r.hold(10..20);
        let b = r.hold(15..30);
        r.wait_clear(Some(0..10)).await;
        r.wait_clear(Some(30..40)).await;
        let waiter = {
            let r = Arc::clone(&r);
            tokio::spawn(async move { r.wait_clear(Some(19..20)).await })
        };
        let flush = {
            let r = Arc::clone(&r);
            tokio::spawn(async move { r.wait_clear(None).await })
        };
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "19 is still held by the second");
        drop(b);
        waiter.await.unwrap();
        flush.await.unwrap();
    }
}
