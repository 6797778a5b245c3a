//! Block-device errors across SCSI, both ways: the status and sense data
//! with which this target reports a [`BlockError`] ([`status_of`]), and the
//! reading of a status and sense data back into one ([`error_of`]), as the
//! head's initiator does, so that every error keeps its [`ErrorClass`]
//! across the wire:
//!
//! | class | status, sense key, ASC/ASCQ |
//! | --- | --- |
//! | retry elsewhere | NOT READY, 04/0C (target port in unavailable state) |
//! | retry later | NOT READY, 04/01 (becoming ready) |
//! | outcome unknown | ABORTED COMMAND, 08/01 (logical unit communication time-out) |
//! | reservation conflict | status RESERVATION CONFLICT |
//! | medium | MEDIUM ERROR, 11/00 (read) or 0C/00 (write), the LBA as INFORMATION |
//! | failed | HARDWARE ERROR, 44/00 (internal target failure) |
//! | invalid | ILLEGAL REQUEST, 21/00 (out of range) or 24/00 (invalid field in CDB) |
//! | read-only | DATA PROTECT, 27/00 (write protected) |
//! | no space | DATA PROTECT, 27/07 (space allocation failed write protect) |
//!
//! The reading also takes what other targets send: the ALUA states, unit
//! attentions, BUSY and TASK SET FULL, deferred errors and the rest of the
//! sense keys, each by what the caller may do about it.

use blockdev::{BlockError, ErrorClass};

use super::{key, Asc, Sense};
use crate::status;

/// The status, and with CHECK CONDITION the sense data, that report `e` to
/// an initiator (see the module docs).
pub fn status_of(e: &BlockError) -> (u8, Option<Sense>) {
    use BlockError as E;
    let sense = match e {
        E::OutOfRange { .. } => Sense::lba_out_of_range(),
        E::Medium { lba } => {
            Sense::new(key::MEDIUM_ERROR, Asc::UNRECOVERED_READ_ERROR).with_info(*lba)
        }
        E::WriteFault { lba } => Sense::new(key::MEDIUM_ERROR, Asc::WRITE_ERROR).with_info(*lba),
        _ => match e.class() {
            ErrorClass::ReservationConflict => return (status::RESERVATION_CONFLICT, None),
            ErrorClass::RetryElsewhere => Sense::new(key::NOT_READY, Asc::NOT_READY_UNAVAILABLE),
            ErrorClass::RetryLater => Sense::new(key::NOT_READY, Asc::NOT_READY_BECOMING_READY),
            ErrorClass::OutcomeUnknown => {
                Sense::new(key::ABORTED_COMMAND, Asc::LU_COMMUNICATION_TIMEOUT)
            }
            ErrorClass::Medium => Sense::new(key::MEDIUM_ERROR, Asc::UNRECOVERED_READ_ERROR),
            ErrorClass::Failed => Sense::new(key::HARDWARE_ERROR, Asc::INTERNAL_TARGET_FAILURE),
            ErrorClass::Invalid => Sense::invalid_cdb(0, None),
            ErrorClass::ReadOnly => Sense::write_protected(),
            ErrorClass::NoSpace => Sense::new(key::DATA_PROTECT, Asc::SPACE_ALLOCATION_FAILED),
        },
    };
    (status::CHECK_CONDITION, Some(sense))
}

/// The sense data that reports `e` inside CHECK CONDITION (or COPY
/// ABORTED). A reservation conflict, which has a status of its own and no
/// sense data, reads as an internal target failure here.
pub fn from_block_error(e: &BlockError) -> Sense {
    status_of(e)
        .1
        .unwrap_or_else(|| Sense::new(key::HARDWARE_ERROR, Asc::INTERNAL_TARGET_FAILURE))
}

