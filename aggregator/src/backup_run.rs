//! A backup run on the head: snapshot the volume(s) at one instant (one
//! consistency group), back up each snapshot through
//! [`crate::backup_source::ReleasingSource`] (what is read is released),
//! incremental to the newest complete backup of the volume in the target,
//! then drop the snapshots, or abort them when the run fails (their changed
//! maps merge back, so the next run reads those regions again).
//!
//! [`Backups`] is the head's backup service: the control API and the
//! scheduler share it; it allows one run per volume at a time and keeps the
//! last run of each volume for `opie status`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use control::status::LastBackup;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::backup_config::BackupConfig;
use crate::backup_error::BackupOpError;
use crate::backup_source::{changed_chunks, ReleasingSource};
use crate::backup_target;
use crate::live::Live;

/// Grain of the snapshots' copy-on-write: the backup's chunk size, so a
/// released chunk frees whole grains.
const GRAIN: u64 = backup::format::DEFAULT_CHUNK_SIZE as u64;

/// What the service remembers between runs.
#[derive(Default)]
struct State {
    /// Volumes with a run going.
    running: HashSet<String>,
    /// The last run of each volume.
    last: HashMap<String, LastBackup>,
    /// The backup (target, id) each volume's changed map is relative to:
    /// the last successful run of this process. An incremental passes the
    /// snapshot's changed map only when its parent is that backup.
    chain: HashMap<String, (String, String)>,
}

/// The head's backup service.
pub struct Backups {
    live: Arc<Live>,
    state: Mutex<State>,
}

/// What one run did, per volume.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// The volume.
    pub volume: String,
    /// The backup made.
    pub report: backup::Report,
}

/// What one volume's backup reports to, asks whether to stop, and how fast it may read.
struct Hooks<'a> {
    progress: &'a (dyn Fn(backup::Progress) + Send + Sync),
    cancelled: &'a (dyn Fn() -> bool + Send + Sync),
    /// The run's read limit, bytes per second (`None`: unlimited).
    rate_limit: Option<u64>,
}

