//! Writes whose futures were dropped while their system call still runs on
//! the blocking pool ("orphans"), so that none of them lands after newer
//! data: a later write, zeroing or unmap of an overlapping byte range, and
//! every later flush, first waits for the orphans it would race with (the
//! cancellation rule of [`crate::BlockDevice`]).
//!
//! Costs nothing while there are no orphans beyond one shared allocation per
//! blocking write: the registry is only touched when a future is dropped
//! before its write ended, and when such a write ends.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

const RUNNING: u8 = 0;
const DONE: u8 = 1;
const ORPHANED: u8 = 2;

/// One write on the blocking pool: its byte range and how it stands.
#[derive(Debug)]
struct Op {
    state: AtomicU8,
    start: u64,
    end: u64,
}

/// The orphaned writes of one file.
#[derive(Debug, Default)]
pub(super) struct Orphans {
    /// Number of entries in `ops`, read without the lock on every write.
    count: AtomicUsize,
    ops: Mutex<Vec<Arc<Op>>>,
    /// Signalled whenever an orphan ends.
    ended: Notify,
}

/// A write handed to the blocking pool, seen from the future that awaits
/// it: dropped while the write still runs (its future was dropped), it
/// orphans the write.
#[derive(Debug)]
pub(super) struct Started<'a> {
    orphans: &'a Orphans,
    op: Arc<Op>,
}

/// The same write, seen from the blocking closure: dropping it (when the
/// write returned, panicked, or never ran) ends the write.
#[derive(Debug)]
pub(super) struct Running {
    inner: Arc<super::Inner>,
    op: Arc<Op>,
}

impl Orphans {
    /// Waits until no orphan overlaps bytes `start..end`.
    pub(super) async fn settle(&self, start: u64, end: u64) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            let clear = !self.lock().iter().any(|o| o.start < end && start < o.end);
            if clear {
                return;
            }
            tracing::debug!(start, end, "waiting for a dropped write to land");
            ended.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Op>>> {
        self.ops.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Registers a write of bytes `start..end` about to go to the blocking
/// pool: the first half stays with the awaiting future, the second goes
/// into the closure.
pub(super) fn start(inner: &Arc<super::Inner>, start: u64, end: u64) -> (Started<'_>, Running) {
    let op = Arc::new(Op {
        state: AtomicU8::new(RUNNING),
        start,
        end,
    });
    (
        Started {
            orphans: &inner.orphans,
            op: Arc::clone(&op),
        },
        Running {
            inner: Arc::clone(inner),
            op,
        },
    )
}

impl Drop for Started<'_> {
    fn drop(&mut self) {
        if self.op.state.load(Ordering::Acquire) == DONE {
            return; // the common case: the future saw the write end
        }
        // Under the lock, so that the write's end (which takes the lock
        // once it sees ORPHANED) finds the entry.
        let mut ops = self.orphans.lock();
        if self
            .op
            .state
            .compare_exchange(RUNNING, ORPHANED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            ops.push(Arc::clone(&self.op));
            self.orphans.count.fetch_add(1, Ordering::Release);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.op.state.swap(DONE, Ordering::AcqRel) == ORPHANED {
            let o = &self.inner.orphans;
            {
                let mut ops = o.lock();
                ops.retain(|x| !Arc::ptr_eq(x, &self.op));
                o.count.fetch_sub(1, Ordering::Release);
            }
            o.ended.notify_waiters();
        }
    }
}
