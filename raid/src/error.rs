//! Errors of the RAID engine.

use blockdev::BlockError;

/// Result of a RAID operation.
pub type Result<T> = std::result::Result<T, RaidError>;

/// What can go wrong assembling or running an array.
#[derive(Debug, thiserror::Error)]
pub enum RaidError {
    /// A member's I/O failed.
    #[error("member {slot}: {source}")]
    Member {
        /// Slot of the member.
        slot: u32,
        /// The device error.
        #[source]
        source: BlockError,
    },
    /// The volume-level request was invalid (range, alignment).
    #[error(transparent)]
    Request(BlockError),
    /// A superblock copy is not valid.
    #[error("bad superblock: {0}")]
    BadSuperblock(String),
    /// Assembly refused (foreign or stale members, too few members, dirty and degraded).
    #[error("cannot assemble: {0}")]
    Assembly(String),
    /// The configuration or requested change is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Data could not be read correctly and redundancy could not restore it.
    #[error("unrecoverable data at volume block {lba}")]
    Unrecoverable {
        /// First volume block affected.
        lba: u64,
    },
    /// Too many members are missing to serve the request.
    #[error("array failed: {0}")]
    Failed(String),
}

impl From<RaidError> for BlockError {
    fn from(e: RaidError) -> Self {
        match e {
            RaidError::Request(b) => b,
            RaidError::Unrecoverable { lba } => BlockError::Medium { lba },
            RaidError::Member { source, .. } => source,
            other => BlockError::Failed(other.to_string()),
        }
    }
}
