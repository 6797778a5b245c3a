//! Sense data (SPC-4 4.5): a key, an additional sense code pair, an optional
//! information field and an optional sense-key-specific field (the field
//! pointer that tells the initiator which CDB or parameter-list byte was
//! wrong, or a progress indication), in fixed or descriptor format, both
//! ways: built here ([`Sense::to_fixed`], [`Sense::to_descriptor`]) and read
//! back ([`Sense::parse`], in `parse`). How a block-device error becomes a
//! status and sense data, and back, is in `block_error`.

use bytes::Bytes;

mod block_error;
mod parse;

pub use block_error::{error_of, from_block_error, status_of};
pub use parse::ParsedSense;

/// Sense keys (SPC-4 4.5.6).
pub mod key {
    /// NO SENSE.
    pub const NO_SENSE: u8 = 0x0;
    /// RECOVERED ERROR.
    pub const RECOVERED_ERROR: u8 = 0x1;
    /// NOT READY.
    pub const NOT_READY: u8 = 0x2;
    /// MEDIUM ERROR.
    pub const MEDIUM_ERROR: u8 = 0x3;
    /// HARDWARE ERROR.
    pub const HARDWARE_ERROR: u8 = 0x4;
    /// ILLEGAL REQUEST.
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    /// UNIT ATTENTION.
    pub const UNIT_ATTENTION: u8 = 0x6;
    /// DATA PROTECT.
    pub const DATA_PROTECT: u8 = 0x7;
    /// BLANK CHECK.
    pub const BLANK_CHECK: u8 = 0x8;
    /// COPY ABORTED.
    pub const COPY_ABORTED: u8 = 0xA;
    /// ABORTED COMMAND.
    pub const ABORTED_COMMAND: u8 = 0xB;
    /// VOLUME OVERFLOW.
    pub const VOLUME_OVERFLOW: u8 = 0xD;
    /// MISCOMPARE.
    pub const MISCOMPARE: u8 = 0xE;
}

/// An additional sense code and qualifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Asc(pub u8, pub u8);

/// Additional sense codes used by this target (SPC-4 Annex D).
#[allow(missing_docs)]
impl Asc {
    pub const NONE: Asc = Asc(0x00, 0x00);
    pub const OPERATION_IN_PROGRESS: Asc = Asc(0x00, 0x16);
    pub const NOT_READY_TRANSITION: Asc = Asc(0x04, 0x0A);
    pub const NOT_READY_STANDBY: Asc = Asc(0x04, 0x0B);
    pub const NOT_READY_UNAVAILABLE: Asc = Asc(0x04, 0x0C);
    pub const NOT_READY_OFFLINE: Asc = Asc(0x04, 0x12);
    pub const SANITIZE_IN_PROGRESS: Asc = Asc(0x04, 0x1B);
    pub const NOT_READY_BECOMING_READY: Asc = Asc(0x04, 0x01);
    pub const LU_COMMUNICATION_TIMEOUT: Asc = Asc(0x08, 0x01);
    pub const UNREACHABLE_COPY_TARGET: Asc = Asc(0x08, 0x04);
    pub const WRITE_ERROR: Asc = Asc(0x0C, 0x00);
    pub const UNEXPECTED_UNSOLICITED_DATA: Asc = Asc(0x0C, 0x0C);
    pub const NOT_ENOUGH_UNSOLICITED_DATA: Asc = Asc(0x0C, 0x0D);
    pub const INVALID_FIELD_IN_CIU: Asc = Asc(0x0E, 0x03);
    pub const COPY_TARGET_NOT_REACHABLE: Asc = Asc(0x0D, 0x02);
    pub const UNRECOVERED_READ_ERROR: Asc = Asc(0x11, 0x00);
    pub const MISCOMPARE_DURING_VERIFY: Asc = Asc(0x1D, 0x00);
    pub const PARAMETER_LIST_LENGTH_ERROR: Asc = Asc(0x1A, 0x00);
    pub const INVALID_OPCODE: Asc = Asc(0x20, 0x00);
    pub const LBA_OUT_OF_RANGE: Asc = Asc(0x21, 0x00);
    pub const INVALID_FIELD_IN_CDB: Asc = Asc(0x24, 0x00);
    pub const LUN_NOT_SUPPORTED: Asc = Asc(0x25, 0x00);
    pub const INVALID_FIELD_IN_PARAM_LIST: Asc = Asc(0x26, 0x00);
    pub const INVALID_RELEASE_OF_PR: Asc = Asc(0x26, 0x04);
    pub const TOO_MANY_TARGET_DESCRIPTORS: Asc = Asc(0x26, 0x06);
    pub const UNSUPPORTED_TARGET_DESCRIPTOR: Asc = Asc(0x26, 0x07);
    pub const TOO_MANY_SEGMENT_DESCRIPTORS: Asc = Asc(0x26, 0x08);
    pub const UNSUPPORTED_SEGMENT_DESCRIPTOR: Asc = Asc(0x26, 0x09);
    pub const WRITE_PROTECTED: Asc = Asc(0x27, 0x00);
    pub const SPACE_ALLOCATION_FAILED: Asc = Asc(0x27, 0x07);
    pub const POWER_ON_RESET: Asc = Asc(0x29, 0x00);
    pub const BUS_DEVICE_RESET: Asc = Asc(0x29, 0x03);
    pub const I_T_NEXUS_LOSS: Asc = Asc(0x29, 0x07);
    pub const PARAMETERS_CHANGED: Asc = Asc(0x2A, 0x00);
    pub const MODE_PARAMETERS_CHANGED: Asc = Asc(0x2A, 0x01);
    pub const RESERVATIONS_PREEMPTED: Asc = Asc(0x2A, 0x03);
    pub const RESERVATIONS_RELEASED: Asc = Asc(0x2A, 0x04);
    pub const REGISTRATIONS_PREEMPTED: Asc = Asc(0x2A, 0x05);
    pub const ASYMMETRIC_ACCESS_STATE_CHANGED: Asc = Asc(0x2A, 0x06);
    pub const CAPACITY_DATA_CHANGED: Asc = Asc(0x2A, 0x09);
    pub const COMMANDS_CLEARED_BY_ANOTHER_INITIATOR: Asc = Asc(0x2F, 0x00);
    pub const SANITIZE_FAILED: Asc = Asc(0x31, 0x03);
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: Asc = Asc(0x39, 0x00);
    pub const MEDIUM_NOT_PRESENT: Asc = Asc(0x3A, 0x00);
    pub const REPORTED_LUNS_DATA_CHANGED: Asc = Asc(0x3F, 0x0E);
    pub const INTERNAL_TARGET_FAILURE: Asc = Asc(0x44, 0x00);
    pub const DATA_PHASE_ERROR: Asc = Asc(0x4B, 0x00);
    pub const TOO_MUCH_WRITE_DATA: Asc = Asc(0x4B, 0x02);
    pub const DATA_OFFSET_ERROR: Asc = Asc(0x4B, 0x05);
    pub const MEDIUM_REMOVAL_PREVENTED: Asc = Asc(0x53, 0x02);
    pub const INSUFFICIENT_REGISTRATION_RESOURCES: Asc = Asc(0x55, 0x04);
}

