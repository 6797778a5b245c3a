//! Command dispatch: the checks every command goes through (opcode, CDB
//! control byte, unit attention, ALUA state, sanitize, reservations, write
//! protection) and the routing to the command families.

use std::sync::Arc;

use bytes::Bytes;

use super::lu::{LogicalUnit, SanitizeStatus};
use super::opcodes::{self, code, sa, OpInfo};
use super::order::Ticket;
use super::sense::{key, Asc, Sense};
use super::{alua, mode, pr, reserve, sanitize, sbc, spc, xcopy};
use super::{status, Command, ItNexus, Nexus, Response, ScsiTarget};

/// Why a command did not complete with GOOD status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// CHECK CONDITION with this sense data.
    Check(Sense),
    /// RESERVATION CONFLICT.
    Conflict,
}

impl From<Sense> for Failure {
    fn from(s: Sense) -> Self {
        Failure::Check(s)
    }
}

impl From<blockdev::BlockError> for Failure {
    fn from(e: blockdev::BlockError) -> Self {
        // Sense data comes with every status but RESERVATION CONFLICT.
        match super::sense::status_of(&e) {
            (_, Some(sense)) => Failure::Check(sense),
            (_, None) => Failure::Conflict,
        }
    }
}

/// A successful command: status (GOOD or CONDITION MET) and data-in.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reply {
    pub status: u8,
    pub data: Bytes,
    /// Data-in left in the page cache (see [`super::Command::data_in_from_file`]).
    pub file: Option<blockdev::FileSlice>,
}

impl Reply {
    /// GOOD with no data.
    pub(crate) fn good() -> Self {
        Reply::default()
    }

    /// GOOD with data-in.
    pub(crate) fn data(v: impl Into<Bytes>) -> Self {
        Reply {
            status: status::GOOD,
            data: v.into(),
            file: None,
        }
    }
}

/// Result of a command handler.
pub(crate) type CmdResult = Result<Reply, Failure>;

/// Everything a handler may need about the command being run.
pub(crate) struct Ctx<'a> {
    pub target: &'a ScsiTarget,
    pub lu: &'a Arc<LogicalUnit>,
    pub nexus: &'a Nexus,
    pub me: ItNexus,
    pub cdb: &'a [u8],
    pub data: &'a Bytes,
    /// The transport takes data-in as a [`blockdev::FileSlice`].
    pub data_in_from_file: bool,
    /// The command's task tag.
    pub tag: u32,
}

fn respond(r: CmdResult) -> Response {
    match r {
        Ok(reply) => Response {
            status: reply.status,
            sense: None,
            data_in: reply.data,
            data_in_file: reply.file,
        },
        Err(Failure::Check(s)) => Response {
            status: status::CHECK_CONDITION,
            sense: Some(s.to_bytes()),
            data_in: Bytes::new(),
            data_in_file: None,
        },
        Err(Failure::Conflict) => Response {
            status: status::RESERVATION_CONFLICT,
            sense: None,
            data_in: Bytes::new(),
            data_in_file: None,
        },
    }
}

/// Runs one command to completion.
pub(crate) async fn execute(
    target: &Arc<ScsiTarget>,
    lu: Option<&Arc<LogicalUnit>>,
    nexus: &Nexus,
    cmd: &Command,
    ticket: Option<Ticket>,
) -> Response {
    let me = ItNexus::of(nexus);
    let Some(lu) = lu else {
        return respond(no_lun(target, &me, cmd));
    };
    if let Some(t) = &ticket {
        if t.ready().await.is_err() {
            return task_aborted();
        }
    }
    let ctx = Ctx {
        target,
        lu,
        nexus,
        me,
        cdb: &cmd.cdb,
        data: &cmd.data_out,
        data_in_from_file: cmd.data_in_from_file,
        tag: cmd.tag,
    };
    let mut r = run(&ctx).await;
    if ticket.as_ref().is_some_and(Ticket::finish) {
        // Aborted by another nexus while it ran (TAS = 1).
        return task_aborted();
    }
    // Data-in left in the page cache keeps the task's place until it has been
    // sent, so a later ORDERED task cannot change those blocks first.
    if let (Ok(reply), Some(t)) = (&mut r, ticket) {
        if let Some(file) = reply.file.take() {
            reply.file = Some(file.hold(Arc::new(t)));
        }
    }
    respond(r)
}

/// TASK ABORTED status, for a task another I_T nexus aborted.
fn task_aborted() -> Response {
    Response {
        status: status::TASK_ABORTED,
        ..Response::default()
    }
}

/// A command to a LUN that does not exist (SPC-4 4.6.3 / 6.6.2 / 6.39).
fn no_lun(target: &ScsiTarget, me: &ItNexus, cmd: &Command) -> CmdResult {
    let cdb = &cmd.cdb[..];
    match cdb.first().copied() {
        Some(code::INQUIRY) => spc::inquiry_absent(cdb),
        Some(code::REPORT_LUNS) => spc::report_luns(target, me, cdb),
        Some(code::REQUEST_SENSE) => {
            let s = Sense::illegal(Asc::LUN_NOT_SUPPORTED);
            spc::sense_reply(cdb, &s)
        }
        _ => Err(Sense::illegal(Asc::LUN_NOT_SUPPORTED).into()),
    }
}

/// NOT READY, SANITIZE IN PROGRESS with the progress indication.
pub(crate) fn sanitize_in_progress(done: u16) -> Sense {
    Sense {
        progress: Some(done),
        ..Sense::new(key::NOT_READY, Asc::SANITIZE_IN_PROGRESS)
    }
}

