use std::io;

/// Result of a block-device operation.
pub type Result<T> = std::result::Result<T, BlockError>;

/// Errors of the block-device layer. Upper layers map them onto their own
/// protocol's status (SCSI sense, ATA error register, RAID member state) and
/// decide what to do by their [`ErrorClass`]: retry elsewhere, retry later,
/// repair from redundancy, or give up.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The request reaches past the end of the device.
    #[error("out of range: lba {lba} + {blocks} blocks exceeds capacity {capacity}")]
    OutOfRange {
        /// First block asked for.
        lba: u64,
        /// Number of blocks asked for.
        blocks: u64,
        /// Device capacity in blocks.
        capacity: u64,
    },
    /// A buffer is not a whole number of blocks.
    #[error("buffer of {len} bytes is not a multiple of the {block_size}-byte block size")]
    Misaligned {
        /// Buffer length in bytes.
        len: usize,
        /// Device block size.
        block_size: u32,
    },
    /// The request is malformed for this device in another way (too long a
    /// transfer, a field the device refuses).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The operation is not supported by this device.
    #[error("not supported: {0}")]
    Unsupported(&'static str),
    /// The device refuses writes.
    #[error("device is read-only")]
    ReadOnly,
    /// The device (or its backing store) has no space left for the write.
    #[error("no space left on the device")]
    NoSpace,
    /// Data could not be read back correctly (unrecovered read error, failed
    /// checksum with no redundancy left). Other blocks are unaffected.
    #[error("unrecovered read error at lba {lba}")]
    Medium {
        /// First block that could not be read.
        lba: u64,
    },
    /// A write could not be completed; the addressed blocks are in an unknown
    /// state, other blocks are unaffected.
    #[error("write fault at lba {lba}")]
    WriteFault {
        /// First block of the failed write.
        lba: u64,
    },
    /// Another initiator holds a reservation that excludes this request.
    #[error("reservation conflict")]
    ReservationConflict,
    /// The device is busy (a queue is full, it is becoming ready); the same
    /// request may succeed later on the same path.
    #[error("device busy: {0}")]
    Busy(String),
    /// The path or transport to the device is down and the request is known
    /// not to have been carried out (or to have been ended: its session is
    /// gone): it may be retried at once on another path.
    #[error("path down: {0}")]
    PathDown(String),
    /// No answer in time: the request may or may not have been carried out.
    /// Before a write is retried, the first attempt must be known unable to
    /// land any more (its session ended, its task aborted and answered).
    #[error("timed out: {0}")]
    TimedOut(String),
    /// The device has failed for good; no retry will help.
    #[error("device failed: {0}")]
    Failed(String),
    /// An operating-system I/O error from a backend; classified by its kind.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// What the caller of a failed request may do, the part of a [`BlockError`]
/// that RAID and multipath act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The path is down and the request was not carried out: retry on another
    /// path now.
    RetryElsewhere,
    /// Busy: retry the same request later, on any path.
    RetryLater,
    /// Timed out with an unknown outcome: make sure the attempt can no longer
    /// land, then retry.
    OutcomeUnknown,
    /// Another initiator's reservation excludes the request.
    ReservationConflict,
    /// Some blocks are bad (unreadable, or a write failed on them): repair
    /// them from redundancy; the device as a whole still works.
    Medium,
    /// The device failed for good.
    Failed,
    /// The request itself is wrong (out of range, misaligned, unsupported):
    /// the same request will fail everywhere.
    Invalid,
    /// The device is write-protected.
    ReadOnly,
    /// No space left.
    NoSpace,
}

impl ErrorClass {
    /// Whether the same request may succeed if retried (elsewhere or later).
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorClass::RetryElsewhere | ErrorClass::RetryLater | ErrorClass::OutcomeUnknown
        )
    }
}

impl BlockError {
    /// What the caller may do about this error.
    pub fn class(&self) -> ErrorClass {
        use BlockError as E;
        match self {
            E::OutOfRange { .. } | E::Misaligned { .. } | E::Invalid(_) | E::Unsupported(_) => {
                ErrorClass::Invalid
            }
            E::ReadOnly => ErrorClass::ReadOnly,
            E::NoSpace => ErrorClass::NoSpace,
            E::Medium { .. } | E::WriteFault { .. } => ErrorClass::Medium,
            E::ReservationConflict => ErrorClass::ReservationConflict,
            E::Busy(_) => ErrorClass::RetryLater,
            E::PathDown(_) => ErrorClass::RetryElsewhere,
            E::TimedOut(_) => ErrorClass::OutcomeUnknown,
            E::Failed(_) => ErrorClass::Failed,
            E::Io(e) => match e.kind() {
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => ErrorClass::NoSpace,
                io::ErrorKind::ReadOnlyFilesystem => ErrorClass::ReadOnly,
                io::ErrorKind::TimedOut => ErrorClass::OutcomeUnknown,
                io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => ErrorClass::RetryLater,
                io::ErrorKind::InvalidInput => ErrorClass::Invalid,
                _ => ErrorClass::Failed,
            },
        }
    }

    /// Whether retrying the same request on another path or later may succeed.
    pub fn is_transient(&self) -> bool {
        self.class().is_transient()
    }

    /// One error of every variant, and an I/O error of every kind that has
    /// a class of its own: for the tests of each layer that carries errors
    /// over a wire (every one must come back with its class). A new variant
    /// cannot be left out: the match below has no wildcard.
    pub fn examples() -> Vec<BlockError> {
        use BlockError as E;
        let mut all = vec![
            E::OutOfRange {
                lba: 9,
                blocks: 2,
                capacity: 10,
            },
            E::Misaligned {
                len: 3,
                block_size: 512,
            },
            E::Invalid("example".into()),
            E::Unsupported("example"),
            E::ReadOnly,
            E::NoSpace,
            E::Medium { lba: 7 },
            E::WriteFault { lba: 3 },
            E::ReservationConflict,
            E::Busy("example".into()),
            E::PathDown("example".into()),
            E::TimedOut("example".into()),
            E::Failed("example".into()),
        ];
        for kind in [
            io::ErrorKind::StorageFull,
            io::ErrorKind::QuotaExceeded,
            io::ErrorKind::ReadOnlyFilesystem,
            io::ErrorKind::TimedOut,
            io::ErrorKind::Interrupted,
            io::ErrorKind::WouldBlock,
            io::ErrorKind::InvalidInput,
            io::ErrorKind::Other,
        ] {
            all.push(E::Io(io::Error::from(kind)));
        }
        for e in &all {
            match e {
                E::OutOfRange { .. }
                | E::Misaligned { .. }
                | E::Invalid(_)
                | E::Unsupported(_)
                | E::ReadOnly
                | E::NoSpace
                | E::Medium { .. }
                | E::WriteFault { .. }
                | E::ReservationConflict
                | E::Busy(_)
                | E::PathDown(_)
                | E::TimedOut(_)
                | E::Failed(_)
                | E::Io(_) => {}
            }
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_say_what_the_caller_may_do() {
        assert_eq!(
            BlockError::PathDown("x".into()).class(),
            ErrorClass::RetryElsewhere
        );
        assert!(BlockError::TimedOut("x".into()).is_transient());
        assert!(!BlockError::Failed("x".into()).is_transient());
        assert_eq!(BlockError::Medium { lba: 3 }.class(), ErrorClass::Medium);
        assert_eq!(
            BlockError::Io(io::Error::from(io::ErrorKind::StorageFull)).class(),
            ErrorClass::NoSpace
        );
        assert_eq!(
            BlockError::Io(io::Error::other("eio")).class(),
            ErrorClass::Failed
        );
    }
}
