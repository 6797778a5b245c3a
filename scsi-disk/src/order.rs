//! Task-set ordering (SAM-5 task attributes) and LBA range locks.
//!
//! A command enters its logical unit's [`TaskSet`] synchronously when the
//! transport submits it, so the order of entry is the CmdSN order. SIMPLE
//! tasks run concurrently but never before an older ORDERED task has ended;
//! an ORDERED task waits for every older task; HEAD OF QUEUE tasks run at once.
//!
//! Tasks can be aborted: by their own session (ABORT TASK and the task set
//! functions, through the transport), when their session ends or is
//! reinstated, and by other I_T nexuses (LOGICAL UNIT RESET, target reset,
//! CLEAR TASK SET, PREEMPT AND ABORT). A task that has not started never
//! runs, one already running finishes its I/O (a write in the kernel cannot
//! be recalled) and both end with TASK ABORTED status, as the Control mode
//! page's TAS bit promises. The aborting side waits ([`Drain`]) until every
//! such task has finished executing, so nothing of theirs reaches the medium
//! afterwards. That holds because a task stays in the set until its
//! execution has returned, range locks released last thing before: the
//! execution is never cancelled half-way (see `Execution` in the parent
//! module). A session that ended or was superseded is fenced: its tasks
//! that arrive late enter already aborted. A finished task may stay in the
//! set a little longer (a READ whose data still sits in the page cache until
//! it is sent keeps its place, so a later ORDERED task cannot overtake it);
//! aborts do not wait for that.
//!
//! [`RangeLocks`] serialises writers of overlapping LBA ranges, which keeps
//! overlapping writes from interleaving inside a block and makes COMPARE AND
//! WRITE atomic against every other writer on every session.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

use super::{ItNexus, TaskAttr};

/// One task in the set.
#[derive(Debug)]
struct Live {
    ordered: bool,
    nexus: ItNexus,
    /// The transport session that submitted it ([`super::Nexus::id`]).
    session: u64,
    /// Its task tag (the iSCSI initiator task tag).
    tag: u32,
    aborted: bool,
    /// Done executing (its result may still be on the way out).
    finished: bool,
}

#[derive(Debug, Default)]
struct SetInner {
    next: u64,
    /// Live tasks by entry order.
    live: BTreeMap<u64, Live>,
    /// Sessions whose tasks enter aborted: superseded by a reinstatement
    /// while their connection may still be submitting. Each leaves when its
    /// session logs out.
    fenced: HashSet<u64>,
    /// The logical unit was removed: no task enters any more.
    closed: bool,
}

/// The task was aborted by another I_T nexus before it could run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskAborted;

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

/// Tasks that were aborted; [`Drain::wait`] returns once none of them is
/// executing any more.
#[derive(Debug)]
pub(crate) struct Drain {
    set: Arc<TaskSet>,
    seqs: Vec<u64>,
}

impl Drain {
    /// Waits until none of the aborted tasks is executing.
    pub(crate) async fn wait(self) {
        self.set.wait_for(&self.seqs).await;
    }

    /// How many tasks were aborted.
    pub(crate) fn len(&self) -> usize {
        self.seqs.len()
    }
}

impl TaskSet {
    /// Enters a task of `nexus`, submitted by transport session `session`
    /// with tag `tag`, now; the ticket decides when it may run. None once
    /// the set is closed (its logical unit was removed).
    pub(crate) fn enter(
        self: &Arc<Self>,
        attr: TaskAttr,
        nexus: &ItNexus,
        session: u64,
        tag: u32,
    ) -> Option<Ticket> {
        let mut g = self.lock();
        if g.closed {
            return None;
        }
        let seq = g.next;
        g.next += 1;
        let aborted = !g.fenced.is_empty() && g.fenced.contains(&session);
        g.live.insert(
            seq,
            Live {
                ordered: attr == TaskAttr::Ordered,
                nexus: nexus.clone(),
                session,
                tag,
                aborted,
                finished: false,
            },
        );
        Some(Ticket {
            set: Arc::clone(self),
            seq,
            attr,
        })
    }

