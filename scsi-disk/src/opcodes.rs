//! The command table: every opcode (and service action) this target
//! implements, with its CDB usage map for REPORT SUPPORTED OPERATION CODES
//! and the attributes the dispatcher applies before running it (unit
//! attention, ALUA state, reservations, write protection, sanitize).

use super::alua::AluaClass;
use super::cdb::{be16, be32, byte};
use super::sense::Sense;

/// How persistent reservations and RESERVE(6) restrict a command (SPC-4 5.13.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PrClass {
    /// Never conflicts.
    Allowed,
    /// Reads the medium: conflicts under exclusive-access types.
    Read,
    /// Modifies the medium or LU state: conflicts under every type.
    Write,
    /// RESERVE/RELEASE(6/10): conflict whenever persistent reservations are in use.
    Reserve,
    /// PERSISTENT RESERVE IN/OUT: arbitrated by the PR code itself.
    Persistent,
}

/// Attributes of one supported command.
#[derive(Debug)]
pub(crate) struct OpInfo {
    /// Operation code.
    pub op: u8,
    /// Service action, for opcodes that have them.
    pub sa: Option<u8>,
    /// Name, for logs.
    pub name: &'static str,
    /// CDB usage data; its length is the CDB length.
    pub usage: &'static [u8],
    /// What the ALUA state lets through.
    pub alua: AluaClass,
    /// Reservation class.
    pub pr: PrClass,
    /// Allowed while another nexus holds a RESERVE(6) reservation.
    pub res6_ok: bool,
    /// Modifies the medium (refused with WRITE PROTECTED on read-only LUNs).
    pub writes: bool,
    /// Reports and clears a pending unit attention first.
    pub ua: bool,
    /// Allowed while a sanitize operation is in progress.
    pub sanitize_ok: bool,
    /// Recommended command timeout in seconds.
    pub timeout: u32,
    /// Supported only on a logical unit with logical block provisioning
    /// management (LBPME = 1, a thin device): on a fully provisioned one the
    /// command is not reported and is refused as unsupported.
    pub lbp_only: bool,
    /// A CDB field (byte, mask) usable only with logical block provisioning
    /// management (the UNMAP bit of WRITE SAME, SBC-4 5.50 table 237 note a):
    /// cleared from the usage data of a fully provisioned logical unit.
    pub lbp_field: Option<(usize, u8)>,
}

const fn op(op: u8, name: &'static str, usage: &'static [u8]) -> OpInfo {
    OpInfo {
        op,
        sa: None,
        name,
        usage,
        alua: AluaClass::Active,
        pr: PrClass::Read,
        res6_ok: false,
        writes: false,
        ua: true,
        sanitize_ok: false,
        timeout: 30,
        lbp_only: false,
        lbp_field: None,
    }
}

impl OpInfo {
    const fn sa(mut self, sa: u8) -> Self {
        self.sa = Some(sa);
        self
    }
    const fn pr(mut self, pr: PrClass) -> Self {
        self.pr = pr;
        self
    }
    const fn writes(mut self) -> Self {
        self.writes = true;
        self.pr = PrClass::Write;
        self
    }
    const fn alua(mut self, a: AluaClass) -> Self {
        self.alua = a;
        self
    }
    /// INQUIRY, REPORT LUNS, REQUEST SENSE and the like: answer in every state.
    const fn always(mut self) -> Self {
        self.alua = AluaClass::Always;
        self.pr = PrClass::Allowed;
        self.res6_ok = true;
        self.sanitize_ok = true;
        self
    }
    const fn no_ua(mut self) -> Self {
        self.ua = false;
        self
    }
    const fn timeout(mut self, t: u32) -> Self {
        self.timeout = t;
        self
    }
    const fn lbp_only(mut self) -> Self {
        self.lbp_only = true;
        self
    }
    const fn lbp_field(mut self, byte: usize, mask: u8) -> Self {
        self.lbp_field = Some((byte, mask));
        self
    }
    /// Whether a logical unit with (`lbp`) or without logical block
    /// provisioning management supports this command.
    pub(crate) fn supported(&self, lbp: bool) -> bool {
        lbp || !self.lbp_only
    }
    /// The CDB usage data as a logical unit with or without logical block
    /// provisioning management reports it.
    fn usage_for(&self, lbp: bool) -> std::borrow::Cow<'static, [u8]> {
        match self.lbp_field {
            Some((i, mask)) if !lbp => {
                let mut u = self.usage.to_vec();
                u[i] &= !mask;
                std::borrow::Cow::Owned(u)
            }
            _ => std::borrow::Cow::Borrowed(self.usage),
        }
    }
}

