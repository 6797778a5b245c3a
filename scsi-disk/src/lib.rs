//! SCSI target emulation (SPC-4 / SBC-4) over [`blockdev::BlockDevice`],
//! for any SCSI transport.
//!
//! The transport (iSCSI today: `target-iscsi`) hands complete commands in
//! (CDB plus all data-out already collected) and gets a complete
//! [`Response`] back: status, sense data and data-in. Everything SCSI lives
//! here: the disk command set (sbc), the primary commands (spc), persistent
//! reservations (pr), ALUA (alua), unit attentions and sense data, and what
//! a transport needs to know of a CDB ([`cdb_len`],
//! [`ScsiTarget::data_out_len`]) or reports of commands it ends itself
//! ([`TransportFault`]). Nothing here knows about sockets or PDUs.
//!
//! The transport contract for ending tasks: a command runs when its
//! [`Execution`] is polled and, once begun, to its end (its backend I/O
//! cannot be recalled). Whatever ends tasks aborts them here and answers only
//! once they have stopped executing ([`TasksEnded::wait`]): the transport's
//! ABORT TASK and task set functions ([`ScsiTarget::abort_tasks`], then
//! [`ScsiTarget::task_management`], which ends other sessions' tasks itself),
//! the end of a session ([`ScsiTarget::end_session`]) and a reinstatement
//! ([`ScsiTarget::nexus_login`] ends the old session's tasks). So no write of
//! an ended task lands after the answer, and none after a newer write the
//! initiator sends once it has the answer.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;

mod alua;
mod cdb;
mod device_status;
mod dispatch;
pub mod identification;
mod lu;
mod lu_map;
mod mode;
mod opcodes;
mod order;
mod pr;
mod reserve;
mod sanitize;
mod sbc;
pub mod sense;
mod spc;
mod transport;
mod transport_id;
mod ua;
mod xcopy;

#[cfg(test)]
mod tests;

pub use alua::{AluaState, PortGroup};
use lu::LogicalUnit;
use lu_map::LuMap;
use order::Drain;
use sense::Asc;
pub use transport::{cdb_len, TransportFault};
pub use transport_id::{protocol_id, InitiatorPort};

/// One I_T nexus: an initiator port talking to a target port (for iSCSI, one
/// session). Persistent reservations, unit attentions and RESERVE/RELEASE are
/// tracked per nexus.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Nexus {
    /// Unique id of this nexus for the life of the process (e.g. a session counter).
    pub id: u64,
    /// The initiator port, in its transport's form (for iSCSI the
    /// initiator name and the session's ISID).
    pub initiator: InitiatorPort,
    /// Relative target port identifier (1-based), one per target portal group.
    pub relative_port: u16,
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
    /// The transport can send data-in straight from a file's page cache
    /// (no data digest): a READ may then answer with
    /// [`Response::data_in_file`] instead of reading into memory.
    pub data_in_from_file: bool,
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
    /// Data-in that stays in the backing file's page cache (only when the
    /// command allowed it with [`Command::data_in_from_file`]; `data_in` is
    /// then empty).
    pub data_in_file: Option<blockdev::FileSlice>,
}

impl Response {
    /// Length of the data-in, wherever it is.
    pub fn data_in_len(&self) -> usize {
        self.data_in_file
            .as_ref()
            .map_or(self.data_in.len(), blockdev::FileSlice::len)
    }
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

/// Configuration of one logical unit.
#[derive(Debug, Clone)]
pub struct LuConfig {
    /// The backing device.
    pub device: blockdev::SharedDevice,
    /// Refuse every medium-modifying command (also in effect when the device is read-only).
    pub read_only: bool,
    /// Where persistent LU state (PR APTPL state) is kept; `None` keeps it in memory only.
    pub state_path: Option<PathBuf>,
}

/// Outcome of a task management function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmfResponse {
    /// Function complete.
    Complete,
    /// The referenced task does not exist.
    TaskDoesNotExist,
    /// The referenced logical unit does not exist.
    LunDoesNotExist,
    /// The function is not supported.
    NotSupported,
    /// The function was rejected.
    Rejected,
}