/// Sense-key-specific field pointer: which byte (and optionally bit) of the
/// CDB or of the parameter list was invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldPointer {
    /// True when the pointer addresses the CDB, false for the parameter list.
    pub in_cdb: bool,
    /// Byte offset.
    pub byte: u16,
    /// Bit number (0..=7), when known.
    pub bit: Option<u8>,
}

/// One sense datum, convertible to the 18-byte fixed format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sense {
    /// Sense key.
    pub key: u8,
    /// Additional sense code and qualifier.
    pub asc: Asc,
    /// INFORMATION field (VALID bit set when present).
    pub info: Option<u64>,
    /// COMMAND-SPECIFIC INFORMATION field.
    pub command_info: u32,
    /// Sense-key-specific field pointer.
    pub field: Option<FieldPointer>,
    /// Sense-key-specific progress indication (NOT READY), in 1/65536 units.
    pub progress: Option<u16>,
}

impl Sense {
    /// A sense datum with only a key and an additional sense code.
    pub fn new(key: u8, asc: Asc) -> Self {
        Sense {
            key,
            asc,
            info: None,
            command_info: 0,
            field: None,
            progress: None,
        }
    }

    /// ILLEGAL REQUEST with the given additional sense code.
    pub fn illegal(asc: Asc) -> Self {
        Self::new(key::ILLEGAL_REQUEST, asc)
    }

    /// ILLEGAL REQUEST, INVALID FIELD IN CDB pointing at `byte` (and `bit`).
    pub fn invalid_cdb(byte: u16, bit: Option<u8>) -> Self {
        Sense {
            field: Some(FieldPointer {
                in_cdb: true,
                byte,
                bit,
            }),
            ..Self::illegal(Asc::INVALID_FIELD_IN_CDB)
        }
    }

    /// ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST pointing at `byte`.
    pub fn invalid_param(byte: u16, bit: Option<u8>) -> Self {
        Sense {
            field: Some(FieldPointer {
                in_cdb: false,
                byte,
                bit,
            }),
            ..Self::illegal(Asc::INVALID_FIELD_IN_PARAM_LIST)
        }
    }

    /// ILLEGAL REQUEST with an additional sense code and a parameter-list pointer.
    pub fn param_error(asc: Asc, byte: u16) -> Self {
        Sense {
            field: Some(FieldPointer {
                in_cdb: false,
                byte,
                bit: None,
            }),
            ..Self::illegal(asc)
        }
    }

    /// ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE.
    pub fn invalid_opcode() -> Self {
        Sense {
            field: Some(FieldPointer {
                in_cdb: true,
                byte: 0,
                bit: None,
            }),
            ..Self::illegal(Asc::INVALID_OPCODE)
        }
    }

