//! What a transport asks of SCSI besides running commands: how long a CDB
//! is, how much data-out a write carries ([`crate::ScsiTarget::data_out_len`]),
//! and the status of a command the transport ends itself. So a transport
//! moves its PDUs and frames without parsing CDBs or building sense data.

use bytes::Bytes;

use crate::sense::{key, Asc, Sense};
use crate::{status, Response};

/// The length SAM-5 gives a CDB by the group code of its operation code
/// (SPC-4 4.2.5.1): 6, 10, 12 or 16 bytes, and 16 for the reserved and
/// vendor-specific groups and variable-length CDBs (a transport with a
/// 16-byte CDB field hands longer CDBs over with their additional bytes).
pub fn cdb_len(opcode: u8) -> usize {
    match opcode >> 5 {
        0 => 6,
        1 | 2 => 10,
        4 => 16,
        5 => 12,
        _ => 16,
    }
}

/// Why a transport ended a command itself, before or instead of the device
/// server. Each ends as CHECK CONDITION with the sense data SPC-4 defines for
/// it ([`Response::transport_fault`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportFault {
    /// Data-out the command did not solicit (ABORTED COMMAND, WRITE ERROR -
    /// UNEXPECTED UNSOLICITED DATA).
    UnexpectedUnsolicitedData,
    /// Less unsolicited data-out than the command announced (ABORTED
    /// COMMAND, WRITE ERROR - NOT ENOUGH UNSOLICITED DATA).
    NotEnoughUnsolicitedData,
    /// Data-out at an offset the transfer did not expect (ABORTED COMMAND,
    /// DATA OFFSET ERROR).
    DataOffset,
    /// More data-out than the transfer holds (ABORTED COMMAND, TOO MUCH
    /// WRITE DATA).
    TooMuchWriteData,
    /// Any other break of the data transfer's sequence (ABORTED COMMAND,
    /// DATA PHASE ERROR).
    DataPhase,
    /// The command would carry more data-out than the transport accepts
    /// for one command (ILLEGAL REQUEST, INVALID FIELD IN CDB).
    TransferTooLong,
    /// The command failed inside the target (HARDWARE ERROR, INTERNAL
    /// TARGET FAILURE).
    InternalFailure,
}

impl TransportFault {
    /// The sense data that reports it.
    pub fn sense(self) -> Sense {
        match self {
            TransportFault::UnexpectedUnsolicitedData => {
                Sense::new(key::ABORTED_COMMAND, Asc::UNEXPECTED_UNSOLICITED_DATA)
            }
            TransportFault::NotEnoughUnsolicitedData => {
                Sense::new(key::ABORTED_COMMAND, Asc::NOT_ENOUGH_UNSOLICITED_DATA)
            }
            TransportFault::DataOffset => Sense::new(key::ABORTED_COMMAND, Asc::DATA_OFFSET_ERROR),
            TransportFault::TooMuchWriteData => {
                Sense::new(key::ABORTED_COMMAND, Asc::TOO_MUCH_WRITE_DATA)
            }
            TransportFault::DataPhase => Sense::new(key::ABORTED_COMMAND, Asc::DATA_PHASE_ERROR),
            TransportFault::TransferTooLong => Sense::illegal(Asc::INVALID_FIELD_IN_CDB),
            TransportFault::InternalFailure => {
                Sense::new(key::HARDWARE_ERROR, Asc::INTERNAL_TARGET_FAILURE)
            }
        }
    }
}

impl Response {
    /// CHECK CONDITION with `sense`, no data.
    pub fn check_condition(sense: &Sense) -> Response {
        Response {
            status: status::CHECK_CONDITION,
            sense: Some(sense.to_bytes()),
            data_in: Bytes::new(),
            data_in_file: None,
        }
    }

    /// The response to a command the transport ended itself.
    pub fn transport_fault(fault: TransportFault) -> Response {
        Response::check_condition(&fault.sense())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdb_lengths_follow_the_group_code() {
        for (op, len) in [
            (0x00, 6),
            (0x0a, 6),
            (0x28, 10),
            (0x5f, 10),
            (0x7f, 16),
            (0x88, 16),
            (0xa0, 12),
            (0xc0, 16),
            (0xe0, 16),
        ] {
            assert_eq!(cdb_len(op), len, "opcode {op:#04x}");
        }
    }

    #[test]
    fn transport_faults_are_fixed_format_check_conditions() {
        for (fault, k, asc, ascq) in [
            (TransportFault::UnexpectedUnsolicitedData, 0x0b, 0x0c, 0x0c),
            (TransportFault::NotEnoughUnsolicitedData, 0x0b, 0x0c, 0x0d),
            (TransportFault::DataOffset, 0x0b, 0x4b, 0x05),
            (TransportFault::TooMuchWriteData, 0x0b, 0x4b, 0x02),
            (TransportFault::DataPhase, 0x0b, 0x4b, 0x00),
            (TransportFault::TransferTooLong, 0x05, 0x24, 0x00),
            (TransportFault::InternalFailure, 0x04, 0x44, 0x00),
        ] {
            let r = Response::transport_fault(fault);
            assert_eq!(r.status, status::CHECK_CONDITION);
            assert!(r.data_in.is_empty() && r.data_in_file.is_none());
            let mut want = [0u8; 18];
            want[0] = 0x70;
            want[2] = k;
            want[7] = 10;
            want[12] = asc;
            want[13] = ascq;
            assert_eq!(r.sense.as_deref(), Some(&want[..]), "{fault:?}");
        }
    }
}
