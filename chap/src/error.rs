//! The one error type of the crate.

use std::path::PathBuf;

/// Everything that can go wrong in a CHAP exchange, in credential loading, or in
/// configuration.
///
/// Use [`ChapError::kind`] to tell an authentication failure (the peer does not
/// know the secret, or asked for something our policy refuses) from a protocol
/// error (the peer sent missing, duplicate or malformed keys), and
/// [`ChapError::login_status`] for the iSCSI Login Response status the target
/// should answer with.
///
/// No variant ever carries a secret, a challenge or a response: the messages are
/// safe to log at any level.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChapError {
    // ---- protocol errors: the peer broke the CHAP key exchange ----
    /// A key the current step requires was not sent.
    #[error("missing CHAP key {0}")]
    MissingKey(&'static str),
    /// A key was sent more than once in one step.
    #[error("CHAP key {0} sent more than once")]
    DuplicateKey(&'static str),
    /// A CHAP key was sent at a step where it has no meaning.
    #[error("CHAP key {0} not expected at this step")]
    UnexpectedKey(&'static str),
    /// A value could not be decoded or is out of range.
    #[error("malformed {key}: {reason}")]
    MalformedValue {
        /// The key whose value is bad.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// `step` was called after the exchange had already finished or failed.
    #[error("CHAP exchange already {0}")]
    Finished(&'static str),

    // ---- authentication failures: the peer could not prove who it is ----
    /// None of the offered CHAP_A algorithms is allowed here (includes an empty
    /// list, a list of unknown numbers, and a target answering `Reject`).
    #[error("no acceptable CHAP algorithm offered")]
    NoAcceptableAlgorithm,
    /// The peer chose an algorithm we did not offer.
    #[error("peer chose CHAP algorithm {0}, which was not offered")]
    AlgorithmNotOffered(u32),
    /// The CHAP_N user name is not known in this scope (target and initiator).
    #[error("unknown CHAP user {0:?}")]
    UnknownUser(String),
    /// The CHAP_R response does not match the expected one: wrong secret.
    #[error("CHAP response for user {0:?} does not match")]
    BadResponse(String),
    /// The initiator's mutual challenge equals the challenge we sent it: a
    /// reflection attack.
    #[error("mutual CHAP challenge reflects our own challenge")]
    Reflection,
    /// The mutual (target) secret equals the initiator's secret; RFC 7143
    /// section 9.2.1 forbids using one secret in both directions.
    #[error("the same CHAP secret would be used in both directions")]
    SameSecretBothWays,
    /// The initiator asked for mutual CHAP but no target credential is
    /// configured for this scope.
    #[error("mutual CHAP requested but no target credential is configured")]
    MutualNotConfigured,
    /// We required mutual CHAP (responder side) and the peer did not answer our
    /// challenge, or answered with an unexpected name.
    #[error("target failed mutual authentication: {0}")]
    TargetNotAuthenticated(&'static str),

    // ---- local configuration and secrets files ----
    /// The local configuration is unusable (for example an empty allow-list).
    #[error("CHAP configuration: {0}")]
    Config(String),
    /// A secrets file could not be read.
    #[error("reading secrets file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A secrets file is not valid TOML or does not match the schema. The TOML
    /// parser's message is not passed through since it may quote file content.
    #[error("parsing secrets file {path}: {reason}")]
    Parse {
        /// The file (or `<string>`).
        path: PathBuf,
        /// What is wrong, without quoting the file.
        reason: String,
    },
    /// A secrets file is readable by group or others and strict mode is on.
    #[error("secrets file {path} has mode {mode:04o}: readable by group or others (chmod 600)")]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// The two classes of exchange failure, plus local trouble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The peer did not prove its identity or our policy refuses it. The iSCSI
    /// target answers status class 0x02, detail 0x01 (authentication failure).
    Authentication,
    /// The peer violated the CHAP key exchange. The iSCSI target answers
    /// status class 0x02 with detail 0x07 (missing parameter) or 0x00
    /// (initiator error).
    Protocol,
    /// Local configuration or secrets file problem; not the peer's fault.
    Local,
}

impl ChapError {
    /// Whether this is an authentication failure, a protocol error, or a local
    /// problem.
    pub fn kind(&self) -> ErrorKind {
        use ChapError::*;
        match self {
            MissingKey(_)
            | DuplicateKey(_)
            | UnexpectedKey(_)
            | MalformedValue { .. }
            | Finished(_) => ErrorKind::Protocol,
            NoAcceptableAlgorithm
            | AlgorithmNotOffered(_)
            | UnknownUser(_)
            | BadResponse(_)
            | Reflection
            | SameSecretBothWays
            | MutualNotConfigured
            | TargetNotAuthenticated(_) => ErrorKind::Authentication,
            Config(_) | Io { .. } | Parse { .. } | InsecurePermissions { .. } => ErrorKind::Local,
        }
    }

    /// The iSCSI Login Response `(status class, status detail)` a target
    /// should send for this error (RFC 7143 section 11.13.5).
    ///
    /// Authentication failures all map to `(0x02, 0x01)`, so the initiator
    /// cannot tell an unknown user from a wrong secret. Local problems map to
    /// `(0x03, 0x00)` (target error).
    pub fn login_status(&self) -> (u8, u8) {
        match self.kind() {
            ErrorKind::Authentication => (0x02, 0x01),
            ErrorKind::Protocol => match self {
                ChapError::MissingKey(_) => (0x02, 0x07),
                _ => (0x02, 0x00),
            },
            ErrorKind::Local => (0x03, 0x00),
        }
    }

    pub(crate) fn malformed(key: &'static str, reason: impl Into<String>) -> Self {
        ChapError::MalformedValue {
            key,
            reason: reason.into(),
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = ChapError> = std::result::Result<T, E>;
