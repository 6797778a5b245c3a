//! The status model: what `status` answers, filled in by the head.

use serde::{Deserialize, Serialize};

use crate::task::TaskInfo;

/// Everything `opie status` shows.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Status {
    /// The ISUs the head knows.
    pub isus: Vec<IsuStatus>,
    /// The arrays.
    pub arrays: Vec<ArrayStatus>,
    /// The volumes.
    pub volumes: Vec<VolumeStatus>,
    /// The tasks still kept; the server fills this in from its task
    /// registry, whatever the handler put here.
    pub tasks: Vec<TaskInfo>,
    /// Recent events, oldest first.
    pub events: Vec<Event>,
    /// The last backup run of each volume this head has backed up.
    #[serde(default)]
    pub backups: Vec<LastBackup>,
}

/// State of an ISU as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IsuState {
    /// Every path up.
    Up,
    /// Reachable, but some path down.
    Degraded,
    /// No path up.
    Down,
    /// Suspended for maintenance: no I/O goes to it.
    Suspended,
    /// Known but in no array (new, or a removed member).
    Unassigned,
}

/// One ISU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IsuStatus {
    /// Its name.
    pub name: String,
    /// Its state.
    pub state: IsuState,
    /// Every path to its disks.
    pub paths: Vec<PathStatus>,
}

/// State of one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathState {
    /// In use.
    Up,
    /// Up but held out after recent failures.
    Marginal,
    /// Down.
    Down,
}

/// One path to an ISU (a portal or an AoE interface).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathStatus {
    /// The path: `iscsi 127.0.0.1:3261` or `aoe eth1`.
    pub name: String,
    /// Its state.
    pub state: PathState,
    /// Its counters since the head started.
    pub stats: PathStats,
}

/// Counters of one path (of every disk reached through it), as the
/// head's multipath devices count them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PathStats {
    /// I/Os completed.
    pub completed: u64,
    /// Bytes the completed I/Os moved.
    pub bytes: u64,
    /// I/Os that ended with an error.
    pub errors: u64,
    /// I/Os that failed here and were retried on another path.
    pub failed_over: u64,
    /// Commands in flight now.
    pub in_flight: u64,
}

/// State of an array.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArrayState {
    /// Every member in sync.
    Clean,
    /// A member missing: serving without redundancy.
    Degraded,
    /// Rebuilding a member (see `progress`).
    Rebuilding,
    /// Reshaping onto more members (see `progress`).
    Reshaping,
    /// Copying a member to its replacement (see `progress`).
    Replacing,
}

/// How far a rebuild, reshape or replacement is.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Done so far, 0.0 to 1.0.
    pub fraction: f64,
    /// Bytes per second lately.
    pub rate_bytes_per_sec: u64,
    /// Seconds left at that rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_secs: Option<u64>,
}

/// State of one member of an array.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemberState {
    /// In sync.
    InSync,
    /// Being rebuilt, resynced or copied to.
    Syncing,
    /// Not reachable or suspended: the array serves without it.
    Missing,
    /// Failed and out of the array.
    Failed,
    /// A hot spare.
    Spare,
}

/// One member (or spare) of an array.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// The ISU it is on.
    pub isu: String,
    /// The disk's identity (as `opie initiator ls` shows it).
    pub disk: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its state.
    pub state: MemberState,
}

/// One array.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArrayStatus {
    /// Its name.
    pub name: String,
    /// Its state.
    pub state: ArrayState,
    /// Progress of what its state names (rebuilding, reshaping, replacing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Members and spares.
    pub members: Vec<MemberStatus>,
    /// Chunk size in bytes.
    pub chunk_size: u64,
    /// Usable capacity in bytes.
    pub capacity: u64,
    /// Bytes of the members beyond the smallest one's size, left unused.
    pub wasted: u64,
}

/// One export of a volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportStatus {
    /// Target name.
    pub target: String,
    /// LUN in the target.
    pub lun: u64,
    /// Exported read-only.
    pub read_only: bool,
}

/// One volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeStatus {
    /// Its name.
    pub name: String,
    /// The array it is carved from.
    pub array: String,
    /// Its size in bytes.
    pub size: u64,
    /// Where it is exported.
    pub exports: Vec<ExportStatus>,
}

/// How much an event matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventLevel {
    /// Normal operation (a rebuild finished, an ISU came back).
    Info,
    /// Redundancy or a path lost.
    Warn,
    /// Data at risk or an operation failed.
    Error,
}

/// Something that happened, as the head's log says it too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When, milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// How much it matters.
    pub level: EventLevel,
    /// What it is about (an ISU, array or volume name).
    pub subject: String,
    /// What happened.
    pub message: String,
}

/// One complete backup in a backup target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupEntry {
    /// Its id (`YYYYMMDDTHHMMSSZ-mmmxxxx`).
    pub id: String,
    /// The volume it is of.
    pub volume: String,
    /// When it was taken, Unix seconds.
    pub created: u64,
    /// The volume's size in bytes.
    pub size: u64,
    /// The backup it is incremental to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Chunks in it.
    pub chunks: u64,
    /// Chunks read from the volume by its run.
    pub chunks_read: u64,
    /// Chunks its run uploaded.
    pub chunks_uploaded: u64,
}

/// The last backup run of a volume on this head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastBackup {
    /// The volume.
    pub volume: String,
    /// The target it went to.
    pub target: String,
    /// When the run ended, milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// The backup made (absent when the run failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The volume's size in bytes.
    pub size: u64,
    /// `ok`, or why the run failed.
    pub result: String,
}