    /// Closes the set (its logical unit is being removed): no task enters
    /// from now on. The returned [`Drain`] waits until every task already in
    /// it has finished executing; none is aborted, so each runs to its end.
    pub(crate) fn close(self: &Arc<Self>) -> Drain {
        let seqs = {
            let mut g = self.lock();
            g.closed = true;
            g.live
                .iter()
                .filter(|(_, t)| !t.finished)
                .map(|(seq, _)| *seq)
                .collect()
        };
        Drain {
            set: Arc::clone(self),
            seqs,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SetInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Aborts, now, every unfinished task for which `which(nexus, session,
    /// tag)` holds; the returned [`Drain`] waits until none of them is
    /// executing any more (those not yet started leave at once, running ones
    /// when their I/O is done). Tasks aborted before and still executing
    /// are waited for too.
    pub(crate) fn abort(self: &Arc<Self>, which: impl Fn(&ItNexus, u64, u32) -> bool) -> Drain {
        let seqs: Vec<u64> = {
            let mut g = self.lock();
            g.live
                .iter_mut()
                .filter(|(_, t)| !t.finished && which(&t.nexus, t.session, t.tag))
                .map(|(seq, t)| {
                    t.aborted = true;
                    *seq
                })
                .collect()
        };
        if !seqs.is_empty() {
            self.changed.notify_waiters();
        }
        Drain {
            set: Arc::clone(self),
            seqs,
        }
    }

    /// Aborts every unfinished task of a nexus for which `which` holds, then
    /// waits until none of them is executing any more. Returns how many
    /// were aborted.
    pub(crate) async fn abort_and_drain(
        self: &Arc<Self>,
        which: impl Fn(&ItNexus) -> bool,
    ) -> usize {
        let d = self.abort(|n, _, _| which(n));
        let n = d.len();
        d.wait().await;
        n
    }

    /// Fences `session` (see [`SetInner::fenced`]) and aborts its tasks.
    pub(crate) fn fence(self: &Arc<Self>, session: u64) -> Drain {
        self.lock().fenced.insert(session);
        self.abort(|_, s, _| s == session)
    }

    /// Lifts the fence of a session that has logged out.
    pub(crate) fn unfence(&self, session: u64) {
        let mut g = self.lock();
        if !g.fenced.is_empty() {
            g.fenced.remove(&session);
        }
    }

    /// Waits until none of the tasks `seqs` is executing.
    async fn wait_for(&self, seqs: &[u64]) {
        if seqs.is_empty() {
            return;
        }
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let drained = {
                let g = self.lock();
                !seqs
                    .iter()
                    .any(|s| g.live.get(s).is_some_and(|t| !t.finished))
            };
            if drained {
                return;
            }
            notified.await;
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
    /// Whether the task may run now; an aborted task may not, ever.
    fn may_run(&self) -> Result<bool, TaskAborted> {
        let g = self.set.lock();
        if self.aborted_in(&g) {
            return Err(TaskAborted);
        }
        let mut older = g.live.range(..self.seq);
        Ok(match self.attr {
            TaskAttr::HeadOfQueue => true,
            TaskAttr::Ordered => older.next().is_none(),
            TaskAttr::Simple | TaskAttr::Aca => !older.any(|(_, t)| t.ordered),
        })
    }

    fn aborted_in(&self, g: &SetInner) -> bool {
        g.live.get(&self.seq).is_some_and(|t| t.aborted)
    }

    /// Waits until the task attribute allows this task to run, or until
    /// another nexus aborts it.
    pub async fn ready(&self) -> Result<(), TaskAborted> {
        loop {
            let notified = self.set.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.may_run()? {
                return Ok(());
            }
            notified.await;
        }
    }

    /// The task is done executing: from now on it cannot be aborted, and
    /// aborts no longer wait for it. Returns whether it was aborted before.
    pub fn finish(&self) -> bool {
        let aborted = {
            let mut g = self.set.lock();
            match g.live.get_mut(&self.seq) {
                Some(t) => {
                    t.finished = true;
                    t.aborted
                }
                None => false,
            }
        };
        self.set.changed.notify_waiters();
        aborted
    }

    /// Whether another nexus has aborted this task.
    #[cfg(test)]
    pub fn aborted(&self) -> bool {
        self.aborted_in(&self.set.lock())
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.set.lock().live.remove(&self.seq);
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
        matches!(
            tokio::time::timeout(Duration::from_millis(50), t.ready()).await,
            Ok(Ok(()))
        )
    }

    fn nexus(i: u8) -> ItNexus {
        ItNexus {
            port: crate::InitiatorPort::iscsi("iqn.2026-01.test:i", [0x80, 0, 0, 0, 0, i]),
            rel_port: 1,
        }
    }

    #[tokio::test]
    async fn ordered_waits_for_older_and_blocks_younger() {
        let set = Arc::new(TaskSet::default());
        let n = nexus(1);
        let a = set.enter(TaskAttr::Simple, &n, 0, 0).expect("open");
        let o = set.enter(TaskAttr::Ordered, &n, 0, 0).expect("open");
        let b = set.enter(TaskAttr::Simple, &n, 0, 0).expect("open");
        let h = set.enter(TaskAttr::HeadOfQueue, &n, 0, 0).expect("open");
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
    async fn abort_stops_waiting_tasks_and_waits_for_running_ones() {
        let set = Arc::new(TaskSet::default());
        let (me, other) = (nexus(1), nexus(2));
        let running = set.enter(TaskAttr::Simple, &other, 2, 1).expect("open");
        assert!(runs_within(&running).await);
        let fence = set.enter(TaskAttr::Ordered, &me, 1, 1).expect("open");
        let queued = set.enter(TaskAttr::Simple, &other, 2, 2).expect("open");
        let mine = set.enter(TaskAttr::Simple, &me, 1, 2).expect("open");
        assert!(
            !runs_within(&queued).await,
            "queued behind the ORDERED task"
        );

        let s2 = Arc::clone(&set);
        let mut abort = tokio::spawn(async move { s2.abort_and_drain(|n| *n == nexus(2)).await });
        // The queued task of the other nexus is told at once and never runs.
        assert_eq!(queued.ready().await, Err(TaskAborted));
        assert!(queued.aborted() && running.aborted() && !mine.aborted());
        drop(queued);
        // The abort waits for the running one to finish.
        assert!(tokio::time::timeout(Duration::from_millis(50), &mut abort)
            .await
            .is_err());
        drop(running);
        assert_eq!(abort.await.expect("abort task"), 2);
        // The issuer's own tasks are untouched and still ordered.
        assert!(runs_within(&fence).await);
        assert!(!runs_within(&mine).await);
        drop(fence);
        assert!(runs_within(&mine).await);
        // Nothing left to abort: returns at once.
        assert_eq!(set.abort_and_drain(|n| *n == nexus(2)).await, 0);

        // A task that finished executing but still holds its place (its data
        // on the way out) is neither aborted nor waited for.
        let sent_later = set.enter(TaskAttr::Simple, &nexus(2), 2, 9).expect("open");
        assert!(runs_within(&sent_later).await);
        assert!(!sent_later.finish());
        assert_eq!(set.abort_and_drain(|n| *n == nexus(2)).await, 0);
        assert!(!sent_later.aborted());
    }

    #[tokio::test]
    async fn a_closed_set_takes_no_task_and_waits_for_those_inside() {
        let set = Arc::new(TaskSet::default());
        let running = set.enter(TaskAttr::Simple, &nexus(1), 1, 1).expect("open");
        assert!(runs_within(&running).await);
        let queued = set.enter(TaskAttr::Ordered, &nexus(2), 2, 1).expect("open");
        let mut closing = tokio::spawn(set.close().wait());
        assert!(set.enter(TaskAttr::Simple, &nexus(1), 1, 2).is_none());
        // Nothing inside is aborted: the queued task still runs, after the
        // running one, and the close waits for both.
        assert!(!running.aborted() && !queued.aborted());
        drop(running);
        assert!(runs_within(&queued).await);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut closing)
                .await
                .is_err()
        );
        drop(queued);
        closing.await.expect("close");
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