/// Marks volumes running for as long as it lives.
struct Claim<'a> {
    backups: &'a Backups,
    volumes: Vec<String>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut s = self.backups.lock();
        for v in &self.volumes {
            s.running.remove(v);
        }
    }
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Backups {
    /// The service of the head `live`.
    pub fn new(live: Arc<Live>) -> Self {
        Backups {
            live,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The `[backup]` configuration.
    pub fn config(&self) -> &BackupConfig {
        &self.live.config().backup
    }

    /// The head.
    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// The last run of each volume, by volume name.
    pub fn last(&self) -> Vec<LastBackup> {
        let mut v: Vec<LastBackup> = self.lock().last.values().cloned().collect();
        v.sort_by(|a, b| a.volume.cmp(&b.volume));
        v
    }

    /// Whether a run of `volume` is going.
    pub fn is_running(&self, volume: &str) -> bool {
        self.lock().running.contains(volume)
    }

    /// The pool holding volume `name`, and its array's name.
    pub fn pool_of(&self, name: &str) -> Result<(String, volume::Pool), BackupOpError> {
        self.live
            .pool_of(name)
            .ok_or_else(|| BackupOpError::NoVolume(name.to_string()))
    }

    /// Volume `name`'s size in bytes.
    fn volume_bytes(&self, name: &str) -> Option<u64> {
        let (_, pool) = self.live.pool_of(name)?;
        let bs = u64::from(blockdev::BlockDevice::geometry(pool.device().as_ref()).block_size);
        Some(pool.info(name).ok()?.size_blocks * bs)
    }

    /// Claims `volumes` for a run (checked before the task starts, so a
    /// second run of a volume is refused at once).
    fn claim(&self, volumes: &[String]) -> Result<Claim<'_>, BackupOpError> {
        let mut s = self.lock();
        if let Some(v) = volumes.iter().find(|v| s.running.contains(*v)) {
            return Err(BackupOpError::Running(v.clone()));
        }
        s.running.extend(volumes.iter().cloned());
        Ok(Claim {
            backups: self,
            volumes: volumes.to_vec(),
        })
    }

    /// Checks a run's request before its task starts: the target exists,
    /// the volumes exist, are named once, on one array, and none is running.
    pub fn check(&self, volumes: &[String], target: Option<&str>) -> Result<String, BackupOpError> {
        let t = backup_target::find(self.config(), target)?;
        if volumes.is_empty() {
            return Err(BackupOpError::Invalid("no volume given".into()));
        }
        let mut arrays = HashSet::new();
        for (i, v) in volumes.iter().enumerate() {
            if volumes[..i].contains(v) {
                return Err(BackupOpError::Invalid(format!("volume {v} named twice")));
            }
            arrays.insert(self.pool_of(v)?.0);
        }
        if arrays.len() > 1 {
            return Err(BackupOpError::Refused(format!(
                "volumes of several arrays ({}) cannot be snapshotted at one instant: back them up separately",
                arrays.into_iter().collect::<Vec<_>>().join(", ")
            )));
        }
        if let Some(v) = volumes.iter().find(|v| self.is_running(v)) {
            return Err(BackupOpError::Running(v.clone()));
        }
        Ok(t.name.clone())
    }

    /// Backs up `volumes` (one instant) to `target`; `full` takes no
    /// parent; `rate_limit` (bytes per second read from each snapshot)
    /// overrides `backup.rate_limit`. `progress` gets the counters of the volume being backed up
    /// and its position in the group; after each chunk, `cancelled` says
    /// whether to stop (the run then fails as a failed run does: no
    /// manifest, the snapshots aborted).
    pub async fn run(
        &self,
        volumes: &[String],
        target: Option<&str>,
        full: bool,
        rate_limit: Option<u64>,
        progress: impl Fn(usize, backup::Progress) + Send + Sync,
        cancelled: impl Fn() -> bool + Send + Sync,
    ) -> Result<Vec<RunOutcome>, BackupOpError> {
        let target_name = self.check(volumes, target)?;
        let _claim = self.claim(volumes)?;
        let result = self
            .run_claimed(
                volumes,
                &target_name,
                full,
                rate_limit,
                &progress,
                &cancelled,
            )
            .await;
        let now = wall_ms();
        let mut s = self.lock();
        match &result {
            Ok(outcomes) => {
                for o in outcomes {
                    let m = &o.report.manifest;
                    s.chain
                        .insert(o.volume.clone(), (target_name.clone(), m.id.clone()));
                    s.last.insert(
                        o.volume.clone(),
                        LastBackup {
                            volume: o.volume.clone(),
                            target: target_name.clone(),
                            unix_ms: now,
                            id: Some(m.id.clone()),
                            size: m.size,
                            result: "ok".into(),
                        },
                    );
                }
            }
            Err(e) => {
                for v in volumes {
                    let size = self.volume_bytes(v).unwrap_or(0);
                    s.last.insert(
                        v.clone(),
                        LastBackup {
                            volume: v.clone(),
                            target: target_name.clone(),
                            unix_ms: now,
                            id: None,
                            size,
                            result: e.to_string(),
                        },
                    );
                }
            }
        }
        result
    }

    async fn run_claimed(
        &self,
        volumes: &[String],
        target_name: &str,
        full: bool,
        rate_limit: Option<u64>,
        progress: &(impl Fn(usize, backup::Progress) + Send + Sync),
        cancelled: &(impl Fn() -> bool + Send + Sync),
    ) -> Result<Vec<RunOutcome>, BackupOpError> {
        let cfg = self.config();
        let target = backup_target::find(cfg, Some(target_name))?;
        let store = backup_target::open(cfg, target)?;
        let (_, pool) = self.pool_of(&volumes[0])?;
        let names: Vec<&str> = volumes.iter().map(String::as_str).collect();
        // Parents first: nothing to undo if the store cannot be listed.
        let mut parents = Vec::new();
        for v in volumes {
            let parent = if full {
                None
            } else {
                backup::list(&store, Some(v)).await?.pop().map(|m| m.id)
            };
            parents.push(parent);
        }
        let snaps = pool
            .snapshot(&names, cfg.reserve, GRAIN)
            .await
            .map_err(|e| BackupOpError::Snapshot {
                volume: names.join(", "),
                message: e.to_string(),
            })?;
        let mut outcomes = Vec::new();
        let mut snaps = snaps.into_iter();
        let mut failure = None;
        for (i, (v, parent)) in volumes.iter().zip(parents).enumerate() {
            let snap = snaps.next().expect("one snapshot per volume");
            let r = self
                .back_up(
                    &store,
                    target_name,
                    v,
                    &snap,
                    parent,
                    Hooks {
                        rate_limit: rate_limit.or(cfg.rate_limit),
                        progress: &|p| progress(i, p),
                        cancelled,
                    },
                )
                .await;
            match r {
                Ok(report) => {
                    if let Err(e) = pool.drop_snapshot(snap).await {
                        warn!(volume = %v, error = %e, "backup done; dropping its snapshot failed (its reserve is deleted at the next start)");
                    }
                    outcomes.push(RunOutcome {
                        volume: v.clone(),
                        report,
                    });
                }
                Err(e) => {
                    let e = match snap.invalid() {
                        Some(why) => BackupOpError::Snapshot {
                            volume: v.clone(),
                            message: format!(
                                "{why} (backup.reserve = {} bytes; raise it if the reserve filled)",
                                cfg.reserve
                            ),
                        },
                        None => e,
                    };
                    if let Err(e) = pool.abort_snapshot(snap).await {
                        warn!(volume = %v, error = %e, "aborting the snapshot of a failed backup failed");
                    }
                    failure = Some(e);
                    break;
                }
            }
        }
        // The group's remaining snapshots: their backups did not run.
        for snap in snaps {
            let v = snap.volume().to_string();
            if let Err(e) = pool.abort_snapshot(snap).await {
                warn!(volume = %v, error = %e, "aborting a snapshot failed");
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(outcomes),
        }
    }

    /// Backs up one snapshot.
    async fn back_up(
        &self,
        store: &backup::Store,
        target: &str,
        volume: &str,
        snap: &volume::Snapshot,
        parent: Option<String>,
        hooks: Hooks<'_>,
    ) -> Result<backup::Report, BackupOpError> {
        let (_, pool) = self.pool_of(volume)?;
        let info = pool.info(volume).map_err(|e| BackupOpError::Volume {
            what: format!("volume {volume}"),
            source: e,
        })?;
        let opts_chunk = backup::format::DEFAULT_CHUNK_SIZE;
        let source = ReleasingSource::new(snap, info.identity, opts_chunk);
        let geo = blockdev::BlockDevice::geometry(snap);
        // The changed map says what changed since the backup this process
        // made last; it is only good against that backup as the parent.
        let chained = self.lock().chain.get(volume).cloned();
        let changed = match &parent {
            Some(p) if chained.as_ref() == Some(&(target.to_string(), p.clone())) => Some(
                changed_chunks(snap.changed(), geo.block_size, opts_chunk, geo.bytes()),
            ),
            _ => None,
        };
        if let Some(c) = &changed {
            source.release_unchanged(c);
        }
        let (tx, mut rx) = watch::channel(backup::Progress::default());
        let mut opts = backup::RunOptions::new(volume);
        opts.progress = Some(tx);
        opts.rate_limit = hooks.rate_limit;
        info!(volume, target, parent = ?parent, incremental_by_map = changed.is_some(), rate_limit = hooks.rate_limit, "backup starting");
        let run = backup::run(&source, changed.as_ref(), parent.as_deref(), store, &opts);
        tokio::pin!(run);
        let report = loop {
            tokio::select! {
                r = &mut run => break r?,
                Ok(()) = rx.changed() => {
                    (hooks.progress)(*rx.borrow_and_update());
                    if (hooks.cancelled)() {
                        return Err(BackupOpError::Cancelled(volume.to_string()));
                    }
                }
            }
        };
        (hooks.progress)(report.progress);
        info!(
            volume,
            target,
            id = %report.manifest.id,
            chunks_read = report.progress.chunks_read,
            chunks_uploaded = report.progress.chunks_uploaded,
            secs = report.elapsed.as_secs_f64(),
            "backup done"
        );
        Ok(report)
    }
}
