//! The iSCSI PDU codec (RFC 7143 §11): the 48-byte Basic Header Segment of
//! every opcode, additional header segments and the framing arithmetic
//! (padding, digests, lengths).
//!
//! Decoding is total: any 48 bytes either decode to a typed [`Bhs`] or give a
//! [`PduError`]; nothing here panics on input. Reserved fields are ignored on
//! decode and written as zero on encode, so `decode(encode(x)) == x` for every
//! typed header.

use bytes::Bytes;

/// Length of the Basic Header Segment.
pub const BHS_LEN: usize = 48;

/// Errors of the PDU codec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PduError {
    /// The opcode is not one RFC 7143 defines for this direction.
    #[error("unknown opcode {0:#04x}")]
    UnknownOpcode(u8),
    /// A field holds a value the RFC forbids.
    #[error("invalid field: {0}")]
    InvalidField(&'static str),
}

/// Opcodes (the low six bits of byte 0).
pub mod opcode {
    /// NOP-Out.
    pub const NOP_OUT: u8 = 0x00;
    /// SCSI Command.
    pub const SCSI_COMMAND: u8 = 0x01;
    /// SCSI Task Management Function Request.
    pub const TMF_REQUEST: u8 = 0x02;
    /// Login Request.
    pub const LOGIN_REQUEST: u8 = 0x03;
    /// Text Request.
    pub const TEXT_REQUEST: u8 = 0x04;
    /// SCSI Data-Out.
    pub const DATA_OUT: u8 = 0x05;
    /// Logout Request.
    pub const LOGOUT_REQUEST: u8 = 0x06;
    /// SNACK Request.
    pub const SNACK: u8 = 0x10;
    /// NOP-In.
    pub const NOP_IN: u8 = 0x20;
    /// SCSI Response.
    pub const SCSI_RESPONSE: u8 = 0x21;
    /// SCSI Task Management Function Response.
    pub const TMF_RESPONSE: u8 = 0x22;
    /// Login Response.
    pub const LOGIN_RESPONSE: u8 = 0x23;
    /// Text Response.
    pub const TEXT_RESPONSE: u8 = 0x24;
    /// SCSI Data-In.
    pub const DATA_IN: u8 = 0x25;
    /// Logout Response.
    pub const LOGOUT_RESPONSE: u8 = 0x26;
    /// Ready To Transfer.
    pub const R2T: u8 = 0x31;
    /// Asynchronous Message.
    pub const ASYNC: u8 = 0x32;
    /// Reject.
    pub const REJECT: u8 = 0x3f;
}

/// Reject reasons (RFC 7143 §11.17.1).
pub mod reject {
    /// Data (payload) digest error.
    pub const DATA_DIGEST_ERROR: u8 = 0x02;
    /// SNACK Reject.
    pub const SNACK_REJECT: u8 = 0x03;
    /// Protocol error (e.g. SNACK for a status already acknowledged).
    pub const PROTOCOL_ERROR: u8 = 0x04;
    /// Command not supported.
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x05;
    /// Immediate command reject: too many immediate commands.
    pub const IMMEDIATE_COMMAND_REJECT: u8 = 0x06;
    /// Task in progress.
    pub const TASK_IN_PROGRESS: u8 = 0x07;
    /// Invalid data ack.
    pub const INVALID_DATA_ACK: u8 = 0x08;
    /// Invalid PDU field.
    pub const INVALID_PDU_FIELD: u8 = 0x09;
    /// Long op reject: out of resources.
    pub const LONG_OP_REJECT: u8 = 0x0a;
    /// Waiting for Logout.
    pub const WAITING_FOR_LOGOUT: u8 = 0x0c;
}

/// The reserved "no tag" value of ITT and TTT.
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// Login stages (CSG/NSG values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// SecurityNegotiation (0).
    Security,
    /// LoginOperationalNegotiation (1).
    Operational,
    /// FullFeaturePhase (3).
    FullFeature,
}

impl Stage {
    fn from_bits(b: u8) -> Result<Stage, PduError> {
        match b & 3 {
            0 => Ok(Stage::Security),
            1 => Ok(Stage::Operational),
            3 => Ok(Stage::FullFeature),
            _ => Err(PduError::InvalidField("login stage 2 is reserved")),
        }
    }
    fn bits(self) -> u8 {
        match self {
            Stage::Security => 0,
            Stage::Operational => 1,
            Stage::FullFeature => 3,
        }
    }
}

/// NOP-Out (§11.18).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NopOut {
    /// Immediate delivery.
    pub immediate: bool,
    /// LUN field (raw).
    pub lun: u64,
    /// Initiator task tag (0xffffffff: no response wanted).
    pub itt: u32,
    /// Target transfer tag (echo of a NOP-In's, or 0xffffffff).
    pub ttt: u32,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
}

