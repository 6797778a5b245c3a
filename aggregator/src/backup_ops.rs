//! The head's other backup operations: list a target's backups, verify
//! one, restore one (to a volume no export serves, created when missing,
//! or to a file on the head), and prune by the configured retention then
//! collect garbage.

use std::time::SystemTime;

use backup::{Manifest, OnBadChunk};
use blockdev::file::FileOptions;
use blockdev::{DeviceIdentity, FileDevice};
use control::status::BackupEntry;
use tracing::info;

use crate::backup_error::BackupOpError;
use crate::backup_run::Backups;
use crate::backup_target;

/// Chunks fetched at once by verify and restore.
const CONCURRENCY: usize = 4;

/// Where a restore writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreTo {
    /// A volume no export serves; created with the backup's size on
    /// `array` (the only array when `None`) when it does not exist.
    Volume {
        /// Its name.
        name: String,
        /// The array to create it on.
        array: Option<String>,
    },
    /// A file on the head (created sparse when missing).
    File(String),
}

/// A manifest as `backup.list` shows it.
pub fn entry(m: &Manifest) -> BackupEntry {
    BackupEntry {
        id: m.id.clone(),
        volume: m.volume.clone(),
        created: m.created,
        size: m.size,
        parent: m.parent.clone(),
        chunks: m.chunks,
        chunks_read: m.chunks_read,
        chunks_uploaded: m.chunks_uploaded,
    }
}

impl Backups {
    fn store(&self, target: Option<&str>) -> Result<(String, backup::Store), BackupOpError> {
        let t = backup_target::find(self.config(), target)?;
        Ok((t.name.clone(), backup_target::open(self.config(), t)?))
    }

    /// The complete backups in `target`, of `volume` or all, oldest first.
    pub async fn list(
        &self,
        volume: Option<&str>,
        target: Option<&str>,
    ) -> Result<(String, Vec<Manifest>), BackupOpError> {
        let (name, store) = self.store(target)?;
        Ok((name, backup::list(&store, volume).await?))
    }

    /// The manifest of backup `id` in `store`.
    async fn find(
        store: &backup::Store,
        target: &str,
        id: &str,
    ) -> Result<Manifest, BackupOpError> {
        backup::list(store, None)
            .await?
            .into_iter()
            .find(|m| m.id == id)
            .ok_or_else(|| BackupOpError::NoBackup {
                id: id.to_string(),
                target: target.to_string(),
            })
    }

    /// Checks every chunk of backup `id`; a bad one fails with its range.
    pub async fn verify(&self, id: &str, target: Option<&str>) -> Result<String, BackupOpError> {
        let (name, store) = self.store(target)?;
        let m = Self::find(&store, &name, id).await?;
        let r = backup::verify(&store, &m.volume, id, CONCURRENCY).await?;
        if r.bad.is_empty() {
            return Ok(format!(
                "backup {id} of {} verified: {} chunks, {} distinct stored chunks checked, all good",
                m.volume, r.chunks, r.checked
            ));
        }
        let bad: Vec<String> = r
            .bad
            .iter()
            .map(|b| {
                format!(
                    "chunk {} ({}) bytes {}..{}: {}",
                    b.chunk,
                    b.digest.hex(),
                    b.range.start,
                    b.range.end,
                    b.problem
                )
            })
            .collect();
        Err(BackupOpError::Refused(format!(
            "backup {id} of {} has {} bad chunk(s): {}",
            m.volume,
            r.bad.len(),
            bad.join("; ")
        )))
    }

    /// Checks a restore's destination before its task starts (an exported
    /// volume is refused at once).
    pub fn check_restore(&self, to: &RestoreTo) -> Result<(), BackupOpError> {
        if let RestoreTo::Volume { name, array } = to {
            crate::config::name_ok(name).map_err(BackupOpError::Invalid)?;
            if let Some(e) = self
                .live()
                .config()
                .exports
                .iter()
                .find(|e| &e.volume == name)
            {
                return Err(BackupOpError::Refused(format!(
                    "volume {name} is exported as {}: restore to a volume no export serves (or to a new one)",
                    e.iqn
                )));
            }
            if self.is_running(name) {
                return Err(BackupOpError::Running(name.clone()));
            }
            if let Some(a) = array {
                if self.live().array(a).is_none() {
                    return Err(BackupOpError::Invalid(format!("no array {a:?}")));
                }
            }
        }
        Ok(())
    }

