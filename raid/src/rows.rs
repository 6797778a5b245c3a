//! Row locks, and work under them that outlives its caller.
//!
//! One async mutex per row, hashed into a fixed table, makes updates of a row
//! atomic with respect to each other while different rows proceed
//! concurrently. Work done under a row lock ([`RowLocks::run`]) runs to its
//! end even if the future awaiting it is dropped: it then goes on in a task
//! of its own, still holding the lock. This is how the array keeps the
//! cancellation rule of [`blockdev::BlockDevice`]: the member writes of a
//! dropped request land before any later request's on the same row (which
//! waits for the lock), and before any later flush returns, which waits for
//! every piece of row work begun before it ([`RowLocks::wait_for_earlier`]).
//! Without that, a row write dropped after some of its member writes were
//! issued would release the lock with them still on their way: a newer
//! write would read stale data or parity, and the old writes could land
//! over it (a member need not order a dropped write against later ones;
//! `FaultyDevice::hold_next_writes` is such a member). A change of layout
//! waits the same way, so row work does not need the geometry lock its
//! caller held. [`RowLocks::halt`] stops such work where it stands, as a
//! crash of the process would.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tokio::sync::{watch, Mutex as AsyncMutex, OwnedMutexGuard};
use tokio::task::{AbortHandle, JoinHandle};

/// Size of the lock table.
pub(crate) const ROW_LOCKS: usize = 256;

/// A held row lock, movable into work that outlives its caller.
pub(crate) type RowGuard = OwnedMutexGuard<()>;

/// The row lock table, and the row work in flight.
#[derive(Debug)]
pub(crate) struct RowLocks {
    locks: Vec<Arc<AsyncMutex<()>>>,
    /// Ticket of the next piece of row work.
    next_ticket: AtomicU64,
    work: Arc<InFlight>,
}

/// The row work not ended yet.
#[derive(Debug)]
struct InFlight {
    /// Tickets of the row work not ended yet.
    running: watch::Sender<BTreeSet<u64>>,
    /// Tasks of row work running on its own, by ticket, for [`RowLocks::halt`].
    tasks: Mutex<HashMap<u64, AbortHandle>>,
    /// No row work is to go on any more ([`RowLocks::halt`]).
    halted: AtomicBool,
}

impl InFlight {
    fn tasks(&self) -> MutexGuard<'_, HashMap<u64, AbortHandle>> {
        self.tasks.lock().expect("row work lock")
    }

    /// Records the task of row work `ticket`, unless it has ended already.
    fn adopt(&self, ticket: u64, task: AbortHandle) {
        let mut tasks = self.tasks();
        if !task.is_finished() && self.running.borrow().contains(&ticket) {
            tasks.insert(ticket, task);
        }
    }
}

impl RowLocks {
    pub(crate) fn new() -> Self {
        RowLocks {
            locks: (0..ROW_LOCKS)
                .map(|_| Arc::new(AsyncMutex::new(())))
                .collect(),
            next_ticket: AtomicU64::new(0),
            work: Arc::new(InFlight {
                running: watch::Sender::new(BTreeSet::new()),
                tasks: Mutex::new(HashMap::new()),
                halted: AtomicBool::new(false),
            }),
        }
    }

    /// Locks `row` (and the rows that share its lock).
    pub(crate) async fn lock(&self, row: u64) -> RowGuard {
        self.locks[(row % ROW_LOCKS as u64) as usize]
            .clone()
            .lock_owned()
            .await
    }

    /// `work` (which holds a row lock) as [`RowWork`]: it runs to its end
    /// even if the returned future is dropped, and counts as running for
    /// [`RowLocks::wait_for_earlier`] from now until then.
    pub(crate) fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> RowWork<T> {
        let ticket = self.next_ticket.fetch_add(1, Ordering::SeqCst);
        self.work.running.send_modify(|r| {
            r.insert(ticket);
        });
        let done = Ticket {
            work: self.work.clone(),
            ticket,
        };
        RowWork {
            work: Some(Box::pin(async move {
                let _done = done;
                work.await
            })),
            ticket,
            shared: self.work.clone(),
        }
    }

    /// Runs `work` as a task of its own (its result on the handle).
    pub(crate) fn spawn<T: Send + 'static>(&self, mut work: RowWork<T>) -> JoinHandle<T> {
        let ticket = work.ticket;
        let fut = work.work.take().expect("row work not begun");
        let task = tokio::spawn(fut);
        self.work.adopt(ticket, task.abort_handle());
        task
    }

    /// Waits until every piece of row work begun before this call has
    /// ended, wherever it runs (work begun later is not waited for).
    pub(crate) async fn wait_for_earlier(&self) {
        let before = self.next_ticket.load(Ordering::SeqCst);
        let mut rx = self.work.running.subscribe();
        // The sender lives in `self`, so the channel cannot close under us.
        let _ = rx
            .wait_for(|r| r.first().is_none_or(|&t| t >= before))
            .await;
    }

    /// Stops all row work running on its own where it stands, and any that
    /// would go on after its caller: what a crash does to it.
    pub(crate) fn halt(&self) {
        self.work.halted.store(true, Ordering::SeqCst);
        let tasks: Vec<AbortHandle> = self.work.tasks().drain().map(|(_, t)| t).collect();
        for task in tasks {
            task.abort();
        }
    }
}

/// Ends a ticket of [`InFlight::running`] when dropped: when its work ends,
/// or is dropped unfinished (the runtime shuts down, the work is halted).
struct Ticket {
    work: Arc<InFlight>,
    ticket: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.work.running.send_modify(|r| {
            r.remove(&self.ticket);
        });
        self.work.tasks().remove(&self.ticket);
    }
}

/// Row work that runs to its end: awaiting it runs it; dropping it before
/// it ended hands it to a task of its own ([`RowLocks::run`]).
#[must_use = "row work runs to its end even if dropped; await it for its result"]
pub(crate) struct RowWork<T: Send + 'static> {
    work: Option<BoxFuture<'static, T>>,
    ticket: u64,
    shared: Arc<InFlight>,
}

impl<T: Send + 'static> Future for RowWork<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let work = self.work.as_mut().expect("row work polled after it ended");
        let out = work.as_mut().poll(cx);
        if out.is_ready() {
            self.work = None;
        }
        out
    }
}

impl<T: Send + 'static> Drop for RowWork<T> {
    fn drop(&mut self) {
        let Some(work) = self.work.take() else {
            return;
        };
        if self.shared.halted.load(Ordering::SeqCst) {
            return;
        }
        // With no runtime left (it is shutting down) the work cannot go
        // on; dropping it releases its lock and ends its ticket.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let task = rt.spawn(async move {
                work.await;
            });
            self.shared.adopt(self.ticket, task.abort_handle());
        }
    }
}