/// The outcome of a command from its status and sense data (either format,
/// empty when none came): `Ok` when it succeeded, else the error with the
/// class that says what the caller may do. `lba` is the command's first
/// block, named by a medium error whose sense data has no (or a saturated)
/// INFORMATION field.
///
/// A deferred error reports that an earlier write, already acknowledged,
/// was lost: the device has failed its caller, whatever the sense key.
pub fn error_of(status: u8, sense: &[u8], lba: u64) -> Result<(), BlockError> {
    match status {
        status::GOOD | status::CONDITION_MET => Ok(()),
        status::RESERVATION_CONFLICT => Err(BlockError::ReservationConflict),
        status::CHECK_CONDITION => match Sense::parse(sense) {
            None => Err(BlockError::Busy(
                "CHECK CONDITION without sense data".into(),
            )),
            Some(p) if p.deferred => Err(BlockError::Failed(format!(
                "deferred error: {}",
                describe(&p.sense)
            ))),
            Some(p) => sense_error(&p.sense, lba),
        },
        status::BUSY | status::TASK_SET_FULL | status::ACA_ACTIVE | status::TASK_ABORTED => {
            Err(BlockError::Busy(format!("status {status:#04x}")))
        }
        other => Err(BlockError::Failed(format!(
            "unexpected SCSI status {other:#04x}"
        ))),
    }
}

/// Key and additional sense code, for messages.
fn describe(s: &Sense) -> String {
    format!(
        "sense key {:#x}, ASC/ASCQ {:02x}/{:02x}",
        s.key, s.asc.0, s.asc.1
    )
}

