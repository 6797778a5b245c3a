//! Task management (RFC 7143 §11.5-6): function codes to SAM functions and
//! the response codes.

use scsi_disk::TmfFunction;

/// TASK REASSIGN (function 8), only meaningful at ERL 2.
pub const TASK_REASSIGN: u8 = 8;

/// TMF response codes (§11.6.1).
pub mod response {
    /// Function complete.
    pub const COMPLETE: u8 = 0;
    /// Task does not exist.
    pub const TASK_DOES_NOT_EXIST: u8 = 1;
    /// LUN does not exist.
    pub const LUN_DOES_NOT_EXIST: u8 = 2;
    /// Task still allegiant.
    pub const TASK_STILL_ALLEGIANT: u8 = 3;
    /// Task allegiance reassignment not supported.
    pub const REASSIGN_NOT_SUPPORTED: u8 = 4;
    /// Task management function not supported.
    pub const NOT_SUPPORTED: u8 = 5;
    /// Function authorization failed.
    pub const AUTHORIZATION_FAILED: u8 = 6;
    /// Function rejected.
    pub const REJECTED: u8 = 255;
}

/// Maps a function code (and the referenced task tag) to the SAM function.
pub fn function(code: u8, rtt: u32) -> Option<TmfFunction> {
    Some(match code {
        1 => TmfFunction::AbortTask { tag: rtt },
        2 => TmfFunction::AbortTaskSet,
        3 => TmfFunction::ClearAca,
        4 => TmfFunction::ClearTaskSet,
        5 => TmfFunction::LunReset,
        6 => TmfFunction::TargetWarmReset,
        7 => TmfFunction::TargetColdReset,
        _ => return None,
    })
}

/// The SCSI layer's verdict on a task management function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmfOutcome {
    /// Function complete.
    Complete,
    /// The referenced task does not exist.
    TaskDoesNotExist,
    /// The LUN does not exist.
    LunDoesNotExist,
    /// Not supported.
    NotSupported,
    /// Rejected.
    Rejected,
}

impl TmfOutcome {
    /// The iSCSI response code.
    pub fn code(self) -> u8 {
        match self {
            TmfOutcome::Complete => response::COMPLETE,
            TmfOutcome::TaskDoesNotExist => response::TASK_DOES_NOT_EXIST,
            TmfOutcome::LunDoesNotExist => response::LUN_DOES_NOT_EXIST,
            TmfOutcome::NotSupported => response::NOT_SUPPORTED,
            TmfOutcome::Rejected => response::REJECTED,
        }
    }
}