/// SCSI Command (§11.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScsiCommand {
    /// Immediate delivery.
    pub immediate: bool,
    /// F: no unsolicited Data-Out PDUs follow.
    pub final_: bool,
    /// R: data-in expected.
    pub read: bool,
    /// W: data-out expected.
    pub write: bool,
    /// Task attribute (3 bits).
    pub attr: u8,
    /// LUN field (raw).
    pub lun: u64,
    /// Initiator task tag.
    pub itt: u32,
    /// Expected Data Transfer Length.
    pub edtl: u32,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// The first 16 bytes of the CDB.
    pub cdb: [u8; 16],
}

/// Task Management Function Request (§11.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TmfRequest {
    /// Immediate delivery.
    pub immediate: bool,
    /// Function code (7 bits).
    pub function: u8,
    /// LUN field (raw).
    pub lun: u64,
    /// Initiator task tag of this request.
    pub itt: u32,
    /// Referenced task tag (ABORT TASK).
    pub rtt: u32,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// RefCmdSN.
    pub ref_cmd_sn: u32,
    /// ExpDataSN.
    pub exp_data_sn: u32,
}

/// Login Request (§11.12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginRequest {
    /// T: transit to `nsg`.
    pub transit: bool,
    /// C: text continues in the next PDU.
    pub cont: bool,
    /// Current stage.
    pub csg: Stage,
    /// Next stage.
    pub nsg: Stage,
    /// Version-max.
    pub version_max: u8,
    /// Version-min.
    pub version_min: u8,
    /// ISID.
    pub isid: [u8; 6],
    /// TSIH.
    pub tsih: u16,
    /// Initiator task tag.
    pub itt: u32,
    /// Connection id.
    pub cid: u16,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
}

/// Text Request (§11.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TextRequest {
    /// Immediate delivery.
    pub immediate: bool,
    /// F: last PDU of the request.
    pub final_: bool,
    /// C: text continues.
    pub cont: bool,
    /// LUN field (raw).
    pub lun: u64,
    /// Initiator task tag.
    pub itt: u32,
    /// Target transfer tag (continuation) or 0xffffffff.
    pub ttt: u32,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
}

/// SCSI Data-Out (§11.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DataOut {
    /// F: last PDU of the sequence.
    pub final_: bool,
    /// LUN field (raw).
    pub lun: u64,
    /// Initiator task tag.
    pub itt: u32,
    /// Target transfer tag (of the R2T) or 0xffffffff (unsolicited).
    pub ttt: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// DataSN.
    pub data_sn: u32,
    /// Buffer offset.
    pub buffer_offset: u32,
}

/// Logout Request (§11.14).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogoutRequest {
    /// Immediate delivery.
    pub immediate: bool,
    /// Reason code (0 close session, 1 close connection, 2 remove for recovery).
    pub reason: u8,
    /// Initiator task tag.
    pub itt: u32,
    /// Connection id (reasons 1 and 2).
    pub cid: u16,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
}

/// SNACK Request (§11.16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Snack {
    /// Type (4 bits).
    pub kind: u8,
    /// LUN field (raw).
    pub lun: u64,
    /// Initiator task tag.
    pub itt: u32,
    /// Target transfer tag.
    pub ttt: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// BegRun.
    pub beg_run: u32,
    /// RunLength.
    pub run_length: u32,
}

/// The sequence numbers every target-to-initiator status-bearing PDU carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sns {
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
}

/// NOP-In (§11.19).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NopIn {
    /// LUN field (raw).
    pub lun: u64,
    /// Initiator task tag (echo) or 0xffffffff (target ping).
    pub itt: u32,
    /// Target transfer tag (target ping wanting an answer) or 0xffffffff.
    pub ttt: u32,
    /// Sequence numbers.
    pub sns: Sns,
}

/// SCSI Response (§11.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScsiResponse {
    /// o: bidirectional read residual overflow.
    pub bidi_overflow: bool,
    /// u: bidirectional read residual underflow.
    pub bidi_underflow: bool,
    /// O: residual overflow.
    pub overflow: bool,
    /// U: residual underflow.
    pub underflow: bool,
    /// Response (0 command completed at target).
    pub response: u8,
    /// SCSI status.
    pub status: u8,
    /// Initiator task tag.
    pub itt: u32,
    /// SNACK tag.
    pub snack_tag: u32,
    /// Sequence numbers.
    pub sns: Sns,
    /// ExpDataSN.
    pub exp_data_sn: u32,
    /// Bidirectional read residual count.
    pub bidi_residual: u32,
    /// Residual count.
    pub residual: u32,
}

/// Task Management Function Response (§11.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TmfResponse {
    /// Response code.
    pub response: u8,
    /// Initiator task tag.
    pub itt: u32,
    /// Sequence numbers.
    pub sns: Sns,
}

