//! The ATA taskfile registers an AoE ATA argument carries: command opcodes in
//! requests, status and error register bits in responses.
//!
//! Both roles read and write these: the initiator puts a command in the
//! command register and reads the outcome from the status and error
//! registers; the target does the reverse. What a target does with a command
//! (the emulation, IDENTIFY's content) is the target's business and lives
//! with it; [`crate::identify`] reads the IDENTIFY DEVICE page it answers.

/// IDENTIFY DEVICE.
pub const CMD_IDENTIFY: u8 = 0xEC;
/// READ SECTORS (LBA28).
pub const CMD_READ: u8 = 0x20;
/// READ SECTORS EXT (LBA48).
pub const CMD_READ_EXT: u8 = 0x24;
/// READ DMA (LBA28).
pub const CMD_READ_DMA: u8 = 0xC8;
/// READ DMA EXT (LBA48).
pub const CMD_READ_DMA_EXT: u8 = 0x25;
/// WRITE SECTORS (LBA28).
pub const CMD_WRITE: u8 = 0x30;
/// WRITE SECTORS EXT (LBA48).
pub const CMD_WRITE_EXT: u8 = 0x34;
/// WRITE DMA (LBA28).
pub const CMD_WRITE_DMA: u8 = 0xCA;
/// WRITE DMA EXT (LBA48).
pub const CMD_WRITE_DMA_EXT: u8 = 0x35;
/// FLUSH CACHE.
pub const CMD_FLUSH: u8 = 0xE7;
/// FLUSH CACHE EXT.
pub const CMD_FLUSH_EXT: u8 = 0xEA;
/// CHECK POWER MODE.
pub const CMD_CHECK_POWER: u8 = 0xE5;

/// Status register: busy (the other bits mean nothing).
pub const STATUS_BSY: u8 = 0x80;
/// Status register: device ready.
pub const STATUS_DRDY: u8 = 0x40;
/// Status register: device fault.
pub const STATUS_DF: u8 = 0x20;
/// Status register: data request.
pub const STATUS_DRQ: u8 = 0x08;
/// Status register: sense data available (ACS-3): the LBA field holds the
/// sense key, ASC and ASCQ (see [`crate::outcome`]).
pub const STATUS_SENSE: u8 = 0x02;
/// Status register: error (the error register says which).
pub const STATUS_ERR: u8 = 0x01;
/// Error register: interface CRC error (the transfer was corrupted).
pub const ERR_ICRC: u8 = 0x80;
/// Error register: media changed.
pub const ERR_MC: u8 = 0x20;
/// Error register: media change request.
pub const ERR_MCR: u8 = 0x08;
/// Error register: no media.
pub const ERR_NM: u8 = 0x02;
/// Error register: command aborted.
pub const ERR_ABRT: u8 = 0x04;
/// Error register: ID (address) not found.
pub const ERR_IDNF: u8 = 0x10;
/// Error register: uncorrectable data.
pub const ERR_UNC: u8 = 0x40;

/// Largest capacity LBA28 commands (and IDENTIFY words 60-61) can express.
pub const LBA28_LIMIT: u64 = 0x0FFF_FFFF;

/// ATA status and error register values of a completed command, and what
/// its LBA field says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AtaStatus {
    /// Status register.
    pub status: u8,
    /// Error register.
    pub error: u8,
    /// The LBA field of the reply: the sector that failed (with
    /// [`ERR_UNC`]) or the sense data (with [`STATUS_SENSE`]); None leaves
    /// the request's.
    pub lba: Option<u64>,
}

impl AtaStatus {
    /// Success.
    pub const OK: AtaStatus = AtaStatus {
        status: STATUS_DRDY,
        error: 0,
        lba: None,
    };
    /// Command aborted (unsupported command, invalid request).
    pub const ABORTED: AtaStatus = AtaStatus {
        status: STATUS_DRDY | STATUS_ERR,
        error: ERR_ABRT,
        lba: None,
    };
    /// Address outside the device.
    pub const ID_NOT_FOUND: AtaStatus = AtaStatus {
        status: STATUS_DRDY | STATUS_ERR,
        error: ERR_IDNF,
        lba: None,
    };
    /// Unrecoverable read error.
    pub const UNCORRECTABLE: AtaStatus = AtaStatus {
        status: STATUS_DRDY | STATUS_ERR,
        error: ERR_UNC,
        lba: None,
    };
    /// Device fault (the device failed for good).
    pub const DEVICE_FAULT: AtaStatus = AtaStatus {
        status: STATUS_DRDY | STATUS_DF | STATUS_ERR,
        error: ERR_ABRT,
        lba: None,
    };
}
