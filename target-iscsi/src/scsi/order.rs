//! Task-set ordering (SAM-5 task attributes) and LBA range locks.
//!
//! A command enters its logical unit's [`TaskSet`] synchronously when the
//! transport submits it, so the order of entry is the CmdSN order. SIMPLE
//! tasks run concurrently but never before an older ORDERED task has ended;
//! an ORDERED task waits for every older task; HEAD OF QUEUE tasks run at once.
//!
//! [`RangeLocks`] serialises writers of overlapping LBA ranges, which keeps
//! overlapping writes from interleaving inside a block and makes COMPARE AND
//! WRITE atomic against every other writer on every session.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

use super::TaskAttr;

#[derive(Debug, Default)]
struct SetInner {
    next: u64,
    /// Live tasks by entry order, with whether each is ORDERED.
    live: BTreeMap<u64, bool>,
}

/// The task set of one logical unit.
#[derive(Debug, Default)]
pub struct TaskSet {
    inner: Mutex<SetInner>,
    changed: Notify,
}

/// A task's place in the task set; leaving it (on drop) lets later tasks run.
#[derive(Debug)]
pub struct Ticket {
    set: Arc<TaskSet>,
    seq: u64,
    attr: TaskAttr,
}

impl TaskSet {
    /// Enters a task now; the ticket decides when it may run.
    pub fn enter(self: &Arc<Self>, attr: TaskAttr) -> Ticket {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let seq = g.next;
        g.next += 1;
        g.live.insert(seq, attr == TaskAttr::Ordered);
        Ticket {
            set: Arc::clone(self),
            seq,
            attr,
        }
    }

    /// Number of tasks in the set.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .live
            .len()
    }

    /// Whether the set is empty.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Ticket {
    fn may_run(&self) -> bool {
        let g = self
            .set
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut older = g.live.range(..self.seq);
        match self.attr {
            TaskAttr::HeadOfQueue => true,
            TaskAttr::Ordered => older.next().is_none(),
            TaskAttr::Simple | TaskAttr::Aca => !older.any(|(_, &ordered)| ordered),
        }
    }

    /// Waits until the task attribute allows this task to run.
    pub async fn ready(&self) {
        loop {
            let notified = self.set.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.may_run() {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.set
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .live
            .remove(&self.seq);
        self.set.changed.notify_waiters();
    }
}

#[derive(Debug, Default)]
struct RangeInner {
    next: u64,
    held: BTreeMap<u64, (u64, u64)>,
}

/// Exclusive locks over LBA ranges of one logical unit.
#[derive(Debug, Default)]
pub struct RangeLocks {
    inner: Mutex<RangeInner>,
    changed: Notify,
}

/// A held range lock, released on drop.
#[derive(Debug)]
pub struct RangeGuard {
    locks: Arc<RangeLocks>,
    id: u64,
}

impl RangeLocks {
    /// Locks `blocks` blocks at `lba` (at least one block) exclusively.
    pub async fn lock(self: &Arc<Self>, lba: u64, blocks: u64) -> RangeGuard {
        let end = lba.saturating_add(blocks.max(1));
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
                if !g.held.values().any(|&(s, e)| s < end && lba < e) {
                    let id = g.next;
                    g.next += 1;
                    g.held.insert(id, (lba, end));
                    return RangeGuard {
                        locks: Arc::clone(self),
                        id,
                    };
                }
            }
            notified.await;
        }
    }
}

impl Drop for RangeGuard {
    fn drop(&mut self) {
        self.locks
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .held
            .remove(&self.id);
        self.locks.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn runs_within(t: &Ticket) -> bool {
        tokio::time::timeout(Duration::from_millis(50), t.ready())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn ordered_waits_for_older_and_blocks_younger() {
        let set = Arc::new(TaskSet::default());
        let a = set.enter(TaskAttr::Simple);
        let o = set.enter(TaskAttr::Ordered);
        let b = set.enter(TaskAttr::Simple);
        let h = set.enter(TaskAttr::HeadOfQueue);
        assert!(runs_within(&a).await);
        assert!(!runs_within(&o).await);
        assert!(!runs_within(&b).await);
        assert!(runs_within(&h).await);
        drop(a);
        assert!(runs_within(&o).await);
        assert!(!runs_within(&b).await);
        drop(o);
        assert!(runs_within(&b).await);
        drop((b, h));
        assert!(set.is_empty());
    }

    #[tokio::test]
    async fn overlapping_ranges_exclude_each_other() {
        let locks = Arc::new(RangeLocks::default());
        let g = locks.lock(10, 5).await;
        let other = locks.lock(0, 10).await; // adjacent, no overlap
        let l2 = Arc::clone(&locks);
        let mut waiter = tokio::spawn(async move { l2.lock(14, 1).await });
        assert!(tokio::time::timeout(Duration::from_millis(50), &mut waiter)
            .await
            .is_err());
        drop(g);
        let g2 = waiter.await.expect("lock task");
        drop((g2, other));
    }
}