/// Errors of the SCSI layer's management interface (never of a command:
/// command failures are SCSI status and sense data).
#[derive(Debug, thiserror::Error)]
pub enum ScsiError {
    /// Two logical units were configured with the same number.
    #[error("LUN {0} configured twice")]
    DuplicateLun(u64),
    /// A LUN number does not fit the SAM addressing the target supports.
    #[error("LUN {0} is out of the supported range (0..16384)")]
    LunOutOfRange(u64),
    /// No target port group has this id.
    #[error("no target port group {0}")]
    UnknownPortGroup(u16),
    /// Port group configuration is inconsistent.
    #[error("bad port group configuration: {0}")]
    BadPortGroups(String),
    /// Persistent LU state could not be read or written.
    #[error("persistent state {path}: {source}")]
    State {
        /// The state file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A device failed.
    #[error("device: {0}")]
    Device(#[from] blockdev::BlockError),
}

/// The execution of one submitted command: a future of its [`Response`].
///
/// Polling it runs the command. Dropping it once polled and before it is
/// done does not stop the command half-way: what is left of it goes on in a
/// task of its own, so the task keeps its place in the task set, its LBA
/// range lock and its buffers until its device calls have returned, and only
/// then leaves. (Dropped before its first poll, it leaves at once: nothing
/// has started.) That
/// is what lets task management and session ends wait for the backend I/O of
/// the tasks they end ([`TasksEnded`]) rather than for a dropped future,
/// whose I/O would go on unseen (the cancellation rule of
/// [`blockdev::BlockDevice`]). A task that should not run at all is aborted
/// through the task set ([`ScsiTarget::abort_tasks`] and the like); it then
/// ends at once with TASK ABORTED if it had not started.
#[must_use = "a command runs when its execution is polled"]
pub struct Execution {
    fut: Option<Pin<Box<dyn Future<Output = Response> + Send + 'static>>>,
    /// Polled at least once: the command may have begun.
    started: bool,
    /// Set while the command is being polled: still set in `drop` means a
    /// poll panicked, and the command cannot be resumed.
    polling: bool,
}

impl std::fmt::Debug for Execution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Execution")
            .field("done", &self.fut.is_none())
            .finish()
    }
}

impl Future for Execution {
    type Output = Response;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response> {
        let this = self.get_mut();
        let Some(fut) = this.fut.as_mut() else {
            return Poll::Pending;
        };
        this.started = true;
        this.polling = true;
        let r = fut.as_mut().poll(cx);
        this.polling = false;
        if r.is_ready() {
            this.fut = None;
        }
        r
    }
}

impl Drop for Execution {
    fn drop(&mut self) {
        let Some(fut) = self.fut.take() else { return };
        if !self.started || self.polling {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    let _ = fut.await;
                });
            }
            Err(_) => tracing::warn!("SCSI command dropped outside a runtime: not finished"),
        }
    }
}

/// Tasks that task management, a session end or a reinstatement ended;
/// [`TasksEnded::wait`] returns once none of them is executing any more,
/// which means their backend I/O is over.
#[derive(Debug, Default)]
#[must_use = "the tasks may still be executing until `wait` returns"]
pub struct TasksEnded(Vec<Drain>);

impl TasksEnded {
    /// Waits until none of the ended tasks is executing.
    pub async fn wait(self) {
        for d in self.0 {
            d.wait().await;
        }
    }

    /// How many tasks were ended.
    pub fn len(&self) -> usize {
        self.0.iter().map(Drain::len).sum()
    }

    /// Whether no task was ended.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds the tasks of `other`.
    pub fn extend(&mut self, other: TasksEnded) {
        self.0.extend(other.0.into_iter().filter(|d| d.len() > 0));
    }
}

/// The I_T nexus identity that SCSI state is keyed by: the initiator port
/// (for iSCSI `name,i,0x<isid>`) and the relative target port. A reinstated
/// session keeps its nexus; another ISID is another initiator port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ItNexus {
    /// The initiator port.
    pub port: InitiatorPort,
    /// Relative target port identifier.
    pub rel_port: u16,
}

impl ItNexus {
    pub(crate) fn of(n: &Nexus) -> Self {
        ItNexus {
            port: n.initiator.clone(),
            rel_port: n.relative_port,
        }
    }
}

/// One SCSI target (one iSCSI target name) with its logical units, target
/// port groups and the I_T nexuses logged in to it. Shared by all sessions.
///
/// Logical units can be added ([`ScsiTarget::add_lun`]) and removed
/// ([`ScsiTarget::remove_lun`]) while it serves; every nexus then gets
/// REPORTED LUNS DATA HAS CHANGED. A unit follows its device's status
/// events: a resize raises CAPACITY DATA HAS CHANGED on every nexus.
#[derive(Debug)]
pub struct ScsiTarget {
    name: String,
    lus: LuMap,
    groups: Mutex<Vec<PortGroup>>,
    /// Logged-in sessions: session id -> I_T nexus.
    sessions: Mutex<HashMap<u64, ItNexus>>,
}