/// Login Response (§11.13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginResponse {
    /// T: transit.
    pub transit: bool,
    /// C: text continues.
    pub cont: bool,
    /// Current stage.
    pub csg: Stage,
    /// Next stage.
    pub nsg: Stage,
    /// Version-max.
    pub version_max: u8,
    /// Version-active.
    pub version_active: u8,
    /// ISID (echo).
    pub isid: [u8; 6],
    /// TSIH.
    pub tsih: u16,
    /// Initiator task tag.
    pub itt: u32,
    /// Sequence numbers.
    pub sns: Sns,
    /// Status-Class.
    pub status_class: u8,
    /// Status-Detail.
    pub status_detail: u8,
}

/// Text Response (§11.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TextResponse {
    /// F: last response PDU.
    pub final_: bool,
    /// C: text continues.
    pub cont: bool,
    /// LUN field (raw).
    pub lun: u64,
    /// Initiator task tag.
    pub itt: u32,
    /// Target transfer tag.
    pub ttt: u32,
    /// Sequence numbers.
    pub sns: Sns,
}

/// SCSI Data-In (§11.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DataIn {
    /// F: last PDU of the sequence.
    pub final_: bool,
    /// A: acknowledge requested (ERL > 0).
    pub ack: bool,
    /// O: residual overflow (with S).
    pub overflow: bool,
    /// U: residual underflow (with S).
    pub underflow: bool,
    /// S: status is in this PDU.
    pub status_present: bool,
    /// SCSI status (with S).
    pub status: u8,
    /// LUN field (raw).
    pub lun: u64,
    /// Initiator task tag.
    pub itt: u32,
    /// Target transfer tag.
    pub ttt: u32,
    /// Sequence numbers (StatSN only meaningful with S).
    pub sns: Sns,
    /// DataSN.
    pub data_sn: u32,
    /// Buffer offset.
    pub buffer_offset: u32,
    /// Residual count (with S).
    pub residual: u32,
}

/// Logout Response (§11.15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogoutResponse {
    /// Response code.
    pub response: u8,
    /// Initiator task tag.
    pub itt: u32,
    /// Sequence numbers.
    pub sns: Sns,
    /// Time2Wait.
    pub time2wait: u16,
    /// Time2Retain.
    pub time2retain: u16,
}

/// Ready To Transfer (§11.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct R2t {
    /// LUN field (raw).
    pub lun: u64,
    /// Initiator task tag.
    pub itt: u32,
    /// Target transfer tag.
    pub ttt: u32,
    /// Sequence numbers (StatSN is not advanced by an R2T).
    pub sns: Sns,
    /// R2TSN.
    pub r2t_sn: u32,
    /// Buffer offset.
    pub buffer_offset: u32,
    /// Desired data transfer length.
    pub desired_length: u32,
}

/// Asynchronous Message (§11.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AsyncMessage {
    /// LUN field (raw).
    pub lun: u64,
    /// Sequence numbers.
    pub sns: Sns,
    /// AsyncEvent.
    pub event: u8,
    /// AsyncVCode.
    pub vcode: u8,
    /// Parameter1..3.
    pub params: [u16; 3],
}

/// Reject (§11.17).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reject {
    /// Reason code.
    pub reason: u8,
    /// Sequence numbers.
    pub sns: Sns,
    /// DataSN/R2TSN (when rejecting a data PDU).
    pub data_sn: u32,
}

/// A typed Basic Header Segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Bhs {
    NopOut(NopOut),
    ScsiCommand(ScsiCommand),
    TmfRequest(TmfRequest),
    LoginRequest(LoginRequest),
    TextRequest(TextRequest),
    DataOut(DataOut),
    LogoutRequest(LogoutRequest),
    Snack(Snack),
    NopIn(NopIn),
    ScsiResponse(ScsiResponse),
    TmfResponse(TmfResponse),
    LoginResponse(LoginResponse),
    TextResponse(TextResponse),
    DataIn(DataIn),
    LogoutResponse(LogoutResponse),
    R2t(R2t),
    AsyncMessage(AsyncMessage),
    Reject(Reject),
}

/// The framing fields of a BHS: how many bytes follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Framing {
    /// TotalAHSLength in bytes (a multiple of 4).
    pub ahs_len: usize,
    /// DataSegmentLength in bytes (without padding).
    pub data_len: usize,
}

impl Framing {
    /// Reads the framing fields of a raw BHS.
    pub fn of(raw: &[u8; BHS_LEN]) -> Framing {
        Framing {
            ahs_len: usize::from(raw[4]) * 4,
            data_len: (usize::from(raw[5]) << 16)
                | (usize::from(raw[6]) << 8)
                | usize::from(raw[7]),
        }
    }
}

/// Bytes of padding after a data segment of `len` bytes.
pub fn pad_len(len: usize) -> usize {
    (4 - len % 4) % 4
}

