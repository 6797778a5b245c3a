//! Full Feature Phase of one session (RFC 7143 §4, §11): the CmdSN window,
//! command intake with immediate, unsolicited and solicited (R2T) data,
//! Data-In and status, NOP-In/NOP-Out both ways, task management, text
//! (SendTargets), logout and Reject.
//!
//! Sans-I/O in the style of quinn-proto: feed it received PDUs
//! ([`Session::handle_pdu`]), SCSI completions ([`Session::complete`]), task
//! management results ([`Session::tmf_done`]) and the time
//! ([`Session::handle_timeout`]); take [`Action`]s out with
//! [`Session::poll_action`] and ask [`Session::poll_timeout`] when to wake it.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use iscsi_proto::digest::Digest;
use iscsi_proto::frame::InPdu;
use iscsi_proto::login::{Established, SessionType};
use iscsi_proto::negotiate::Params;
use iscsi_proto::pdu::{
    decode_lun, reject, Ahs, Bhs, DataIn, DataOut, LogoutRequest, LogoutResponse, NopIn, NopOut,
    R2t, Reject, ScsiCommand, ScsiResponse, Sns, TextRequest, TextResponse, TmfRequest,
    TmfResponse, BHS_LEN, RESERVED_TAG,
};
use iscsi_proto::text::{TextAccumulator, TextList};

use crate::discovery::{send_targets, DiscoveryTarget};
use crate::outgoing::Outgoing;
use crate::r2t::{DataOutError, WriteBuffer};
use crate::tmf::{self, TmfOutcome};
use scsi_disk::{Command, Response, TaskAttr, TmfFunction, TransportFault};

/// Serial number arithmetic (RFC 1982, 32 bits): `a < b`.
pub fn sn_lt(a: u32, b: u32) -> bool {
    a != b && (a.wrapping_sub(b) as i32) < 0
}

/// Task set functions that may wait at once for the commands sent before
/// them (see [`Session`]'s handling of LUN-scoped functions); one more is
/// answered "function rejected". Initiators send one task management request
/// at a time per session, so this only bounds a misbehaving one.
pub const MAX_WAITING_TMFS: usize = 8;

/// Most write data one command may bring (the SCSI layer's maximum
/// transfer length is 32 MiB; COMPARE AND WRITE carries twice its blocks).
pub const MAX_DATA_OUT: u32 = 64 << 20;

/// Settings of the session layer that are not negotiated.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Commands the initiator may have outstanding (the CmdSN window).
    pub queue_depth: u32,
    /// Silence after which the target pings the initiator (zero: never).
    pub nop_interval: Duration,
    /// How long a ping may go unanswered before the connection is dropped.
    pub nop_timeout: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            queue_depth: 128,
            nop_interval: Duration::from_secs(5),
            nop_timeout: Duration::from_secs(10),
        }
    }
}

/// Why the session wants its connection closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The initiator logged out.
    Logout,
    /// The initiator stopped answering pings.
    Dead,
    /// A protocol error the connection cannot survive at ERL 0.
    ProtocolError(&'static str),
    /// TARGET COLD RESET.
    ColdReset,
}

/// What the session asks its edge to do.
#[derive(Debug)]
pub enum Action {
    /// Send this PDU (in order).
    Send(Outgoing),
    /// Hand this command to SCSI now (order of these actions is CmdSN order)
    /// and call [`Session::complete`] with its response.
    Execute {
        /// Initiator task tag.
        itt: u32,
        /// The command with all its data-out.
        cmd: Command,
    },
    /// Stop executing these tasks: their responses are no longer wanted.
    Abort {
        /// Initiator task tags.
        itts: Vec<u32>,
    },
    /// Run task management in SCSI, then call [`Session::tmf_done`].
    TaskManagement {
        /// ITT of the TMF request.
        itt: u32,
        /// Decoded LUN.
        lun: u64,
        /// The function.
        function: TmfFunction,
    },
    /// Send everything queued, then close the connection.
    Close(CloseReason),
}

#[derive(Debug)]
struct Task {
    cmd: ScsiCommand,
    cdb: Bytes,
    expected_in: u32,
    write: Option<WriteBuffer>,
    executing: bool,
}

/// A LUN-scoped task set function (ABORT TASK SET, CLEAR TASK SET, LUN
/// RESET) received for immediate delivery while commands sent before it
/// are still missing: it runs once ExpCmdSN reaches its CmdSN.
#[derive(Debug)]
struct WaitingTmf {
    req: TmfRequest,
    function: TmfFunction,
    lun: u64,
}

/// Which tasks a task set function covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TaskSetScope {
    /// The tasks on one LUN (ABORT TASK SET, CLEAR TASK SET, LUN RESET).
    Lun,
    /// Every task (TARGET WARM RESET, TARGET COLD RESET).
    Target,
}

impl TaskSetScope {
    /// The scope of `function`; `None` for the functions that act on one
    /// task (ABORT TASK) or on no task (CLEAR ACA).
    fn of(function: TmfFunction) -> Option<TaskSetScope> {
        match function {
            TmfFunction::AbortTaskSet | TmfFunction::ClearTaskSet | TmfFunction::LunReset => {
                Some(TaskSetScope::Lun)
            }
            TmfFunction::TargetWarmReset | TmfFunction::TargetColdReset => {
                Some(TaskSetScope::Target)
            }
            TmfFunction::AbortTask { .. } | TmfFunction::ClearAca => None,
        }
    }
}

#[derive(Debug)]
struct PendingText {
    ttt: u32,
    rest: Bytes,
    itt: u32,
}

/// The Full Feature Phase state of one session (one connection).
#[derive(Debug)]
pub struct Session {
    params: Params,
    kind: SessionType,
    cfg: SessionConfig,
    cid: u16,
    exp_cmd_sn: u32,
    max_cmd_sn: u32,
    stat_sn: u32,
    tasks: HashMap<u32, Task>,
    pending: BTreeMap<u32, InPdu>,
    /// CmdSNs inside the window that task management retired before their
    /// command ran (RFC 7143 11.5.1 b, a command that a task set function
    /// dropped, held or on arrival, or a gap a target reset plugged): when
    /// ExpCmdSN reaches one it steps over it, and the command, should it
    /// come, is discarded. Only
    /// CmdSNs in `[ExpCmdSN, MaxCmdSN]` are ever inserted and each leaves as
    /// ExpCmdSN passes it, so the set never holds more than the window
    /// (`queue_depth`) whatever the initiator sends.
    retired: BTreeSet<u32>,
    actions: VecDeque<Action>,
    next_ttt: u32,
    last_rx: Instant,
    ping: Option<(u32, Instant)>,
    logout: Option<LogoutRequest>,
    closed: bool,
    text_in: TextAccumulator,
    text_out: Option<PendingText>,
    targets: Vec<DiscoveryTarget>,
    own_target: Option<String>,
    tmf_pending: HashMap<u32, ()>,
    /// Immediate LUN-scoped task set functions waiting for the commands
    /// sent before them, in arrival order (at most [`MAX_WAITING_TMFS`]).
    waiting_tmfs: VecDeque<WaitingTmf>,
}

impl Session {
    /// A session that has just left the login phase.
    pub fn new(
        est: &Established,
        cfg: SessionConfig,
        targets: Vec<DiscoveryTarget>,
        own_target: Option<String>,
        now: Instant,
    ) -> Session {
        let max_cmd_sn = est.exp_cmd_sn.wrapping_add(cfg.queue_depth.max(1) - 1);
        Session {
            params: est.params.clone(),
            kind: est.session_type,
            cfg,
            cid: est.cid,
            exp_cmd_sn: est.exp_cmd_sn,
            max_cmd_sn,
            stat_sn: est.stat_sn,
            tasks: HashMap::new(),
            pending: BTreeMap::new(),
            retired: BTreeSet::new(),
            actions: VecDeque::new(),
            next_ttt: 1,
            last_rx: now,
            ping: None,
            logout: None,
            closed: false,
            text_in: TextAccumulator::default(),
            text_out: None,
            targets,
            own_target,
            tmf_pending: HashMap::new(),
            waiting_tmfs: VecDeque::new(),
        }
    }

    /// Negotiated parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The next action for the edge.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Tasks currently known (received and not yet answered).
    pub fn active_tasks(&self) -> usize {
        self.tasks.len()
    }

