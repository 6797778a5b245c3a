//! The head's backup operations as control tasks: `backup.run` reports
//! the chunks done as its progress and the bytes read and chunks uploaded
//! and skipped as its detail, and stops after a chunk when cancelled;
//! verify, restore and prune run as tasks too (not cancellable).

use std::sync::Arc;

use control::{ControlError, TaskInfo, TaskKind, Tasks};

use crate::backup_ops::RestoreTo;
use crate::backup_run::Backups;

/// The detail line of a run's progress.
pub fn detail(volume: &str, p: &backup::Progress) -> String {
    format!(
        "{volume}: {} of {} chunks, {} MiB read, {} chunks uploaded, {} skipped",
        p.chunks_done,
        p.chunks_total,
        p.bytes_read >> 20,
        p.chunks_uploaded,
        p.chunks_skipped
    )
}

/// Starts a backup run of `volumes` as a task; `rate_limit` (bytes per
/// second) overrides `backup.rate_limit`.
pub fn spawn_run(
    backups: Arc<Backups>,
    tasks: &Tasks,
    volumes: Vec<String>,
    target: Option<String>,
    full: bool,
    rate_limit: Option<u64>,
) -> TaskInfo {
    let name = volumes.join(",");
    tasks.spawn(TaskKind::BackupRun, name, move |h| async move {
        let n = volumes.len() as f64;
        let report = |i: usize, p: backup::Progress| {
            let f = p.chunks_done as f64 / p.chunks_total.max(1) as f64;
            h.progress((i as f64 + f) / n);
            h.detail(detail(&volumes[i], &p));
        };
        let outcomes = backups
            .run(
                &volumes,
                target.as_deref(),
                full,
                rate_limit,
                report,
                || h.is_cancelled(),
            )
            .await
            .map_err(ControlError::from)?;
        let parts: Vec<String> = outcomes
            .iter()
            .map(|o| {
                let m = &o.report.manifest;
                let p = &o.report.progress;
                format!(
                    "{} -> {} ({}, {} bytes): {} chunks read, {} uploaded, {} skipped in {:.1}s",
                    o.volume,
                    m.id,
                    match &m.parent {
                        Some(p) => format!("incremental to {p}"),
                        None => "full".to_string(),
                    },
                    m.size,
                    p.chunks_read,
                    p.chunks_uploaded,
                    p.chunks_skipped,
                    o.report.elapsed.as_secs_f64()
                )
            })
            .collect();
        Ok(format!("backed up {}", parts.join("; ")))
    })
}

/// Starts a verify of backup `id` as a task.
pub fn spawn_verify(
    backups: Arc<Backups>,
    tasks: &Tasks,
    id: String,
    target: Option<String>,
) -> TaskInfo {
    tasks.spawn(TaskKind::BackupVerify, id.clone(), move |_h| async move {
        backups
            .verify(&id, target.as_deref())
            .await
            .map_err(ControlError::from)
    })
}

/// Starts a restore of backup `id` as a task.
pub fn spawn_restore(
    backups: Arc<Backups>,
    tasks: &Tasks,
    id: String,
    target: Option<String>,
    to: RestoreTo,
) -> TaskInfo {
    tasks.spawn(TaskKind::BackupRestore, id.clone(), move |_h| async move {
        backups
            .restore(&id, target.as_deref(), &to)
            .await
            .map_err(ControlError::from)
    })
}

/// Starts a prune (then GC) as a task.
pub fn spawn_prune(
    backups: Arc<Backups>,
    tasks: &Tasks,
    target: Option<String>,
    dry_run: bool,
) -> TaskInfo {
    let name = target.clone().unwrap_or_default();
    tasks.spawn(TaskKind::BackupPrune, name, move |_h| async move {
        backups
            .prune(target.as_deref(), dry_run)
            .await
            .map_err(ControlError::from)
    })
}