/// The error a current CHECK CONDITION's sense data reports.
fn sense_error(s: &Sense, lba: u64) -> Result<(), BlockError> {
    use BlockError as E;
    let what = describe(s);
    let at = s.info.filter(|&i| i != u64::from(u32::MAX)).unwrap_or(lba);
    Err(match (s.key, s.asc.0, s.asc.1) {
        (key::RECOVERED_ERROR, ..) => return Ok(()),
        // ALUA standby, unavailable, offline: another port group may serve it.
        (key::NOT_READY, 0x04, 0x0B | 0x0C | 0x12) => E::PathDown(what),
        // Manual intervention required, medium not present.
        (key::NOT_READY, 0x04, 0x03) | (key::NOT_READY, 0x3A, _) => E::Failed(what),
        // Becoming ready, in transition, sanitize or format in progress; a
        // unit attention (the command was not performed).
        (key::NOT_READY | key::UNIT_ATTENTION | key::NO_SENSE, ..) => E::Busy(what),
        (key::MEDIUM_ERROR, 0x0C, _) => E::WriteFault { lba: at },
        (key::MEDIUM_ERROR | key::BLANK_CHECK, ..) => E::Medium { lba: at },
        // Protection information check failed: the data is bad.
        (key::ABORTED_COMMAND, 0x10, _) => E::Medium { lba: at },
        (key::ABORTED_COMMAND, 0x08, 0x01) => E::TimedOut(what),
        // Aborted by the target or a transport error: ended, not performed.
        (key::ABORTED_COMMAND, ..) => E::Busy(what),
        (key::DATA_PROTECT, 0x27, 0x07) => E::NoSpace,
        (key::DATA_PROTECT, ..) => E::ReadOnly,
        // This path no longer reaches the logical unit.
        (key::ILLEGAL_REQUEST, 0x25, _) => E::PathDown(what),
        (key::ILLEGAL_REQUEST, 0x20, 0x00) => E::Unsupported("operation code"),
        (key::ILLEGAL_REQUEST | key::COPY_ABORTED | key::VOLUME_OVERFLOW | key::MISCOMPARE, ..) => {
            E::Invalid(what)
        }
        // HARDWARE ERROR, vendor specific and reserved keys.
        _ => E::Failed(what),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The error read back from what reports `e`, in fixed and in
    /// descriptor format.
    fn round_trips(e: &BlockError, lba: u64) -> [BlockError; 2] {
        let (st, sense) = status_of(e);
        let fixed = sense
            .as_ref()
            .map(|s| s.to_fixed().to_vec())
            .unwrap_or_default();
        let desc = sense.as_ref().map(Sense::to_descriptor).unwrap_or_default();
        [fixed, desc].map(|b| error_of(st, &b, lba).expect_err("an error"))
    }

    #[test]
    fn every_error_keeps_its_class_across_the_wire() {
        for e in BlockError::examples() {
            for back in round_trips(&e, 3) {
                assert_eq!(back.class(), e.class(), "{e:?} came back as {back:?}");
            }
        }
    }

    proptest! {
        #[test]
        fn medium_errors_keep_their_lba(lba in any::<u64>(), write in any::<bool>()) {
            let e = if write {
                BlockError::WriteFault { lba }
            } else {
                BlockError::Medium { lba }
            };
            let [fixed, desc] = round_trips(&e, 3);
            // The fixed format holds 32 bits: a wider LBA is the command's.
            let fixed_lba = if lba < u64::from(u32::MAX) { lba } else { 3 };
            for (back, want) in [(fixed, fixed_lba), (desc, if lba == u64::from(u32::MAX) { 3 } else { lba })] {
                let got = match back {
                    BlockError::Medium { lba } if !write => lba,
                    BlockError::WriteFault { lba } if write => lba,
                    other => panic!("{other:?}"),
                };
                prop_assert_eq!(got, want);
            }
        }

        #[test]
        fn any_status_and_sense_read_cleanly(st in any::<u8>(),
                                             b in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = error_of(st, &b, 0);
        }
    }

    #[test]
    fn what_other_targets_send_reads_by_what_to_do() {
        let check = |k, asc: Asc| {
            let s = Sense::new(k, asc).to_fixed();
            error_of(status::CHECK_CONDITION, &s, 0).map_err(|e| e.class())
        };
        use ErrorClass as C;
        assert_eq!(error_of(status::GOOD, &[], 0).ok(), Some(()));
        assert_eq!(error_of(status::CONDITION_MET, &[], 0).ok(), Some(()));
        assert_eq!(check(key::RECOVERED_ERROR, Asc(0x17, 0x01)), Ok(()));
        for (k, asc, class) in [
            (key::NOT_READY, Asc::NOT_READY_STANDBY, C::RetryElsewhere),
            (key::NOT_READY, Asc::NOT_READY_OFFLINE, C::RetryElsewhere),
            (key::NOT_READY, Asc::NOT_READY_TRANSITION, C::RetryLater),
            (key::NOT_READY, Asc::SANITIZE_IN_PROGRESS, C::RetryLater),
            (key::NOT_READY, Asc::MEDIUM_NOT_PRESENT, C::Failed),
            (key::UNIT_ATTENTION, Asc::POWER_ON_RESET, C::RetryLater),
            (key::ABORTED_COMMAND, Asc::DATA_PHASE_ERROR, C::RetryLater),
            (key::ABORTED_COMMAND, Asc(0x10, 0x01), C::Medium),
            (
                key::ILLEGAL_REQUEST,
                Asc::LUN_NOT_SUPPORTED,
                C::RetryElsewhere,
            ),
            (key::ILLEGAL_REQUEST, Asc::INVALID_OPCODE, C::Invalid),
            (key::DATA_PROTECT, Asc(0x27, 0x02), C::ReadOnly),
            (key::HARDWARE_ERROR, Asc(0x3E, 0x03), C::Failed),
            (key::MISCOMPARE, Asc::MISCOMPARE_DURING_VERIFY, C::Invalid),
        ] {
            assert_eq!(check(k, asc), Err(class), "{k:#x} {asc:?}");
        }
        for st in [
            status::BUSY,
            status::TASK_SET_FULL,
            status::ACA_ACTIVE,
            status::TASK_ABORTED,
        ] {
            assert_eq!(error_of(st, &[], 0).unwrap_err().class(), C::RetryLater);
        }
        // CHECK CONDITION without (readable) sense: ended, retry.
        let e = error_of(status::CHECK_CONDITION, &[], 0).unwrap_err();
        assert_eq!(e.class(), C::RetryLater);
        // A deferred error: an acknowledged write is lost.
        let mut d = Sense::new(key::MEDIUM_ERROR, Asc::WRITE_ERROR).to_fixed();
        d[0] = 0x71;
        let e = error_of(status::CHECK_CONDITION, &d, 0).unwrap_err();
        assert_eq!(e.class(), C::Failed);
        assert_eq!(error_of(0x22, &[], 0).unwrap_err().class(), C::Failed);
    }
}
