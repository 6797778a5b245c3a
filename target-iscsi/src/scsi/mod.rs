//! SCSI target emulation (SPC-4 / SBC-4) over [`blockdev::BlockDevice`].
//!
//! The transport (iSCSI) hands complete commands in (CDB plus all data-out
//! already collected) and gets a complete [`Response`] back: status, sense data
//! and data-in. Everything SCSI lives here: the disk command set (sbc), the
//! primary commands (spc), persistent reservations (pr), ALUA (alua), unit
//! attentions and sense data. Nothing here knows about sockets or PDUs.

use bytes::Bytes;

/// One I_T nexus: an initiator port talking to a target port (for iSCSI, one
/// session). Persistent reservations, unit attentions and RESERVE/RELEASE are
/// tracked per nexus.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Nexus {
    /// Unique id of this nexus for the life of the process (e.g. a session counter).
    pub id: u64,
    /// iSCSI initiator name (the InitiatorName key).
    pub initiator_name: String,
    /// The session's ISID; with the initiator name it forms the initiator port
    /// TransportID `"<name>,i,0x<isid hex>"`.
    pub isid: [u8; 6],
    /// Relative target port identifier (1-based), one per target portal group.
    pub relative_port: u16,
    /// Target portal group tag of the port the session came through.
    pub tpgt: u16,
}

/// SAM task attribute of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TaskAttr {
    /// SIMPLE (the default).
    #[default]
    Simple,
    /// ORDERED.
    Ordered,
    /// HEAD OF QUEUE.
    HeadOfQueue,
    /// ACA.
    Aca,
}

/// A SCSI command as handed over by the transport.
#[derive(Debug, Clone)]
pub struct Command {
    /// Logical unit number (the 64-bit SAM LUN already decoded to a flat number).
    pub lun: u64,
    /// The CDB (6 to 16 bytes; longer with additional CDB AHS).
    pub cdb: Bytes,
    /// Data-out (write data), complete.
    pub data_out: Bytes,
    /// Expected data transfer length for data-in, from the transport header.
    pub expected_in: u32,
    /// Task tag (initiator task tag), for ABORT TASK matching and logs.
    pub tag: u32,
    /// Task attribute.
    pub attr: TaskAttr,
}

/// SCSI status byte values (SAM-5).
pub mod status {
    /// GOOD.
    pub const GOOD: u8 = 0x00;
    /// CHECK CONDITION.
    pub const CHECK_CONDITION: u8 = 0x02;
    /// CONDITION MET.
    pub const CONDITION_MET: u8 = 0x04;
    /// BUSY.
    pub const BUSY: u8 = 0x08;
    /// RESERVATION CONFLICT.
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    /// TASK SET FULL.
    pub const TASK_SET_FULL: u8 = 0x28;
    /// ACA ACTIVE.
    pub const ACA_ACTIVE: u8 = 0x30;
    /// TASK ABORTED.
    pub const TASK_ABORTED: u8 = 0x40;
}

/// The outcome of a command.
#[derive(Debug, Clone, Default)]
pub struct Response {
    /// SCSI status byte.
    pub status: u8,
    /// Fixed- or descriptor-format sense data, with CHECK CONDITION.
    pub sense: Option<Bytes>,
    /// Data-in; the transport trims it to the expected length and reports residuals.
    pub data_in: Bytes,
}

/// Task management functions the transport forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmfFunction {
    /// ABORT TASK (the transport aborts the task; this reports side effects).
    AbortTask {
        /// Tag of the task to abort.
        tag: u32,
    },
    /// ABORT TASK SET.
    AbortTaskSet,
    /// CLEAR TASK SET.
    ClearTaskSet,
    /// CLEAR ACA.
    ClearAca,
    /// LOGICAL UNIT RESET.
    LunReset,
    /// TARGET WARM RESET.
    TargetWarmReset,
    /// TARGET COLD RESET.
    TargetColdReset,
}
