//! The requests a client sends: one JSON object per line, its operation in
//! `"op"` (`"status"`, `"isu.add"`, `"array.create"`, `"task.get"`, ...),
//! its arguments beside it. Unknown fields are refused (`invalid`), so a
//! misspelt argument is never silently ignored.

use serde::{Deserialize, Serialize};

use crate::task::TaskId;

/// One request. Sizes are bytes; names are the ones in the head's config
/// or given at creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", deny_unknown_fields)]
pub enum Request {
    /// The whole status: ISUs, arrays, volumes, tasks, recent events.
    #[serde(rename = "status")]
    Status,
    /// Add an ISU: the head logs in to it; with `spare_for` its disks become
    /// hot spares of that array, otherwise it stays unassigned (to grow an
    /// array onto it or to replace another ISU with it).
    #[serde(rename = "isu.add")]
    IsuAdd {
        /// Its name.
        isu: String,
        /// Its iSCSI portals, `HOST[:PORT]`.
        #[serde(default)]
        portals: Vec<String>,
        /// AoE interfaces to find it on.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        aoe_interfaces: Vec<String>,
        /// The array whose spare it becomes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        spare_for: Option<String>,
    },
    /// Suspend an ISU for maintenance: I/O to it stops, its arrays serve
    /// degraded and track what changes.
    #[serde(rename = "isu.suspend")]
    IsuSuspend {
        /// The ISU.
        isu: String,
    },
    /// Resume a suspended ISU: only what changed meanwhile is resynced.
    #[serde(rename = "isu.resume")]
    IsuResume {
        /// The ISU.
        isu: String,
    },
    /// Replace an ISU online: its data is copied to `with` while it still
    /// serves, then it is retired.
    #[serde(rename = "isu.replace")]
    IsuReplace {
        /// The ISU to retire.
        isu: String,
        /// The (added, unassigned) ISU that takes its place.
        with: String,
    },
    /// Remove an ISU that no array uses (a spare or an unassigned one).
    #[serde(rename = "isu.remove")]
    IsuRemove {
        /// The ISU.
        isu: String,
    },
    /// Create a RAID5 array across members.
    #[serde(rename = "array.create")]
    ArrayCreate {
        /// Its name.
        array: String,
        /// The members: an ISU name (its only disk) or `ISU/DISK`.
        members: Vec<String>,
        /// Hot spares, in the same form.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        spares: Vec<String>,
        /// Chunk size in bytes (the head's default when absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        chunk_size: Option<u64>,
    },
    /// Grow an array onto more members (a reshape, online).
    #[serde(rename = "array.grow")]
    ArrayGrow {
        /// The array.
        array: String,
        /// The new members, in the form of `array.create`.
        members: Vec<String>,
    },
    /// Read the whole array and check parity.
    #[serde(rename = "array.scrub")]
    ArrayScrub {
        /// The array.
        array: String,
    },
    /// Create a volume on an array.
    #[serde(rename = "volume.create")]
    VolumeCreate {
        /// Its name.
        volume: String,
        /// The array it is carved from.
        array: String,
        /// Its size in bytes.
        size: u64,
    },
    /// Grow a volume online (its clients get a capacity change).
    #[serde(rename = "volume.grow")]
    VolumeGrow {
        /// The volume.
        volume: String,
        /// Its new size in bytes, larger than the current one.
        size: u64,
    },
    /// Delete a volume that no export serves.
    #[serde(rename = "volume.delete")]
    VolumeDelete {
        /// The volume.
        volume: String,
    },
    /// Back up volumes (one consistency group when several are named) to
    /// a configured backup target, as a task.
    #[serde(rename = "backup.run")]
    BackupRun {
        /// The volumes.
        volumes: Vec<String>,
        /// The target (`[[backup.target]]` name); the first one when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<String>,
        /// A full backup (no parent) even when an incremental is possible.
        #[serde(default)]
        full: bool,
        /// Read the snapshots at most this many bytes per second (over
        /// `backup.rate_limit`); absent: the configured limit, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rate_limit: Option<u64>,
    },
    /// The complete backups in a target, of one volume or all.
    #[serde(rename = "backup.list")]
    BackupList {
        /// Only this volume's backups.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        volume: Option<String>,
        /// The target; the first one when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<String>,
    },
    /// Check every chunk of a backup, as a task.
    #[serde(rename = "backup.verify")]
    BackupVerify {
        /// The backup's id.
        id: String,
        /// The target; the first one when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<String>,
    },
    /// Restore a backup (verified first) to a volume that no export serves
    /// (created with the backup's size when it does not exist) or to a
    /// file, as a task. Exactly one of `to_volume` and `to_file`.
    #[serde(rename = "backup.restore")]
    BackupRestore {
        /// The backup's id.
        id: String,
        /// The target; the first one when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<String>,
        /// The volume to write.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to_volume: Option<String>,
        /// The array a new volume is created on (the only array when absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        array: Option<String>,
        /// The file (on the head) to write.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to_file: Option<String>,
    },
    /// Apply the configured retention to every volume's backups in a
    /// target, then collect garbage, as a task.
    #[serde(rename = "backup.prune")]
    BackupPrune {
        /// The target; the first one when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<String>,
        /// Only say which backups would go.
        #[serde(default)]
        dry_run: bool,
    },
    /// One task.
    #[serde(rename = "task.get")]
    TaskGet {
        /// The task.
        task: TaskId,
    },
    /// Every task still kept (running, and ended ones for a while).
    #[serde(rename = "task.list")]
    TaskList,
    /// Ask a running task to stop at its next safe point.
    #[serde(rename = "task.cancel")]
    TaskCancel {
        /// The task.
        task: TaskId,
    },
}