/// Checks the persistent reservation state at `path` as [`ScsiTarget::new`]
/// loads it (no file is fine), serving nothing: for a config check.
pub fn check_pr_state(path: &std::path::Path) -> Result<(), ScsiError> {
    pr::PrState::load(path).map(|_| ())
}

impl ScsiTarget {
    /// Builds a target. With no port groups, every relative port belongs to
    /// group 1, active/optimized. APTPL state is reloaded from each LU's `state_path`.
    pub fn new(
        name: &str,
        luns: Vec<(u64, LuConfig)>,
        port_groups: Vec<PortGroup>,
    ) -> Result<Arc<Self>, ScsiError> {
        let mut lus = lu_map::Units::new();
        for (lun, cfg) in luns {
            LuMap::check_new(&lus, lun)?;
            lus.insert(lun, Arc::new(LogicalUnit::new(lun, cfg)?));
        }
        let groups = alua::normalize_groups(port_groups)?;
        let target = Arc::new(ScsiTarget {
            name: name.to_string(),
            lus: LuMap::default(),
            groups: Mutex::new(groups),
            sessions: Mutex::new(HashMap::new()),
        });
        for (lun, lu) in lus {
            target.lus.insert(lun, lu.clone())?;
            device_status::follow(&target, &lu);
        }
        Ok(target)
    }

    /// Adds logical unit `lun` while the target serves (APTPL state is
    /// reloaded from `cfg.state_path`). Every I_T nexus gets REPORTED LUNS
    /// DATA HAS CHANGED on the units that were there before; the new unit
    /// starts with no unit attention.
    pub fn add_lun(self: &Arc<Self>, lun: u64, cfg: LuConfig) -> Result<(), ScsiError> {
        LuMap::check_new(&self.lus.snapshot(), lun)?;
        let lu = Arc::new(LogicalUnit::new(lun, cfg)?);
        let before = self.lus.insert(lun, lu.clone())?;
        device_status::follow(self, &lu);
        let all = self.nexuses();
        for other in before.values() {
            other.add_ua_to(all.iter(), Asc::REPORTED_LUNS_DATA_CHANGED);
        }
        tracing::info!(target = %self.name, lun, "logical unit added");
        Ok(())
    }

    /// Removes logical unit `lun` while the target serves: commands sent to
    /// it from now on get LOGICAL UNIT NOT SUPPORTED, and every I_T nexus
    /// gets REPORTED LUNS DATA HAS CHANGED on the units left. The commands
    /// it already took run to their end (none is aborted);
    /// [`LunRemoved::wait`] returns once they have, after which nothing of
    /// this target touches the device any more. None if there is no such
    /// unit.
    pub fn remove_lun(&self, lun: u64) -> Option<LunRemoved> {
        let (lu, left) = self.lus.remove(lun)?;
        let drain = lu.tasks.close();
        let all = self.nexuses();
        for other in left.values() {
            other.add_ua_to(all.iter(), Asc::REPORTED_LUNS_DATA_CHANGED);
        }
        tracing::info!(target = %self.name, lun, in_flight = drain.len(), "logical unit removed");
        Some(LunRemoved {
            drain,
            device: lu.device.clone(),
        })
    }

    /// The target's name (its IQN).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Registers the command in task-set order now and returns its
    /// [`Execution`], which runs it when polled and, once polled, runs it to
    /// its end even if dropped (see the transport contract in the module
    /// docs).
    pub fn submit(self: &Arc<Self>, nexus: &Nexus, cmd: Command) -> Execution {
        // A unit being removed takes no more tasks: the command then finds
        // no unit, as it would a moment later.
        let (lu, ticket) = self
            .lus
            .get(cmd.lun)
            .and_then(|lu| {
                let t = lu
                    .tasks
                    .enter(cmd.attr, &ItNexus::of(nexus), nexus.id, cmd.tag)?;
                Some((lu, t))
            })
            .unzip();
        let this = Arc::clone(self);
        let nexus = nexus.clone();
        let fut = Box::pin(async move {
            let resp = dispatch::execute(&this, lu.as_ref(), &nexus, &cmd, ticket).await;
            tracing::trace!(
                lun = cmd.lun,
                tag = cmd.tag,
                op = cmd.cdb.first().copied().unwrap_or(0),
                status = resp.status,
                "scsi command"
            );
            resp
        });
        Execution {
            fut: Some(fut),
            started: false,
            polling: false,
        }
    }

