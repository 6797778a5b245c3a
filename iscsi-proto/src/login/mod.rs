//! The login phase (RFC 7143 §6.3, §11.12-13) for both roles, sans-I/O:
//! the target's side ([`Login`], its policy plugged in through
//! [`LoginContext`] and [`Authenticator`]) and the initiator's
//! ([`InitiatorLogin`]); what both share: the status classes and details,
//! the session types and the redaction of secrets in logs.

mod initiator;
mod target;

pub use initiator::{
    Auth, InitiatorLogin, LoggedIn, LoginConfig, LoginError, LoginPdu, LoginProgress, LOGIN_SEGMENT,
};
pub use target::{
    AuthStep, Authenticator, Established, Login, LoginContext, LoginOutcome, LoginReply, NoAuth,
    SessionKey, TargetInfo, LOGIN_WINDOW,
};

use crate::negotiate::{key_def, KeyDef};
use crate::text::TextList;

/// AuthMethod's row of the key table: both roles select it by its rule.
static AUTH_METHOD: std::sync::LazyLock<&'static KeyDef> =
    std::sync::LazyLock::new(|| key_def("AuthMethod").expect("AuthMethod is in the key table"));

/// Login status classes and details (§11.13.5).
pub mod status {
    /// Success.
    pub const SUCCESS: (u8, u8) = (0, 0);
    /// Initiator error (bad request).
    pub const INITIATOR_ERROR: (u8, u8) = (2, 0);
    /// Authentication failure.
    pub const AUTH_FAILURE: (u8, u8) = (2, 1);
    /// Authorization failure.
    pub const AUTHORIZATION_FAILURE: (u8, u8) = (2, 2);
    /// Target not found.
    pub const NOT_FOUND: (u8, u8) = (2, 3);
    /// Target removed.
    pub const TARGET_REMOVED: (u8, u8) = (2, 4);
    /// Unsupported version.
    pub const UNSUPPORTED_VERSION: (u8, u8) = (2, 5);
    /// Too many connections.
    pub const TOO_MANY_CONNECTIONS: (u8, u8) = (2, 6);
    /// Missing parameter.
    pub const MISSING_PARAMETER: (u8, u8) = (2, 7);
    /// Session type not supported.
    pub const SESSION_TYPE_NOT_SUPPORTED: (u8, u8) = (2, 9);
    /// Session does not exist.
    pub const SESSION_DOES_NOT_EXIST: (u8, u8) = (2, 0x0a);
    /// Invalid request during login.
    pub const INVALID_DURING_LOGIN: (u8, u8) = (2, 0x0b);
    /// Target moved temporarily (a redirect; TargetAddress says where).
    pub const MOVED_TEMPORARILY: (u8, u8) = (1, 1);
    /// Target moved permanently.
    pub const MOVED_PERMANENTLY: (u8, u8) = (1, 2);
    /// Target error.
    pub const TARGET_ERROR: (u8, u8) = (3, 0);
    /// Service unavailable.
    pub const SERVICE_UNAVAILABLE: (u8, u8) = (3, 1);
    /// Out of resources.
    pub const OUT_OF_RESOURCES: (u8, u8) = (3, 2);
}

/// Discovery or normal session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionType {
    /// SendTargets only.
    Discovery,
    /// SCSI commands to one target.
    Normal,
}

/// `key=value` pairs for logs, with the values of CHAP_C, CHAP_R (and any
/// other key [`chap::is_sensitive_key`] names) replaced by `<redacted>`.
pub fn redacted(keys: &TextList) -> String {
    keys.0
        .iter()
        .map(|(k, v)| {
            if chap::is_sensitive_key(k) {
                format!("{k}=<redacted>")
            } else {
                format!("{k}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