impl Request {
    /// The operation's wire name (`"isu.add"`), for logs.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::IsuAdd { .. } => "isu.add",
            Request::IsuSuspend { .. } => "isu.suspend",
            Request::IsuResume { .. } => "isu.resume",
            Request::IsuReplace { .. } => "isu.replace",
            Request::IsuRemove { .. } => "isu.remove",
            Request::ArrayCreate { .. } => "array.create",
            Request::ArrayGrow { .. } => "array.grow",
            Request::ArrayScrub { .. } => "array.scrub",
            Request::VolumeCreate { .. } => "volume.create",
            Request::VolumeGrow { .. } => "volume.grow",
            Request::VolumeDelete { .. } => "volume.delete",
            Request::BackupRun { .. } => "backup.run",
            Request::BackupList { .. } => "backup.list",
            Request::BackupVerify { .. } => "backup.verify",
            Request::BackupRestore { .. } => "backup.restore",
            Request::BackupPrune { .. } => "backup.prune",
            Request::TaskGet { .. } => "task.get",
            Request::TaskList => "task.list",
            Request::TaskCancel { .. } => "task.cancel",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_from_their_documented_lines() {
        let r: Request = serde_json::from_str(r#"{"op":"status"}"#).unwrap();
        assert_eq!(r, Request::Status);
        let r: Request =
            serde_json::from_str(r#"{"op":"volume.create","volume":"v","array":"a","size":4096}"#)
                .unwrap();
        assert_eq!(
            r,
            Request::VolumeCreate {
                volume: "v".into(),
                array: "a".into(),
                size: 4096
            }
        );
        let r: Request = serde_json::from_str(r#"{"op":"task.cancel","task":7}"#).unwrap();
        assert_eq!(r, Request::TaskCancel { task: TaskId(7) });
        let r: Request =
            serde_json::from_str(r#"{"op":"isu.add","isu":"i4","portals":["127.0.0.1:3261"]}"#)
                .unwrap();
        assert_eq!(r.op(), "isu.add");
    }

    #[test]
    fn misspelt_arguments_and_unknown_ops_are_refused() {
        assert!(
            serde_json::from_str::<Request>(r#"{"op":"isu.suspend","isu":"a","force":true}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"isu.explode","isu":"a"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"isu":"a"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"volume.grow","volume":"v"}"#).is_err());
    }

    #[test]
    fn every_request_round_trips() {
        let all = [
            Request::Status,
            Request::IsuAdd {
                isu: "i".into(),
                portals: vec!["h:1".into()],
                aoe_interfaces: vec!["eth0".into()],
                spare_for: Some("a".into()),
            },
            Request::IsuSuspend { isu: "i".into() },
            Request::IsuResume { isu: "i".into() },
            Request::IsuReplace {
                isu: "i".into(),
                with: "j".into(),
            },
            Request::IsuRemove { isu: "i".into() },
            Request::ArrayCreate {
                array: "a".into(),
                members: vec!["i".into(), "j/d1".into()],
                spares: vec![],
                chunk_size: Some(65536),
            },
            Request::ArrayGrow {
                array: "a".into(),
                members: vec!["k".into()],
            },
            Request::ArrayScrub { array: "a".into() },
            Request::VolumeCreate {
                volume: "v".into(),
                array: "a".into(),
                size: 1,
            },
            Request::VolumeGrow {
                volume: "v".into(),
                size: 2,
            },
            Request::VolumeDelete { volume: "v".into() },
            Request::BackupRun {
                volumes: vec!["v".into(), "w".into()],
                target: Some("t".into()),
                full: true,
                rate_limit: Some(100 << 20),
            },
            Request::BackupList {
                volume: None,
                target: None,
            },
            Request::BackupVerify {
                id: "20261204T131320Z-0010abc".into(),
                target: None,
            },
            Request::BackupRestore {
                id: "20261204T131320Z-0010abc".into(),
                target: None,
                to_volume: Some("v2".into()),
                array: None,
                to_file: None,
            },
            Request::BackupPrune {
                target: Some("t".into()),
                dry_run: true,
            },
            Request::TaskGet { task: TaskId(1) },
            Request::TaskList,
            Request::TaskCancel { task: TaskId(1) },
        ];
        for r in all {
            let line = serde_json::to_string(&r).unwrap();
            assert!(line.contains(&format!(r#""op":"{}""#, r.op())), "{line}");
            assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), r);
        }
    }
}
