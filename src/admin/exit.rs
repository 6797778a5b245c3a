//! What the admin commands exit with, so scripts can branch on it.

use std::process::ExitCode;

use control::{ClientError, ControlError, ErrorCode, TaskInfo, TaskKind};

/// Done.
pub const EXIT_OK: u8 = 0;
/// The operation failed (`internal`, or with `--wait` a task that failed
/// or was cancelled).
pub const EXIT_FAILED: u8 = 1;
/// Bad command line, or the head answered `invalid`.
pub const EXIT_INVALID: u8 = 2;
/// The head could not be reached, or gave no usable answer.
pub const EXIT_UNREACHABLE: u8 = 3;
/// `conflict` or `busy`: the state does not allow it, or not now.
pub const EXIT_CONFLICT: u8 = 4;
/// `not-found`: no such ISU, array, volume or task.
pub const EXIT_NOT_FOUND: u8 = 5;
/// `unavailable`: something the operation needs is down; retry once up.
pub const EXIT_UNAVAILABLE: u8 = 6;
/// `denied`: this user may not use the control socket, or (a backup
/// command) the backup store refused the credentials or the backup secrets
/// file lacks them.
pub const EXIT_DENIED: u8 = 7;

/// The exit status of an error the head answered.
pub fn of_error(e: &ControlError) -> u8 {
    match e.code() {
        ErrorCode::Invalid => EXIT_INVALID,
        ErrorCode::Conflict | ErrorCode::Busy => EXIT_CONFLICT,
        ErrorCode::NotFound => EXIT_NOT_FOUND,
        ErrorCode::Unavailable => EXIT_UNAVAILABLE,
        ErrorCode::Denied => EXIT_DENIED,
        ErrorCode::Internal => EXIT_FAILED,
    }
}

/// The exit status of a followed task that did not succeed: a backup
/// task's by its error's code (so a script tells a refused secret from an
/// unreachable store), any other's [`EXIT_FAILED`].
pub fn of_task(t: &TaskInfo) -> u8 {
    let backup = matches!(
        t.kind,
        TaskKind::BackupRun
            | TaskKind::BackupVerify
            | TaskKind::BackupRestore
            | TaskKind::BackupPrune
    );
    match &t.error {
        Some(e) if backup => of_error(e),
        _ => EXIT_FAILED,
    }
}

/// Why a command ends without success.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The head could not be reached or answered nothing usable.
    #[error("{0}")]
    Client(#[from] ClientError),
    /// The head refused or failed the request.
    #[error("{}", .0.message())]
    Refused(ControlError),
    /// A followed task failed or was cancelled: its line and exit status.
    #[error("{0}")]
    Task(String, u8),
}

impl Failure {
    /// Its exit status.
    pub fn exit(&self) -> u8 {
        match self {
            Failure::Client(_) => EXIT_UNREACHABLE,
            Failure::Refused(e) => of_error(e),
            Failure::Task(_, status) => *status,
        }
    }

    /// Its code for `--json` output when the head gave no answer of its own
    /// (`unreachable` is the CLI's, not the protocol's).
    pub fn json_code(&self) -> &'static str {
        match self {
            Failure::Client(_) => "unreachable",
            Failure::Refused(e) => e.code().as_str(),
            Failure::Task(..) => "failed",
        }
    }
}

/// The process exit code of a status byte.
pub fn code(status: u8) -> ExitCode {
    ExitCode::from(status)
}