    /// Restores backup `id` to `to`, every chunk verified before anything
    /// is written.
    pub async fn restore(
        &self,
        id: &str,
        target: Option<&str>,
        to: &RestoreTo,
    ) -> Result<String, BackupOpError> {
        self.check_restore(to)?;
        let (name, store) = self.store(target)?;
        let m = Self::find(&store, &name, id).await?;
        let (device, what): (blockdev::SharedDevice, String) = match to {
            RestoreTo::Volume { name, array } => (
                self.restore_volume(name, array.as_deref(), m.size).await?,
                format!("volume {name}"),
            ),
            RestoreTo::File(path) => {
                let opts = FileOptions {
                    create_size: Some(m.size),
                    ..FileOptions::default()
                };
                let identity = DeviceIdentity::from_uuid(rand::random());
                let f = FileDevice::open(path, &opts, identity).map_err(|source| {
                    BackupOpError::File {
                        path: path.clone(),
                        source,
                    }
                })?;
                (
                    std::sync::Arc::new(f) as blockdev::SharedDevice,
                    format!("file {path}"),
                )
            }
        };
        let r = backup::restore(
            &store,
            &m.volume,
            id,
            device.as_ref(),
            OnBadChunk::Refuse,
            CONCURRENCY,
        )
        .await?;
        device.flush().await.map_err(|e| {
            BackupOpError::Backup(backup::BackupError::TargetWrite {
                range: 0..m.size,
                source: e,
            })
        })?;
        info!(id, volume = %m.volume, to = %what, bytes = r.bytes_written, "restored");
        Ok(format!(
            "backup {id} of {} restored to {what}: {} bytes written, every chunk verified",
            m.volume, r.bytes_written
        ))
    }

    /// The volume `name` to restore onto: created with `size` bytes when
    /// missing; an existing one must hold `size` bytes.
    async fn restore_volume(
        &self,
        name: &str,
        array: Option<&str>,
        size: u64,
    ) -> Result<blockdev::SharedDevice, BackupOpError> {
        let pool = match self.pool_of(name) {
            Ok((_, pool)) => pool,
            Err(_) => {
                let arrays = self.live().arrays();
                let a = match array {
                    Some(a) => self.live().array(a),
                    None if arrays.len() == 1 => arrays.first(),
                    None => {
                        return Err(BackupOpError::Invalid(format!(
                            "volume {name} does not exist and the head has {} arrays: say which to create it on (--array)",
                            arrays.len()
                        )))
                    }
                };
                let a = a.ok_or_else(|| BackupOpError::Invalid("no such array".into()))?;
                let pool = a.pool.clone().ok_or_else(|| {
                    BackupOpError::Refused(format!("array {} has no volume table open", a.name))
                })?;
                pool.create(name, size)
                    .await
                    .map_err(|e| BackupOpError::Volume {
                        what: format!("create volume {name}"),
                        source: e,
                    })?;
                info!(volume = name, array = %a.name, size, "volume created for a restore");
                pool
            }
        };
        let v = pool.open_volume(name).map_err(|e| BackupOpError::Volume {
            what: format!("open volume {name}"),
            source: e,
        })?;
        Ok(v as blockdev::SharedDevice)
    }

    /// Applies `backup.retention` to every volume's backups in `target`,
    /// then (unless `dry_run`) collects garbage past `backup.grace`.
    pub async fn prune(
        &self,
        target: Option<&str>,
        dry_run: bool,
    ) -> Result<String, BackupOpError> {
        let (name, store) = self.store(target)?;
        let rule = self.config().retention;
        let all = backup::list(&store, None).await?;
        let mut volumes: Vec<&str> = all.iter().map(|m| m.volume.as_str()).collect();
        volumes.sort_unstable();
        volumes.dedup();
        let mut gone = Vec::new();
        for v in volumes {
            if dry_run {
                let of: Vec<&Manifest> = all.iter().filter(|m| m.volume == v).collect();
                let created: Vec<u64> = of.iter().map(|m| m.created).collect();
                let keep = backup::select(&created, &rule);
                gone.extend(
                    of.iter()
                        .enumerate()
                        .filter(|(i, _)| !keep.contains(i))
                        .map(|(_, m)| format!("{v}/{}", m.id)),
                );
            } else {
                for id in backup::prune(&store, v, &rule).await? {
                    gone.push(format!("{v}/{id}"));
                }
            }
        }
        if dry_run {
            return Ok(format!(
                "target {name}: would prune {} backup(s){}{}",
                gone.len(),
                if gone.is_empty() { "" } else { ": " },
                gone.join(", ")
            ));
        }
        let gc = backup::gc(&store, self.config().grace, SystemTime::now()).await?;
        info!(target = %name, pruned = gone.len(), swept = gc.chunks_swept, "pruned");
        Ok(format!(
            "target {name}: pruned {} backup(s){}{}; gc swept {} chunks ({} bytes), {} unreferenced kept within the grace, {} unfinished backups removed",
            gone.len(),
            if gone.is_empty() { "" } else { ": " },
            gone.join(", "),
            gc.chunks_swept,
            gc.bytes_swept,
            gc.chunks_in_grace,
            gc.incomplete_removed
        ))
    }
}
