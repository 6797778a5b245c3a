//! A SCSI command as the initiator sends it, and what comes back.

use bytes::Bytes;

/// Task attribute of a command (SAM-5; the ATTR field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TaskAttr {
    /// Untagged.
    Untagged,
    /// SIMPLE.
    #[default]
    Simple,
    /// ORDERED.
    Ordered,
    /// HEAD OF QUEUE.
    HeadOfQueue,
    /// ACA.
    Aca,
}

impl TaskAttr {
    /// The ATTR field value.
    pub fn bits(self) -> u8 {
        match self {
            TaskAttr::Untagged => 0,
            TaskAttr::Simple => 1,
            TaskAttr::Ordered => 2,
            TaskAttr::HeadOfQueue => 3,
            TaskAttr::Aca => 4,
        }
    }
}

/// One SCSI command: a CDB for a LUN, the data it writes and how much it
/// reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// LUN (a flat number).
    pub lun: u64,
    /// The CDB, at most 16 bytes.
    pub cdb: Vec<u8>,
    /// Data-out (empty for commands that write nothing).
    pub data_out: Bytes,
    /// Expected data-in length.
    pub data_in: u32,
    /// Task attribute.
    pub attr: TaskAttr,
}

impl Command {
    /// A command that transfers no data.
    pub fn new(lun: u64, cdb: &[u8]) -> Command {
        Command {
            lun,
            cdb: cdb.to_vec(),
            data_out: Bytes::new(),
            data_in: 0,
            attr: TaskAttr::Simple,
        }
    }

    /// A command that reads up to `len` bytes.
    pub fn read(lun: u64, cdb: &[u8], len: u32) -> Command {
        Command {
            data_in: len,
            ..Command::new(lun, cdb)
        }
    }

    /// A command that writes `data`.
    pub fn write(lun: u64, cdb: &[u8], data: impl Into<Bytes>) -> Command {
        Command {
            data_out: data.into(),
            ..Command::new(lun, cdb)
        }
    }
}

/// SCSI status CHECK CONDITION.
pub const CHECK_CONDITION: u8 = 0x02;
/// Sense key UNIT ATTENTION.
pub const UNIT_ATTENTION: u8 = 0x06;

/// What a SCSI command ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiResult {
    /// SCSI status (0 GOOD, 2 CHECK CONDITION, ...).
    pub status: u8,
    /// Sense data (without the iSCSI SenseLength field).
    pub sense: Bytes,
    /// The data-in received, at the offsets the target sent it to.
    pub data: Vec<u8>,
    /// Bytes of the expected transfer not transferred (underflow), or
    /// beyond it (overflow, negative).
    pub residual: i64,
}

impl ScsiResult {
    /// Whether the status is GOOD.
    pub fn is_good(&self) -> bool {
        self.status == 0
    }

    /// The sense key, from fixed (70h/71h) or descriptor (72h/73h) sense data.
    pub fn sense_key(&self) -> Option<u8> {
        match self.sense.first().map(|b| b & 0x7f) {
            Some(0x70 | 0x71) => self.sense.get(2).map(|k| k & 0x0f),
            Some(0x72 | 0x73) => self.sense.get(1).map(|k| k & 0x0f),
            _ => None,
        }
    }

    /// Whether the command met a unit attention (CHECK CONDITION, UNIT
    /// ATTENTION): a new nexus, a reset, a change the device reports once.
    pub fn is_unit_attention(&self) -> bool {
        self.status == CHECK_CONDITION && self.sense_key() == Some(UNIT_ATTENTION)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sense_keys_of_both_formats() {
        let r = |sense: &[u8]| ScsiResult {
            status: CHECK_CONDITION,
            sense: Bytes::copy_from_slice(sense),
            data: vec![],
            residual: 0,
        };
        assert!(r(&[0x70, 0, 0x06, 0, 0, 0, 0, 10]).is_unit_attention());
        assert_eq!(r(&[0x72, 0x05, 0x24, 0]).sense_key(), Some(5));
        assert_eq!(r(&[]).sense_key(), None);
        assert!(!r(&[0xf0, 0, 0x05]).is_unit_attention());
    }
}
