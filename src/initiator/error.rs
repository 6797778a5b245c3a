//! What can go wrong in `opie initiator`, by what the user may do about it,
//! and the exit status each failure gives scripts.

use std::path::PathBuf;

use initiator_iscsi::{Error as IscsiError, LoginError};

/// Exit status: the command line or a file it names is wrong.
pub const EXIT_USAGE: u8 = 2;
/// Exit status: the target could not be reached, or broke off.
pub const EXIT_UNREACHABLE: u8 = 1;
/// Exit status: the target refused the login (credentials, access lists).
pub const EXIT_REFUSED: u8 = 3;
/// Exit status: no such target or LUN there.
pub const EXIT_NOT_FOUND: u8 = 4;

/// A failure of an `opie initiator` command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line is wrong: fix it.
    #[error("{0}")]
    Usage(String),
    /// A secret could not be read: fix the file or the variable.
    #[error("cannot read the secret from {path}: {source}; give a readable file (mode 0600)")]
    Secret {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Connecting, logging in or talking to a portal failed.
    #[error("{portal}{}: {source}{}", target.as_deref().map(|t| format!(" ({t})")).unwrap_or_default(), hint(source))]
    Portal {
        /// The portal.
        portal: String,
        /// The target, for a normal session.
        target: Option<String>,
        /// What went wrong.
        source: IscsiError,
    },
    /// The AoE interfaces could not be opened (raw sockets need root and
    /// existing interface names).
    #[error(
        "AoE on {interfaces}: {source}; run as root and name existing interfaces (--aoe IFACE)"
    )]
    Aoe {
        /// The interfaces named.
        interfaces: String,
        /// Why.
        source: std::io::Error,
    },
    /// A LUN answered a command with an error.
    #[error("{portal} ({target}) LUN {lun}: {what}")]
    Device {
        /// The portal.
        portal: String,
        /// The target.
        target: String,
        /// The LUN.
        lun: u64,
        /// What failed.
        what: String,
    },
}

/// What to do about a login failure, appended to its message.
fn hint(e: &IscsiError) -> &'static str {
    match e {
        IscsiError::Io(_) | IscsiError::Timeout(_) => {
            "; is the target running, and the portal (ADDR[:PORT]) right?"
        }
        IscsiError::Login(LoginError::AuthenticationFailed) => {
            "; check --chap-user and the secret (file or OPIE_CHAP_SECRET), or whether the target requires CHAP"
        }
        IscsiError::Login(LoginError::NotAuthorized) => {
            "; the target's access lists do not admit this initiator name (--initiator-name) or address"
        }
        IscsiError::Login(LoginError::TargetNotFound { .. }) => {
            "; list the target names with `opie initiator discover`"
        }
        IscsiError::Login(LoginError::TargetNotAuthenticated(_)) => {
            "; the target did not prove the mutual secret: check --mutual-user and its secret"
        }
        IscsiError::Login(LoginError::AuthMethodRefused(_)) => {
            "; the target wants CHAP: give --chap-user and a secret"
        }
        _ => "",
    }
}

impl CliError {
    /// The exit status this failure gives.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::Secret { .. } => EXIT_USAGE,
            CliError::Portal { source, .. } => match source {
                IscsiError::Login(
                    LoginError::AuthenticationFailed
                    | LoginError::NotAuthorized
                    | LoginError::TargetNotAuthenticated(_)
                    | LoginError::AuthMethodRefused(_)
                    | LoginError::Chap(_),
                ) => EXIT_REFUSED,
                IscsiError::Login(LoginError::TargetNotFound { .. }) => EXIT_NOT_FOUND,
                _ => EXIT_UNREACHABLE,
            },
            CliError::Device { .. } | CliError::Aoe { .. } => EXIT_UNREACHABLE,
        }
    }
}
