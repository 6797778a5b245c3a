use std::io;

/// Result of a block-device operation.
pub type Result<T> = std::result::Result<T, BlockError>;

/// Errors of the block-device layer. Upper layers map them onto their own
/// protocol's status (SCSI sense, ATA error register, RAID member state).
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
    /// The device refuses writes.
    #[error("device is read-only")]
    ReadOnly,
    /// Data could not be read back correctly (unrecoverable read error,
    /// failed checksum with no redundancy left).
    #[error("unrecovered read error at lba {lba}")]
    Medium {
        /// First block that could not be read.
        lba: u64,
    },
    /// A write could not be completed; the addressed blocks are in an unknown state.
    #[error("write fault at lba {lba}")]
    WriteFault {
        /// First block of the failed write.
        lba: u64,
    },
    /// The device (or the path to it) is gone, for now or for good.
    #[error("device offline: {0}")]
    Offline(String),
    /// The operation is not supported by this device.
    #[error("not supported: {0}")]
    Unsupported(&'static str),
    /// An operating-system I/O error from a backend.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

impl BlockError {
    /// Whether retrying the same request on another path or later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, BlockError::Offline(_))
            || matches!(self, BlockError::Io(e) if e.kind() == io::ErrorKind::Interrupted || e.kind() == io::ErrorKind::TimedOut)
    }
}