    /// ILLEGAL REQUEST, LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub fn lba_out_of_range() -> Self {
        Self::illegal(Asc::LBA_OUT_OF_RANGE)
    }

    /// ILLEGAL REQUEST, PARAMETER LIST LENGTH ERROR.
    pub fn param_list_length() -> Self {
        Self::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR)
    }

    /// DATA PROTECT, WRITE PROTECTED.
    pub fn write_protected() -> Self {
        Self::new(key::DATA_PROTECT, Asc::WRITE_PROTECTED)
    }

    /// MISCOMPARE, MISCOMPARE DURING VERIFY OPERATION at byte `offset`.
    pub fn miscompare(offset: u64) -> Self {
        Sense {
            info: Some(offset),
            ..Self::new(key::MISCOMPARE, Asc::MISCOMPARE_DURING_VERIFY)
        }
    }

    /// UNIT ATTENTION with the given condition.
    pub fn unit_attention(asc: Asc) -> Self {
        Self::new(key::UNIT_ATTENTION, asc)
    }

    /// Sets the INFORMATION field.
    pub fn with_info(mut self, info: u64) -> Self {
        self.info = Some(info);
        self
    }

    /// The 18-byte fixed-format sense data (response code 0x70).
    pub fn to_fixed(&self) -> [u8; 18] {
        let mut s = [0u8; 18];
        s[0] = 0x70;
        if let Some(info) = self.info {
            s[0] |= 0x80;
            // The fixed format holds 32 bits; larger values saturate (the
            // VALID bit then tells nothing more precise, as SPC-4 allows).
            let v = u32::try_from(info).unwrap_or(u32::MAX);
            s[3..7].copy_from_slice(&v.to_be_bytes());
        }
        s[2] = self.key & 0x0f;
        s[7] = 10;
        s[8..12].copy_from_slice(&self.command_info.to_be_bytes());
        s[12] = self.asc.0;
        s[13] = self.asc.1;
        if let Some(sks) = self.key_specific() {
            s[15..18].copy_from_slice(&sks);
        }
        s
    }

    /// The descriptor-format sense data (response code 0x72): the
    /// information, command-specific information and sense-key-specific
    /// descriptors, each only when it has something to say.
    pub fn to_descriptor(&self) -> Vec<u8> {
        let mut d = vec![0x72, self.key & 0x0f, self.asc.0, self.asc.1, 0, 0, 0, 0];
        if let Some(info) = self.info {
            d.extend_from_slice(&[0x00, 0x0A, 0x80, 0]);
            d.extend_from_slice(&info.to_be_bytes());
        }
        if self.command_info != 0 {
            d.extend_from_slice(&[0x01, 0x0A, 0, 0]);
            d.extend_from_slice(&u64::from(self.command_info).to_be_bytes());
        }
        if let Some(sks) = self.key_specific() {
            d.extend_from_slice(&[0x02, 0x06, 0, 0, sks[0], sks[1], sks[2], 0]);
        }
        d[7] = (d.len() - 8) as u8;
        d
    }

    /// The three bytes of the sense-key-specific field (SKSV set), if any.
    fn key_specific(&self) -> Option<[u8; 3]> {
        if let Some(f) = self.field {
            let mut b = 0x80 | if f.in_cdb { 0x40 } else { 0 };
            if let Some(bit) = f.bit {
                b |= 0x08 | (bit & 7);
            }
            let [hi, lo] = f.byte.to_be_bytes();
            Some([b, hi, lo])
        } else {
            self.progress.map(|p| {
                let [hi, lo] = p.to_be_bytes();
                [0x80, hi, lo]
            })
        }
    }

    /// Fixed-format sense as [`Bytes`].
    pub fn to_bytes(&self) -> Bytes {
        Bytes::copy_from_slice(&self.to_fixed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_format_with_field_pointer() {
        let s = Sense::invalid_cdb(2, Some(5)).to_fixed();
        assert_eq!(
            s,
            [0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0xCD, 0, 2]
        );
    }

    #[test]
    fn fixed_format_with_information() {
        let s = Sense::miscompare(513).to_fixed();
        assert_eq!(s[0], 0xF0);
        assert_eq!(s[2], 0x0E);
        assert_eq!(&s[3..7], &[0, 0, 2, 1]);
        assert_eq!((s[12], s[13]), (0x1D, 0));
        assert_eq!(s[15], 0);
    }

    #[test]
    fn descriptor_format_with_each_descriptor() {
        let s = Sense::invalid_cdb(2, Some(5)).to_descriptor();
        assert_eq!(
            s,
            [0x72, 5, 0x24, 0, 0, 0, 0, 8, 0x02, 0x06, 0, 0, 0xCD, 0, 2, 0]
        );
        let s = Sense {
            command_info: 9,
            ..Sense::new(key::MEDIUM_ERROR, Asc::UNRECOVERED_READ_ERROR).with_info(1 << 40)
        }
        .to_descriptor();
        assert_eq!(&s[..8], &[0x72, 3, 0x11, 0, 0, 0, 0, 24]);
        assert_eq!(&s[8..20], &[0, 0x0A, 0x80, 0, 0, 0, 1, 0, 0, 0, 0, 0]);
        assert_eq!(&s[20..32], &[1, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]);
    }
}
