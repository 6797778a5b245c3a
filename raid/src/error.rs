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

/// A volume request's error as its caller sees it, classed by what the
/// caller may do ([`blockdev::ErrorClass`]).
impl From<RaidError> for BlockError {
    fn from(e: RaidError) -> Self {
        match e {
            RaidError::Request(b) => b,
            // No correct copy of these blocks: the volume has a bad block.
            RaidError::Unrecoverable { lba } => BlockError::Medium { lba },
            // A member failed under the request and was taken out; the
            // array serves on without it, so the request may be retried.
            RaidError::Member { .. } => BlockError::Busy(e.to_string()),
            // The configuration cannot serve the request (a journal too
            // small for its record): it fails however often it is tried.
            RaidError::Config(_) => BlockError::Invalid(e.to_string()),
            // Too many members are gone: the volume has failed for good.
            RaidError::Failed(_) | RaidError::Assembly(_) | RaidError::BadSuperblock(_) => {
                BlockError::Failed(e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use blockdev::ErrorClass;

    use super::*;

    fn class(e: RaidError) -> ErrorClass {
        BlockError::from(e).class()
    }

    #[test]
    fn a_volume_error_says_what_its_caller_may_do() {
        assert_eq!(
            class(RaidError::Failed("2 members failed".into())),
            ErrorClass::Failed
        );
        assert!(!BlockError::from(RaidError::Failed("x".into())).is_transient());
        assert_eq!(
            class(RaidError::Unrecoverable { lba: 7 }),
            ErrorClass::Medium
        );
        // A member that failed for good leaves a working volume behind.
        assert_eq!(
            class(RaidError::Member {
                slot: 1,
                source: BlockError::Failed("gone".into())
            }),
            ErrorClass::RetryLater
        );
        assert_eq!(
            class(RaidError::Request(BlockError::OutOfRange {
                lba: 9,
                blocks: 1,
                capacity: 9
            })),
            ErrorClass::Invalid
        );
        assert_eq!(
            class(RaidError::Config("journal too small".into())),
            ErrorClass::Invalid
        );
    }
}
