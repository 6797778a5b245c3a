//! The outcome of an ATA command over AoE, both ways: the reply with which
//! a target reports a [`BlockError`] ([`AtaOutcome::of_error`]) and the
//! reading of a reply back into one ([`AtaOutcome::result`]), so that every
//! error keeps its [`ErrorClass`] across the wire:
//!
//! | class | reply |
//! | --- | --- |
//! | retry elsewhere | AoE error 3, device unavailable |
//! | reservation conflict | AoE error 6, target reserved |
//! | invalid | ATA ERR and ABRT (IDNF for an address past the end) |
//! | medium | a read: ATA ERR and UNC, the failed sector in the LBA field; a write: ERR, ABRT and sense MEDIUM ERROR 0C/00 |
//! | failed | ATA DF and ERR, ABRT |
//! | retry later | ATA ERR, ABRT and sense NOT READY 04/01 |
//! | outcome unknown | ATA ERR, ABRT and sense ABORTED COMMAND 08/01 |
//! | read-only | ATA ERR, ABRT and sense DATA PROTECT 27/00 |
//! | no space | ATA ERR, ABRT and sense DATA PROTECT 27/07 |
//!
//! "Sense": the status register's SENSE DATA AVAILABLE bit (ACS-3) and the
//! sense key, ASC and ASCQ in bits 19:16, 15:8 and 7:0 of the LBA field,
//! where ACS's REQUEST SENSE DATA EXT returns them, with the same codes as
//! the SCSI side. ATA has no registers of its own for those classes; a host
//! that does not read the field (the Linux `aoe` driver) sees a failed
//! command, as it did before. The AoE errors make Linux retry until its
//! timeout, which is what both mean.
//!
//! The reading takes the registers other ATA devices set too: BSY, DF,
//! ICRC, the media bits.

use blockdev::{BlockError, ErrorClass};

use crate::ata::{
    AtaStatus, ERR_ABRT, ERR_ICRC, ERR_IDNF, ERR_MC, ERR_MCR, ERR_NM, ERR_UNC, STATUS_BSY,
    STATUS_DF, STATUS_DRDY, STATUS_DRQ, STATUS_ERR, STATUS_SENSE,
};
use crate::frame::{AoeErrorCode, AtaArg, Header, FLAG_ERROR};

/// What the reply to an ATA command says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtaOutcome {
    /// An ATA reply with these registers.
    Registers(AtaStatus),
    /// An AoE error reply (the header's Error flag and this code).
    Error(AoeErrorCode),
}

/// Sense key, ASC and ASCQ used here (SPC-4).
mod sense {
    pub const NOT_READY: (u8, u8, u8) = (0x2, 0x04, 0x01);
    pub const WRITE_ERROR: (u8, u8, u8) = (0x3, 0x0C, 0x00);
    pub const READ_ERROR: (u8, u8, u8) = (0x3, 0x11, 0x00);
    pub const TIMED_OUT: (u8, u8, u8) = (0xB, 0x08, 0x01);
    pub const WRITE_PROTECTED: (u8, u8, u8) = (0x7, 0x27, 0x00);
    pub const NO_SPACE: (u8, u8, u8) = (0x7, 0x27, 0x07);
}

/// ERR and ABRT with sense data in the LBA field.
fn with_sense((key, asc, ascq): (u8, u8, u8)) -> AtaOutcome {
    AtaOutcome::Registers(AtaStatus {
        status: STATUS_DRDY | STATUS_ERR | STATUS_SENSE,
        error: ERR_ABRT,
        lba: Some(u64::from(key & 0x0f) << 16 | u64::from(asc) << 8 | u64::from(ascq)),
    })
}

impl AtaOutcome {
    /// Success.
    pub const OK: AtaOutcome = AtaOutcome::Registers(AtaStatus::OK);