    /// When [`Session::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed || self.cfg.nop_interval.is_zero() {
            return None;
        }
        Some(match self.ping {
            Some((_, sent)) => sent + self.cfg.nop_timeout,
            None => self.last_rx + self.cfg.nop_interval,
        })
    }

    /// Advances the clock: pings a silent initiator, drops a dead one.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed || self.cfg.nop_interval.is_zero() {
            return;
        }
        match self.ping {
            Some((_, sent)) if self.last_rx > sent => self.ping = None,
            Some((_, sent)) => {
                if now >= sent + self.cfg.nop_timeout {
                    tracing::warn!("initiator did not answer NOP-In: dropping the connection");
                    self.close(CloseReason::Dead);
                }
                return;
            }
            None => {}
        }
        if now >= self.last_rx + self.cfg.nop_interval {
            let ttt = self.alloc_ttt();
            self.ping = Some((ttt, now));
            let sns = self.sns_no_advance();
            self.send(
                Bhs::NopIn(NopIn {
                    lun: 0,
                    itt: RESERVED_TAG,
                    ttt,
                    sns,
                }),
                Bytes::new(),
            );
        }
    }

    fn close(&mut self, why: CloseReason) {
        if !self.closed {
            self.closed = true;
            // A function still waiting for its commands is never answered:
            // the initiator learns from the closed connection.
            self.waiting_tmfs.clear();
            self.actions.push_back(Action::Close(why));
        }
    }

    fn alloc_ttt(&mut self) -> u32 {
        let t = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG {
            self.next_ttt = 1;
        }
        t
    }

    fn window_update(&mut self) {
        let depth = self.cfg.queue_depth.max(1);
        let used = (self.tasks.len() as u32).min(depth - 1);
        let candidate = self.exp_cmd_sn.wrapping_add(depth - 1 - used);
        if sn_lt(self.max_cmd_sn, candidate) {
            self.max_cmd_sn = candidate;
        }
    }

    fn sns_no_advance(&mut self) -> Sns {
        self.window_update();
        Sns {
            stat_sn: self.stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn,
        }
    }

    fn sns_advance(&mut self) -> Sns {
        let s = self.sns_no_advance();
        self.stat_sn = self.stat_sn.wrapping_add(1);
        s
    }

    fn send(&mut self, bhs: Bhs, data: Bytes) {
        let pdu = Outgoing::new(
            &bhs,
            data,
            self.params.header_digest,
            self.params.data_digest,
        );
        self.actions.push_back(Action::Send(pdu));
    }

    /// Sends `bhs` with a data segment that stays in a file until the socket
    /// takes it.
    fn send_file(&mut self, bhs: Bhs, file: blockdev::FileSlice) {
        match Outgoing::with_file(
            &bhs,
            file,
            self.params.header_digest,
            self.params.data_digest,
        ) {
            Ok(pdu) => self.actions.push_back(Action::Send(pdu)),
            Err(e) => {
                // Only possible with a data digest (the data is read to
                // compute it); the Data-In sequence cannot go on.
                tracing::error!(error = %e, "cannot read data-in for its digest");
                self.close(CloseReason::ProtocolError("data-in unreadable"));
            }
        }
    }

    fn reject(&mut self, raw: &[u8; BHS_LEN], reason: u8) {
        let sns = self.sns_advance();
        self.send(
            Bhs::Reject(Reject {
                reason,
                sns,
                data_sn: 0,
            }),
            Bytes::copy_from_slice(raw),
        );
    }

    /// A framing violation the edge found (e.g. DataSegmentLength over the
    /// limit): Reject the PDU and drop the connection (ERL 0).
    pub fn violation(&mut self, raw: &[u8; BHS_LEN], reason: u8) {
        if !self.closed {
            self.reject(raw, reason);
            self.close(CloseReason::ProtocolError("framing"));
        }
    }

    /// Handles one received PDU.
    pub fn handle_pdu(&mut self, pdu: InPdu, now: Instant) {
        if self.closed {
            return;
        }
        self.last_rx = now;
        if let Some((_, sent)) = self.ping {
            if now >= sent {
                self.ping = None;
            }
        }
        let bhs = match pdu.bhs {
            Ok(b) => b,
            Err(_) => {
                self.reject(&pdu.raw, reject::COMMAND_NOT_SUPPORTED);
                return;
            }
        };
        if pdu.data_digest_error {
            // ERL 0: discard the PDU and say why (§7.8). A command whose
            // immediate data was damaged is not executed.
            self.reject(&pdu.raw, reject::DATA_DIGEST_ERROR);
            if let Bhs::ScsiCommand(c) = bhs {
                if !c.immediate && c.cmd_sn == self.exp_cmd_sn {
                    self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
                    self.catch_up();
                }
            }
            return;
        }
        match bhs {
            Bhs::DataOut(d) => self.data_out(&pdu.raw, &d, pdu.data),
            Bhs::Snack(_) => self.reject(&pdu.raw, reject::COMMAND_NOT_SUPPORTED),
            Bhs::NopOut(n) if n.itt == RESERVED_TAG => {
                // An answer to our ping, or a ping that wants no answer.
                if !n.immediate {
                    self.reject(&pdu.raw, reject::PROTOCOL_ERROR);
                }
            }
            Bhs::NopOut(NopOut {
                immediate, cmd_sn, ..
            })
            | Bhs::ScsiCommand(ScsiCommand {
                immediate, cmd_sn, ..
            })
            | Bhs::TmfRequest(TmfRequest {
                immediate, cmd_sn, ..
            })
            | Bhs::TextRequest(TextRequest {
                immediate, cmd_sn, ..
            })
            | Bhs::LogoutRequest(LogoutRequest {
                immediate, cmd_sn, ..
            }) => {
                if immediate {
                    // An immediate command carries the CmdSN of the next
                    // non-immediate one without consuming it (RFC 7143
                    // 4.2.2.1), so it runs even when that CmdSN is retired:
                    // retirement is about the non-immediate command that
                    // owns the number.
                    self.command(bhs, pdu);
                    // An immediate ABORT TASK may have moved ExpCmdSN.
                    self.catch_up();
                } else if self.covered_by_waiting_tmf(&bhs, cmd_sn) {
                    // Sent before a task set function that is waiting for
                    // it: the function covers it, so it never reaches SCSI
                    // and is not answered (see `drop_held_commands`).
                    tracing::debug!(cmd_sn, "command covered by a waiting task set function");
                    self.retire(cmd_sn);
                    self.catch_up();
                } else if cmd_sn == self.exp_cmd_sn {
                    self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
                    self.command(bhs, pdu);
                    self.catch_up();
                } else if self.retired.contains(&cmd_sn) {
                    // Aborted before it arrived (RFC 7143 11.5.1 b): the
                    // initiator already has "function complete" for it.
                    tracing::debug!(cmd_sn, "command with a retired CmdSN: discarded");
                } else if sn_lt(self.exp_cmd_sn, cmd_sn) && !sn_lt(self.max_cmd_sn, cmd_sn) {
                    // Inside the window but early: hold it until the gap fills.
                    let tmf = match bhs {
                        Bhs::TmfRequest(t) => Some(t),
                        _ => None,
                    };
                    self.pending.insert(cmd_sn, pdu);
                    if let Some(t) = tmf {
                        self.task_set_function_held(&t);
                    }
                } else {
                    // Outside the window: silently ignored (§4.2.2.1).
                    tracing::debug!(
                        cmd_sn,
                        exp = self.exp_cmd_sn,
                        max = self.max_cmd_sn,
                        "CmdSN outside the window: ignored"
                    );
                }
            }
            Bhs::LoginRequest(_) => self.reject(&pdu.raw, reject::PROTOCOL_ERROR),
            // Target-to-initiator opcodes.
            _ => self.reject(&pdu.raw, reject::PROTOCOL_ERROR),
        }
    }

    /// Moves ExpCmdSN over what is ready at it: commands held until their
    /// turn run, retired CmdSNs are stepped over.
    fn catch_up(&mut self) {
        loop {
            // A function waiting at this CmdSN runs before the command that
            // carries it (a new task, sent after the function).
            self.run_waiting_tmfs(self.exp_cmd_sn);
            if self.retired.remove(&self.exp_cmd_sn) {
                self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
                continue;
            }
            let Some(next) = self.pending.remove(&self.exp_cmd_sn) else {
                return;
            };
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
            if let Ok(b) = next.bhs {
                self.command(b, next);
            }
        }
    }

    /// ABORT TASK for a tag with no task in progress (RFC 7143 11.5.1):
    /// the response code, after retiring the CmdSN when case b) applies.
    fn abort_unknown_task(&mut self, t: &TmfRequest, tag: u32) -> u8 {
        // Received but held behind a CmdSN gap: it never reached SCSI, so it
        // is aborted here by dropping it and retiring its CmdSN.
        let held = self.pending.iter().find_map(|(sn, p)| match &p.bhs {
            Ok(Bhs::ScsiCommand(c)) if c.itt == tag => Some(*sn),
            _ => None,
        });
        if let Some(sn) = held {
            self.pending.remove(&sn);
            self.retire(sn);
            return tmf::response::COMPLETE;
        }
        // b) Not seen, but RefCmdSN is in the window, has not arrived, and
        // is below the request's own CmdSN (so the initiator did send that
        // command before the TMF): consider it received. The last condition
        // also keeps an immediate task out: it carries the CmdSN of the next
        // non-immediate command, which the TMF carries as well, and retiring
        // it would discard an unrelated command.
        let r = t.ref_cmd_sn;
        let in_window = !sn_lt(r, self.exp_cmd_sn) && !sn_lt(self.max_cmd_sn, r);
        if in_window && sn_lt(r, t.cmd_sn) && !self.pending.contains_key(&r) {
            self.retire(r);
            return tmf::response::COMPLETE;
        }
        // c) RefCmdSN outside the window: the task was received and
        // answered already (or never sent); it does not exist.
        tmf::response::TASK_DOES_NOT_EXIST
    }

    /// Drops the held commands (received, but waiting behind a CmdSN gap)
    /// that a task set function covers, retiring their CmdSNs so the
    /// window does not stall on them.
    ///
    /// Covered are the commands the initiator sent before the request, so
    /// CmdSN below the request's own (RFC 7143 11.5.1: task management acts
    /// on the commands with a lower CmdSN): a non-immediate request runs
    /// only at its turn, and an immediate one carries the next CmdSN the
    /// initiator will use (RFC 7143 4.2.2.1). ABORT TASK SET covers this I_T nexus's
    /// tasks on the LUN, CLEAR TASK SET and LUN RESET every task on the LUN,
    /// a target reset every task (the affected tasks of RFC 7143 4.2.3.2);
    /// this session's commands are all of this nexus, so the three cover
    /// the same here (other sessions' tasks are the SCSI layer's). Immediate
    /// SCSI commands are never held, waited for or dropped: they are not
    /// ordered by CmdSN, so one sent before the request cannot be told from
    /// one sent after; they run as they arrive, and a function aborts them
    /// like any running task on its LUN (see `sent_before`).
    ///
    /// Missing commands (RFC 7143 4.2.3.3, standard multi-task abort
    /// semantics: the target waits for the affected tasks' commands, in
    /// CmdSN order, before acting; 11.5.1: an immediate request is taken at
    /// once, but what it does may be postponed until the commands it acts
    /// on have arrived):
    ///
    /// - A LUN-scoped function waits until every CmdSN below its own has
    ///   arrived or been retired, i.e. until ExpCmdSN reaches it. A
    ///   non-immediate one is held behind the gap like any command; an
    ///   immediate one waits in `waiting_tmfs` and runs from
    ///   [`Session::catch_up`] when ExpCmdSN reaches its CmdSN, before the
    ///   command at that CmdSN (sent after it: a new task). Meanwhile a
    ///   covered command is dropped as it arrives, never reaching SCSI (the
    ///   iSCSI layer may withhold commands a task management request
    ///   received before them was meant to act on, RFC 7143 4.2.2.1);
    ///   commands for other LUNs and non-SCSI requests in the gap run in
    ///   order. Only then does the function abort the tasks still running
    ///   on its LUN, go to SCSI and get answered, so its response is the
    ///   fence it must be: no command it covers runs after it.
    /// - Waiting never blocks the gap: an immediate request takes no CmdSN
    ///   and a non-immediate one only its own, the missing CmdSNs lie
    ///   inside the window (below the request's, which is at most
    ///   MaxCmdSN + 1), and MaxCmdSN never shrinks. There is no timer: if
    ///   the gap never fills the session's command stream is stalled anyway;
    ///   the initiator's task management timeout escalates to a target
    ///   reset (below: it releases the waiting functions) or to dropping
    ///   the connection, and a closed session forgets its waiting functions
    ///   unanswered. At most [`MAX_WAITING_TMFS`] wait; one more is
    ///   rejected. A logout waits for them like for any running function.
    /// - A target reset does not wait: for target-scoped functions RFC 7143
    ///   4.2.3.3 lets the target consider every command not yet received
    ///   below the request as received, with no waiting period. So it drops
    ///   every held command below it and plugs the gaps (a command that
    ///   arrives late is discarded as retired), and the LUN-scoped functions
    ///   waiting below it, whose gaps it just plugged, go to SCSI before it.
    ///   A non-immediate one held behind a gap therefore runs at once.
    ///
    /// A dropped command never reached SCSI and gets no response: the
    /// initiator that issued the function considers its own affected tasks
    /// terminated by the function response (SAM-5, aborting commands: a
    /// command aborted by a function of its own I_T nexus ends without
    /// status; TAS "command aborted" status goes to other nexuses only), and
    /// RFC 7143 11.5.1 bars any response to an affected task after the
    /// function response.
    fn drop_held_commands(&mut self, t: &TmfRequest, function: TmfFunction, lun: u64) {
        let all_luns = match TaskSetScope::of(function) {
            Some(TaskSetScope::Lun) => false,
            Some(TaskSetScope::Target) => true,
            None => return,
        };
        let covered: Vec<u32> = self
            .pending
            .iter()
            .filter(|(sn, p)| {
                sn_lt(**sn, t.cmd_sn)
                    && matches!(&p.bhs, Ok(Bhs::ScsiCommand(c))
                        if all_luns || decode_lun(c.lun) == lun)
            })
            .map(|(sn, _)| *sn)
            .collect();
        for sn in covered {
            tracing::debug!(cmd_sn = sn, ?function, "held command dropped");
            self.pending.remove(&sn);
            self.retire(sn);
        }
        if all_luns {
            let mut sn = self.exp_cmd_sn;
            while sn_lt(sn, t.cmd_sn) && !sn_lt(self.max_cmd_sn, sn) {
                if !self.pending.contains_key(&sn) {
                    self.retire(sn);
                }
                sn = sn.wrapping_add(1);
            }
        }
    }

    /// Marks an in-window CmdSN as processed without a command. ExpCmdSN
    /// steps over it at once if it was next (so the TMF response shows the
    /// new window); commands held behind it run from [`Session::catch_up`]
    /// once the TMF is answered, never from inside another command.
    fn retire(&mut self, sn: u32) {
        tracing::debug!(cmd_sn = sn, "CmdSN retired by task management");
        self.retired.insert(sn);
        while self.retired.remove(&self.exp_cmd_sn) {
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
        }
    }

    fn command(&mut self, bhs: Bhs, pdu: InPdu) {
        if self.logout.is_some() {
            self.reject(&pdu.raw, reject::WAITING_FOR_LOGOUT);
            return;
        }
        match bhs {
            Bhs::NopOut(n) => {
                let mut data = pdu.data;
                data.truncate(self.params.send_data_segment_length as usize);
                let sns = self.sns_advance();
                self.send(
                    Bhs::NopIn(NopIn {
                        lun: n.lun,
                        itt: n.itt,
                        ttt: RESERVED_TAG,
                        sns,
                    }),
                    data,
                );
            }
            Bhs::ScsiCommand(c) => self.scsi_command(&pdu.raw, c, pdu.ahs, pdu.data),
            Bhs::TmfRequest(t) => self.tmf(t),
            Bhs::TextRequest(t) => self.text(&pdu.raw, t, &pdu.data),
            Bhs::LogoutRequest(l) => {
                self.logout = Some(l);
                self.try_logout();
            }
            _ => {}
        }
    }

    fn scsi_command(&mut self, raw: &[u8; BHS_LEN], c: ScsiCommand, ahs: Bytes, data: Bytes) {
        if self.kind == SessionType::Discovery {
            self.reject(raw, reject::PROTOCOL_ERROR);
            return;
        }
        if self.tasks.contains_key(&c.itt) {
            self.reject(raw, reject::TASK_IN_PROGRESS);
            return;
        }
        let Ok(ahs) = Ahs::decode(&ahs) else {
            self.reject(raw, reject::INVALID_PDU_FIELD);
            return;
        };
        let cdb = match &ahs.extended_cdb {
            Some(ext) => {
                let mut v = BytesMut::with_capacity(16 + ext.len());
                v.put_slice(&c.cdb);
                v.put_slice(ext);
                v.freeze()
            }
            None => Bytes::copy_from_slice(&c.cdb[..scsi_disk::cdb_len(c.cdb[0])]),
        };
        let immediate_len = data.len() as u32;
        if immediate_len > 0
            && (!c.write
                || !self.params.immediate_data
                || immediate_len > self.params.first_burst_length
                || immediate_len > c.edtl)
        {
            self.reject(raw, reject::PROTOCOL_ERROR);
            return;
        }
        if c.write && !c.final_ && self.params.initial_r2t {
            self.reject(raw, reject::PROTOCOL_ERROR);
            return;
        }
        let expected_in = if c.read {
            if c.write {
                ahs.bidi_read_length.unwrap_or(0)
            } else {
                c.edtl
            }
        } else {
            0
        };
        if c.write && c.edtl > MAX_DATA_OUT {
            // Never buffer more than a command may legitimately carry: the
            // command ends at once (its Data-Out PDUs are then discarded).
            tracing::warn!(
                itt = c.itt,
                edtl = c.edtl,
                "write larger than MAX_DATA_OUT refused"
            );
            let resp = Response::transport_fault(TransportFault::TransferTooLong);
            self.send_status(c.itt, &resp, false, false, 0, 0);
            return;
        }
        let write = if c.write && c.edtl > 0 {
            let unsolicited_end = if c.final_ {
                immediate_len
            } else {
                self.params.first_burst_length.min(c.edtl)
            };
            Some(WriteBuffer::new(c.edtl, data, unsolicited_end))
        } else {
            None
        };
        let itt = c.itt;
        self.tasks.insert(
            itt,
            Task {
                cmd: c,
                cdb,
                expected_in,
                write,
                executing: false,
            },
        );
        self.advance_write(itt);
    }

    /// Issues R2Ts for a write still missing data, or executes it once complete.
    fn advance_write(&mut self, itt: u32) {
        let max_out = self.params.max_outstanding_r2t;
        let burst = self.params.max_burst_length;
        let Some(task) = self.tasks.get_mut(&itt) else {
            return;
        };
        if task.executing {
            return;
        }
        let mut r2ts = Vec::new();
        if let Some(w) = task.write.as_mut() {
            if !w.complete() {
                while let Some((offset, len)) = w.next_r2t(max_out, burst) {
                    let ttt = self.next_ttt;
                    self.next_ttt = self.next_ttt.wrapping_add(1);
                    if self.next_ttt == RESERVED_TAG {
                        self.next_ttt = 1;
                    }
                    let r2t_sn = w.issue_r2t(ttt, offset, len);
                    r2ts.push(R2t {
                        lun: task.cmd.lun,
                        itt,
                        ttt,
                        sns: Sns::default(),
                        r2t_sn,
                        buffer_offset: offset,
                        desired_length: len,
                    });
                }
                for mut r in r2ts {
                    r.sns = self.sns_no_advance();
                    self.send(Bhs::R2t(r), Bytes::new());
                }
                return;
            }
        }
        task.executing = true;
        let data_out = task.write.as_mut().map(|w| w.take()).unwrap_or_default();
        let attr = match task.cmd.attr {
            0 => TaskAttr::Simple,
            2 => TaskAttr::Ordered,
            3 => TaskAttr::HeadOfQueue,
            4 => TaskAttr::Aca,
            _ => TaskAttr::Simple,
        };
        let cmd = Command {
            lun: decode_lun(task.cmd.lun),
            cdb: task.cdb.clone(),
            data_out,
            expected_in: task.expected_in,
            tag: itt,
            attr,
            data_in_from_file: self.params.data_digest == Digest::None,
        };
        self.actions.push_back(Action::Execute { itt, cmd });
    }

    fn data_out(&mut self, raw: &[u8; BHS_LEN], d: &DataOut, data: Bytes) {
        let Some(task) = self.tasks.get_mut(&d.itt) else {
            // Data for a task that was aborted or never existed: discarded.
            tracing::debug!(itt = d.itt, "Data-Out for an unknown task");
            return;
        };
        let Some(w) = task.write.as_mut().filter(|_| !task.executing) else {
            self.reject(raw, reject::PROTOCOL_ERROR);
            return;
        };
        match w.accept(d.ttt, d.data_sn, d.buffer_offset, d.final_, data) {
            Ok(()) => self.advance_write(d.itt),
            Err(e) => {
                // The task cannot complete: end it with CHECK CONDITION,
                // ABORTED COMMAND and keep the connection (later Data-Out
                // PDUs of the task are discarded as unknown).
                tracing::warn!(itt = d.itt, error = %e, "bad Data-Out: task terminated");
                self.tasks.remove(&d.itt);
                let resp = Response::transport_fault(data_out_fault(e));
                self.send_status(d.itt, &resp, false, false, 0, 0);
            }
        }
    }

    /// Delivers the response of a command handed out with [`Action::Execute`].
    /// `data_out_wanted` is the data-out length the CDB implies, when the
    /// edge knows it (for write residuals). Responses of aborted tasks are
    /// ignored.
    pub fn complete(&mut self, itt: u32, resp: Response, data_out_wanted: Option<u64>) {
        let Some(task) = self.tasks.remove(&itt) else {
            return;
        };
        if self.closed {
            return;
        }
        let lun = task.cmd.lun;
        let expected = task.expected_in;
        let have = resp.data_in_len() as u64;
        let write_residual = data_out_wanted
            .filter(|_| task.cmd.write && !task.cmd.read)
            .map(|w| {
                let e = u64::from(task.cmd.edtl);
                match w.cmp(&e) {
                    std::cmp::Ordering::Greater => {
                        (true, false, (w - e).min(u64::from(u32::MAX)) as u32)
                    }
                    std::cmp::Ordering::Less => (false, true, (e - w) as u32),
                    std::cmp::Ordering::Equal => (false, false, 0),
                }
            });
        let (overflow, underflow, residual) = if let Some(r) = write_residual {
            r
        } else if task.cmd.read {
            match have.cmp(&u64::from(expected)) {
                std::cmp::Ordering::Greater => (
                    true,
                    false,
                    (have - u64::from(expected)).min(u64::from(u32::MAX)) as u32,
                ),
                std::cmp::Ordering::Less => (false, true, expected - have as u32),
                std::cmp::Ordering::Equal => (false, false, 0),
            }
        } else {
            (false, false, 0)
        };
        let send_len = (have.min(u64::from(expected))) as usize;
        let piggyback = resp.sense.is_none() && send_len > 0;
        if send_len > 0 {
            let file = resp.data_in_file.as_ref().map(|f| f.slice(0, send_len));
            let data = match file {
                Some(_) => Bytes::new(),
                None => resp.data_in.slice(..send_len),
            };
            let seg = (self.params.send_data_segment_length as usize).max(512);
            let burst = (self.params.max_burst_length as usize).max(seg);
            let mut offset = 0usize;
            let mut data_sn = 0u32;
            while offset < send_len {
                let n = seg.min(send_len - offset).min(burst - offset % burst);
                let last = offset + n == send_len;
                let end_of_burst = last || (offset + n).is_multiple_of(burst);
                let status_here = last && piggyback;
                let sns = if status_here {
                    self.sns_advance()
                } else {
                    self.sns_no_advance()
                };
                let pdu = DataIn {
                    final_: end_of_burst,
                    ack: false,
                    overflow: status_here && overflow,
                    underflow: status_here && underflow,
                    status_present: status_here,
                    status: if status_here { resp.status } else { 0 },
                    lun: if status_here { 0 } else { lun },
                    itt,
                    ttt: RESERVED_TAG,
                    sns,
                    data_sn,
                    buffer_offset: offset as u32,
                    residual: if status_here { residual } else { 0 },
                };
                match &file {
                    Some(f) => self.send_file(Bhs::DataIn(pdu), f.slice(offset, n)),
                    None => self.send(Bhs::DataIn(pdu), data.slice(offset..offset + n)),
                }
                offset += n;
                data_sn += 1;
            }
            if piggyback {
                self.try_logout();
                return;
            }
            self.send_status(itt, &resp, overflow, underflow, residual, data_sn);
        } else {
            self.send_status(itt, &resp, overflow, underflow, residual, 0);
        }
        self.try_logout();
    }

    fn send_status(
        &mut self,
        itt: u32,
        resp: &Response,
        overflow: bool,
        underflow: bool,
        residual: u32,
        exp_data_sn: u32,
    ) {
        let data = match &resp.sense {
            Some(s) if !s.is_empty() => {
                let mut v = BytesMut::with_capacity(2 + s.len());
                v.put_u16(s.len().min(usize::from(u16::MAX)) as u16);
                v.put_slice(s);
                v.freeze()
            }
            _ => Bytes::new(),
        };
        let sns = self.sns_advance();
        let r = ScsiResponse {
            bidi_overflow: false,
            bidi_underflow: false,
            overflow,
            underflow,
            response: 0,
            status: resp.status,
            itt,
            snack_tag: 0,
            sns,
            exp_data_sn,
            bidi_residual: 0,
            residual,
        };
        self.send(Bhs::ScsiResponse(r), data);
    }

    fn tmf(&mut self, t: TmfRequest) {
        if self.kind == SessionType::Discovery {
            self.tmf_reply(t.itt, tmf::response::REJECTED);
            return;
        }
        let lun = decode_lun(t.lun);
        let Some(function) = tmf::function(t.function, t.rtt) else {
            let code = if t.function == tmf::TASK_REASSIGN {
                tmf::response::REASSIGN_NOT_SUPPORTED
            } else {
                tmf::response::NOT_SUPPORTED
            };
            self.tmf_reply(t.itt, code);
            return;
        };
        match TaskSetScope::of(function) {
            Some(TaskSetScope::Lun) if t.immediate && self.missing_below(t.cmd_sn) => {
                if self.waiting_tmfs.len() >= MAX_WAITING_TMFS {
                    tracing::warn!(itt = t.itt, "too many task set functions waiting: rejected");
                    self.tmf_reply(t.itt, tmf::response::REJECTED);
                    return;
                }
                self.drop_held_commands(&t, function, lun);
                tracing::debug!(
                    itt = t.itt,
                    cmd_sn = t.cmd_sn,
                    exp = self.exp_cmd_sn,
                    ?function,
                    "task set function waits for the commands sent before it"
                );
                self.waiting_tmfs.push_back(WaitingTmf {
                    req: t,
                    function,
                    lun,
                });
                return;
            }
            Some(TaskSetScope::Lun) => self.drop_held_commands(&t, function, lun),
            Some(TaskSetScope::Target) => {
                self.drop_held_commands(&t, function, lun);
                // The gaps below are plugged, so the functions waiting on
                // them (all sent before this one) have what they waited
                // for: they go to SCSI first.
                self.run_waiting_tmfs(t.cmd_sn);
            }
            None => {}
        }
        self.run_tmf(t, function, lun);
    }

    /// Whether a CmdSN below `cmd_sn` (the CmdSN an immediate request
    /// carries: the next one the initiator will use) has not arrived yet:
    /// if ExpCmdSN is below it, ExpCmdSN itself is missing (a held or
    /// retired CmdSN at ExpCmdSN would have been stepped over). A `cmd_sn`
    /// beyond MaxCmdSN + 1 names commands the initiator may not have sent;
    /// nothing is waited for then.
    fn missing_below(&self, cmd_sn: u32) -> bool {
        sn_lt(self.exp_cmd_sn, cmd_sn) && !sn_lt(self.max_cmd_sn.wrapping_add(1), cmd_sn)
    }

    /// Runs the waiting task set functions whose CmdSN is at most `upto`,
    /// in the order they arrived.
    fn run_waiting_tmfs(&mut self, upto: u32) {
        while let Some(i) = self
            .waiting_tmfs
            .iter()
            .position(|w| !sn_lt(upto, w.req.cmd_sn))
        {
            if let Some(w) = self.waiting_tmfs.remove(i) {
                tracing::debug!(itt = w.req.itt, "waiting task set function runs");
                self.run_tmf(w.req, w.function, w.lun);
            }
        }
    }

    /// A non-immediate task set function held behind a CmdSN gap: the held
    /// commands it covers go now (later ones are caught by
    /// [`Session::covered_by_waiting_tmf`] as they arrive), and a target
    /// reset plugs the gaps below it, which lets it run at once.
    fn task_set_function_held(&mut self, t: &TmfRequest) {
        if self.kind == SessionType::Discovery {
            return;
        }
        let Some(function) = tmf::function(t.function, t.rtt) else {
            return;
        };
        if TaskSetScope::of(function).is_some() {
            self.drop_held_commands(t, function, decode_lun(t.lun));
            self.catch_up();
        }
    }

    /// Whether `bhs`, a non-immediate PDU with CmdSN `cmd_sn` that has not
    /// been processed yet, is a SCSI command sent before a LUN-scoped task
    /// set function for its LUN that is still waiting: an immediate one in
    /// `waiting_tmfs`, or a non-immediate one held behind a gap.
    fn covered_by_waiting_tmf(&self, bhs: &Bhs, cmd_sn: u32) -> bool {
        let Bhs::ScsiCommand(c) = bhs else {
            return false;
        };
        if self.kind == SessionType::Discovery
            || (self.waiting_tmfs.is_empty() && self.pending.is_empty())
            || sn_lt(cmd_sn, self.exp_cmd_sn)
            || sn_lt(self.max_cmd_sn, cmd_sn)
            || self.retired.contains(&cmd_sn)
            || self.pending.contains_key(&cmd_sn)
        {
            return false;
        }
        let lun = decode_lun(c.lun);
        let covers = |req: &TmfRequest| decode_lun(req.lun) == lun && sn_lt(cmd_sn, req.cmd_sn);
        self.waiting_tmfs.iter().any(|w| covers(&w.req))
            || self.pending.values().any(|p| match &p.bhs {
                Ok(Bhs::TmfRequest(t)) => {
                    covers(t)
                        && tmf::function(t.function, t.rtt)
                            .and_then(TaskSetScope::of)
                            .is_some_and(|s| s == TaskSetScope::Lun)
                }
                _ => false,
            })
    }

    /// Acts on a task management function now: aborts the tasks it covers
    /// and hands it to SCSI (or answers an ABORT TASK for an unknown task).
    fn run_tmf(&mut self, t: TmfRequest, function: TmfFunction, lun: u64) {
        let victims: Vec<u32> = match function {
            TmfFunction::AbortTask { tag } => {
                if !self.tasks.contains_key(&tag) {
                    let code = self.abort_unknown_task(&t, tag);
                    self.tmf_reply(t.itt, code);
                    return;
                }
                vec![tag]
            }
            TmfFunction::AbortTaskSet | TmfFunction::ClearTaskSet | TmfFunction::LunReset => self
                .tasks
                .iter()
                .filter(|(_, task)| decode_lun(task.cmd.lun) == lun && sent_before(&task.cmd, &t))
                .map(|(i, _)| *i)
                .collect(),
            TmfFunction::TargetWarmReset | TmfFunction::TargetColdReset => self
                .tasks
                .iter()
                .filter(|(_, task)| sent_before(&task.cmd, &t))
                .map(|(i, _)| *i)
                .collect(),
            TmfFunction::ClearAca => Vec::new(),
        };
        for v in &victims {
            self.tasks.remove(v);
        }
        if !victims.is_empty() {
            self.actions.push_back(Action::Abort { itts: victims });
        }
        self.tmf_pending.insert(t.itt, ());
        self.actions.push_back(Action::TaskManagement {
            itt: t.itt,
            lun,
            function,
        });
        if function == TmfFunction::TargetColdReset {
            self.tmf_pending.insert(t.itt ^ 0x8000_0000, ());
        }
    }

    /// Delivers the result of an [`Action::TaskManagement`].
    pub fn tmf_done(&mut self, itt: u32, outcome: TmfOutcome) {
        if self.tmf_pending.remove(&itt).is_none() {
            return;
        }
        self.tmf_reply(itt, outcome.code());
        if self.tmf_pending.remove(&(itt ^ 0x8000_0000)).is_some() {
            // A cold reset ends every connection after the response (§11.5.1).
            self.close(CloseReason::ColdReset);
        }
        self.try_logout();
    }

    fn tmf_reply(&mut self, itt: u32, response: u8) {
        let sns = self.sns_advance();
        self.send(
            Bhs::TmfResponse(TmfResponse { response, itt, sns }),
            Bytes::new(),
        );
    }

    fn text(&mut self, raw: &[u8; BHS_LEN], t: TextRequest, data: &[u8]) {
        // Continuation of a long response we are sending.
        if t.ttt != RESERVED_TAG {
            match self.text_out.take() {
                Some(p) if p.ttt == t.ttt && p.itt == t.itt => {
                    self.text_chunk(t, p.rest);
                }
                _ => self.reject(raw, reject::INVALID_PDU_FIELD),
            }
            return;
        }
        self.text_out = None;
        let keys = match self.text_in.push(data, t.cont) {
            Ok(Some(k)) => k,
            Ok(None) => {
                // More request text follows: acknowledge with an empty response.
                let sns = self.sns_advance();
                let ttt = self.alloc_ttt();
                self.send(
                    Bhs::TextResponse(TextResponse {
                        final_: false,
                        cont: false,
                        lun: t.lun,
                        itt: t.itt,
                        ttt,
                        sns,
                    }),
                    Bytes::new(),
                );
                return;
            }
            Err(_) => {
                self.reject(raw, reject::PROTOCOL_ERROR);
                return;
            }
        };
        let mut reply = TextList::default();
        for (k, v) in &keys.0 {
            if k == "SendTargets" {
                let list = send_targets(
                    v,
                    &self.targets,
                    self.kind == SessionType::Discovery,
                    self.own_target.as_deref(),
                );
                reply.0.extend(list.0);
            } else if iscsi_proto::negotiate::key_def(k).is_some() {
                // Full Feature Phase renegotiation is not offered.
                reply.push(k.clone(), "Reject");
            } else {
                reply.push(k.clone(), "NotUnderstood");
            }
        }
        self.text_chunk(t, Bytes::from(reply.encode()));
    }

    fn text_chunk(&mut self, t: TextRequest, all: Bytes) {
        let max = self.params.send_data_segment_length as usize;
        let sns = self.sns_advance();
        if all.len() > max {
            let ttt = self.alloc_ttt();
            let first = all.slice(..max);
            self.text_out = Some(PendingText {
                ttt,
                rest: all.slice(max..),
                itt: t.itt,
            });
            self.send(
                Bhs::TextResponse(TextResponse {
                    final_: false,
                    cont: true,
                    lun: t.lun,
                    itt: t.itt,
                    ttt,
                    sns,
                }),
                first,
            );
        } else {
            self.send(
                Bhs::TextResponse(TextResponse {
                    final_: true,
                    cont: false,
                    lun: t.lun,
                    itt: t.itt,
                    ttt: RESERVED_TAG,
                    sns,
                }),
                all,
            );
        }
    }

    fn try_logout(&mut self) {
        let Some(l) = self.logout else { return };
        if !self.tasks.is_empty() || !self.tmf_pending.is_empty() || !self.waiting_tmfs.is_empty() {
            return;
        }
        self.logout = None;
        let response = match l.reason {
            0 => 0,
            1 if l.cid == self.cid => 0,
            1 => 1,
            _ => 2, // connection recovery is not supported at ERL 0
        };
        let sns = self.sns_advance();
        self.send(
            Bhs::LogoutResponse(LogoutResponse {
                response,
                itt: l.itt,
                sns,
                time2wait: 0,
                time2retain: 0,
            }),
            Bytes::new(),
        );
        if response == 0 {
            self.close(CloseReason::Logout);
        }
    }

    /// Sends an Asynchronous Message (e.g. event 1: the target requests a
    /// logout, with Parameter3 the seconds it waits).
    pub fn async_message(&mut self, event: u8, params: [u16; 3], sense: Bytes) {
        let sns = self.sns_advance();
        self.send(
            Bhs::AsyncMessage(iscsi_proto::pdu::AsyncMessage {
                lun: 0,
                sns,
                event,
                vcode: 0,
                params,
            }),
            sense,
        );
    }

    /// Number of PDUs held because their CmdSN is ahead of ExpCmdSN.
    pub fn held_commands(&self) -> usize {
        self.pending.len()
    }

    /// Returns an error-free reference to the current command window.
    pub fn window(&self) -> (u32, u32) {
        (self.exp_cmd_sn, self.max_cmd_sn)
    }
}