fn u16_at(b: &[u8; BHS_LEN], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8; BHS_LEN], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8; BHS_LEN], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}
fn put16(b: &mut [u8; BHS_LEN], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}
fn put32(b: &mut [u8; BHS_LEN], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
fn put64(b: &mut [u8; BHS_LEN], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}
fn sns_at(b: &[u8; BHS_LEN]) -> Sns {
    Sns {
        stat_sn: u32_at(b, 24),
        exp_cmd_sn: u32_at(b, 28),
        max_cmd_sn: u32_at(b, 32),
    }
}
fn put_sns(b: &mut [u8; BHS_LEN], s: &Sns) {
    put32(b, 24, s.stat_sn);
    put32(b, 28, s.exp_cmd_sn);
    put32(b, 32, s.max_cmd_sn);
}
fn bit(b: u8, mask: u8) -> bool {
    b & mask != 0
}
fn flag(v: bool, mask: u8) -> u8 {
    if v {
        mask
    } else {
        0
    }
}

impl Bhs {
    /// The opcode of this header.
    pub fn opcode(&self) -> u8 {
        use opcode::*;
        match self {
            Bhs::NopOut(_) => NOP_OUT,
            Bhs::ScsiCommand(_) => SCSI_COMMAND,
            Bhs::TmfRequest(_) => TMF_REQUEST,
            Bhs::LoginRequest(_) => LOGIN_REQUEST,
            Bhs::TextRequest(_) => TEXT_REQUEST,
            Bhs::DataOut(_) => DATA_OUT,
            Bhs::LogoutRequest(_) => LOGOUT_REQUEST,
            Bhs::Snack(_) => SNACK,
            Bhs::NopIn(_) => NOP_IN,
            Bhs::ScsiResponse(_) => SCSI_RESPONSE,
            Bhs::TmfResponse(_) => TMF_RESPONSE,
            Bhs::LoginResponse(_) => LOGIN_RESPONSE,
            Bhs::TextResponse(_) => TEXT_RESPONSE,
            Bhs::DataIn(_) => DATA_IN,
            Bhs::LogoutResponse(_) => LOGOUT_RESPONSE,
            Bhs::R2t(_) => R2T,
            Bhs::AsyncMessage(_) => ASYNC,
            Bhs::Reject(_) => REJECT,
        }
    }

    /// Decodes a raw BHS. The framing (AHS and data lengths) is read
    /// separately with [`Framing::of`].
    pub fn decode(b: &[u8; BHS_LEN]) -> Result<Bhs, PduError> {
        let imm = bit(b[0], 0x40);
        let f = b[1];
        let lun = u64_at(b, 8);
        let itt = u32_at(b, 16);
        Ok(match b[0] & 0x3f {
            opcode::NOP_OUT => Bhs::NopOut(NopOut {
                immediate: imm,
                lun,
                itt,
                ttt: u32_at(b, 20),
                cmd_sn: u32_at(b, 24),
                exp_stat_sn: u32_at(b, 28),
            }),
            opcode::SCSI_COMMAND => {
                let mut cdb = [0u8; 16];
                cdb.copy_from_slice(&b[32..48]);
                Bhs::ScsiCommand(ScsiCommand {
                    immediate: imm,
                    final_: bit(f, 0x80),
                    read: bit(f, 0x40),
                    write: bit(f, 0x20),
                    attr: f & 7,
                    lun,
                    itt,
                    edtl: u32_at(b, 20),
                    cmd_sn: u32_at(b, 24),
                    exp_stat_sn: u32_at(b, 28),
                    cdb,
                })
            }
            opcode::TMF_REQUEST => Bhs::TmfRequest(TmfRequest {
                immediate: imm,
                function: f & 0x7f,
                lun,
                itt,
                rtt: u32_at(b, 20),
                cmd_sn: u32_at(b, 24),
                exp_stat_sn: u32_at(b, 28),
                ref_cmd_sn: u32_at(b, 32),
                exp_data_sn: u32_at(b, 36),
            }),
            opcode::LOGIN_REQUEST => {
                let mut isid = [0u8; 6];
                isid.copy_from_slice(&b[8..14]);
                Bhs::LoginRequest(LoginRequest {
                    transit: bit(f, 0x80),
                    cont: bit(f, 0x40),
                    csg: Stage::from_bits(f >> 2)?,
                    nsg: Stage::from_bits(f)?,
                    version_max: b[2],
                    version_min: b[3],
                    isid,
                    tsih: u16_at(b, 14),
                    itt,
                    cid: u16_at(b, 20),
                    cmd_sn: u32_at(b, 24),
                    exp_stat_sn: u32_at(b, 28),
                })
            }
            opcode::TEXT_REQUEST => Bhs::TextRequest(TextRequest {
                immediate: imm,
                final_: bit(f, 0x80),
                cont: bit(f, 0x40),
                lun,
                itt,
                ttt: u32_at(b, 20),
                cmd_sn: u32_at(b, 24),
                exp_stat_sn: u32_at(b, 28),
            }),
            opcode::DATA_OUT => Bhs::DataOut(DataOut {
                final_: bit(f, 0x80),
                lun,
                itt,
                ttt: u32_at(b, 20),
                exp_stat_sn: u32_at(b, 28),
                data_sn: u32_at(b, 36),
                buffer_offset: u32_at(b, 40),
            }),
            opcode::LOGOUT_REQUEST => Bhs::LogoutRequest(LogoutRequest {
                immediate: imm,
                reason: f & 0x7f,
                itt,
                cid: u16_at(b, 20),
                cmd_sn: u32_at(b, 24),
                exp_stat_sn: u32_at(b, 28),
            }),
            opcode::SNACK => Bhs::Snack(Snack {
                kind: f & 0x0f,
                lun,
                itt,
                ttt: u32_at(b, 20),
                exp_stat_sn: u32_at(b, 28),
                beg_run: u32_at(b, 40),
                run_length: u32_at(b, 44),
            }),
            opcode::NOP_IN => Bhs::NopIn(NopIn {
                lun,
                itt,
                ttt: u32_at(b, 20),
                sns: sns_at(b),
            }),
            opcode::SCSI_RESPONSE => Bhs::ScsiResponse(ScsiResponse {
                bidi_overflow: bit(f, 0x10),
                bidi_underflow: bit(f, 0x08),
                overflow: bit(f, 0x04),
                underflow: bit(f, 0x02),
                response: b[2],
                status: b[3],
                itt,
                snack_tag: u32_at(b, 20),
                sns: sns_at(b),
                exp_data_sn: u32_at(b, 36),
                bidi_residual: u32_at(b, 40),
                residual: u32_at(b, 44),
            }),
            opcode::TMF_RESPONSE => Bhs::TmfResponse(TmfResponse {
                response: b[2],
                itt,
                sns: sns_at(b),
            }),
            opcode::LOGIN_RESPONSE => {
                let mut isid = [0u8; 6];
                isid.copy_from_slice(&b[8..14]);
                Bhs::LoginResponse(LoginResponse {
                    transit: bit(f, 0x80),
                    cont: bit(f, 0x40),
                    csg: Stage::from_bits(f >> 2)?,
                    nsg: Stage::from_bits(f)?,
                    version_max: b[2],
                    version_active: b[3],
                    isid,
                    tsih: u16_at(b, 14),
                    itt,
                    sns: sns_at(b),
                    status_class: b[36],
                    status_detail: b[37],
                })
            }
            opcode::TEXT_RESPONSE => Bhs::TextResponse(TextResponse {
                final_: bit(f, 0x80),
                cont: bit(f, 0x40),
                lun,
                itt,
                ttt: u32_at(b, 20),
                sns: sns_at(b),
            }),
            opcode::DATA_IN => Bhs::DataIn(DataIn {
                final_: bit(f, 0x80),
                ack: bit(f, 0x40),
                overflow: bit(f, 0x04),
                underflow: bit(f, 0x02),
                status_present: bit(f, 0x01),
                status: b[3],
                lun,
                itt,
                ttt: u32_at(b, 20),
                sns: sns_at(b),
                data_sn: u32_at(b, 36),
                buffer_offset: u32_at(b, 40),
                residual: u32_at(b, 44),
            }),
            opcode::LOGOUT_RESPONSE => Bhs::LogoutResponse(LogoutResponse {
                response: b[2],
                itt,
                sns: sns_at(b),
                time2wait: u16_at(b, 40),
                time2retain: u16_at(b, 42),
            }),
            opcode::R2T => Bhs::R2t(R2t {
                lun,
                itt,
                ttt: u32_at(b, 20),
                sns: sns_at(b),
                r2t_sn: u32_at(b, 36),
                buffer_offset: u32_at(b, 40),
                desired_length: u32_at(b, 44),
            }),
            opcode::ASYNC => Bhs::AsyncMessage(AsyncMessage {
                lun,
                sns: sns_at(b),
                event: b[36],
                vcode: b[37],
                params: [u16_at(b, 38), u16_at(b, 40), u16_at(b, 42)],
            }),
            opcode::REJECT => Bhs::Reject(Reject {
                reason: b[2],
                sns: sns_at(b),
                data_sn: u32_at(b, 36),
            }),
            other => return Err(PduError::UnknownOpcode(other)),
        })
    }

    /// Encodes this header with the given framing into `out` (all 48 bytes
    /// are written). `framing.data_len` must be below 2^24 and
    /// `framing.ahs_len` a multiple of 4 below 1024.
    pub fn encode(&self, framing: Framing, out: &mut [u8; BHS_LEN]) {
        *out = [0u8; BHS_LEN];
        let b = out;
        b[0] = self.opcode();
        b[4] = (framing.ahs_len / 4) as u8;
        let dl = framing.data_len as u32;
        b[5] = (dl >> 16) as u8;
        b[6] = (dl >> 8) as u8;
        b[7] = dl as u8;
        match self {
            Bhs::NopOut(p) => {
                b[0] |= flag(p.immediate, 0x40);
                b[1] = 0x80;
                put64(b, 8, p.lun);
                put32(b, 16, p.itt);
                put32(b, 20, p.ttt);
                put32(b, 24, p.cmd_sn);
                put32(b, 28, p.exp_stat_sn);
            }
            Bhs::ScsiCommand(p) => {
                b[0] |= flag(p.immediate, 0x40);
                b[1] =
                    flag(p.final_, 0x80) | flag(p.read, 0x40) | flag(p.write, 0x20) | (p.attr & 7);
                put64(b, 8, p.lun);
                put32(b, 16, p.itt);
                put32(b, 20, p.edtl);
                put32(b, 24, p.cmd_sn);
                put32(b, 28, p.exp_stat_sn);
                b[32..48].copy_from_slice(&p.cdb);
            }
            Bhs::TmfRequest(p) => {
                b[0] |= flag(p.immediate, 0x40);
                b[1] = 0x80 | (p.function & 0x7f);
                put64(b, 8, p.lun);
                put32(b, 16, p.itt);
                put32(b, 20, p.rtt);
                put32(b, 24, p.cmd_sn);
                put32(b, 28, p.exp_stat_sn);
                put32(b, 32, p.ref_cmd_sn);
                put32(b, 36, p.exp_data_sn);
            }
            Bhs::LoginRequest(p) => {
                b[0] |= 0x40;
                b[1] =
                    flag(p.transit, 0x80) | flag(p.cont, 0x40) | (p.csg.bits() << 2) | p.nsg.bits();
                b[2] = p.version_max;
                b[3] = p.version_min;
                b[8..14].copy_from_slice(&p.isid);
                put16(b, 14, p.tsih);
                put32(b, 16, p.itt);
                put16(b, 20, p.cid);
                put32(b, 24, p.cmd_sn);
                put32(b, 28, p.exp_stat_sn);
            }
            Bhs::TextRequest(p) => {
                b[0] |= flag(p.immediate, 0x40);
                b[1] = flag(p.final_, 0x80) | flag(p.cont, 0x40);
                put64(b, 8, p.lun);
                put32(b, 16, p.itt);
                put32(b, 20, p.ttt);
                put32(b, 24, p.cmd_sn);
                put32(b, 28, p.exp_stat_sn);
            }
            Bhs::DataOut(p) => {
                b[1] = flag(p.final_, 0x80);
                put64(b, 8, p.lun);
                put32(b, 16, p.itt);
                put32(b, 20, p.ttt);
                put32(b, 28, p.exp_stat_sn);
                put32(b, 36, p.data_sn);
                put32(b, 40, p.buffer_offset);
            }
            Bhs::LogoutRequest(p) => {
                b[0] |= flag(p.immediate, 0x40);
                b[1] = 0x80 | (p.reason & 0x7f);
                put32(b, 16, p.itt);
                put16(b, 20, p.cid);
                put32(b, 24, p.cmd_sn);
                put32(b, 28, p.exp_stat_sn);
            }
            Bhs::Snack(p) => {
                b[1] = 0x80 | (p.kind & 0x0f);
                put64(b, 8, p.lun);
                put32(b, 16, p.itt);
                put32(b, 20, p.ttt);
                put32(b, 28, p.exp_stat_sn);
                put32(b, 40, p.beg_run);
                put32(b, 44, p.run_length);
            }
            Bhs::NopIn(p) => {
                b[1] = 0x80;
                put64(b, 8, p.lun);
                put32(b, 16, p.itt);
                put32(b, 20, p.ttt);
                put_sns(b, &p.sns);
            }
            Bhs::ScsiResponse(p) => {
                b[1] = 0x80
                    | flag(p.bidi_overflow, 0x10)
                    | flag(p.bidi_underflow, 0x08)
                    | flag(p.overflow, 0x04)
                    | flag(p.underflow, 0x02);
                b[2] = p.response;
                b[3] = p.status;
                put32(b, 16, p.itt);
                put32(b, 20, p.snack_tag);
                put_sns(b, &p.sns);
                put32(b, 36, p.exp_data_sn);
                put32(b, 40, p.bidi_residual);
                put32(b, 44, p.residual);
            }
            Bhs::TmfResponse(p) => {
                b[1] = 0x80;
                b[2] = p.response;
                put32(b, 16, p.itt);
                put_sns(b, &p.sns);
            }
            Bhs::LoginResponse(p) => {
                b[1] =
                    flag(p.transit, 0x80) | flag(p.cont, 0x40) | (p.csg.bits() << 2) | p.nsg.bits();
                b[2] = p.version_max;
                b[3] = p.version_active;
                b[8..14].copy_from_slice(&p.isid);
                put16(b, 14, p.tsih);
                put32(b, 16, p.itt);
                put_sns(b, &p.sns);
                b[36] = p.status_class;
                b[37] = p.status_detail;
            }
            Bhs::TextResponse(p) => {
                b[1] = flag(p.final_, 0x80) | flag(p.cont, 0x40);
                put64(b, 8, p.lun);
                put32(b, 16, p.itt);
                put32(b, 20, p.ttt);
                put_sns(b, &p.sns);
            }
            Bhs::DataIn(p) => {
                b[1] = flag(p.final_, 0x80)
                    | flag(p.ack, 0x40)
                    | flag(p.overflow, 0x04)
                    | flag(p.underflow, 0x02)
                    | flag(p.status_present, 0x01);
                b[3] = p.status;
                put64(b, 8, p.lun);
                put32(b, 16, p.itt);
                put32(b, 20, p.ttt);
                put_sns(b, &p.sns);
                put32(b, 36, p.data_sn);
                put32(b, 40, p.buffer_offset);
                put32(b, 44, p.residual);
            }
            Bhs::LogoutResponse(p) => {
                b[1] = 0x80;
                b[2] = p.response;
                put32(b, 16, p.itt);
                put_sns(b, &p.sns);
                put16(b, 40, p.time2wait);
                put16(b, 42, p.time2retain);
            }
            Bhs::R2t(p) => {
                b[1] = 0x80;
                put64(b, 8, p.lun);
                put32(b, 16, p.itt);
                put32(b, 20, p.ttt);
                put_sns(b, &p.sns);
                put32(b, 36, p.r2t_sn);
                put32(b, 40, p.buffer_offset);
                put32(b, 44, p.desired_length);
            }
            Bhs::AsyncMessage(p) => {
                b[1] = 0x80;
                put64(b, 8, p.lun);
                put32(b, 16, RESERVED_TAG);
                put_sns(b, &p.sns);
                b[36] = p.event;
                b[37] = p.vcode;
                put16(b, 38, p.params[0]);
                put16(b, 40, p.params[1]);
                put16(b, 42, p.params[2]);
            }
            Bhs::Reject(p) => {
                b[1] = 0x80;
                b[2] = p.reason;
                put32(b, 16, RESERVED_TAG);
                put_sns(b, &p.sns);
                put32(b, 36, p.data_sn);
            }
        }
    }

    /// Encodes into a fresh array.
    pub fn to_bytes(&self, framing: Framing) -> [u8; BHS_LEN] {
        let mut out = [0u8; BHS_LEN];
        self.encode(framing, &mut out);
        out
    }
}

/// Additional Header Segments of a SCSI Command (§11.2.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ahs {
    /// Extended CDB bytes (beyond the 16 in the BHS).
    pub extended_cdb: Option<Bytes>,
    /// Bidirectional expected read-data length.
    pub bidi_read_length: Option<u32>,
}

