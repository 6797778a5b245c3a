//! Task management requests (RFC 7143 §11.5) and their answers.

/// A task management function (§11.5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    /// ABORT TASK: the task of [`TaskManagement::rtt`].
    AbortTask,
    /// ABORT TASK SET.
    AbortTaskSet,
    /// CLEAR ACA.
    ClearAca,
    /// CLEAR TASK SET.
    ClearTaskSet,
    /// LOGICAL UNIT RESET.
    LunReset,
    /// TARGET WARM RESET.
    TargetWarmReset,
    /// TARGET COLD RESET.
    TargetColdReset,
}

impl Function {
    /// The function code.
    pub fn code(self) -> u8 {
        match self {
            Function::AbortTask => 1,
            Function::AbortTaskSet => 2,
            Function::ClearAca => 3,
            Function::ClearTaskSet => 4,
            Function::LunReset => 5,
            Function::TargetWarmReset => 6,
            Function::TargetColdReset => 7,
        }
    }
}

/// Response: function complete.
pub const COMPLETE: u8 = 0;
/// Response: task does not exist.
pub const NO_SUCH_TASK: u8 = 1;
/// Response: LUN does not exist.
pub const NO_SUCH_LUN: u8 = 2;
/// Response: function not supported.
pub const NOT_SUPPORTED: u8 = 5;
/// Response: function rejected.
pub const REJECTED: u8 = 255;

/// One task management request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskManagement {
    /// The function.
    pub function: Function,
    /// LUN (a flat number).
    pub lun: u64,
    /// Referenced task tag (the ITT of the task ABORT TASK aborts).
    pub rtt: u32,
    /// CmdSN of the referenced task (ABORT TASK).
    pub ref_cmd_sn: u32,
}

impl TaskManagement {
    /// ABORT TASK of `task` on `lun`.
    pub fn abort_task(lun: u64, task: crate::Task) -> TaskManagement {
        TaskManagement {
            function: Function::AbortTask,
            lun,
            rtt: task.itt,
            ref_cmd_sn: task.cmd_sn,
        }
    }

    /// `function` (a task set or reset function) for `lun`.
    pub fn of_lun(function: Function, lun: u64) -> TaskManagement {
        TaskManagement {
            function,
            lun,
            rtt: iscsi_proto::pdu::RESERVED_TAG,
            ref_cmd_sn: 0,
        }
    }
}

/// The answer to a task management request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmfResult {
    /// The response code ([`COMPLETE`], [`NO_SUCH_TASK`], ...).
    pub response: u8,
    /// ITTs of the SCSI commands whose status arrived before the answer
    /// (and was not taken yet with [`Session::wait`](crate::Session::wait)).
    pub completed_before: Vec<u32>,
}
