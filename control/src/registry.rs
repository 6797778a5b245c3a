//! The task registry's bookkeeping, sans-I/O: ids, states, progress and
//! ETA, cancellation requests, final outcomes, and how long ended tasks
//! are kept. Time is handed in (`now` for durations, `wall_ms` for the
//! timestamps shown); [`crate::Tasks`] is its tokio edge.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::error::ControlError;
use crate::task::{TaskId, TaskInfo, TaskKind, TaskState};

/// One task's record.
struct Record {
    info: TaskInfo,
    started: Instant,
    ended: Option<Instant>,
}

/// Every task of the daemon still kept.
pub(crate) struct Registry {
    next: u64,
    tasks: BTreeMap<TaskId, Record>,
    keep: Duration,
    max_ended: usize,
}

impl Registry {
    /// Keeps ended tasks for `keep`, and at most `max_ended` of them.
    pub(crate) fn new(keep: Duration, max_ended: usize) -> Self {
        Registry {
            next: 1,
            tasks: BTreeMap::new(),
            keep,
            max_ended,
        }
    }

    /// Records a new running task and returns it.
    pub(crate) fn start(
        &mut self,
        kind: TaskKind,
        target: String,
        now: Instant,
        wall_ms: u64,
    ) -> TaskInfo {
        self.prune(now);
        let id = TaskId(self.next);
        self.next += 1;
        let info = TaskInfo {
            id,
            kind,
            target,
            state: TaskState::Running,
            progress: 0.0,
            started_unix_ms: wall_ms,
            ended_unix_ms: None,
            detail: None,
            eta_secs: None,
            result: None,
            error: None,
        };
        self.tasks.insert(
            id,
            Record {
                info: info.clone(),
                started: now,
                ended: None,
            },
        );
        info
    }

    /// Sets how far a running task is (clamped to 0..=1; NaN ignored) and
    /// its ETA at the average rate since it started.
    pub(crate) fn progress(&mut self, id: TaskId, fraction: f64, now: Instant) {
        let Some(r) = self.tasks.get_mut(&id) else {
            return;
        };
        if r.info.state.is_final() || fraction.is_nan() {
            return;
        }
        let f = fraction.clamp(0.0, 1.0);
        r.info.progress = f;
        let elapsed = now.saturating_duration_since(r.started).as_secs_f64();
        r.info.eta_secs = (f > 0.0).then(|| (elapsed * (1.0 - f) / f).round() as u64);
    }

    /// Sets what a running task's progress counts, in words.
    pub(crate) fn detail(&mut self, id: TaskId, detail: String) {
        if let Some(r) = self.tasks.get_mut(&id) {
            if !r.info.state.is_final() {
                r.info.detail = Some(detail);
            }
        }
    }

    /// Marks a running task as asked to stop. An ended task is a conflict,
    /// an unknown one not found.
    pub(crate) fn cancel(&mut self, id: TaskId, now: Instant) -> Result<TaskInfo, ControlError> {
        self.prune(now);
        let r = self
            .tasks
            .get_mut(&id)
            .ok_or_else(|| ControlError::NotFound(format!("no task {id}")))?;
        match r.info.state {
            TaskState::Running => r.info.state = TaskState::Cancelling,
            TaskState::Cancelling => {}
            ended => {
                return Err(ControlError::Conflict(format!(
                    "task {id} has already ended ({})",
                    serde_json::to_value(ended)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                )))
            }
        }
        Ok(r.info.clone())
    }

    /// Records how a task ended: done with what it did, or failed (or
    /// cancelled, when it was asked to stop and ended with an error).
    pub(crate) fn finish(
        &mut self,
        id: TaskId,
        outcome: Result<String, ControlError>,
        now: Instant,
        wall_ms: u64,
    ) {
        let Some(r) = self.tasks.get_mut(&id) else {
            return;
        };
        if r.info.state.is_final() {
            return;
        }
        match outcome {
            Ok(message) => {
                r.info.state = TaskState::Done;
                r.info.progress = 1.0;
                r.info.result = Some(message);
            }
            Err(e) => {
                r.info.state = if r.info.state == TaskState::Cancelling {
                    TaskState::Cancelled
                } else {
                    TaskState::Failed
                };
                r.info.error = Some(e);
            }
        }
        r.info.eta_secs = None;
        r.info.ended_unix_ms = Some(wall_ms);
        r.ended = Some(now);
        self.prune(now);
    }

    /// One task, if still kept.
    pub(crate) fn get(&mut self, id: TaskId, now: Instant) -> Option<TaskInfo> {
        self.prune(now);
        self.tasks.get(&id).map(|r| r.info.clone())
    }