impl Ahs {
    /// Parses the AHS area (already known to be `ahs_len` bytes).
    pub fn decode(mut raw: &[u8]) -> Result<Ahs, PduError> {
        let mut out = Ahs::default();
        while !raw.is_empty() {
            if raw.len() < 4 {
                return Err(PduError::InvalidField("truncated AHS"));
            }
            let len = usize::from(u16::from_be_bytes([raw[0], raw[1]]));
            let kind = raw[2];
            // The length counts the bytes after the reserved byte 3; the
            // segment is padded to 4 bytes.
            let total = 3 + len;
            let padded = total + pad_len(total);
            if padded > raw.len() || len == 0 {
                return Err(PduError::InvalidField("AHS length"));
            }
            let body = &raw[4..3 + len];
            match kind {
                1 => out.extended_cdb = Some(Bytes::copy_from_slice(body)),
                2 => {
                    if body.len() != 4 {
                        return Err(PduError::InvalidField("bidi AHS length"));
                    }
                    out.bidi_read_length =
                        Some(u32::from_be_bytes([body[0], body[1], body[2], body[3]]));
                }
                _ => return Err(PduError::InvalidField("AHS type")),
            }
            raw = &raw[padded..];
        }
        Ok(out)
    }

    /// Encodes the AHS area (padded to 4 bytes).
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        if let Some(cdb) = &self.extended_cdb {
            let len = (cdb.len() + 1) as u16;
            v.extend_from_slice(&len.to_be_bytes());
            v.push(1);
            v.push(0);
            v.extend_from_slice(cdb);
            v.resize(v.len() + pad_len(v.len()), 0);
        }
        if let Some(n) = self.bidi_read_length {
            v.extend_from_slice(&[0, 5, 2, 0]);
            v.extend_from_slice(&n.to_be_bytes());
        }
        v
    }
}