    /// The reply that reports `e` (see the module docs).
    pub fn of_error(e: &BlockError) -> AtaOutcome {
        match e {
            BlockError::OutOfRange { .. } => AtaOutcome::Registers(AtaStatus::ID_NOT_FOUND),
            BlockError::Medium { lba } => AtaOutcome::Registers(AtaStatus {
                lba: Some(*lba),
                ..AtaStatus::UNCORRECTABLE
            }),
            BlockError::WriteFault { .. } => with_sense(sense::WRITE_ERROR),
            _ => match e.class() {
                ErrorClass::RetryElsewhere => AtaOutcome::Error(AoeErrorCode::DeviceUnavailable),
                ErrorClass::ReservationConflict => AtaOutcome::Error(AoeErrorCode::TargetReserved),
                ErrorClass::Invalid => AtaOutcome::Registers(AtaStatus::ABORTED),
                ErrorClass::Failed => AtaOutcome::Registers(AtaStatus::DEVICE_FAULT),
                ErrorClass::RetryLater => with_sense(sense::NOT_READY),
                ErrorClass::OutcomeUnknown => with_sense(sense::TIMED_OUT),
                ErrorClass::Medium => with_sense(sense::READ_ERROR),
                ErrorClass::ReadOnly => with_sense(sense::WRITE_PROTECTED),
                ErrorClass::NoSpace => with_sense(sense::NO_SPACE),
            },
        }
    }

    /// The outcome `r` reports: success or [`AtaOutcome::of_error`].
    pub fn of_result<T>(r: &Result<T, BlockError>) -> AtaOutcome {
        r.as_ref()
            .map_or_else(AtaOutcome::of_error, |_| AtaOutcome::OK)
    }

    /// What the reply says happened to the command. For registers read from
    /// a reply, `lba` is the whole LBA field of its argument; `request_lba`
    /// is the command's first sector, named by a failed write.
    pub fn result(&self, request_lba: u64) -> Result<(), BlockError> {
        match *self {
            AtaOutcome::Error(code) => Err(aoe_error(code as u8)),
            AtaOutcome::Registers(st) => registers(st, request_lba),
        }
    }
}

/// What a reply to an ATA command (its header and argument) says happened
/// to the command whose first sector is `request_lba`.
pub fn reply_result(header: &Header, arg: &AtaArg, request_lba: u64) -> Result<(), BlockError> {
    if header.flags & FLAG_ERROR != 0 {
        return Err(aoe_error(header.error));
    }
    let st = AtaStatus {
        status: arg.cmd_status,
        error: arg.err_feature,
        lba: Some(arg.lba()),
    };
    AtaOutcome::Registers(st).result(request_lba)
}

/// The error an AoE error reply's code reports.
pub fn aoe_error(code: u8) -> BlockError {
    use AoeErrorCode as C;
    match code {
        c if c == C::DeviceUnavailable as u8 => {
            BlockError::PathDown("AoE: device unavailable".into())
        }
        c if c == C::TargetReserved as u8 => BlockError::ReservationConflict,
        c => BlockError::Invalid(format!("AoE error {c}")),
    }
}