    /// Every task kept, oldest first.
    pub(crate) fn list(&mut self, now: Instant) -> Vec<TaskInfo> {
        self.prune(now);
        self.tasks.values().map(|r| r.info.clone()).collect()
    }

    /// Forgets ended tasks older than the retention time, and the oldest
    /// ended ones beyond the count kept. Running tasks are never forgotten.
    fn prune(&mut self, now: Instant) {
        let keep = self.keep;
        self.tasks.retain(|_, r| {
            r.ended
                .is_none_or(|e| now.saturating_duration_since(e) < keep)
        });
        let ended: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, r)| r.ended.is_some())
            .map(|(id, _)| *id)
            .collect();
        if ended.len() > self.max_ended {
            for id in &ended[..ended.len() - self.max_ended] {
                self.tasks.remove(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg() -> (Registry, Instant) {
        (Registry::new(Duration::from_secs(600), 3), Instant::now())
    }

    #[test]
    fn ids_are_unique_and_progress_gives_an_eta() {
        let (mut r, t0) = reg();
        let a = r.start(TaskKind::ArrayScrub, "a".into(), t0, 1000);
        let b = r.start(TaskKind::ArrayGrow, "a".into(), t0, 1000);
        assert_ne!(a.id, b.id);
        assert_eq!(a.state, TaskState::Running);
        assert_eq!(a.eta_secs, None);
        // A quarter in 10 s: 30 s left.
        r.progress(a.id, 0.25, t0 + Duration::from_secs(10));
        let got = r.get(a.id, t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(got.progress, 0.25);
        assert_eq!(got.eta_secs, Some(30));
        r.progress(a.id, 7.0, t0 + Duration::from_secs(11));
        assert_eq!(r.get(a.id, t0).unwrap().progress, 1.0);
        r.progress(a.id, f64::NAN, t0 + Duration::from_secs(11));
        assert_eq!(r.get(a.id, t0).unwrap().progress, 1.0);
    }

    #[test]
    fn cancel_then_error_is_cancelled_and_ended_tasks_refuse_cancel() {
        let (mut r, t0) = reg();
        let a = r.start(TaskKind::IsuReplace, "i".into(), t0, 5);
        let c = r.cancel(a.id, t0).unwrap();
        assert_eq!(c.state, TaskState::Cancelling);
        r.finish(a.id, Err(ControlError::Busy("stopped".into())), t0, 9);
        let got = r.get(a.id, t0).unwrap();
        assert_eq!(got.state, TaskState::Cancelled);
        assert_eq!(got.ended_unix_ms, Some(9));
        assert!(matches!(r.cancel(a.id, t0), Err(ControlError::Conflict(_))));
        assert!(matches!(
            r.cancel(TaskId(99), t0),
            Err(ControlError::NotFound(_))
        ));
        // Asked to stop but finished first: done.
        let b = r.start(TaskKind::IsuReplace, "i".into(), t0, 5);
        r.cancel(b.id, t0).unwrap();
        r.finish(b.id, Ok("copied".into()), t0, 9);
        let got = r.get(b.id, t0).unwrap();
        assert_eq!(got.state, TaskState::Done);
        assert_eq!(got.progress, 1.0);
        assert_eq!(got.result.as_deref(), Some("copied"));
        // Failure without cancel.
        let c = r.start(TaskKind::ArrayScrub, "a".into(), t0, 5);
        r.finish(c.id, Err(ControlError::Internal("parity".into())), t0, 9);
        assert_eq!(r.get(c.id, t0).unwrap().state, TaskState::Failed);
    }

    #[test]
    fn ended_tasks_are_kept_for_a_while_and_running_ones_always() {
        let (mut r, t0) = reg();
        let running = r.start(TaskKind::Rebuild, "a".into(), t0, 0);
        let mut ended = vec![];
        for i in 0..5 {
            let t = r.start(TaskKind::ArrayScrub, "a".into(), t0, 0);
            r.finish(t.id, Ok(format!("{i}")), t0 + Duration::from_secs(i), 0);
            ended.push(t.id);
        }
        // At most 3 ended kept: the two oldest are gone.
        let ids: Vec<TaskId> = r
            .list(t0 + Duration::from_secs(5))
            .iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(ids, vec![running.id, ended[2], ended[3], ended[4]]);
        // After the retention time only the running one is left.
        let later = t0 + Duration::from_secs(5 + 600);
        let ids: Vec<TaskId> = r.list(later).iter().map(|t| t.id).collect();
        assert_eq!(ids, vec![running.id]);
        assert!(r.get(ended[4], later).is_none());
    }
}