/// Operation codes.
#[allow(missing_docs)]
pub(crate) mod code {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0A;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SELECT_6: u8 = 0x15;
    pub const RESERVE_6: u8 = 0x16;
    pub const RELEASE_6: u8 = 0x17;
    pub const MODE_SENSE_6: u8 = 0x1A;
    pub const START_STOP_UNIT: u8 = 0x1B;
    pub const PREVENT_ALLOW: u8 = 0x1E;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2A;
    pub const WRITE_VERIFY_10: u8 = 0x2E;
    pub const VERIFY_10: u8 = 0x2F;
    pub const PRE_FETCH_10: u8 = 0x34;
    pub const SYNC_CACHE_10: u8 = 0x35;
    pub const READ_DEFECT_10: u8 = 0x37;
    pub const WRITE_SAME_10: u8 = 0x41;
    pub const UNMAP: u8 = 0x42;
    pub const SANITIZE: u8 = 0x48;
    pub const MODE_SELECT_10: u8 = 0x55;
    pub const RESERVE_10: u8 = 0x56;
    pub const RELEASE_10: u8 = 0x57;
    pub const MODE_SENSE_10: u8 = 0x5A;
    pub const PR_IN: u8 = 0x5E;
    pub const PR_OUT: u8 = 0x5F;
    pub const EXTENDED_COPY: u8 = 0x83;
    pub const RECEIVE_COPY_RESULTS: u8 = 0x84;
    pub const READ_16: u8 = 0x88;
    pub const COMPARE_AND_WRITE: u8 = 0x89;
    pub const WRITE_16: u8 = 0x8A;
    pub const ORWRITE_16: u8 = 0x8B;
    pub const WRITE_VERIFY_16: u8 = 0x8E;
    pub const VERIFY_16: u8 = 0x8F;
    pub const PRE_FETCH_16: u8 = 0x90;
    pub const SYNC_CACHE_16: u8 = 0x91;
    pub const WRITE_SAME_16: u8 = 0x93;
    pub const WRITE_ATOMIC_16: u8 = 0x9C;
    pub const SERVICE_ACTION_IN_16: u8 = 0x9E;
    pub const REPORT_LUNS: u8 = 0xA0;
    pub const MAINTENANCE_IN: u8 = 0xA3;
    pub const READ_12: u8 = 0xA8;
    pub const WRITE_12: u8 = 0xAA;
    pub const WRITE_VERIFY_12: u8 = 0xAE;
    pub const VERIFY_12: u8 = 0xAF;
    pub const READ_DEFECT_12: u8 = 0xB7;
}

/// Service actions.
#[allow(missing_docs)]
pub(crate) mod sa {
    pub const READ_CAPACITY_16: u8 = 0x10;
    pub const GET_LBA_STATUS: u8 = 0x12;
    pub const REPORT_TARGET_PORT_GROUPS: u8 = 0x0A;
    pub const REPORT_SUPPORTED_OPCODES: u8 = 0x0C;
    pub const REPORT_SUPPORTED_TMF: u8 = 0x0D;
    pub const SANITIZE_OVERWRITE: u8 = 0x01;
    pub const SANITIZE_BLOCK_ERASE: u8 = 0x02;
    pub const SANITIZE_CRYPTO_ERASE: u8 = 0x03;
    pub const SANITIZE_EXIT_FAILURE: u8 = 0x1F;
    pub const XCOPY_LID1: u8 = 0x00;
    pub const RCR_COPY_STATUS: u8 = 0x00;
    pub const RCR_OPERATING_PARAMETERS: u8 = 0x03;
}