async fn run(ctx: &Ctx<'_>) -> CmdResult {
    let cdb = ctx.cdb;
    let lbp = ctx.lu.device.features().thin;
    let info: &'static OpInfo = opcodes::lookup(cdb, lbp)?;
    let len = info.usage.len();
    if cdb.len() < len {
        return Err(Sense::invalid_cdb(0, None).into());
    }
    let control = cdb[len - 1];
    if control & 0x04 != 0 {
        return Err(Sense::invalid_cdb(len as u16 - 1, Some(2)).into());
    }
    if control & 0x01 != 0 {
        return Err(Sense::invalid_cdb(len as u16 - 1, Some(0)).into());
    }
    let lu = ctx.lu;
    tracing::trace!(command = info.name, lun = lu.lun);
    // A resize not handled yet raises its attention before the check below.
    lu.status
        .handle(ctx.target.name(), lu, || ctx.target.nexuses());
    let alua_state = ctx.target.port_state(ctx.nexus.relative_port);
    {
        // One short critical section for every check on shared LU state.
        let mut st = lu.state();
        // A sanitize in progress is reported before unit attentions (SBC-4 4.11).
        if !info.sanitize_ok {
            match st.sanitize {
                SanitizeStatus::Running { done } => return Err(sanitize_in_progress(done).into()),
                SanitizeStatus::Failed if info.op != code::SANITIZE => {
                    return Err(Sense::new(key::MEDIUM_ERROR, Asc::SANITIZE_FAILED).into())
                }
                _ => {}
            }
        }
        if info.ua {
            if let Some(asc) = st.ua.pop(&ctx.me) {
                return Err(Sense::unit_attention(asc).into());
            }
        }
        if let Some(state) = alua_state {
            alua::check_access(state, info.alua)?;
        }
        reserve::check(&st, &ctx.me, info)?;
        if info.writes && (lu.read_only || st.mode.swp) {
            return Err(Sense::write_protected().into());
        }
    }
    route(ctx, info).await
}

async fn route(ctx: &Ctx<'_>, info: &'static OpInfo) -> CmdResult {
    let cdb = ctx.cdb;
    match info.op {
        code::TEST_UNIT_READY => Ok(Reply::good()),
        code::REQUEST_SENSE => spc::request_sense(ctx),
        code::INQUIRY => spc::inquiry(ctx),
        code::REPORT_LUNS => spc::report_luns(ctx.target, &ctx.me, cdb),
        code::MODE_SENSE_6 | code::MODE_SENSE_10 => mode::sense(ctx),
        code::MODE_SELECT_6 | code::MODE_SELECT_10 => mode::select(ctx),
        code::RESERVE_6 | code::RESERVE_10 => reserve::reserve(ctx),
        code::RELEASE_6 | code::RELEASE_10 => reserve::release(ctx),
        code::START_STOP_UNIT => sbc::start_stop_unit(ctx).await,
        code::PREVENT_ALLOW => sbc::prevent_allow(ctx),
        code::READ_CAPACITY_10 => sbc::read_capacity_10(ctx),
        code::SERVICE_ACTION_IN_16 if info.sa == Some(sa::READ_CAPACITY_16) => {
            sbc::read_capacity_16(ctx)
        }
        code::SERVICE_ACTION_IN_16 => sbc::get_lba_status(ctx).await,
        code::READ_6 | code::READ_10 | code::READ_12 | code::READ_16 => sbc::read(ctx).await,
        code::WRITE_6 | code::WRITE_10 | code::WRITE_12 | code::WRITE_16 => sbc::write(ctx).await,
        code::WRITE_ATOMIC_16 => sbc::write(ctx).await,
        code::VERIFY_10 | code::VERIFY_12 | code::VERIFY_16 => sbc::verify(ctx).await,
        code::WRITE_VERIFY_10 | code::WRITE_VERIFY_12 | code::WRITE_VERIFY_16 => {
            sbc::write(ctx).await
        }
        code::PRE_FETCH_10 | code::PRE_FETCH_16 => sbc::pre_fetch(ctx),
        code::SYNC_CACHE_10 | code::SYNC_CACHE_16 => sbc::synchronize_cache(ctx).await,
        code::READ_DEFECT_10 | code::READ_DEFECT_12 => sbc::read_defect_data(ctx),
        code::WRITE_SAME_10 | code::WRITE_SAME_16 => sbc::write_same(ctx).await,
        code::UNMAP => sbc::unmap(ctx).await,
        code::COMPARE_AND_WRITE => sbc::compare_and_write(ctx).await,
        code::ORWRITE_16 => sbc::orwrite(ctx).await,
        code::SANITIZE => sanitize::sanitize(ctx).await,
        code::PR_IN => pr::persistent_reserve_in(ctx),
        code::PR_OUT => pr::persistent_reserve_out(ctx).await,
        code::EXTENDED_COPY => xcopy::extended_copy(ctx).await,
        code::RECEIVE_COPY_RESULTS => xcopy::receive_copy_results(ctx),
        code::MAINTENANCE_IN => match info.sa {
            Some(sa::REPORT_TARGET_PORT_GROUPS) => {
                let ext = cdb[1] & 0xE0 == 0x20;
                let alloc = super::cdb::be32(cdb, 6) as usize;
                let d = alua::report_target_port_groups(&ctx.target.port_groups(), ext);
                Ok(Reply::data(super::cdb::trim(d, alloc)))
            }
            Some(sa::REPORT_SUPPORTED_OPCODES) => Ok(Reply::data(
                opcodes::report_supported_opcodes(cdb, ctx.lu.device.features().thin)?,
            )),
            _ => Ok(Reply::data(opcodes::report_supported_tmf(cdb))),
        },
        _ => Err(Sense::invalid_opcode().into()),
    }
}
