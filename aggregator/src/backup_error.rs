//! The errors of the head's backup operations, each saying what to do, and
//! what they mean on the control socket (and so the CLI's exit status).

use control::ControlError;

/// Why a backup operation of the head failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupOpError {
    /// No `[[backup.target]]` of that name (or none at all).
    #[error("no backup target {0:?} in head.toml ([[backup.target]])")]
    NoTarget(String),
    /// The backup secrets file cannot be read or lacks the credentials.
    #[error("backup secrets {path}: {message}")]
    Secrets {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// No volume of that name.
    #[error("no volume {0:?}")]
    NoVolume(String),
    /// No backup of that id in the target.
    #[error("no backup {id:?} in target {target}")]
    NoBackup {
        /// The id asked for.
        id: String,
        /// The target searched.
        target: String,
    },
    /// A backup of the volume is running already.
    #[error("a backup of volume {0} is running already")]
    Running(String),
    /// The request contradicts the head's state (a restore onto an
    /// exported volume, volumes of several arrays in one group).
    #[error("{0}")]
    Refused(String),
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The snapshot could not be taken or was dropped (the reserve filled:
    /// raise `backup.reserve`).
    #[error("snapshot of {volume}: {message}")]
    Snapshot {
        /// The volume.
        volume: String,
        /// What happened.
        message: String,
    },
    /// The volume layer refused (creating the restore's volume).
    #[error("{what}: {source}")]
    Volume {
        /// What was done.
        what: String,
        /// Its error.
        source: volume::VolumeError,
    },
    /// The restore file could not be opened.
    #[error("restore file {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// Its error.
        source: blockdev::BlockError,
    },
    /// The run was asked to stop (`opie task cancel`): no backup was made.
    #[error("backup of {0} cancelled: no backup made, its snapshot aborted")]
    Cancelled(String),
    /// The backup layer failed (store, source, chunks).
    #[error(transparent)]
    Backup(#[from] backup::BackupError),
}

impl From<BackupOpError> for ControlError {
    fn from(e: BackupOpError) -> Self {
        use backup::BackupError as B;
        let m = e.to_string();
        match e {
            BackupOpError::NoTarget(_)
            | BackupOpError::NoVolume(_)
            | BackupOpError::NoBackup { .. } => ControlError::NotFound(m),
            BackupOpError::Backup(B::NoSuchBackup { .. }) => ControlError::NotFound(m),
            BackupOpError::Running(_) => ControlError::Busy(m),
            BackupOpError::Cancelled(_) => ControlError::Conflict(m),
            BackupOpError::Refused(_) | BackupOpError::Volume { .. } => ControlError::Conflict(m),
            BackupOpError::Invalid(_) | BackupOpError::Backup(B::Invalid(_)) => {
                ControlError::Invalid(m)
            }
            BackupOpError::Secrets { .. } | BackupOpError::Backup(B::AuthRefused(_)) => {
                ControlError::Denied(m)
            }
            BackupOpError::Backup(B::StoreUnreachable { .. })
            | BackupOpError::Snapshot { .. }
            | BackupOpError::File { .. }
            | BackupOpError::Backup(B::SourceRead { .. })
            | BackupOpError::Backup(B::TargetWrite { .. }) => ControlError::Unavailable(m),
            BackupOpError::Backup(_) => ControlError::Internal(m),
        }
    }
}
