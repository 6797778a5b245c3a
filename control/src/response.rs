//! The answers: one JSON object per line, in the order of the requests,
//! either `{"result": {"type": ..., ...}}` or `{"error": {"code": ...,
//! "message": ...}}`.

use serde::{Deserialize, Serialize};

use crate::error::ControlError;
use crate::status::{BackupEntry, Status};
use crate::task::TaskInfo;

/// One answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Response {
    /// The request was carried out (or its task started).
    Result(Reply),
    /// It was not.
    Error(ControlError),
}

impl From<Result<Reply, ControlError>> for Response {
    fn from(r: Result<Reply, ControlError>) -> Self {
        match r {
            Ok(reply) => Response::Result(reply),
            Err(e) => Response::Error(e),
        }
    }
}

impl From<Response> for Result<Reply, ControlError> {
    fn from(r: Response) -> Self {
        match r {
            Response::Result(reply) => Ok(reply),
            Response::Error(e) => Err(e),
        }
    }
}

/// What a carried-out request answers, by `"type"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Reply {
    /// `status`.
    Status(Status),
    /// A short operation, done: what it did.
    Done {
        /// What was done.
        message: String,
    },
    /// A long operation started as this task (answered at once), or
    /// `task.get` / `task.cancel`.
    Task(TaskInfo),
    /// `task.list`.
    Tasks {
        /// The tasks, oldest first.
        tasks: Vec<TaskInfo>,
    },
    /// `backup.list`.
    Backups {
        /// The target listed.
        target: String,
        /// The complete backups, oldest first.
        backups: Vec<BackupEntry>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{TaskId, TaskKind, TaskState};

    #[test]
    fn answers_have_their_documented_shape() {
        let done = Response::Result(Reply::Done {
            message: "suspended".into(),
        });
        assert_eq!(
            serde_json::to_string(&done).unwrap(),
            r#"{"result":{"type":"done","message":"suspended"}}"#
        );
        let err = Response::Error(ControlError::NotFound("no ISU x".into()));
        assert_eq!(
            serde_json::to_string(&err).unwrap(),
            r#"{"error":{"code":"not-found","message":"no ISU x"}}"#
        );
        let task = Response::Result(Reply::Task(TaskInfo {
            id: TaskId(3),
            kind: TaskKind::ArrayGrow,
            target: "a".into(),
            state: TaskState::Running,
            progress: 0.5,
            started_unix_ms: 1,
            ended_unix_ms: None,
            detail: None,
            eta_secs: Some(9),
            result: None,
            error: None,
        }));
        let line = serde_json::to_string(&task).unwrap();
        assert!(
            line.starts_with(r#"{"result":{"type":"task","id":3,"kind":"array-grow","#),
            "{line}"
        );
        assert_eq!(serde_json::from_str::<Response>(&line).unwrap(), task);
        let status = Response::Result(Reply::Status(Status::default()));
        let line = serde_json::to_string(&status).unwrap();
        assert_eq!(serde_json::from_str::<Response>(&line).unwrap(), status);
    }
}
