//! The task registry the head uses directly: a long operation runs as a
//! tokio task with an id, reports progress, can be asked to stop, and its
//! outcome is kept for a while after it ends. `task.get`, `task.list` and
//! `task.cancel` are answered from it by the server.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::error::ControlError;
use crate::registry::Registry;
use crate::request::Request;
use crate::response::Reply;
use crate::task::{TaskId, TaskInfo, TaskKind};

/// How long an ended task is kept by default.
pub const DEFAULT_KEEP: Duration = Duration::from_secs(3600);
/// How many ended tasks are kept at most by default.
pub const DEFAULT_MAX_ENDED: usize = 256;

struct Shared {
    registry: Registry,
    cancels: HashMap<TaskId, watch::Sender<bool>>,
}

/// The daemon's tasks. Cheap to clone: clones share the registry.
#[derive(Clone)]
pub struct Tasks {
    shared: Arc<Mutex<Shared>>,
}

impl Default for Tasks {
    fn default() -> Self {
        Tasks::new(DEFAULT_KEEP, DEFAULT_MAX_ENDED)
    }
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Tasks {
    /// A registry keeping ended tasks for `keep`, at most `max_ended` of
    /// them (running tasks are always kept).
    pub fn new(keep: Duration, max_ended: usize) -> Self {
        Tasks {
            shared: Arc::new(Mutex::new(Shared {
                registry: Registry::new(keep, max_ended),
                cancels: HashMap::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding the lock leaves consistent data behind
        // (every update is a single assignment), so poisoning is ignored.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `op` as a task on the current tokio runtime and returns it as
    /// just started (what a long operation answers at once). `op` gets a
    /// [`TaskHandle`] for progress and cancellation; its `Ok` is the
    /// task's result message, its `Err` the task's error (`cancelled`
    /// state when it was asked to stop). A panic fails the task
    /// (`internal`).
    pub fn spawn<F, Fut>(&self, kind: TaskKind, target: impl Into<String>, op: F) -> TaskInfo
    where
        F: FnOnce(TaskHandle) -> Fut,
        Fut: Future<Output = Result<String, ControlError>> + Send + 'static,
    {
        let (tx, rx) = watch::channel(false);
        let info = {
            let mut s = self.lock();
            let info = s
                .registry
                .start(kind, target.into(), Instant::now(), wall_ms());
            s.cancels.insert(info.id, tx);
            info
        };
        let handle = TaskHandle {
            id: info.id,
            tasks: self.clone(),
            cancel: rx,
        };
        let inner = tokio::spawn(op(handle));
        let tasks = self.clone();
        let id = info.id;
        tokio::spawn(async move {
            let outcome = match inner.await {
                Ok(outcome) => outcome,
                Err(e) if e.is_panic() => {
                    tracing::error!(task = %id, "task panicked");
                    Err(ControlError::Internal("the task panicked".into()))
                }
                Err(_) => Err(ControlError::Internal(
                    "the task was stopped with the daemon".into(),
                )),
            };
            let mut s = tasks.lock();
            s.cancels.remove(&id);
            s.registry.finish(id, outcome, Instant::now(), wall_ms());
        });
        info
    }

    /// One task (`not-found` once it is forgotten or never was).
    pub fn get(&self, id: TaskId) -> Result<TaskInfo, ControlError> {
        self.lock()
            .registry
            .get(id, Instant::now())
            .ok_or_else(|| ControlError::NotFound(format!("no task {id}")))
    }

    /// Every task kept, oldest first.
    pub fn list(&self) -> Vec<TaskInfo> {
        self.lock().registry.list(Instant::now())
    }

    /// Asks a running task to stop at its next safe point; answers it as
    /// `cancelling`. An ended task is a `conflict`.
    pub fn cancel(&self, id: TaskId) -> Result<TaskInfo, ControlError> {
        let mut s = self.lock();
        let info = s.registry.cancel(id, Instant::now())?;
        if let Some(tx) = s.cancels.get(&id) {
            tx.send_replace(true);
        }
        Ok(info)
    }

    /// The answer to a `task.*` request, or `None` for any other request.
    pub fn answer(&self, request: &Request) -> Option<Result<Reply, ControlError>> {
        Some(match request {
            Request::TaskGet { task } => self.get(*task).map(Reply::Task),
            Request::TaskList => Ok(Reply::Tasks { tasks: self.list() }),
            Request::TaskCancel { task } => self.cancel(*task).map(Reply::Task),
            _ => return None,
        })
    }
}

/// What a running task holds: its id, a way to report progress, and the
/// cancellation request.
pub struct TaskHandle {
    id: TaskId,
    tasks: Tasks,
    cancel: watch::Receiver<bool>,
}

impl TaskHandle {
    /// The task's id.
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// Reports how far the task is, 0.0 to 1.0; the ETA follows from it.
    pub fn progress(&self, fraction: f64) {
        self.tasks
            .lock()
            .registry
            .progress(self.id, fraction, Instant::now());
    }

    /// Says what the progress counts, in words (shown beside it).
    pub fn detail(&self, detail: impl Into<String>) {
        self.tasks.lock().registry.detail(self.id, detail.into());
    }

    /// Whether the task has been asked to stop.
    pub fn is_cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    /// Resolves once the task is asked to stop (for `select!` beside the
    /// work).
    pub async fn cancelled(&self) {
        let mut rx = self.cancel.clone();
        if rx.wait_for(|c| *c).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::TaskState;
    use tokio::sync::oneshot;

    async fn until_final(tasks: &Tasks, id: TaskId) -> TaskInfo {
        loop {
            let t = tasks.get(id).unwrap();
            if t.state.is_final() {
                return t;
            }
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_task_reports_progress_and_its_result() {
        let tasks = Tasks::default();
        let (go_tx, go_rx) = oneshot::channel::<()>();
        let (at_half_tx, at_half_rx) = oneshot::channel::<()>();
        let t = tasks.spawn(TaskKind::ArrayScrub, "a1", |h| async move {
            h.progress(0.5);
            at_half_tx.send(()).unwrap();
            go_rx.await.unwrap();
            Ok("scrubbed, 0 mismatches".to_string())
        });
        assert_eq!(t.state, TaskState::Running);
        assert_eq!(t.target, "a1");
        at_half_rx.await.unwrap();
        let mid = tasks.get(t.id).unwrap();
        assert_eq!(mid.progress, 0.5);
        assert_eq!(mid.state, TaskState::Running);
        go_tx.send(()).unwrap();
        let end = until_final(&tasks, t.id).await;
        assert_eq!(end.state, TaskState::Done);
        assert_eq!(end.result.as_deref(), Some("scrubbed, 0 mismatches"));
        assert!(end.ended_unix_ms.is_some());
    }

    #[tokio::test]
    async fn cancel_reaches_the_task_and_ends_it_cancelled() {
        let tasks = Tasks::default();
        let t = tasks.spawn(TaskKind::IsuReplace, "i2", |h| async move {
            h.cancelled().await;
            assert!(h.is_cancelled());
            Err(ControlError::Conflict("copy stopped at 12%".into()))
        });
        let c = tasks.cancel(t.id).unwrap();
        assert_eq!(c.state, TaskState::Cancelling);
        let end = until_final(&tasks, t.id).await;
        assert_eq!(end.state, TaskState::Cancelled);
        assert_eq!(
            end.error,
            Some(ControlError::Conflict("copy stopped at 12%".into()))
        );
        assert!(matches!(tasks.cancel(t.id), Err(ControlError::Conflict(_))));
        assert!(matches!(
            tasks.answer(&Request::TaskGet { task: TaskId(999) }),
            Some(Err(ControlError::NotFound(_)))
        ));
    }

    #[tokio::test]
    async fn a_panicking_task_fails_as_internal() {
        let tasks = Tasks::default();
        let t = tasks.spawn(TaskKind::Rebuild, "a", |_h| async move {
            panic!("boom");
        });
        let end = until_final(&tasks, t.id).await;
        assert_eq!(end.state, TaskState::Failed);
        assert!(matches!(end.error, Some(ControlError::Internal(_))));
    }
}