use code as c;
use AluaClass::Standby as SB;

/// Every supported command, ordered by opcode and service action.
pub(crate) static OPS: &[OpInfo] = &[
    op(
        c::TEST_UNIT_READY,
        "TEST UNIT READY",
        &[0x00, 0, 0, 0, 0, 0],
    )
    .pr(PrClass::Allowed),
    op(
        c::REQUEST_SENSE,
        "REQUEST SENSE",
        &[0x03, 0x01, 0, 0, 0xff, 0],
    )
    .always()
    .no_ua(),
    op(c::READ_6, "READ(6)", &[0x08, 0x1f, 0xff, 0xff, 0xff, 0]),
    op(c::WRITE_6, "WRITE(6)", &[0x0A, 0x1f, 0xff, 0xff, 0xff, 0]).writes(),
    op(c::INQUIRY, "INQUIRY", &[0x12, 0x01, 0xff, 0xff, 0xff, 0])
        .always()
        .no_ua(),
    op(
        c::MODE_SELECT_6,
        "MODE SELECT(6)",
        &[0x15, 0x11, 0, 0, 0xff, 0],
    )
    .pr(PrClass::Write)
    .alua(SB),
    op(c::RESERVE_6, "RESERVE(6)", &[0x16, 0, 0, 0, 0, 0]).pr(PrClass::Reserve),
    op(c::RELEASE_6, "RELEASE(6)", &[0x17, 0, 0, 0, 0, 0]).pr(PrClass::Reserve),
    op(
        c::MODE_SENSE_6,
        "MODE SENSE(6)",
        &[0x1A, 0x08, 0xff, 0xff, 0xff, 0],
    )
    .pr(PrClass::Allowed)
    .alua(SB),
    op(
        c::START_STOP_UNIT,
        "START STOP UNIT",
        &[0x1B, 0x01, 0, 0x0f, 0xf7, 0],
    )
    .pr(PrClass::Write),
    op(
        c::PREVENT_ALLOW,
        "PREVENT ALLOW MEDIUM REMOVAL",
        &[0x1E, 0, 0, 0, 0x03, 0],
    )
    .pr(PrClass::Write),
    op(
        c::READ_CAPACITY_10,
        "READ CAPACITY(10)",
        &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    )
    .pr(PrClass::Allowed)
    .alua(SB),
    op(
        c::READ_10,
        "READ(10)",
        &[0x28, 0xf8, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0],
    ),
    op(
        c::WRITE_10,
        "WRITE(10)",
        &[0x2A, 0xf8, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0],
    )
    .writes(),
    op(
        c::WRITE_VERIFY_10,
        "WRITE AND VERIFY(10)",
        &[0x2E, 0xf6, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0],
    )
    .writes(),
    op(
        c::VERIFY_10,
        "VERIFY(10)",
        &[0x2F, 0xf6, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0],
    ),
    op(
        c::PRE_FETCH_10,
        "PRE-FETCH(10)",
        &[0x34, 0x02, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0],
    ),
    op(
        c::SYNC_CACHE_10,
        "SYNCHRONIZE CACHE(10)",
        &[0x35, 0x02, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0],
    )
    .pr(PrClass::Write),
    op(
        c::READ_DEFECT_10,
        "READ DEFECT DATA(10)",
        &[0x37, 0, 0x1f, 0, 0, 0, 0, 0xff, 0xff, 0],
    ),
    op(
        c::WRITE_SAME_10,
        "WRITE SAME(10)",
        &[0x41, 0xf8, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0],
    )
    .writes()
    .lbp_field(1, 0x08),
    op(
        c::UNMAP,
        "UNMAP",
        &[0x42, 0x01, 0, 0, 0, 0, 0x1f, 0xff, 0xff, 0],
    )
    .writes()
    .lbp_only(),
    op(
        c::SANITIZE,
        "SANITIZE OVERWRITE",
        &[0x48, 0xbf, 0, 0, 0, 0, 0, 0xff, 0xff, 0],
    )
    .sa(sa::SANITIZE_OVERWRITE)
    .writes()
    .timeout(3600),
    op(
        c::SANITIZE,
        "SANITIZE BLOCK ERASE",
        &[0x48, 0xbf, 0, 0, 0, 0, 0, 0xff, 0xff, 0],
    )
    .sa(sa::SANITIZE_BLOCK_ERASE)
    .writes()
    .timeout(600)
    .lbp_only(),
    op(
        c::SANITIZE,
        "SANITIZE CRYPTOGRAPHIC ERASE",
        &[0x48, 0xbf, 0, 0, 0, 0, 0, 0xff, 0xff, 0],
    )
    .sa(sa::SANITIZE_CRYPTO_ERASE)
    .writes()
    .timeout(600),
    op(
        c::SANITIZE,
        "SANITIZE EXIT FAILURE MODE",
        &[0x48, 0xbf, 0, 0, 0, 0, 0, 0xff, 0xff, 0],
    )
    .sa(sa::SANITIZE_EXIT_FAILURE)
    .writes(),
    op(
        c::MODE_SELECT_10,
        "MODE SELECT(10)",
        &[0x55, 0x11, 0, 0, 0, 0, 0, 0xff, 0xff, 0],
    )
    .pr(PrClass::Write)
    .alua(SB),
    op(
        c::RESERVE_10,
        "RESERVE(10)",
        &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    )
    .pr(PrClass::Reserve),
    op(
        c::RELEASE_10,
        "RELEASE(10)",
        &[0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    )
    .pr(PrClass::Reserve),
    op(
        c::MODE_SENSE_10,
        "MODE SENSE(10)",
        &[0x5A, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0],
    )
    .pr(PrClass::Allowed)
    .alua(SB),
    op(
        c::PR_IN,
        "PERSISTENT RESERVE IN: READ KEYS",
        &[0x5E, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0],
    )
    .sa(0)
    .pr(PrClass::Persistent)
    .alua(SB),
    op(
        c::PR_IN,
        "PERSISTENT RESERVE IN: READ RESERVATION",
        &[0x5E, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0],
    )
    .sa(1)
    .pr(PrClass::Persistent)
    .alua(SB),
    op(
        c::PR_IN,
        "PERSISTENT RESERVE IN: REPORT CAPABILITIES",
        &[0x5E, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0],
    )
    .sa(2)
    .pr(PrClass::Persistent)
    .alua(SB),
    op(
        c::PR_IN,
        "PERSISTENT RESERVE IN: READ FULL STATUS",
        &[0x5E, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0],
    )
    .sa(3)
    .pr(PrClass::Persistent)
    .alua(SB),
    op(
        c::PR_OUT,
        "PERSISTENT RESERVE OUT: REGISTER",
        &[0x5F, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    )
    .sa(0)
    .pr(PrClass::Persistent)
    .alua(SB),
    op(
        c::PR_OUT,
        "PERSISTENT RESERVE OUT: RESERVE",
        &[0x5F, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    )
    .sa(1)
    .pr(PrClass::Persistent)
    .alua(SB),
    op(
        c::PR_OUT,
        "PERSISTENT RESERVE OUT: RELEASE",
        &[0x5F, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    )
    .sa(2)
    .pr(PrClass::Persistent)
    .alua(SB),
    op(
        c::PR_OUT,
        "PERSISTENT RESERVE OUT: CLEAR",
        &[0x5F, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    )
    .sa(3)
    .pr(PrClass::Persistent)
    .alua(SB),
    op(
        c::PR_OUT,
        "PERSISTENT RESERVE OUT: PREEMPT",
        &[0x5F, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    )
    .sa(4)
    .pr(PrClass::Persistent)
    .alua(SB),
    op(
        c::PR_OUT,
        "PERSISTENT RESERVE OUT: PREEMPT AND ABORT",
        &[0x5F, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    )
    .sa(5)
    .pr(PrClass::Persistent)
    .alua(SB),
    op(
        c::PR_OUT,
        "PERSISTENT RESERVE OUT: REGISTER AND IGNORE EXISTING KEY",
        &[0x5F, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    )
    .sa(6)
    .pr(PrClass::Persistent)
    .alua(SB),
    op(
        c::PR_OUT,
        "PERSISTENT RESERVE OUT: REGISTER AND MOVE",
        &[0x5F, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    )
    .sa(7)
    .pr(PrClass::Persistent)
    .alua(SB),
    op(
        c::EXTENDED_COPY,
        "EXTENDED COPY(LID1)",
        &[
            0x83, 0x1f, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    )
    .sa(sa::XCOPY_LID1)
    .writes()
    .timeout(600),
    op(
        c::RECEIVE_COPY_RESULTS,
        "RECEIVE COPY STATUS(LID1)",
        &[
            0x84, 0x1f, 0xff, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    )
    .sa(sa::RCR_COPY_STATUS),
    op(
        c::RECEIVE_COPY_RESULTS,
        "RECEIVE COPY OPERATING PARAMETERS",
        &[
            0x84, 0x1f, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    )
    .sa(sa::RCR_OPERATING_PARAMETERS),
    op(
        c::READ_16,
        "READ(16)",
        &[
            0x88, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0,
        ],
    ),
    op(
        c::COMPARE_AND_WRITE,
        "COMPARE AND WRITE",
        &[
            0x89, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0xff, 0x1f, 0,
        ],
    )
    .writes(),
    op(
        c::WRITE_16,
        "WRITE(16)",
        &[
            0x8A, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0,
        ],
    )
    .writes(),
    op(
        c::ORWRITE_16,
        "ORWRITE(16)",
        &[
            0x8B, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0,
        ],
    )
    .writes(),
    op(
        c::WRITE_VERIFY_16,
        "WRITE AND VERIFY(16)",
        &[
            0x8E, 0xf6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0,
        ],
    )
    .writes(),
    op(
        c::VERIFY_16,
        "VERIFY(16)",
        &[
            0x8F, 0xf6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0,
        ],
    ),
    op(
        c::PRE_FETCH_16,
        "PRE-FETCH(16)",
        &[
            0x90, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0,
        ],
    ),
    op(
        c::SYNC_CACHE_16,
        "SYNCHRONIZE CACHE(16)",
        &[
            0x91, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0,
        ],
    )
    .pr(PrClass::Write),
    op(
        c::WRITE_SAME_16,
        "WRITE SAME(16)",
        &[
            0x93, 0xf9, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0,
        ],
    )
    .writes()
    .lbp_field(1, 0x08),
    op(
        c::WRITE_ATOMIC_16,
        "WRITE ATOMIC(16)",
        &[
            0x9C, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0,
        ],
    )
    .writes(),
    op(
        c::SERVICE_ACTION_IN_16,
        "READ CAPACITY(16)",
        &[
            0x9E, 0x1f, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    )
    .sa(sa::READ_CAPACITY_16)
    .pr(PrClass::Allowed)
    .alua(SB),
    op(
        c::SERVICE_ACTION_IN_16,
        "GET LBA STATUS",
        &[
            0x9E, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            0,
        ],
    )
    .sa(sa::GET_LBA_STATUS),
    op(
        c::REPORT_LUNS,
        "REPORT LUNS",
        &[0xA0, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0],
    )
    .always()
    .no_ua(),
    op(
        c::MAINTENANCE_IN,
        "REPORT TARGET PORT GROUPS",
        &[0xA3, 0xff, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0],
    )
    .sa(sa::REPORT_TARGET_PORT_GROUPS)
    .always(),
    op(
        c::MAINTENANCE_IN,
        "REPORT SUPPORTED OPERATION CODES",
        &[
            0xA3, 0x1f, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    )
    .sa(sa::REPORT_SUPPORTED_OPCODES)
    .always(),
    op(
        c::MAINTENANCE_IN,
        "REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS",
        &[0xA3, 0x1f, 0x80, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0],
    )
    .sa(sa::REPORT_SUPPORTED_TMF)
    .always(),
    op(
        c::READ_12,
        "READ(12)",
        &[
            0xA8, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0,
        ],
    ),
    op(
        c::WRITE_12,
        "WRITE(12)",
        &[
            0xAA, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0,
        ],
    )
    .writes(),
    op(
        c::WRITE_VERIFY_12,
        "WRITE AND VERIFY(12)",
        &[
            0xAE, 0xf6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0,
        ],
    )
    .writes(),
    op(
        c::VERIFY_12,
        "VERIFY(12)",
        &[
            0xAF, 0xf6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0,
        ],
    ),
    op(
        c::READ_DEFECT_12,
        "READ DEFECT DATA(12)",
        &[0xB7, 0x1f, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0],
    ),
];

/// Whether an opcode carries a service action, and where.
fn service_action_of(op: u8, cdb: &[u8]) -> Option<u8> {
    match op {
        c::PR_IN
        | c::PR_OUT
        | c::SERVICE_ACTION_IN_16
        | c::MAINTENANCE_IN
        | c::SANITIZE
        | c::EXTENDED_COPY
        | c::RECEIVE_COPY_RESULTS => Some(byte(cdb, 1) & 0x1f),
        _ => None,
    }
}

/// Whether some entry has this opcode on a logical unit with (`lbp`) or
/// without logical block provisioning management.
fn has_opcode(op: u8, lbp: bool) -> bool {
    OPS.iter().any(|o| o.op == op && o.supported(lbp))
}

/// Finds the table entry for a CDB on a logical unit with (`lbp`) or without
/// logical block provisioning management: INVALID COMMAND OPERATION CODE for
/// an opcode it does not support, INVALID FIELD IN CDB (byte 1) for a service
/// action it does not support (SBC-4 5.30.1 for SANITIZE).
pub(crate) fn lookup(cdb: &[u8], lbp: bool) -> Result<&'static OpInfo, Sense> {
    let op = *cdb.first().ok_or_else(Sense::invalid_opcode)?;
    if !has_opcode(op, lbp) {
        return Err(Sense::invalid_opcode());
    }
    let sa = service_action_of(op, cdb);
    OPS.iter()
        .find(|o| o.op == op && (o.sa.is_none() || o.sa == sa) && o.supported(lbp))
        .ok_or_else(|| Sense::invalid_cdb(1, Some(4)))
}

fn timeouts(o: &OpInfo) -> [u8; 12] {
    let mut t = [0u8; 12];
    t[..2].copy_from_slice(&10u16.to_be_bytes());
    t[4..8].copy_from_slice(&o.timeout.to_be_bytes());
    t[8..12].copy_from_slice(&o.timeout.to_be_bytes());
    t
}

/// REPORT SUPPORTED OPERATION CODES (SPC-4 6.35) of a logical unit with
/// (`lbp`) or without logical block provisioning management.
pub(crate) fn report_supported_opcodes(cdb: &[u8], lbp: bool) -> Result<Vec<u8>, Sense> {
    let rctd = byte(cdb, 2) & 0x80 != 0;
    let options = byte(cdb, 2) & 0x07;
    let req_op = byte(cdb, 3);
    let req_sa = be16(cdb, 4);
    let alloc = be32(cdb, 6) as usize;
    let mut out = Vec::new();
    match options {
        0 => {
            out.extend_from_slice(&[0; 4]);
            for o in OPS.iter().filter(|o| o.supported(lbp)) {
                let mut d = [0u8; 8];
                d[0] = o.op;
                d[2..4].copy_from_slice(&u16::from(o.sa.unwrap_or(0)).to_be_bytes());
                d[5] = if o.sa.is_some() { 0x01 } else { 0 } | if rctd { 0x02 } else { 0 };
                d[6..8].copy_from_slice(&(o.usage.len() as u16).to_be_bytes());
                out.extend_from_slice(&d);
                if rctd {
                    out.extend_from_slice(&timeouts(o));
                }
            }
            let len = (out.len() - 4) as u32;
            out[..4].copy_from_slice(&len.to_be_bytes());
        }
        1..=3 => {
            let has_sa = OPS.iter().any(|o| o.op == req_op && o.sa.is_some());
            let mut ops = OPS.iter().filter(|o| o.supported(lbp));
            let found = match options {
                1 if has_sa => return Err(Sense::invalid_cdb(2, Some(0))),
                1 => ops.find(|o| o.op == req_op),
                2 if !has_opcode(req_op, lbp) => None,
                2 if !has_sa => return Err(Sense::invalid_cdb(2, Some(0))),
                _ => ops.find(|o| {
                    o.op == req_op && (o.sa.is_none() || u16::from(o.sa.unwrap_or(0)) == req_sa)
                }),
            };
            match found {
                Some(o) => {
                    out.push(0);
                    out.push(if rctd { 0x80 } else { 0 } | 0x03); // CTDP, SUPPORT = 011b
                    out.extend_from_slice(&(o.usage.len() as u16).to_be_bytes());
                    out.extend_from_slice(&o.usage_for(lbp));
                    if rctd {
                        out.extend_from_slice(&timeouts(o));
                    }
                }
                None => out.extend_from_slice(&[0, 0x01, 0, 0]), // not supported
            }
        }
        _ => return Err(Sense::invalid_cdb(2, Some(2))),
    }
    out.truncate(alloc);
    Ok(out)
}

/// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-4 6.36).
pub(crate) fn report_supported_tmf(cdb: &[u8]) -> Vec<u8> {
    let repd = byte(cdb, 2) & 0x80 != 0;
    let alloc = be32(cdb, 6) as usize;
    // ABORT TASK, ABORT TASK SET, CLEAR TASK SET, LOGICAL UNIT RESET, TARGET RESET.
    let mut out = vec![0x80 | 0x40 | 0x10 | 0x08 | 0x02, 0x00, 0, 0];
    if repd {
        out.resize(16, 0);
        out[3] = 0x0C;
    }
    out.truncate(alloc);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        for o in OPS {
            assert_eq!(o.usage[0], o.op, "{}", o.name);
            assert!(matches!(o.usage.len(), 6 | 10 | 12 | 16), "{}", o.name);
            let want = match o.op {
                0x00..=0x1f => 6,
                0x20..=0x5f => 10,
                0x80..=0x9f => 16,
                _ => 12,
            };
            assert_eq!(o.usage.len(), want, "{}", o.name);
            if let Some(sa) = o.sa {
                let mut cdb = o.usage.to_vec();
                cdb[1] = sa;
                assert!(std::ptr::eq(lookup(&cdb, true).unwrap(), o), "{}", o.name);
            }
        }
    }

    #[test]
    fn unknown_opcode_and_service_action() {
        assert_eq!(
            lookup(&[0xC0; 16], true).unwrap_err(),
            Sense::invalid_opcode()
        );
        let e = lookup(
            &[0x9E, 0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            true,
        )
        .unwrap_err();
        assert_eq!(e.asc, super::super::sense::Asc::INVALID_FIELD_IN_CDB);
    }
}
