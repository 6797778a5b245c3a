//! The backup scheduler of the head: starts the runs of `[[backup.schedule]]`
//! when due, as tasks like `opie backup run`'s. A run of a volume already
//! going is not doubled (the schedule waits for its next due time). When a
//! run is due follows from the target's own backups (the newest backup of
//! the schedule's first volume), so a restart neither repeats nor skips a
//! run; a full backup is taken when the incrementals since the last full
//! would reach `full_every`. The target is listed once at the start and
//! once after each run, not every tick; a run that failed is tried again
//! after the schedule's interval (at most [`RETRY_AFTER`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backup::Manifest;
use control::Tasks;
use tracing::{info, warn};

use crate::backup_config::{ScheduleConfig, When};
use crate::backup_run::Backups;

/// How often the scheduler looks at its schedules.
pub const TICK: Duration = Duration::from_secs(5);

/// Whether a schedule whose last backup was taken at `last` (Unix
/// seconds, `None` if never) is due at `now`.
pub fn due(when: When, last: Option<u64>, now: u64) -> bool {
    let Some(last) = last else {
        return true;
    };
    match when {
        When::Every(every) => now >= last.saturating_add(every.as_secs()),
        When::Daily(at) => {
            // The most recent HH:MM instant at or before now.
            let today = now - now % 86_400 + u64::from(at);
            let recent = if today <= now { today } else { today - 86_400 };
            last < recent
        }
    }
}

/// How many incrementals follow the newest full backup in `backups`
/// (one volume's, oldest first), through their parent links.
pub fn incrementals_since_full(backups: &[Manifest]) -> u32 {
    let mut n = 0;
    let mut at = backups.last();
    while let Some(m) = at {
        let Some(p) = &m.parent else {
            return n;
        };
        n += 1;
        at = backups.iter().find(|b| &b.id == p);
    }
    n
}

/// Whether the next run of a schedule is full.
pub fn next_is_full(full_every: u32, backups: &[Manifest]) -> bool {
    match full_every {
        _ if backups.is_empty() => true,
        0 => false,
        n => incrementals_since_full(backups) + 1 >= n,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// How long after a started run a schedule waits before it may start
/// again: its interval, at most [`RETRY_AFTER`] (so a run that failed is
/// retried, without hammering an unreachable store every tick).
fn retry_after(when: When) -> u64 {
    match when {
        When::Every(e) => e.as_secs().min(RETRY_AFTER.as_secs()),
        When::Daily(_) => RETRY_AFTER.as_secs(),
    }
}

/// The longest wait between a schedule's attempts while it is due.
pub const RETRY_AFTER: Duration = Duration::from_secs(300);

/// What the scheduler knows of one schedule between ticks.
#[derive(Default)]
struct Known {
    /// The backups of its first volume in its target, read once after
    /// each run (not every tick: listing reads every manifest).
    backups: Option<Vec<Manifest>>,
    /// When it last started a run (Unix seconds).
    attempted: Option<u64>,
}

/// Runs the schedules of the head until the task is aborted.
pub async fn run(backups: Arc<Backups>, tasks: Tasks) {
    let schedules = backups.config().schedules.clone();
    if schedules.is_empty() {
        return;
    }
    let mut known: Vec<Known> = schedules.iter().map(|_| Known::default()).collect();
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        for (s, k) in schedules.iter().zip(&mut known) {
            if let Err(e) = consider(&backups, &tasks, s, k).await {
                warn!(volumes = ?s.volumes, target = %s.target, error = %e, "backup schedule: could not decide");
            }
        }
    }
}

/// Starts the schedule's run if it is due and none of its volumes runs.
async fn consider(
    backups: &Arc<Backups>,
    tasks: &Tasks,
    s: &ScheduleConfig,
    k: &mut Known,
) -> Result<(), crate::backup_error::BackupOpError> {
    if s.volumes.iter().any(|v| backups.is_running(v)) {
        k.backups = None; // read again once the run has ended
        return Ok(());
    }
    let now = unix_now();
    if k.attempted
        .is_some_and(|t| now < t.saturating_add(retry_after(s.when)))
    {
        return Ok(());
    }
    let of_first = match &k.backups {
        Some(b) => b,
        None => {
            let (_, b) = backups.list(Some(&s.volumes[0]), Some(&s.target)).await?;
            k.backups.insert(b)
        }
    };
    if !due(s.when, of_first.last().map(|m| m.created), now) {
        return Ok(());
    }
    let full = next_is_full(s.full_every, of_first);
    backups.check(&s.volumes, Some(&s.target))?;
    info!(volumes = ?s.volumes, target = %s.target, full, "scheduled backup starting");
    crate::backup_task::spawn_run(
        backups.clone(),
        tasks,
        s.volumes.clone(),
        Some(s.target.clone()),
        full,
        None,
    );
    k.backups = None;
    k.attempted = Some(now);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, parent: Option<&str>) -> Manifest {
        Manifest {
            format_version: 1,
            id: id.into(),
            volume: "v".into(),
            identity: backup::format::VolumeIdentity {
                uuid: String::new(),
                naa: String::new(),
                serial: String::new(),
            },
            size: 0,
            chunk_size: 4 << 20,
            created: 0,
            parent: parent.map(str::to_string),
            index_sha256: String::new(),
            chunks: 0,
            zero_chunks: 0,
            chunks_read: 0,
            chunks_uploaded: 0,
        }
    }

    #[test]
    fn every_and_daily_are_due_after_their_time() {
        let h = When::Every(Duration::from_secs(3600));
        assert!(due(h, None, 100));
        assert!(!due(h, Some(1000), 1000 + 3599));
        assert!(due(h, Some(1000), 1000 + 3600));
        let d = When::Daily(2 * 3600); // 02:00 UTC
        let day = 20_000 * 86_400;
        assert!(!due(d, Some(day + 2 * 3600 + 5), day + 23 * 3600));
        assert!(!due(d, Some(day + 2 * 3600 + 5), day + 86_400 + 3600));
        assert!(due(d, Some(day + 2 * 3600 + 5), day + 86_400 + 2 * 3600));
        assert!(due(d, Some(day + 3600), day + 2 * 3600));
    }

    #[test]
    fn a_full_comes_every_n_runs_by_the_parent_links() {
        let chain = [m("a", None), m("b", Some("a")), m("c", Some("b"))];
        assert_eq!(incrementals_since_full(&chain), 2);
        assert!(next_is_full(3, &chain));
        assert!(!next_is_full(4, &chain));
        assert!(next_is_full(1, &chain));
        assert!(!next_is_full(0, &chain));
        assert!(next_is_full(0, &[]));
    }
}
