//! What the initiator does about a command that takes too long, sans-I/O:
//! ABORT TASK; when that is not answered in time, or refused, LOGICAL UNIT
//! RESET; when that fails too, the connection is given up (and with it,
//! under ERL 0, the session's tasks). One recovery runs at a time.

use std::time::{Duration, Instant};

use crate::tmf;

/// The task management request a recovery waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// ABORT TASK of the task tagged `task`.
    Abort {
        /// The TMF request's tag.
        tmf: u32,
        /// The task aborted.
        task: u32,
        /// Its LUN (what a reset would name).
        lun: u64,
    },
    /// LOGICAL UNIT RESET of `lun`.
    LunReset {
        /// The TMF request's tag.
        tmf: u32,
        /// The LUN.
        lun: u64,
    },
}

/// What to do after a recovery step was answered or timed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The task is ended: it will neither answer nor act any more.
    TaskEnded(u32),
    /// Every task of the LUN is ended.
    LunEnded(u64),
    /// Escalate: reset the LUN.
    Reset(u64),
    /// Nothing more to try on this connection: drop it.
    GiveUp,
}

/// A recovery in progress.
#[derive(Debug, Clone, Copy)]
pub struct Recovery {
    step: Step,
    since: Instant,
}

impl Recovery {
    /// A recovery whose request `step` went out at `now`.
    pub fn new(step: Step, now: Instant) -> Recovery {
        Recovery { step, since: now }
    }

    /// When the request is given up if unanswered.
    pub fn deadline(&self, timeout: Duration) -> Instant {
        self.since + timeout
    }

    /// The request's tag.
    pub fn tmf(&self) -> u32 {
        match self.step {
            Step::Abort { tmf, .. } | Step::LunReset { tmf, .. } => tmf,
        }
    }

    /// What the answer `response` to the request means.
    pub fn answered(&self, response: u8) -> Outcome {
        match (self.step, response) {
            // Aborted, or it had ended already (its status is in or on the way).
            (Step::Abort { task, .. }, tmf::COMPLETE | tmf::NO_SUCH_TASK) => {
                Outcome::TaskEnded(task)
            }
            (Step::Abort { lun, .. }, _) => Outcome::Reset(lun),
            (Step::LunReset { lun, .. }, tmf::COMPLETE) => Outcome::LunEnded(lun),
            (Step::LunReset { .. }, _) => Outcome::GiveUp,
        }
    }

    /// What no answer in time means.
    pub fn timed_out(&self) -> Outcome {
        match self.step {
            Step::Abort { lun, .. } => Outcome::Reset(lun),
            Step::LunReset { .. } => Outcome::GiveUp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_abort_escalates_to_a_reset_and_a_reset_to_the_connection() {
        let t0 = Instant::now();
        let abort = Recovery::new(
            Step::Abort {
                tmf: 9,
                task: 4,
                lun: 2,
            },
            t0,
        );
        assert_eq!(abort.tmf(), 9);
        assert_eq!(abort.answered(tmf::COMPLETE), Outcome::TaskEnded(4));
        assert_eq!(abort.answered(tmf::NO_SUCH_TASK), Outcome::TaskEnded(4));
        assert_eq!(abort.answered(tmf::REJECTED), Outcome::Reset(2));
        assert_eq!(abort.timed_out(), Outcome::Reset(2));
        let reset = Recovery::new(Step::LunReset { tmf: 10, lun: 2 }, t0);
        assert_eq!(reset.answered(tmf::COMPLETE), Outcome::LunEnded(2));
        assert_eq!(reset.answered(tmf::NOT_SUPPORTED), Outcome::GiveUp);
        assert_eq!(reset.timed_out(), Outcome::GiveUp);
        assert_eq!(
            reset.deadline(Duration::from_secs(1)),
            t0 + Duration::from_secs(1)
        );
    }
}