    /// Aborts, now, the tasks with these tags that session `nexus`
    /// submitted (the transport's ABORT TASK, and the tasks a task set
    /// function covers): those not started never run. The answer to the
    /// function waits for the result.
    pub fn abort_tasks(&self, nexus: &Nexus, tags: &[u32]) -> TasksEnded {
        self.abort_where(|_, session, tag| session == nexus.id && tags.contains(&tag))
    }

    /// The session `nexus` ends (connection lost, logout, reinstated): every
    /// task it submitted is aborted now. Wait for the result before the end
    /// of the session is final, then call [`ScsiTarget::nexus_logout`].
    pub fn end_session(&self, nexus: &Nexus) -> TasksEnded {
        self.abort_where(|_, session, _| session == nexus.id)
    }

    /// Aborts the matching tasks on every logical unit.
    fn abort_where(&self, which: impl Fn(&ItNexus, u64, u32) -> bool) -> TasksEnded {
        let mut ended = TasksEnded::default();
        for lu in self.lus.snapshot().values() {
            ended.extend(TasksEnded(vec![lu.tasks.abort(&which)]));
        }
        ended
    }

    /// Task management after the transport has aborted its own tasks with
    /// [`ScsiTarget::abort_tasks`] and waited for them. The tasks of other
    /// sessions that the function ends (a reset, CLEAR TASK SET) are aborted
    /// here, and the function completes only once none of them is executing.
    pub async fn task_management(&self, nexus: &Nexus, lun: u64, f: TmfFunction) -> TmfResponse {
        let me = ItNexus::of(nexus);
        let others = |_: &ItNexus, session: u64, _: u32| session != nexus.id;
        match f {
            TmfFunction::AbortTask { tag } => match self.lus.get(lun) {
                Some(lu) => {
                    // Normally done by the transport already; a no-op then.
                    lu.tasks
                        .abort(|_, session, t| session == nexus.id && t == tag)
                        .wait()
                        .await;
                    TmfResponse::Complete
                }
                None => TmfResponse::LunDoesNotExist,
            },
            TmfFunction::AbortTaskSet => {
                if self.lus.get(lun).is_some() {
                    TmfResponse::Complete
                } else {
                    TmfResponse::LunDoesNotExist
                }
            }
            TmfFunction::ClearTaskSet => match self.lus.get(lun) {
                Some(lu) => {
                    // Tasks of other nexuses are cleared too (TST=000: one task set per LU).
                    let cleared: Vec<ItNexus> =
                        self.nexuses().into_iter().filter(|n| *n != me).collect();
                    lu.add_ua_to(cleared.iter(), Asc::COMMANDS_CLEARED_BY_ANOTHER_INITIATOR);
                    lu.tasks.abort(others).wait().await;
                    TmfResponse::Complete
                }
                None => TmfResponse::LunDoesNotExist,
            },
            TmfFunction::ClearAca => TmfResponse::NotSupported,
            TmfFunction::LunReset => match self.lus.get(lun) {
                Some(lu) => {
                    lu.reset(&self.nexuses());
                    // The transport aborted the issuer's tasks; those of every
                    // other session (of this nexus too, when superseded) end
                    // here, before the reset is reported done.
                    lu.tasks.abort(others).wait().await;
                    TmfResponse::Complete
                }
                None => TmfResponse::LunDoesNotExist,
            },
            TmfFunction::TargetWarmReset | TmfFunction::TargetColdReset => {
                let all = self.nexuses();
                for lu in self.lus.snapshot().values() {
                    lu.reset(&all);
                    // A target reset is reported as POWER ON, RESET OR BUS DEVICE RESET.
                    lu.add_ua_to(all.iter(), Asc::POWER_ON_RESET);
                }
                self.abort_where(others).wait().await;
                TmfResponse::Complete
            }
        }
    }

    /// A new session (I_T nexus): it gets a POWER ON, RESET OR BUS DEVICE
    /// RESET OCCURRED unit attention. A session of the same initiator port
    /// (for iSCSI: initiator name and ISID) that is still registered is being
    /// reinstated: its tasks are aborted now, and any it still submits enter
    /// aborted. Wait for the result before the new session runs commands, so
    /// the old session's writes in flight cannot land over the new one's.
    pub fn nexus_login(&self, nexus: &Nexus) -> TasksEnded {
        let key = ItNexus::of(nexus);
        let mut superseded = TasksEnded::default();
        {
            let mut s = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
            for (&id, k) in s.iter() {
                if id != nexus.id && k.port == key.port {
                    for lu in self.lus.snapshot().values() {
                        superseded.extend(TasksEnded(vec![lu.tasks.fence(id)]));
                    }
                }
            }
            s.insert(nexus.id, key.clone());
        }
        for lu in self.lus.snapshot().values() {
            lu.nexus_login(&key);
        }
        superseded
    }

