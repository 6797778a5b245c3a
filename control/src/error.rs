//! The errors a request can get, by what the caller may do about them.

use serde::{Deserialize, Serialize};

/// The stable machine code of an error on the wire (`"code"`), by what the
/// caller may do. Scripts branch on it; the message is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// The named ISU, array, volume or task does not exist.
    NotFound,
    /// The request contradicts the current state (a name already taken, a
    /// member already in an array, a task already ended): change the
    /// request or the state first.
    Conflict,
    /// The request is malformed or a value is out of range: fix it.
    Invalid,
    /// Something else is under way on it, or the client sent too fast:
    /// retry later.
    Busy,
    /// Something the operation needs is down or not assembled yet (an ISU
    /// unreachable, an array still waiting for members): retry once it is up.
    Unavailable,
    /// The peer is not allowed to use the socket (not root, not the
    /// daemon's user).
    Denied,
    /// A fault of the daemon itself: see its log.
    Internal,
}

impl ErrorCode {
    /// The code as it is spelled on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not-found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Invalid => "invalid",
            ErrorCode::Busy => "busy",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Denied => "denied",
            ErrorCode::Internal => "internal",
        }
    }
}

/// An error answer to a request: one variant per [`ErrorCode`], each with a
/// message for people. On the wire it is `{"code": "...", "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(into = "ErrorBody", from = "ErrorBody")]
pub enum ControlError {
    /// The named object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request contradicts the current state.
    #[error("{0}")]
    Conflict(String),
    /// The request is malformed or out of range.
    #[error("{0}")]
    Invalid(String),
    /// Busy or rate-limited: retry later.
    #[error("{0}")]
    Busy(String),
    /// Something needed is down: retry once it is up.
    #[error("{0}")]
    Unavailable(String),
    /// The peer may not use the socket.
    #[error("{0}")]
    Denied(String),
    /// A fault of the daemon.
    #[error("{0}")]
    Internal(String),
}

impl ControlError {
    /// The machine code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            ControlError::NotFound(_) => ErrorCode::NotFound,
            ControlError::Conflict(_) => ErrorCode::Conflict,
            ControlError::Invalid(_) => ErrorCode::Invalid,
            ControlError::Busy(_) => ErrorCode::Busy,
            ControlError::Unavailable(_) => ErrorCode::Unavailable,
            ControlError::Denied(_) => ErrorCode::Denied,
            ControlError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The message for people.
    pub fn message(&self) -> &str {
        match self {
            ControlError::NotFound(m)
            | ControlError::Conflict(m)
            | ControlError::Invalid(m)
            | ControlError::Busy(m)
            | ControlError::Unavailable(m)
            | ControlError::Denied(m)
            | ControlError::Internal(m) => m,
        }
    }

    /// The error of a code with a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let m = message.into();
        match code {
            ErrorCode::NotFound => ControlError::NotFound(m),
            ErrorCode::Conflict => ControlError::Conflict(m),
            ErrorCode::Invalid => ControlError::Invalid(m),
            ErrorCode::Busy => ControlError::Busy(m),
            ErrorCode::Unavailable => ControlError::Unavailable(m),
            ErrorCode::Denied => ControlError::Denied(m),
            ErrorCode::Internal => ControlError::Internal(m),
        }
    }
}

/// The wire form of a [`ControlError`].
#[derive(Serialize, Deserialize)]
struct ErrorBody {
    code: ErrorCode,
    message: String,
}

impl From<ControlError> for ErrorBody {
    fn from(e: ControlError) -> Self {
        ErrorBody {
            code: e.code(),
            message: e.message().to_owned(),
        }
    }
}

impl From<ErrorBody> for ControlError {
    fn from(b: ErrorBody) -> Self {
        ControlError::new(b.code, b.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_with_its_wire_spelling() {
        for code in [
            ErrorCode::NotFound,
            ErrorCode::Conflict,
            ErrorCode::Invalid,
            ErrorCode::Busy,
            ErrorCode::Unavailable,
            ErrorCode::Denied,
            ErrorCode::Internal,
        ] {
            let e = ControlError::new(code, "why");
            let json = serde_json::to_string(&e).unwrap();
            assert_eq!(
                json,
                format!(r#"{{"code":"{}","message":"why"}}"#, code.as_str())
            );
            let back: ControlError = serde_json::from_str(&json).unwrap();
            assert_eq!(back, e);
        }
    }
}
