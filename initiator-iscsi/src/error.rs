//! The initiator's errors, by what the caller may do.

use std::time::Duration;

use blockdev::BlockError;
use iscsi_proto::login::LoginError;

/// What went wrong with a session or one of its tasks.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The network failed: the connection is gone; log in again.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The target closed the connection: log in again.
    #[error("the target closed the connection")]
    Closed,
    /// No answer came in time: the connection is in doubt; drop it (or
    /// wait longer).
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection failed before the command's answer came: the target
    /// may or may not have carried it out, and may still, until the session
    /// is reinstated or has timed out on the target.
    #[error("the connection failed before the answer: {0}")]
    ConnectionLost(String),
    /// The command took too long and was aborted by task management
    /// (ABORT TASK or LOGICAL UNIT RESET, answered): it will not act any
    /// more, and may be sent again.
    #[error("aborted after the command timeout")]
    Aborted,
    /// The session is closed (logged out, or its connection failed
    /// earlier): log in again.
    #[error("the session is closed")]
    SessionClosed,
    /// The login failed (see [`LoginError`] for what to do).
    #[error("login: {0}")]
    Login(#[from] LoginError),
    /// The target broke the protocol (framing, digests, sequence, a PDU
    /// out of place): drop the connection.
    #[error("the target broke the protocol: {0}")]
    Protocol(String),
    /// The target rejected a PDU of this request (RFC 7143 §11.17): the
    /// request was not carried out; do not send it again unchanged.
    #[error("the target rejected the request (reason {0:#04x})")]
    Rejected(u8),
    /// The command did not complete in the target (an iSCSI response
    /// other than "command completed at target", §11.4.3): it may be
    /// retried on another path.
    #[error("the target could not complete the command (iSCSI response {0:#04x})")]
    TargetFailure(u8),
    /// The connection was lost and the session is being reinstated; the
    /// command was not sent, and will not be (the session fails fast as
    /// one path of several): send it on another path.
    #[error("the session is being reinstated: the command was not sent")]
    Reinstating,
    /// The target answered a Logout Request with a failure (§11.15.1).
    #[error("logout refused (response {0})")]
    LogoutRefused(u8),
}

impl Error {
    /// The block-device error this failure of a command stands for, by
    /// what the caller may do: [`BlockError::PathDown`] when the command is
    /// known not to have been carried out (never sent, or the target could
    /// not complete it), [`BlockError::TimedOut`] when it may have been
    /// (no answer, a connection lost or broken with it in flight).
    pub fn into_block_error(self) -> BlockError {
        let what = self.to_string();
        match self {
            Error::Io(_)
            | Error::Closed
            | Error::SessionClosed
            | Error::Login(_)
            | Error::Reinstating
            | Error::TargetFailure(_) => BlockError::PathDown(what),
            Error::ConnectionLost(_) | Error::Timeout(_) | Error::Protocol(_) => {
                BlockError::TimedOut(what)
            }
            Error::Rejected(_) => BlockError::Invalid(what),
            Error::Aborted => BlockError::Busy(what),
            Error::LogoutRefused(_) => BlockError::Failed(what),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blockdev::ErrorClass;

    #[test]
    fn failures_become_block_errors_by_what_the_caller_may_do() {
        let class = |e: Error| e.into_block_error().class();
        // Never sent, or known not carried out: another path now.
        assert_eq!(class(Error::SessionClosed), ErrorClass::RetryElsewhere);
        assert_eq!(class(Error::TargetFailure(1)), ErrorClass::RetryElsewhere);
        assert_eq!(class(Error::Reinstating), ErrorClass::RetryElsewhere);
        // In flight when the connection went: it may still land.
        assert_eq!(
            class(Error::ConnectionLost("x".into())),
            ErrorClass::OutcomeUnknown
        );
        assert_eq!(
            class(Error::Timeout(Duration::from_secs(1))),
            ErrorClass::OutcomeUnknown
        );
        assert_eq!(
            class(Error::Protocol("x".into())),
            ErrorClass::OutcomeUnknown
        );
        // Aborted and answered: it can no longer land; again, later.
        assert_eq!(class(Error::Aborted), ErrorClass::RetryLater);
        assert_eq!(class(Error::Rejected(4)), ErrorClass::Invalid);
    }
}
