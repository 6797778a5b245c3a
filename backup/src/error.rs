//! The errors of the backup subsystem, each saying what the caller may do.

use std::ops::Range;

/// Everything a backup, restore, verify, prune or GC can fail with.
///
/// [`BackupError::retryable`] says whether running the same operation again
/// later may succeed (the store was unreachable) or whether a person must act
/// first (credentials, a corrupt chunk, a bad source).
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The store refused our credentials: fix the access key or secret; retrying will not help.
    #[error(
        "store refused the credentials ({0}): check the access key and secret in the secrets file"
    )]
    AuthRefused(String),
    /// The store could not be reached or kept failing after the retries: retry later.
    #[error("store unreachable after {attempts} attempts: {detail}")]
    StoreUnreachable {
        /// How many attempts were made.
        attempts: u32,
        /// The last error the store gave.
        detail: String,
    },
    /// Reading the source device failed: fix the device and run again.
    #[error("source read failed at volume bytes {}..{}: {source}", range.start, range.end)]
    SourceRead {
        /// The byte range that could not be read.
        range: Range<u64>,
        /// The device's error.
        #[source]
        source: blockdev::BlockError,
    },
    /// Writing the restore target failed.
    #[error("restore target write failed at volume bytes {}..{}: {source}", range.start, range.end)]
    TargetWrite {
        /// The byte range that could not be written.
        range: Range<u64>,
        /// The device's error.
        #[source]
        source: blockdev::BlockError,
    },
    /// Restore refused to write anything because some chunks are bad (see [`crate::VerifyReport`]).
    #[error("restore refused: {} chunk(s) bad, {} bytes unrestorable; nothing was written", .0.bad.len(), .0.bad_bytes())]
    RestoreRefused(crate::VerifyReport),
    /// The named backup does not exist (no manifest).
    #[error("no backup {volume}/{id} in the store")]
    NoSuchBackup {
        /// Volume name.
        volume: String,
        /// Backup id.
        id: String,
    },
    /// A manifest or index in the store cannot be parsed or does not match its digest.
    #[error("backup metadata {path} is invalid: {detail}")]
    BadMetadata {
        /// Store path of the object.
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// The request cannot be carried out as given (sizes, names, configuration).
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl BackupError {
    /// Whether running the same operation again later may succeed without anyone acting.
    pub fn retryable(&self) -> bool {
        matches!(self, BackupError::StoreUnreachable { .. })
    }
}

/// What is wrong with one chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkProblem {
    /// No object under the chunk's name.
    Missing,
    /// The stored blob's header or crc32c does not match.
    BadChecksum,
    /// The blob decoded, but its SHA-256 is not its name.
    WrongDigest,
    /// The blob cannot be decoded (bad magic, version, or zstd stream).
    Undecodable(String),
}

impl std::fmt::Display for ChunkProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChunkProblem::Missing => write!(f, "missing"),
            ChunkProblem::BadChecksum => write!(f, "corrupt (crc32c mismatch)"),
            ChunkProblem::WrongDigest => write!(f, "corrupt (SHA-256 mismatch)"),
            ChunkProblem::Undecodable(d) => write!(f, "undecodable ({d})"),
        }
    }
}

/// Result alias of the backup subsystem.
pub type Result<T> = std::result::Result<T, BackupError>;
