//! Tasks on the wire: what a long operation reports while it runs and after
//! it ends.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ControlError;

/// A task's id: unique for the life of the daemon, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(pub u64);

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What a task does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskKind {
    /// Logging in to a new ISU.
    IsuAdd,
    /// Resyncing what changed while an ISU was suspended.
    IsuResume,
    /// Copying an ISU's data to its replacement.
    IsuReplace,
    /// Retiring an ISU.
    IsuRemove,
    /// The initial parity sync of a new array.
    ArrayCreate,
    /// Reshaping an array onto more members.
    ArrayGrow,
    /// Reading an array and checking its parity.
    ArrayScrub,
    /// Rebuilding a lost member onto a spare (started by the head itself).
    Rebuild,
    /// Creating a volume.
    VolumeCreate,
    /// Growing a volume.
    VolumeGrow,
    /// Deleting a volume.
    VolumeDelete,
    /// Backing up volumes.
    BackupRun,
    /// Checking a backup's chunks.
    BackupVerify,
    /// Restoring a backup.
    BackupRestore,
    /// Pruning backups and collecting garbage.
    BackupPrune,
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskState {
    /// Running.
    Running,
    /// Asked to stop; it ends at its next safe point.
    Cancelling,
    /// Ended with success.
    Done,
    /// Ended with an error (in `error`).
    Failed,
    /// Ended because it was cancelled.
    Cancelled,
}

impl TaskState {
    /// Whether the task has ended.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Done | TaskState::Failed | TaskState::Cancelled
        )
    }
}

/// A task as `task.get`, `task.list` and `status` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskInfo {
    /// Its id.
    pub id: TaskId,
    /// What it does.
    pub kind: TaskKind,
    /// What it works on (an ISU, array or volume name).
    pub target: String,
    /// Where it is.
    pub state: TaskState,
    /// How far, 0.0 to 1.0 (1.0 once done).
    pub progress: f64,
    /// When it started, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// When it ended, milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_unix_ms: Option<u64>,
    /// What the progress counts, in words (a backup's bytes read and chunks
    /// uploaded and skipped), when the task says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Seconds left at the rate so far, once there is progress to go by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_secs: Option<u64>,
    /// What it did, once done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// Why it failed or was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ControlError>,
}