/// The outcome ATA registers report.
fn registers(st: AtaStatus, request_lba: u64) -> Result<(), BlockError> {
    use BlockError as E;
    let (s, r, field) = (st.status, st.error, st.lba.unwrap_or(request_lba));
    if s & STATUS_BSY != 0 {
        return Err(E::Busy("ATA: busy".into()));
    }
    if s & (STATUS_ERR | STATUS_DF | STATUS_DRQ) == 0 {
        return Ok(());
    }
    let what = format!("ATA status {s:#04x}, error {r:#04x}");
    if s & STATUS_DF != 0 {
        return Err(E::Failed(what));
    }
    if s & STATUS_SENSE != 0 {
        let (key, asc, ascq) = ((field >> 16) as u8 & 0x0f, (field >> 8) as u8, field as u8);
        let from_sense = match (key, asc, ascq) {
            (0x7, 0x27, 0x07) => Some(E::NoSpace),
            (0x7, ..) => Some(E::ReadOnly),
            (0x3, 0x0C, _) => Some(E::WriteFault { lba: request_lba }),
            (0x3, ..) => Some(E::Medium { lba: request_lba }),
            (0xB, 0x08, 0x01) => Some(E::TimedOut(what.clone())),
            (0x2 | 0x6 | 0xB, ..) => Some(E::Busy(what.clone())),
            (0x5, ..) => Some(E::Invalid(what.clone())),
            (0x4, ..) => Some(E::Failed(what.clone())),
            _ => None,
        };
        if let Some(e) = from_sense {
            return Err(e);
        }
    }
    Err(if r & ERR_UNC != 0 {
        E::Medium { lba: field }
    } else if r & ERR_IDNF != 0 {
        E::Invalid(format!("{what}: address not found"))
    } else if r & ERR_ICRC != 0 {
        // The transfer was corrupted: what reached the medium is unknown.
        E::TimedOut(what)
    } else if r & (ERR_MC | ERR_MCR) != 0 {
        E::Busy(what)
    } else if r & ERR_NM != 0 {
        E::Failed(what)
    } else if r & ERR_ABRT != 0 {
        E::Invalid(what)
    } else {
        E::Failed(what)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The outcome as an initiator reads it off the wire: registers with the
    /// LBA field filled in (the request's when the target left it).
    fn on_the_wire(o: AtaOutcome, request_lba: u64) -> AtaOutcome {
        match o {
            AtaOutcome::Registers(st) => AtaOutcome::Registers(AtaStatus {
                lba: Some(st.lba.unwrap_or(request_lba)),
                ..st
            }),
            e => e,
        }
    }

    #[test]
    fn every_error_keeps_its_class_across_the_wire() {
        for e in BlockError::examples() {
            let back = on_the_wire(AtaOutcome::of_error(&e), 3)
                .result(3)
                .unwrap_err();
            assert_eq!(back.class(), e.class(), "{e:?} came back as {back:?}");
        }
        assert_eq!(on_the_wire(AtaOutcome::OK, 3).result(3).ok(), Some(()));
    }

    proptest! {
        #[test]
        fn medium_errors_keep_their_lba(lba in 0u64..1 << 48, req in 0u64..1 << 48) {
            let lba_of = |r: Result<(), BlockError>| match r {
                Err(BlockError::Medium { lba }) => Some(("read", lba)),
                Err(BlockError::WriteFault { lba }) => Some(("write", lba)),
                _ => None,
            };
            let read = on_the_wire(AtaOutcome::of_error(&BlockError::Medium { lba }), req);
            prop_assert_eq!(lba_of(read.result(req)), Some(("read", lba)));
            let write = on_the_wire(AtaOutcome::of_error(&BlockError::WriteFault { lba: req }), req);
            prop_assert_eq!(lba_of(write.result(req)), Some(("write", req)));
        }

        #[test]
        fn any_registers_read_cleanly(status: u8, error: u8, lba: u64) {
            let _ = AtaOutcome::Registers(AtaStatus { status, error, lba: Some(lba) }).result(0);
        }
    }

    #[test]
    fn what_other_devices_send_reads_by_what_to_do() {
        use ErrorClass as C;
        let regs = |status, error| {
            AtaOutcome::Registers(AtaStatus {
                status,
                error,
                lba: Some(0),
            })
            .result(0)
            .map_err(|e| e.class())
        };
        assert_eq!(regs(STATUS_DRDY, 0), Ok(()));
        assert_eq!(regs(STATUS_BSY, 0), Err(C::RetryLater));
        assert_eq!(regs(STATUS_DRDY | STATUS_DF, 0), Err(C::Failed));
        assert_eq!(
            regs(STATUS_ERR, ERR_ICRC | ERR_ABRT),
            Err(C::OutcomeUnknown)
        );
        assert_eq!(regs(STATUS_ERR, ERR_MC), Err(C::RetryLater));
        assert_eq!(regs(STATUS_ERR, ERR_NM), Err(C::Failed));
        assert_eq!(regs(STATUS_ERR, 0), Err(C::Failed));
        assert_eq!(regs(STATUS_ERR, ERR_ABRT), Err(C::Invalid));
        // Sense bits with a key this reading does not take: the registers.
        assert_eq!(regs(STATUS_ERR | STATUS_SENSE, ERR_ABRT), Err(C::Invalid));
        for code in [1, 2, 4, 5, 200] {
            assert_eq!(aoe_error(code).class(), C::Invalid);
        }
        assert_eq!(aoe_error(3).class(), C::RetryElsewhere);
        assert_eq!(aoe_error(6).class(), C::ReservationConflict);
    }
}