/// Decodes a SAM LUN field (single level; peripheral, flat or logical unit
/// addressing) to a flat number. Unknown forms map to a number no LU has.
pub fn decode_lun(raw: u64) -> u64 {
    let b = raw.to_be_bytes();
    match b[0] >> 6 {
        0 => u64::from(b[1]) | (u64::from(b[0] & 0x3f) << 8),
        1 => (u64::from(b[0] & 0x3f) << 8) | u64::from(b[1]),
        _ => u64::MAX,
    }
}

/// Encodes a flat LUN number into a SAM LUN field (peripheral addressing
/// below 256, flat space addressing above).
pub fn encode_lun(lun: u64) -> u64 {
    if lun < 256 {
        lun << 48
    } else {
        (0x4000 | (lun & 0x3fff)) << 48
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any 48 bytes decode or fail cleanly, and a decoded header survives
        /// an encode/decode round trip unchanged.
        #[test]
        fn any_bhs_round_trips(raw in proptest::collection::vec(any::<u8>(), BHS_LEN)) {
            let mut b = [0u8; BHS_LEN];
            b.copy_from_slice(&raw);
            if let Ok(bhs) = Bhs::decode(&b) {
                let framing = Framing::of(&b);
                let enc = bhs.to_bytes(framing);
                prop_assert_eq!(Framing::of(&enc), framing);
                let again = Bhs::decode(&enc).unwrap();
                prop_assert_eq!(again, bhs);
                prop_assert_eq!(again.to_bytes(framing), enc);
            }
        }

        /// Every opcode byte decodes to that opcode (or is unknown).
        #[test]
        fn every_opcode(op in 0u8..64, rest in proptest::collection::vec(any::<u8>(), BHS_LEN - 1)) {
            let mut b = [0u8; BHS_LEN];
            b[0] = op;
            b[1..].copy_from_slice(&rest);
            b[1] &= !0x0a; // keep login stages valid (no stage 2)
            match Bhs::decode(&b) {
                Ok(bhs) => prop_assert_eq!(bhs.opcode(), op),
                Err(e) => prop_assert_eq!(e, PduError::UnknownOpcode(op)),
            }
        }

        /// AHS parsing never panics; encodable AHS round-trip.
        #[test]
        fn ahs_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Ahs::decode(&raw);
        }

        #[test]
        fn ahs_round_trip(cdb in proptest::collection::vec(any::<u8>(), 1..240), bidi in proptest::option::of(any::<u32>())) {
            let a = Ahs { extended_cdb: Some(Bytes::from(cdb)), bidi_read_length: bidi };
            let enc = a.encode();
            prop_assert_eq!(enc.len() % 4, 0);
            prop_assert_eq!(Ahs::decode(&enc).unwrap(), a);
        }

        #[test]
        fn lun_round_trip(lun in 0u64..16384) {
            prop_assert_eq!(decode_lun(encode_lun(lun)), lun);
        }
    }

    #[test]
    fn scsi_command_layout() {
        let cmd = ScsiCommand {
            immediate: true,
            final_: true,
            read: true,
            write: false,
            attr: 1,
            lun: encode_lun(3),
            itt: 0x11223344,
            edtl: 4096,
            cmd_sn: 7,
            exp_stat_sn: 9,
            cdb: [0x28, 0, 0, 0, 0, 1, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0],
        };
        let b = Bhs::ScsiCommand(cmd).to_bytes(Framing {
            ahs_len: 0,
            data_len: 0x010203,
        });
        assert_eq!(b[0], 0x41);
        assert_eq!(b[1], 0xc1);
        assert_eq!(&b[5..8], &[1, 2, 3]);
        assert_eq!(&b[8..10], &[0, 3]);
        assert_eq!(&b[16..20], &[0x11, 0x22, 0x33, 0x44]);
        assert_eq!(&b[20..24], &[0, 0, 0x10, 0]);
        assert_eq!(b[32], 0x28);
    }

    #[test]
    fn login_stage_two_is_invalid() {
        let mut b = [0u8; BHS_LEN];
        b[0] = 0x43;
        b[1] = 0x82; // T, CSG 0, NSG 2
        assert!(Bhs::decode(&b).is_err());
    }

    #[test]
    fn lun_forms() {
        assert_eq!(decode_lun(0x0001_0000_0000_0000), 1);
        assert_eq!(decode_lun(0x4101_0000_0000_0000), 0x101);
        assert_eq!(encode_lun(300), 0x412c_0000_0000_0000);
        assert_eq!(decode_lun(0xc000_0000_0000_0000), u64::MAX);
    }
}