/// Whether a task's command was sent before task management request `t`,
/// so that a task set function covers it: a non-immediate command with a
/// lower CmdSN. One at or above the request's CmdSN was sent after it (only
/// an immediate request can meet such a task: one that arrives after
/// commands the initiator sent later). An immediate command carries the
/// CmdSN of the next non-immediate one whenever it is sent, so its order
/// against the request is unknown: it stays covered.
fn sent_before(cmd: &ScsiCommand, t: &TmfRequest) -> bool {
    cmd.immediate || sn_lt(cmd.cmd_sn, t.cmd_sn)
}

/// How a write whose Data-Out broke the sequence rules ends: ABORTED
/// COMMAND with the additional sense code SPC-4 has for the break.
fn data_out_fault(e: DataOutError) -> TransportFault {
    match e {
        DataOutError::Unsolicited => TransportFault::UnexpectedUnsolicitedData,
        DataOutError::ShortSequence => TransportFault::NotEnoughUnsolicitedData,
        DataOutError::Offset => TransportFault::DataOffset,
        DataOutError::Overrun => TransportFault::TooMuchWriteData,
        DataOutError::DataSn | DataOutError::UnknownTtt => TransportFault::DataPhase,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iscsi_proto::login::SessionKey;
    use iscsi_proto::pdu::{Framing, LogoutRequest};
    use proptest::prelude::*;

    fn est(params: Params) -> Established {
        Established {
            session_type: SessionType::Normal,
            key: SessionKey {
                initiator: "iqn.i".into(),
                isid: [0; 6],
                target: Some(0),
            },
            tsih: 1,
            cid: 0,
            params,
            exp_cmd_sn: 10,
            stat_sn: 100,
        }
    }

    fn params() -> Params {
        Params {
            send_data_segment_length: 1024,
            recv_data_segment_length: 8192,
            max_burst_length: 4096,
            first_burst_length: 2048,
            initial_r2t: false,
            immediate_data: true,
            max_outstanding_r2t: 2,
            ..Params::default()
        }
    }

    fn pdu(bhs: Bhs, data: &[u8]) -> InPdu {
        let raw = bhs.to_bytes(Framing {
            ahs_len: 0,
            data_len: data.len(),
        });
        InPdu {
            raw,
            bhs: Ok(bhs),
            ahs: Bytes::new(),
            data: Bytes::copy_from_slice(data),
            data_digest_error: false,
        }
    }

    fn cmd(
        itt: u32,
        cmd_sn: u32,
        cdb0: u8,
        edtl: u32,
        read: bool,
        write: bool,
        final_: bool,
    ) -> Bhs {
        let mut cdb = [0u8; 16];
        cdb[0] = cdb0;
        Bhs::ScsiCommand(ScsiCommand {
            immediate: false,
            final_,
            read,
            write,
            attr: 0,
            lun: 0,
            itt,
            edtl,
            cmd_sn,
            exp_stat_sn: 0,
            cdb,
        })
    }

    fn drain(s: &mut Session) -> (Vec<Bhs>, Vec<Action>) {
        let mut sent = Vec::new();
        let mut other = Vec::new();
        while let Some(a) = s.poll_action() {
            match a {
                Action::Send(p) => {
                    let v = p.to_vec();
                    let raw: [u8; BHS_LEN] = v[..BHS_LEN].try_into().unwrap();
                    sent.push(Bhs::decode(&raw).unwrap());
                }
                a => other.push(a),
            }
        }
        (sent, other)
    }

    fn session(now: Instant) -> Session {
        let cfg = SessionConfig {
            queue_depth: 8,
            nop_interval: Duration::from_secs(5),
            nop_timeout: Duration::from_secs(3),
        };
        Session::new(&est(params()), cfg, vec![], Some("iqn.t".into()), now)
    }

    #[test]
    fn cmdsn_window_orders_and_ignores() {
        let t = Instant::now();
        let mut s = session(t);
        // Early command (CmdSN 11) is held until 10 arrives.
        s.handle_pdu(pdu(cmd(2, 11, 0, 0, false, false, true), &[]), t);
        assert_eq!(s.held_commands(), 1);
        assert!(drain(&mut s).1.is_empty());
        s.handle_pdu(pdu(cmd(1, 10, 0, 0, false, false, true), &[]), t);
        let (_, acts) = drain(&mut s);
        let itts: Vec<u32> = acts
            .iter()
            .filter_map(|a| {
                if let Action::Execute { itt, .. } = a {
                    Some(*itt)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(itts, vec![1, 2]);
        assert_eq!(s.window().0, 12);
        // Outside the window, before or after: silently ignored.
        s.handle_pdu(pdu(cmd(3, 5, 0, 0, false, false, true), &[]), t);
        s.handle_pdu(pdu(cmd(4, 12 + 100, 0, 0, false, false, true), &[]), t);
        let (sent, acts) = drain(&mut s);
        assert!(sent.is_empty() && acts.is_empty());
        assert_eq!(s.window().0, 12);
    }

    #[test]
    fn read_is_split_with_status_in_the_last_data_in() {
        let t = Instant::now();
        let mut s = session(t);
        s.handle_pdu(pdu(cmd(7, 10, 0x28, 3000, true, false, true), &[]), t);
        drain(&mut s);
        // 5000 bytes available, 3000 expected: overflow of 2000.
        s.complete(
            7,
            Response {
                status: 0,
                sense: None,
                data_in: Bytes::from(vec![1u8; 5000]),
                data_in_file: None,
            },
            None,
        );
        let (sent, _) = drain(&mut s);
        assert_eq!(sent.len(), 3);
        for (i, b) in sent.iter().enumerate() {
            let Bhs::DataIn(d) = b else { panic!() };
            assert_eq!(d.data_sn, i as u32);
            assert_eq!(d.buffer_offset, 1024 * i as u32);
            assert_eq!(d.status_present, i == 2);
        }
        let Bhs::DataIn(last) = sent[2] else { panic!() };
        assert!(last.overflow && last.final_);
        assert_eq!(last.residual, 2000);
        assert_eq!(last.sns.stat_sn, 100);
    }

    #[test]
    fn sense_goes_in_a_separate_response_with_underflow() {
        let t = Instant::now();
        let mut s = session(t);
        s.handle_pdu(pdu(cmd(7, 10, 0x28, 4096, true, false, true), &[]), t);
        drain(&mut s);
        s.complete(
            7,
            Response {
                status: 2,
                sense: Some(Bytes::from_static(&[0x70, 0, 5])),
                data_in: Bytes::new(),
                data_in_file: None,
            },
            None,
        );
        let (sent, _) = drain(&mut s);
        let [Bhs::ScsiResponse(r)] = sent[..] else {
            panic!("{sent:?}")
        };
        assert_eq!((r.status, r.underflow, r.residual), (2, true, 4096));
    }

    #[test]
    fn write_with_immediate_unsolicited_and_r2t_data() {
        let t = Instant::now();
        let mut s = session(t);
        // 10000 bytes: 1000 immediate, unsolicited to FirstBurstLength (2048), R2Ts for the rest.
        s.handle_pdu(
            pdu(cmd(9, 10, 0x2a, 10000, false, true, false), &[1u8; 1000]),
            t,
        );
        let (sent, _) = drain(&mut s);
        let r2ts: Vec<R2t> = sent
            .iter()
            .filter_map(|b| if let Bhs::R2t(r) = b { Some(*r) } else { None })
            .collect();
        assert_eq!(r2ts.len(), 2); // MaxOutstandingR2T
        assert_eq!(
            (
                r2ts[0].buffer_offset,
                r2ts[0].desired_length,
                r2ts[0].r2t_sn
            ),
            (2048, 4096, 0)
        );
        assert_eq!(
            (
                r2ts[1].buffer_offset,
                r2ts[1].desired_length,
                r2ts[1].r2t_sn
            ),
            (6144, 3856, 1)
        );
        let d = |ttt, sn, off, fin| {
            Bhs::DataOut(DataOut {
                final_: fin,
                lun: 0,
                itt: 9,
                ttt,
                exp_stat_sn: 0,
                data_sn: sn,
                buffer_offset: off,
            })
        };
        s.handle_pdu(pdu(d(RESERVED_TAG, 0, 1000, true), &[2u8; 1048]), t);
        s.handle_pdu(pdu(d(r2ts[0].ttt, 0, 2048, true), &[3u8; 4096]), t);
        assert!(drain(&mut s).1.is_empty());
        s.handle_pdu(pdu(d(r2ts[1].ttt, 0, 6144, false), &[4u8; 1024]), t);
        s.handle_pdu(pdu(d(r2ts[1].ttt, 1, 7168, true), &[4u8; 2832]), t);
        let (_, acts) = drain(&mut s);
        let [Action::Execute { itt: 9, cmd }] = &acts[..] else {
            panic!("{acts:?}")
        };
        assert_eq!(cmd.data_out.len(), 10000);
        assert_eq!(
            (
                cmd.data_out[999],
                cmd.data_out[1000],
                cmd.data_out[2048],
                cmd.data_out[9999]
            ),
            (1, 2, 3, 4)
        );
        // Write residual from the CDB's transfer length.
        s.complete(9, Response::default(), Some(10240));
        let (sent, _) = drain(&mut s);
        let [Bhs::ScsiResponse(r)] = sent[..] else {
            panic!()
        };
        assert!(r.overflow && r.residual == 240);
    }

    #[test]
    fn oversized_writes_are_refused_without_buffering() {
        let t = Instant::now();
        let mut s = session(t);
        s.handle_pdu(
            pdu(
                cmd(3, 10, 0x2a, u32::MAX - 198, false, true, false),
                &[0u8; 512],
            ),
            t,
        );
        let (sent, acts) = drain(&mut s);
        assert!(acts.is_empty());
        let [Bhs::ScsiResponse(r)] = sent[..] else {
            panic!("{sent:?}")
        };
        assert_eq!((r.itt, r.status), (3, 2));
        assert_eq!(s.active_tasks(), 0);
        // Its unsolicited data is discarded; the session goes on.
        let d = DataOut {
            final_: true,
            lun: 0,
            itt: 3,
            ttt: RESERVED_TAG,
            exp_stat_sn: 0,
            data_sn: 0,
            buffer_offset: 512,
        };
        s.handle_pdu(pdu(Bhs::DataOut(d), &[0u8; 512]), t);
        assert!(drain(&mut s).0.is_empty());
    }

    #[test]
    fn nop_pings_find_dead_initiators() {
        let t = Instant::now();
        let mut s = session(t);
        assert_eq!(s.poll_timeout(), Some(t + Duration::from_secs(5)));
        s.handle_timeout(t + Duration::from_secs(5));
        let (sent, _) = drain(&mut s);
        let [Bhs::NopIn(ping)] = sent[..] else {
            panic!()
        };
        assert_eq!(ping.itt, RESERVED_TAG);
        assert_ne!(ping.ttt, RESERVED_TAG);
        assert_eq!(ping.sns.stat_sn, 100); // a ping does not advance StatSN
                                           // Answered: alive.
        let answer = NopOut {
            immediate: true,
            lun: 0,
            itt: RESERVED_TAG,
            ttt: ping.ttt,
            cmd_sn: 10,
            exp_stat_sn: 100,
        };
        s.handle_pdu(pdu(Bhs::NopOut(answer), &[]), t + Duration::from_secs(6));
        s.handle_timeout(t + Duration::from_secs(9));
        assert!(drain(&mut s).1.is_empty());
        // Next ping unanswered: dropped after the timeout.
        s.handle_timeout(t + Duration::from_secs(11));
        drain(&mut s);
        s.handle_timeout(t + Duration::from_secs(13));
        assert!(drain(&mut s).1.is_empty());
        s.handle_timeout(t + Duration::from_secs(14));
        let (_, acts) = drain(&mut s);
        assert!(matches!(acts[..], [Action::Close(CloseReason::Dead)]));
    }

    #[test]
    fn abort_task_and_lun_reset() {
        let t = Instant::now();
        let mut s = session(t);
        s.handle_pdu(pdu(cmd(1, 10, 0x28, 512, true, false, true), &[]), t);
        s.handle_pdu(pdu(cmd(2, 11, 0x28, 512, true, false, true), &[]), t);
        drain(&mut s);
        let tmf = |itt, f, rtt, sn| {
            Bhs::TmfRequest(TmfRequest {
                immediate: true,
                function: f,
                lun: 0,
                itt,
                rtt,
                cmd_sn: sn,
                exp_stat_sn: 0,
                ref_cmd_sn: 10,
                exp_data_sn: 0,
            })
        };
        s.handle_pdu(pdu(tmf(50, 1, 1, 12), &[]), t);
        let (_, acts) = drain(&mut s);
        assert!(
            matches!(&acts[..], [Action::Abort { itts }, Action::TaskManagement { itt: 50, .. }] if itts == &vec![1])
        );
        s.tmf_done(50, TmfOutcome::Complete);
        // A response for the aborted task is dropped.
        s.complete(1, Response::default(), None);
        let (sent, _) = drain(&mut s);
        assert!(matches!(
            sent[..],
            [Bhs::TmfResponse(TmfResponse {
                response: 0,
                itt: 50,
                ..
            })]
        ));
        // ABORT TASK for a task already answered: it no longer exists (the
        // initiator has its response, or is about to get it).
        s.complete(2, Response::default(), None);
        drain(&mut s);
        s.handle_pdu(pdu(tmf(51, 1, 2, 12), &[]), t);
        let (sent, _) = drain(&mut s);
        assert!(matches!(
            sent[..],
            [Bhs::TmfResponse(TmfResponse {
                response: 1,
                itt: 51,
                ..
            })]
        ));
        // LUN RESET aborts what is left.
        s.handle_pdu(pdu(cmd(3, 12, 0x28, 512, true, false, true), &[]), t);
        drain(&mut s);
        s.handle_pdu(pdu(tmf(52, 5, 0, 13), &[]), t);
        let (_, acts) = drain(&mut s);
        assert!(
            matches!(&acts[..], [Action::Abort { itts }, Action::TaskManagement { itt: 52, function: TmfFunction::LunReset, .. }] if itts == &vec![3])
        );
        assert_eq!(s.active_tasks(), 0);
    }

    /// An immediate ABORT TASK (function 1) for `rtt` at `ref_cmd_sn`,
    /// sent when the initiator's next CmdSN is `cmd_sn`.
    fn abort_task(itt: u32, rtt: u32, ref_cmd_sn: u32, cmd_sn: u32) -> Bhs {
        Bhs::TmfRequest(TmfRequest {
            immediate: true,
            function: 1,
            lun: 0,
            itt,
            rtt,
            cmd_sn,
            exp_stat_sn: 0,
            ref_cmd_sn,
            exp_data_sn: 0,
        })
    }

    /// The ITTs of the commands handed to SCSI and the TMF responses sent.
    fn executed_and_tmf(s: &mut Session) -> (Vec<u32>, Vec<(u32, u8)>) {
        let (sent, acts) = drain(s);
        let executed = acts
            .iter()
            .filter_map(|a| match a {
                Action::Execute { itt, .. } => Some(*itt),
                _ => None,
            })
            .collect();
        let tmfs = sent
            .iter()
            .filter_map(|b| match b {
                Bhs::TmfResponse(r) => Some((r.itt, r.response)),
                _ => None,
            })
            .collect();
        (executed, tmfs)
    }

    #[test]
    fn abort_of_a_command_not_yet_arrived_retires_its_cmd_sn() {
        let t = Instant::now();
        let mut s = session(t); // ExpCmdSN 10, MaxCmdSN 17
                                // The initiator sent 10 (ITT 1), 11 (ITT 2), 12 (ITT 3); none has
                                // arrived when it aborts ITT 2 (RefCmdSN 11) with its next CmdSN 13.
        s.handle_pdu(pdu(abort_task(50, 2, 11, 13), &[]), t);
        let (executed, tmfs) = executed_and_tmf(&mut s);
        assert!(executed.is_empty());
        assert_eq!(tmfs, vec![(50, tmf::response::COMPLETE)]);
        assert_eq!(s.window().0, 10);
        // The aborted command arrives late: not executed, not held, no answer.
        s.handle_pdu(pdu(cmd(2, 11, 0x28, 512, true, false, true), &[]), t);
        let (sent, acts) = drain(&mut s);
        assert!(sent.is_empty() && acts.is_empty(), "{sent:?} {acts:?}");
        assert_eq!(s.held_commands(), 0);
        // 12 waits for 10 only; once 10 arrives both run, stepping over 11.
        s.handle_pdu(pdu(cmd(3, 12, 0x28, 512, true, false, true), &[]), t);
        assert_eq!(executed_and_tmf(&mut s).0, Vec::<u32>::new());
        s.handle_pdu(pdu(cmd(1, 10, 0x28, 512, true, false, true), &[]), t);
        assert_eq!(executed_and_tmf(&mut s).0, vec![1, 3]);
        assert_eq!(s.window().0, 13);
        assert!(s.retired.is_empty());
        // The window goes on as usual.
        s.handle_pdu(pdu(cmd(4, 13, 0x28, 512, true, false, true), &[]), t);
        assert_eq!(executed_and_tmf(&mut s).0, vec![4]);
    }

    #[test]
    fn abort_at_exp_cmd_sn_moves_the_window_and_releases_held_commands() {
        let t = Instant::now();
        let mut s = session(t);
        // 11 arrived early and is held behind 10, which is then aborted.
        s.handle_pdu(pdu(cmd(2, 11, 0x28, 512, true, false, true), &[]), t);
        assert_eq!(s.held_commands(), 1);
        s.handle_pdu(pdu(abort_task(50, 1, 10, 12), &[]), t);
        let (sent, acts) = drain(&mut s);
        let [Bhs::TmfResponse(r), ..] = sent[..] else {
            panic!("{sent:?}")
        };
        // Function complete, and its ExpCmdSN already counts 10 as done.
        assert_eq!((r.itt, r.response, r.sns.exp_cmd_sn), (50, 0, 11));
        assert!(matches!(acts[..], [Action::Execute { itt: 2, .. }]));
        assert_eq!(s.window().0, 12);
        // 10 arriving now is below the window: ignored.
        s.handle_pdu(pdu(cmd(1, 10, 0x28, 512, true, false, true), &[]), t);
        let (sent, acts) = drain(&mut s);
        assert!(sent.is_empty() && acts.is_empty());
    }

    #[test]
    fn abort_of_a_held_command_drops_it_unexecuted() {
        let t = Instant::now();
        let mut s = session(t);
        s.handle_pdu(pdu(cmd(2, 11, 0x28, 512, true, false, true), &[]), t);
        s.handle_pdu(pdu(cmd(3, 12, 0x28, 512, true, false, true), &[]), t);
        s.handle_pdu(pdu(abort_task(50, 2, 11, 13), &[]), t);
        let (executed, tmfs) = executed_and_tmf(&mut s);
        assert!(executed.is_empty());
        assert_eq!(tmfs, vec![(50, tmf::response::COMPLETE)]);
        assert_eq!(s.held_commands(), 1);
        s.handle_pdu(pdu(cmd(1, 10, 0x28, 512, true, false, true), &[]), t);
        assert_eq!(executed_and_tmf(&mut s).0, vec![1, 3]);
        assert_eq!(s.window().0, 13);
    }

    /// A READ(10) on `lun` at `cmd_sn`.
    fn read_on(itt: u32, cmd_sn: u32, lun: u64) -> Bhs {
        let Bhs::ScsiCommand(mut c) = cmd(itt, cmd_sn, 0x28, 512, true, false, true) else {
            unreachable!()
        };
        c.lun = iscsi_proto::pdu::encode_lun(lun);
        Bhs::ScsiCommand(c)
    }

    /// A task management request for `lun`; `cmd_sn` is its own CmdSN (the
    /// initiator's next one when `immediate`).
    fn task_set_tmf(itt: u32, function: u8, lun: u64, cmd_sn: u32, immediate: bool) -> Bhs {
        Bhs::TmfRequest(TmfRequest {
            immediate,
            function,
            lun: iscsi_proto::pdu::encode_lun(lun),
            itt,
            rtt: RESERVED_TAG,
            cmd_sn,
            exp_stat_sn: 0,
            ref_cmd_sn: 0,
            exp_data_sn: 0,
        })
    }

    /// The actions of interest in the order the session asked for them.
    #[derive(Debug, PartialEq, Eq)]
    enum Step {
        Execute(u32),
        Abort(Vec<u32>),
        Tmf(u32, TmfFunction),
        TmfResponse(u32, u8),
    }

    fn steps(s: &mut Session) -> Vec<Step> {
        let mut out = Vec::new();
        while let Some(a) = s.poll_action() {
            match a {
                Action::Send(p) => {
                    let v = p.to_vec();
                    let raw: [u8; BHS_LEN] = v[..BHS_LEN].try_into().unwrap();
                    if let Ok(Bhs::TmfResponse(r)) = Bhs::decode(&raw) {
                        out.push(Step::TmfResponse(r.itt, r.response));
                    }
                }
                Action::Execute { itt, .. } => out.push(Step::Execute(itt)),
                Action::Abort { itts } => out.push(Step::Abort(itts)),
                Action::TaskManagement { itt, function, .. } => out.push(Step::Tmf(itt, function)),
                Action::Close(_) => {}
            }
        }
        out
    }

    /// The initiator sent 10 (LUN 0, ITT 1), 11 (LUN 0, ITT 2), 12 (LUN 1,
    /// ITT 3), then `function` for LUN 0 with CmdSN 13, then a new command
    /// on LUN 0 (ITT 4). 10 is late: it arrives after everything else. The
    /// function drops 11 at once, waits for 10 and drops it too when it
    /// comes, lets 12 (another LUN) run, then runs and is answered; the
    /// command sent after it runs after it.
    fn task_set_function_waits_for_the_commands_sent_before_it(
        function: u8,
        sam: TmfFunction,
        immediate: bool,
    ) {
        let t = Instant::now();
        let mut s = session(t); // window [10, 17]
        let after = if immediate { 13 } else { 14 };
        s.handle_pdu(pdu(read_on(2, 11, 0), &[]), t);
        s.handle_pdu(pdu(read_on(3, 12, 1), &[]), t);
        assert_eq!(s.held_commands(), 2);
        s.handle_pdu(pdu(task_set_tmf(50, function, 0, 13, immediate), &[]), t);
        // Not acted on, not answered: 10 is missing below it. 11 is gone.
        assert_eq!(steps(&mut s), vec![]);
        let held = if immediate { 1 } else { 2 }; // 12 (and the request)
        assert_eq!(s.held_commands(), held);
        s.tmf_done(50, TmfOutcome::Complete);
        assert_eq!(steps(&mut s), vec![]);
        s.handle_pdu(pdu(read_on(4, after, 0), &[]), t);
        assert_eq!(steps(&mut s), vec![]);
        // 10 fills the gap: covered, so dropped unexecuted.
        s.handle_pdu(pdu(read_on(1, 10, 0), &[]), t);
        assert_eq!(
            steps(&mut s),
            vec![Step::Execute(3), Step::Tmf(50, sam), Step::Execute(4)]
        );
        s.tmf_done(50, TmfOutcome::Complete);
        assert_eq!(
            steps(&mut s),
            vec![Step::TmfResponse(50, tmf::response::COMPLETE)]
        );
        assert_eq!(s.window().0, after + 1);
        assert_eq!(s.held_commands(), 0);
        assert!(s.retired.is_empty());
        // Retransmissions of the dropped commands are below the window now.
        s.handle_pdu(pdu(read_on(1, 10, 0), &[]), t);
        s.handle_pdu(pdu(read_on(2, 11, 0), &[]), t);
        assert_eq!(steps(&mut s), vec![]);
        s.handle_pdu(pdu(read_on(5, after + 1, 0), &[]), t);
        assert_eq!(steps(&mut s), vec![Step::Execute(5)]);
    }

    #[test]
    fn immediate_lun_reset_waits_for_the_commands_sent_before_it() {
        task_set_function_waits_for_the_commands_sent_before_it(5, TmfFunction::LunReset, true);
    }

    #[test]
    fn lun_reset_waits_for_the_commands_sent_before_it() {
        task_set_function_waits_for_the_commands_sent_before_it(5, TmfFunction::LunReset, false);
    }

    #[test]
    fn immediate_abort_task_set_waits_for_the_commands_sent_before_it() {
        task_set_function_waits_for_the_commands_sent_before_it(2, TmfFunction::AbortTaskSet, true);
    }

    #[test]
    fn abort_task_set_waits_for_the_commands_sent_before_it() {
        task_set_function_waits_for_the_commands_sent_before_it(
            2,
            TmfFunction::AbortTaskSet,
            false,
        );
    }

    #[test]
    fn immediate_clear_task_set_waits_for_the_commands_sent_before_it() {
        task_set_function_waits_for_the_commands_sent_before_it(4, TmfFunction::ClearTaskSet, true);
    }

    #[test]
    fn clear_task_set_waits_for_the_commands_sent_before_it() {
        task_set_function_waits_for_the_commands_sent_before_it(
            4,
            TmfFunction::ClearTaskSet,
            false,
        );
    }

    #[test]
    fn a_task_set_function_aborts_what_ran_and_spares_commands_sent_after_it() {
        let t = Instant::now();
        let mut s = session(t);
        // 10 (LUN 0) arrived in order and runs; 11 (LUN 0) is late. An
        // immediate LUN RESET (next CmdSN 12) then 12 (LUN 0) arrive.
        s.handle_pdu(pdu(read_on(1, 10, 0), &[]), t);
        assert_eq!(steps(&mut s), vec![Step::Execute(1)]);
        s.handle_pdu(pdu(task_set_tmf(50, 5, 0, 12, true), &[]), t);
        s.handle_pdu(pdu(read_on(3, 12, 0), &[]), t);
        assert_eq!(steps(&mut s), vec![]);
        // 10 may still complete: its response may precede the function's.
        s.complete(1, Response::default(), None);
        assert_eq!(steps(&mut s), vec![]);
        assert_eq!(s.active_tasks(), 0);
        s.handle_pdu(pdu(read_on(4, 13, 0), &[]), t);
        s.handle_pdu(pdu(read_on(2, 11, 0), &[]), t);
        assert_eq!(
            steps(&mut s),
            vec![
                Step::Tmf(50, TmfFunction::LunReset),
                Step::Execute(3),
                Step::Execute(4)
            ]
        );
        // A task still running when the function acts is aborted by it.
        let mut s = session(t);
        s.handle_pdu(pdu(read_on(1, 10, 0), &[]), t);
        s.handle_pdu(pdu(task_set_tmf(50, 5, 0, 12, true), &[]), t);
        s.handle_pdu(pdu(read_on(2, 11, 0), &[]), t);
        assert_eq!(
            steps(&mut s),
            vec![
                Step::Execute(1),
                Step::Abort(vec![1]),
                Step::Tmf(50, TmfFunction::LunReset)
            ]
        );
    }

    #[test]
    fn an_immediate_function_spares_a_command_sent_after_it_that_overtook_it() {
        let t = Instant::now();
        let mut s = session(t);
        // The initiator sent an immediate LUN RESET (next CmdSN 10), then
        // 10 (LUN 0); 10 arrives first and runs. It is a new task: the
        // function arriving late does not abort it.
        s.handle_pdu(pdu(read_on(1, 10, 0), &[]), t);
        s.handle_pdu(pdu(task_set_tmf(50, 5, 0, 10, true), &[]), t);
        assert_eq!(
            steps(&mut s),
            vec![Step::Execute(1), Step::Tmf(50, TmfFunction::LunReset)]
        );
        assert_eq!(s.active_tasks(), 1);
    }

    #[test]
    fn non_immediate_task_set_function_drops_a_late_command_sent_before_it() {
        let t = Instant::now();
        let mut s = session(t);
        // A non-immediate LUN RESET at 11 is held behind 10; 12 on the same
        // LUN was sent after it, so it is a new task and runs after it. 10
        // was sent before it and arrives after it: dropped, not run.
        s.handle_pdu(pdu(task_set_tmf(50, 5, 0, 11, false), &[]), t);
        s.handle_pdu(pdu(read_on(2, 12, 0), &[]), t);
        assert_eq!(s.held_commands(), 2);
        s.handle_pdu(pdu(read_on(1, 10, 0), &[]), t);
        assert_eq!(
            steps(&mut s),
            vec![Step::Tmf(50, TmfFunction::LunReset), Step::Execute(2)]
        );
        assert_eq!(s.window().0, 13);
    }

    #[test]
    fn a_target_reset_releases_the_functions_waiting_below_it() {
        let t = Instant::now();
        let mut s = session(t);
        // 10 (LUN 0) is missing; 11 (LUN 1) is held. An immediate LUN
        // RESET for LUN 0 (next CmdSN 12) waits for 10; then an immediate
        // TARGET WARM RESET, also at 12, plugs 10 and drops 11. The LUN
        // RESET runs first, then the target reset.
        s.handle_pdu(pdu(read_on(2, 11, 1), &[]), t);
        s.handle_pdu(pdu(task_set_tmf(50, 5, 0, 12, true), &[]), t);
        assert_eq!(steps(&mut s), vec![]);
        s.handle_pdu(pdu(task_set_tmf(51, 6, 0, 12, true), &[]), t);
        assert_eq!(
            steps(&mut s),
            vec![
                Step::Tmf(50, TmfFunction::LunReset),
                Step::Tmf(51, TmfFunction::TargetWarmReset)
            ]
        );
        assert_eq!((s.window().0, s.held_commands()), (12, 0));
        s.tmf_done(50, TmfOutcome::Complete);
        s.tmf_done(51, TmfOutcome::Complete);
        assert_eq!(
            steps(&mut s),
            vec![Step::TmfResponse(50, 0), Step::TmfResponse(51, 0)]
        );
        s.handle_pdu(pdu(read_on(1, 10, 0), &[]), t);
        assert_eq!(steps(&mut s), vec![]);
    }

    #[test]
    fn functions_waiting_at_once_each_cover_their_own_lun() {
        let t = Instant::now();
        let mut s = session(t);
        // Sent: 10 (LUN 0), LUN RESET LUN 0 (next CmdSN 11), 11 (LUN 1),
        // ABORT TASK SET LUN 1 (next CmdSN 12), NOP-Out 12. Both commands
        // are late.
        s.handle_pdu(pdu(task_set_tmf(50, 5, 0, 11, true), &[]), t);
        s.handle_pdu(pdu(task_set_tmf(51, 2, 1, 12, true), &[]), t);
        let nop = NopOut {
            immediate: false,
            lun: 0,
            itt: 7,
            ttt: RESERVED_TAG,
            cmd_sn: 12,
            exp_stat_sn: 0,
        };
        s.handle_pdu(pdu(Bhs::NopOut(nop), &[]), t);
        s.handle_pdu(pdu(read_on(2, 11, 1), &[]), t);
        assert_eq!(steps(&mut s), vec![]);
        s.handle_pdu(pdu(read_on(1, 10, 0), &[]), t);
        let (sent, acts) = drain(&mut s);
        assert!(
            matches!(
                &acts[..],
                [
                    Action::TaskManagement {
                        itt: 50,
                        lun: 0,
                        ..
                    },
                    Action::TaskManagement {
                        itt: 51,
                        lun: 1,
                        ..
                    },
                ]
            ),
            "{acts:?}"
        );
        assert!(matches!(sent[..], [Bhs::NopIn(NopIn { itt: 7, .. })]));
        assert_eq!(s.window().0, 13);
    }

    #[test]
    fn waiting_functions_are_bounded() {
        let t = Instant::now();
        let mut s = session(t);
        for i in 0..=MAX_WAITING_TMFS as u32 {
            s.handle_pdu(pdu(task_set_tmf(50 + i, 5, 0, 11, true), &[]), t);
        }
        let last = 50 + MAX_WAITING_TMFS as u32;
        assert_eq!(
            steps(&mut s),
            vec![Step::TmfResponse(last, tmf::response::REJECTED)]
        );
        s.handle_pdu(pdu(read_on(1, 10, 0), &[]), t);
        let ran: Vec<u32> = steps(&mut s)
            .into_iter()
            .filter_map(|st| match st {
                Step::Tmf(itt, _) => Some(itt),
                _ => None,
            })
            .collect();
        assert_eq!(ran, (50..last).collect::<Vec<_>>());
    }

    #[test]
    fn a_closed_session_forgets_a_waiting_function() {
        let t = Instant::now();
        let mut s = session(t);
        s.handle_pdu(pdu(task_set_tmf(50, 5, 0, 11, true), &[]), t);
        // The initiator goes silent: pinged, then dropped.
        s.handle_timeout(t + Duration::from_secs(5));
        s.handle_timeout(t + Duration::from_secs(8));
        let (_, acts) = drain(&mut s);
        assert!(matches!(acts[..], [Action::Close(CloseReason::Dead)]));
        s.handle_pdu(pdu(read_on(1, 10, 0), &[]), t);
        s.tmf_done(50, TmfOutcome::Complete);
        assert!(s.poll_action().is_none());
    }

    #[test]
    fn logout_waits_for_a_waiting_function() {
        let t = Instant::now();
        let mut s = session(t);
        s.handle_pdu(pdu(task_set_tmf(50, 5, 0, 11, true), &[]), t);
        let lo = LogoutRequest {
            immediate: true,
            reason: 0,
            itt: 9,
            cid: 0,
            cmd_sn: 11,
            exp_stat_sn: 0,
        };
        s.handle_pdu(pdu(Bhs::LogoutRequest(lo), &[]), t);
        assert!(drain(&mut s).0.is_empty());
        s.handle_pdu(pdu(read_on(1, 10, 0), &[]), t);
        assert_eq!(steps(&mut s), vec![Step::Tmf(50, TmfFunction::LunReset)]);
        s.tmf_done(50, TmfOutcome::Complete);
        let (sent, acts) = drain(&mut s);
        assert!(
            matches!(
                sent[..],
                [
                    Bhs::TmfResponse(TmfResponse { itt: 50, .. }),
                    Bhs::LogoutResponse(LogoutResponse { itt: 9, .. })
                ]
            ),
            "{sent:?}"
        );
        assert!(matches!(acts[..], [Action::Close(CloseReason::Logout)]));
    }

    #[test]
    fn target_reset_drops_every_held_command_and_plugs_the_gaps_below_it() {
        let t = Instant::now();
        let mut s = session(t);
        // 10 (LUN 0) not yet arrived, 11 (LUN 1) held; an immediate TARGET
        // WARM RESET with next CmdSN 12.
        s.handle_pdu(pdu(read_on(2, 11, 1), &[]), t);
        s.handle_pdu(pdu(task_set_tmf(50, 6, 0, 12, true), &[]), t);
        let (_, acts) = drain(&mut s);
        assert!(
            matches!(
                &acts[..],
                [Action::TaskManagement {
                    itt: 50,
                    function: TmfFunction::TargetWarmReset,
                    ..
                }]
            ),
            "{acts:?}"
        );
        assert_eq!(s.held_commands(), 0);
        assert_eq!(s.window().0, 12);
        // 10 arriving late is discarded: the reset covered it.
        s.handle_pdu(pdu(read_on(1, 10, 0), &[]), t);
        s.handle_pdu(pdu(read_on(3, 12, 0), &[]), t);
        assert_eq!(executed_and_tmf(&mut s).0, vec![3]);
    }

    #[test]
    fn abort_of_an_unknown_task_outside_the_window_does_not_exist() {
        let t = Instant::now();
        let mut s = session(t); // window [10, 17]
        let dne = tmf::response::TASK_DOES_NOT_EXIST;
        // Below ExpCmdSN (answered long ago) and beyond MaxCmdSN.
        s.handle_pdu(pdu(abort_task(50, 2, 9, 10), &[]), t);
        s.handle_pdu(pdu(abort_task(51, 2, 18, 19), &[]), t);
        // In the window but not below the request's own CmdSN: the initiator
        // has not sent that command (or it was an immediate one).
        s.handle_pdu(pdu(abort_task(52, 2, 10, 10), &[]), t);
        let (executed, tmfs) = executed_and_tmf(&mut s);
        assert!(executed.is_empty());
        assert_eq!(tmfs, vec![(50, dne), (51, dne), (52, dne)]);
        assert!(s.retired.is_empty());
        // Nothing was retired: 10 still runs.
        s.handle_pdu(pdu(cmd(1, 10, 0x28, 512, true, false, true), &[]), t);
        assert_eq!(executed_and_tmf(&mut s).0, vec![1]);
        // A RefCmdSN that arrived under another tag names no task either.
        s.handle_pdu(pdu(cmd(3, 12, 0x28, 512, true, false, true), &[]), t);
        s.handle_pdu(pdu(abort_task(53, 9, 12, 13), &[]), t);
        assert_eq!(executed_and_tmf(&mut s).1, vec![(53, dne)]);
        assert_eq!(s.held_commands(), 1);
    }

    #[test]
    fn immediate_commands_run_even_at_a_retired_cmd_sn() {
        let t = Instant::now();
        let mut s = session(t);
        s.handle_pdu(pdu(abort_task(50, 2, 11, 12), &[]), t);
        drain(&mut s);
        // An immediate command carries the next CmdSN without using it.
        let Bhs::ScsiCommand(mut c) = cmd(7, 11, 0x28, 512, true, false, true) else {
            unreachable!()
        };
        c.immediate = true;
        s.handle_pdu(pdu(Bhs::ScsiCommand(c), &[]), t);
        assert_eq!(executed_and_tmf(&mut s).0, vec![7]);
        assert_eq!(s.window().0, 10);
    }

    #[test]
    fn logout_waits_for_running_tasks() {
        let t = Instant::now();
        let mut s = session(t);
        s.handle_pdu(pdu(cmd(1, 10, 0x28, 512, true, false, true), &[]), t);
        drain(&mut s);
        let lo = LogoutRequest {
            immediate: true,
            reason: 0,
            itt: 9,
            cid: 0,
            cmd_sn: 11,
            exp_stat_sn: 0,
        };
        s.handle_pdu(pdu(Bhs::LogoutRequest(lo), &[]), t);
        assert!(drain(&mut s).0.is_empty());
        s.complete(
            1,
            Response {
                status: 0,
                sense: None,
                data_in: Bytes::from(vec![0u8; 512]),
                data_in_file: None,
            },
            None,
        );
        let (sent, acts) = drain(&mut s);
        assert!(matches!(
            sent.last(),
            Some(Bhs::LogoutResponse(LogoutResponse {
                response: 0,
                itt: 9,
                ..
            }))
        ));
        assert!(matches!(acts[..], [Action::Close(CloseReason::Logout)]));
    }

    #[test]
    fn long_text_responses_continue() {
        let t = Instant::now();
        let targets: Vec<DiscoveryTarget> = (0..40)
            .map(|i| DiscoveryTarget {
                name: format!("iqn.2026-01.org.opie:disk{i:03}"),
                portals: vec![crate::discovery::PortalAddress {
                    address: "10.0.0.1:3260".into(),
                    tpgt: 1,
                }],
            })
            .collect();
        let mut e = est(params());
        e.session_type = SessionType::Discovery;
        let mut s = Session::new(&e, SessionConfig::default(), targets, None, t);
        let req = |ttt| {
            Bhs::TextRequest(TextRequest {
                immediate: true,
                final_: true,
                cont: false,
                lun: 0,
                itt: 3,
                ttt,
                cmd_sn: 10,
                exp_stat_sn: 0,
            })
        };
        s.handle_pdu(pdu(req(RESERVED_TAG), b"SendTargets=All\0"), t);
        let mut all = Vec::new();
        loop {
            let mut got = None;
            while let Some(a) = s.poll_action() {
                if let Action::Send(p) = a {
                    let v = p.to_vec();
                    let raw: [u8; BHS_LEN] = v[..BHS_LEN].try_into().unwrap();
                    let Bhs::TextResponse(r) = Bhs::decode(&raw).unwrap() else {
                        panic!()
                    };
                    assert!(p.pdu.data.len() <= 1024);
                    all.extend_from_slice(&p.pdu.data);
                    got = Some(r);
                }
            }
            let r = got.unwrap();
            if r.final_ {
                break;
            }
            s.handle_pdu(pdu(req(r.ttt), &[]), t);
        }
        // SendTargets repeats keys, so count the pairs rather than parse a list.
        let pairs: Vec<&[u8]> = all.split(|c| *c == 0).filter(|p| !p.is_empty()).collect();
        assert_eq!(pairs.len(), 80);
        assert!(pairs
            .iter()
            .all(|p| p.starts_with(b"TargetName=iqn.2026-01.org.opie:disk")
                || *p == b"TargetAddress=10.0.0.1:3260,1"));
    }

    proptest! {
        /// Arbitrary PDUs never panic the session.
        #[test]
        fn arbitrary_pdus_never_panic(pdus in proptest::collection::vec((proptest::collection::vec(any::<u8>(), BHS_LEN), proptest::collection::vec(any::<u8>(), 0..64)), 1..30)) {
            let t = Instant::now();
            let mut s = session(t);
            for (i, (h, d)) in pdus.into_iter().enumerate() {
                let mut raw = [0u8; BHS_LEN];
                raw.copy_from_slice(&h);
                let p = InPdu { raw, bhs: Bhs::decode(&raw), ahs: Bytes::new(), data: Bytes::from(d), data_digest_error: false };
                s.handle_pdu(p, t);
                prop_assert!(s.retired.len() <= 8);
                while let Some(a) = s.poll_action() {
                    if let Action::Execute { itt, .. } = a {
                        s.complete(itt, Response { status: 0, sense: None, data_in: Bytes::from(vec![0u8; i * 100]), data_in_file: None }, Some(512));
                    }
                }
            }
        }

        /// Whatever order a LUN-scoped task set function and the commands
        /// around it arrive in: no command sent before it on its LUN runs
        /// after it acts (one that ran before is aborted by it), it is
        /// answered exactly once, and every other command runs exactly once,
        /// in CmdSN order, those on its LUN sent after it only after it.
        #[test]
        fn a_task_set_function_covers_every_command_sent_before_it(
            luns in proptest::collection::vec(0u64..2, 1..7),
            at in 0usize..7,
            immediate in any::<bool>(),
            function in prop_oneof![Just(2u8), Just(4u8), Just(5u8)],
            keys in proptest::collection::vec(any::<u16>(), 8),
        ) {
            let t = Instant::now();
            let mut s = session(t); // window [10, 17]
            let at = at % (luns.len() + 1);
            // Send order: the commands, with the function before command `at`.
            // (itt, cmd_sn, lun) per command; the function's CmdSN.
            let mut cmds = Vec::new();
            let mut sn = 10u32;
            let mut tmf_sn = 0;
            for (i, lun) in luns.iter().enumerate() {
                if i == at {
                    tmf_sn = sn;
                    if !immediate {
                        sn += 1;
                    }
                }
                cmds.push((i as u32 + 1, sn, *lun));
                sn += 1;
            }
            if at == luns.len() {
                tmf_sn = sn;
                if !immediate {
                    sn += 1;
                }
            }
            let mut pdus: Vec<Bhs> = cmds.iter().map(|&(itt, sn, lun)| read_on(itt, sn, lun)).collect();
            pdus.push(task_set_tmf(100, function, 0, tmf_sn, immediate));
            let mut order: Vec<usize> = (0..pdus.len()).collect();
            order.sort_by_key(|&i| keys[i]);
            let mut log = Vec::new();
            // The commands that arrived after the function.
            let mut arrived_after = Vec::new();
            let mut tmf_arrived = false;
            for i in order {
                match cmds.get(i) {
                    Some(&(itt, _, _)) if tmf_arrived => arrived_after.push(itt),
                    Some(_) => {}
                    None => tmf_arrived = true,
                }
                s.handle_pdu(pdu(pdus[i], &[]), t);
                loop {
                    let got = steps(&mut s);
                    if got.is_empty() {
                        break;
                    }
                    for st in got {
                        if let Step::Tmf(itt, _) = st {
                            s.tmf_done(itt, TmfOutcome::Complete);
                        }
                        log.push(st);
                    }
                }
            }
            let tm: Vec<usize> = log.iter().enumerate()
                .filter(|(_, st)| matches!(st, Step::Tmf(100, _))).map(|(i, _)| i).collect();
            prop_assert_eq!(tm.len(), 1, "{:?}", log);
            let tm = tm[0];
            let answered: Vec<usize> = log.iter().enumerate()
                .filter(|(_, st)| matches!(st, Step::TmfResponse(100, 0))).map(|(i, _)| i).collect();
            prop_assert_eq!(answered.len(), 1, "{:?}", log);
            let aborted: Vec<u32> = match tm.checked_sub(1).map(|i| &log[i]) {
                Some(Step::Abort(itts)) => itts.clone(),
                _ => Vec::new(),
            };
            let ran = |itt: u32| log.iter().position(|st| *st == Step::Execute(itt));
            let mut last_sn = None;
            for &(itt, sn, lun) in &cmds {
                let runs = log.iter().filter(|st| **st == Step::Execute(itt)).count();
                if lun == 0 && sn_lt(sn, tmf_sn) {
                    // Covered: never runs after the function acts, and if it
                    // ran before, the function aborts it.
                    prop_assert!(runs <= 1);
                    if let Some(p) = ran(itt) {
                        prop_assert!(p < tm && aborted.contains(&itt), "{} {:?}", itt, log);
                    }
                } else {
                    prop_assert_eq!(runs, 1, "{} {:?}", itt, log);
                    prop_assert!(!aborted.contains(&itt));
                    if lun == 0 && arrived_after.contains(&itt) {
                        prop_assert!(ran(itt) > Some(tm), "{} {:?}", itt, log);
                    }
                }
                if let Some(p) = ran(itt) {
                    prop_assert!(last_sn.is_none_or(|(q, _)| q < p), "{:?}", log);
                    last_sn = Some((p, sn));
                }
            }
            prop_assert_eq!(s.window().0, sn);
            prop_assert_eq!(s.held_commands(), 0);
        }
    }
}
