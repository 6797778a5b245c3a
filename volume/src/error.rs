//! The errors of the volume layer, by what the caller may do about them.

use blockdev::BlockError;

/// Result of a volume-manager operation.
pub type Result<T> = std::result::Result<T, VolumeError>;

/// Why a table copy on the device was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyFault {
    /// The copy does not start with the table magic: never written (or
    /// overwritten by something else).
    #[error("no table magic")]
    NoMagic,
    /// The magic is there but the checksum does not match: a torn or
    /// corrupted write.
    #[error("checksum mismatch")]
    BadChecksum,
    /// The checksum matches but a field is impossible (a bug or a table of a
    /// foreign layout).
    #[error("malformed: {0}")]
    Malformed(String),
    /// A format version this build does not read.
    #[error("format version {0} not supported")]
    Version(u32),
}

/// Errors of the volume manager. Each variant says what the caller may do:
/// fix the request (name, size, state), free space, repair or replace the
/// device, or act on the device error's own class.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The device holds no volume table (neither copy has the magic):
    /// format it first.
    #[error("no volume table on the device (format it first)")]
    Unformatted,
    /// Both copies of the table are unusable: nothing is guessed; the
    /// device needs an operator (restore or reformat with force).
    #[error("both copies of the volume table are unusable: copy 0: {0}; copy 1: {1}")]
    Corrupt(CopyFault, CopyFault),
    /// A copy was written by a newer format version: use a newer build.
    #[error("volume table format version {0} is not supported by this build")]
    UnsupportedVersion(u32),
    /// The table is valid but does not fit the device (another block size,
    /// extents past its end): the wrong device, or one that shrank.
    #[error("the volume table does not fit the device: {0}")]
    DeviceMismatch(String),
    /// `format` found a table already: pass `force` to destroy it.
    #[error("the device already holds a volume table (sequence {seq}, {volumes} volumes); format with force to destroy it")]
    AlreadyFormatted {
        /// Sequence number of the table found.
        seq: u64,
        /// Volumes it holds (0 if it could not be read).
        volumes: usize,
    },
    /// The allocation unit is zero, or the device is too small for the
    /// reserved area and one unit.
    #[error("invalid allocation unit: {0}")]
    InvalidUnit(String),
    /// A name that is not 1-64 of `a-z 0-9 - . _`.
    #[error("invalid volume name {0:?}: 1-64 of a-z 0-9 - . _")]
    InvalidName(String),
    /// A volume of that name exists already.
    #[error("volume {0:?} exists already")]
    Exists(String),
    /// No volume of that name.
    #[error("no volume {0:?}")]
    NotFound(String),
    /// The volume is open (exported, or held by a caller): close it first.
    #[error("volume {name:?} is open ({handles} handles)")]
    InUse {
        /// The volume.
        name: String,
        /// Open handles.
        handles: usize,
    },
    /// The volume is being deleted.
    #[error("volume {0:?} is being deleted")]
    Deleting(String),
    /// A size of zero, or a new size below the current one (volumes never shrink).
    #[error("invalid size: {0}")]
    InvalidSize(String),
    /// Not enough free space on the device.
    #[error("no space: {needed_blocks} blocks needed, {free_blocks} free")]
    NoSpace {
        /// Blocks the request needs (rounded up to the unit).
        needed_blocks: u64,
        /// Blocks free now.
        free_blocks: u64,
    },
    /// The table would not fit in its reserved copy (too many volumes or
    /// extents).
    #[error("the volume table is full ({0} bytes needed)")]
    TableFull(usize),
    /// The table was written but did not read back as written (a lost or
    /// misdirected write): the change is not committed; the device is
    /// suspect.
    #[error("the volume table did not read back as written")]
    CommitNotVerified,
    /// The device refuses writes.
    #[error("the device is read-only")]
    ReadOnly,
    /// A change would have produced an impossible table (a bug of this
    /// crate); nothing was written: report it.
    #[error("internal error, nothing written: {0}")]
    Bug(String),
    /// The device failed the I/O; its class says whether a retry may help.
    /// A table change that failed this way is not in effect in this
    /// process (the pool keeps the old table, and its next change rewrites
    /// the same copy), but the copy may have landed: a reopen after a crash
    /// may show either table, never a mix.
    #[error("device error: {0}")]
    Device(#[from] BlockError),
}