    /// I_T nexus loss (session closed or reinstated), after
    /// [`ScsiTarget::end_session`]'s tasks have ended.
    pub fn nexus_logout(&self, nexus: &Nexus) {
        let key = ItNexus::of(nexus);
        let still_there = {
            let mut s = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
            s.remove(&nexus.id);
            for lu in self.lus.snapshot().values() {
                lu.tasks.unfence(nexus.id);
            }
            s.values().any(|k| *k == key)
        };
        if !still_there {
            for lu in self.lus.snapshot().values() {
                lu.nexus_loss(&key);
            }
        }
    }

    /// Changes the asymmetric access state of a target port group; every
    /// nexus gets an ASYMMETRIC ACCESS STATE CHANGED unit attention.
    pub fn set_port_group_state(&self, id: u16, state: AluaState) -> Result<(), ScsiError> {
        {
            let mut g = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
            let grp = g
                .iter_mut()
                .find(|p| p.id == id)
                .ok_or(ScsiError::UnknownPortGroup(id))?;
            if grp.state == state {
                return Ok(());
            }
            grp.state = state;
        }
        let all = self.nexuses();
        for lu in self.lus.snapshot().values() {
            lu.add_ua_to(all.iter(), Asc::ASYMMETRIC_ACCESS_STATE_CHANGED);
        }
        Ok(())
    }

    /// Bytes of data-out `cdb` transfers to logical unit `lun`: its transfer
    /// length in the unit's blocks, for the write commands whose residuals
    /// a transport reports (WRITE, WRITE AND VERIFY, ORWRITE, COMPARE AND
    /// WRITE). None for other commands and for a LUN that does not exist.
    pub fn data_out_len(&self, lun: u64, cdb: &[u8]) -> Option<u64> {
        let blocks = cdb::data_out_blocks(cdb)?;
        let lu = self.lus.get(lun)?;
        Some(blocks * u64::from(lu.geometry().block_size))
    }

    /// Whether a logical unit with this number exists.
    pub fn lun_exists(&self, lun: u64) -> bool {
        self.lus.get(lun).is_some()
    }

    /// The numbers of the logical units now, in order.
    pub fn lun_numbers(&self) -> Vec<u64> {
        self.lus.snapshot().keys().copied().collect()
    }

    /// A REPORT LUNS from `nexus` has shown it the unit inventory: its
    /// REPORTED LUNS DATA HAS CHANGED attentions are cleared on every unit
    /// (SAM-5 5.14).
    pub(crate) fn inventory_reported(&self, nexus: &ItNexus) {
        for lu in self.lus.snapshot().values() {
            lu.state()
                .ua
                .withdraw(nexus, Asc::REPORTED_LUNS_DATA_CHANGED);
        }
    }

    /// Flushes every logical unit's device (shutdown).
    pub async fn flush_all(&self) -> Result<(), ScsiError> {
        for lu in self.lus.snapshot().values() {
            lu.device.flush().await?;
        }
        Ok(())
    }

    /// The distinct I_T nexuses logged in now.
    pub(crate) fn nexuses(&self) -> Vec<ItNexus> {
        let s = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        let mut v: Vec<ItNexus> = s.values().cloned().collect();
        v.sort();
        v.dedup();
        v
    }

    /// A snapshot of the target port groups.
    pub(crate) fn port_groups(&self) -> Vec<PortGroup> {
        self.groups
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The access state of the port group a relative port belongs to.
    pub(crate) fn port_state(&self, rel_port: u16) -> Option<AluaState> {
        let g = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        alua::group_of(&g, rel_port).map(|g| g.state)
    }

    /// The logical units now, by number.
    pub(crate) fn units(&self) -> Arc<lu_map::Units> {
        self.lus.snapshot()
    }

    /// The logical unit with this number.
    #[cfg(test)]
    pub(crate) fn lu(&self, lun: u64) -> Option<Arc<LogicalUnit>> {
        self.lus.get(lun)
    }
}

/// A logical unit taken out of its target ([`ScsiTarget::remove_lun`]).
#[derive(Debug)]
#[must_use = "the unit's commands may still be running until `wait` returns"]
pub struct LunRemoved {
    drain: Drain,
    device: blockdev::SharedDevice,
}

impl LunRemoved {
    /// Waits until every command the unit took before its removal has run
    /// to its end, and hands back its device (to flush and release).
    pub async fn wait(self) -> blockdev::SharedDevice {
        self.drain.wait().await;
        self.device
    }
}
