//! Pipelined SCSI commands over one session, sans-I/O: commands queue up
//! and go out as long as the target's command window (CmdSN up to MaxCmdSN)
//! and the configured queue depth both have room; each answer completes
//! its command, by ticket; the target's pings are answered and the
//! connection is kept alive ([`Keepalive`]). Time is handed in.
//!
//! A command's [`Command`] (and so a write's data) is held until its
//! status arrives, so that what the target never answered can be sent
//! again on a new session ([`Pipeline::into_unanswered`]).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use iscsi_proto::frame::InPdu;
use iscsi_proto::pdu::Bhs;

use crate::async_event::{self, Reaction};
use crate::command::{Command, ScsiResult};
use crate::fullfeature::{Event, FullFeature};
use crate::keepalive::{Action, Keepalive, KeepaliveConfig};
use crate::range_lock::{Extent, RangeLocks};
use crate::recovery::{Outcome, Recovery, Step};
use crate::tmf::{Function, TaskManagement};
use crate::Error;

/// Names a queued command until its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(pub u64);

/// How a pipeline runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipelineConfig {
    /// At most this many SCSI commands in flight at once, whatever room the
    /// target's window has (at least 1).
    pub queue_depth: u32,
    /// The NOP-Out keepalive.
    pub keepalive: KeepaliveConfig,
    /// How long a command may run before it is aborted (ABORT TASK, then
    /// LOGICAL UNIT RESET, each given as long to answer); zero: forever.
    pub command_timeout: Duration,
}

impl Default for PipelineConfig {
    fn default() -> PipelineConfig {
        PipelineConfig {
            queue_depth: 32,
            keepalive: KeepaliveConfig::default(),
            command_timeout: Duration::from_secs(30),
        }
    }
}

/// A command sent and not answered.
#[derive(Debug)]
struct Running {
    ticket: Ticket,
    /// Held for a resend on a new session.
    cmd: Command,
    sent: Instant,
}

/// Pipelined commands over the Full Feature Phase of one connection.
#[derive(Debug)]
pub struct Pipeline {
    ffp: FullFeature,
    queue_depth: usize,
    keepalive: Keepalive,
    next_ticket: u64,
    /// Queued, not sent yet (window or queue depth full).
    pending: VecDeque<(Ticket, Command)>,
    /// Sent, unanswered: by ITT.
    running: HashMap<u32, Running>,
    command_timeout: Duration,
    /// The task management under way for a command that took too long.
    recovery: Option<Recovery>,
    done: VecDeque<(Ticket, Result<ScsiResult, Error>)>,
    /// Response codes of immediate requests (task management, logout).
    answers: HashMap<u32, u8>,
    /// The target asked for a logout (async event 1): nothing new is sent,
    /// and the logout goes out by then at the latest.
    logout_by: Option<Instant>,
    /// The tag of the logout the target asked for, once sent.
    requested_logout: Option<u32>,
    /// How long the target asked to wait before logging in again.
    relogin_after: Duration,
    /// The blocks of the writes not settled yet, by ticket.
    writes: RangeLocks<Ticket>,
}

/// The blocks a command changes, if any.
fn extent(cmd: &Command) -> Option<Extent> {
    let (lba, blocks) = crate::disk_commands::written_span(&cmd.cdb, &cmd.data_out)?;
    Some(Extent {
        lun: cmd.lun,
        lba,
        blocks,
    })
}

impl Pipeline {
    /// A pipeline over a session's Full Feature Phase, at `now`.
    pub fn new(ffp: FullFeature, cfg: PipelineConfig, now: Instant) -> Pipeline {
        Pipeline {
            ffp,
            queue_depth: cfg.queue_depth.max(1) as usize,
            keepalive: Keepalive::new(cfg.keepalive, now),
            next_ticket: 0,
            pending: VecDeque::new(),
            running: HashMap::new(),
            command_timeout: cfg.command_timeout,
            recovery: None,
            done: VecDeque::new(),
            answers: HashMap::new(),
            logout_by: None,
            requested_logout: None,
            relogin_after: Duration::ZERO,
            writes: RangeLocks::default(),
        }
    }

    /// How long the target asked to wait before logging in again (its
    /// Time2Wait, when it announced that it drops the connection).
    pub fn relogin_after(&self) -> Duration {
        self.relogin_after
    }

    /// Sends the logout the target asked for once nothing runs, or at its
    /// deadline.
    fn log_out_if_due(&mut self, now: Instant) {
        let Some(by) = self.logout_by else { return };
        if self.requested_logout.is_none() && (self.running.is_empty() || now >= by) {
            tracing::info!(
                running = self.running.len(),
                "logging out as the target asked"
            );
            self.requested_logout = Some(self.ffp.logout());
        }
    }

    /// The session state machine underneath.
    pub fn full_feature(&self) -> &FullFeature {
        &self.ffp
    }

    /// Queues a command; it goes out as soon as the window and the queue
    /// depth allow (perhaps at once: see [`Pipeline::take_output`]).
    pub fn queue(&mut self, cmd: Command, now: Instant) -> Ticket {
        let ticket = Ticket(self.next_ticket);
        self.next_ticket += 1;
        self.pending.push_back((ticket, cmd));
        self.pump(now);
        ticket
    }

    /// Commands sent and not answered.
    pub fn in_flight(&self) -> usize {
        self.running.len()
    }

    /// Commands queued and not sent yet.
    pub fn queued(&self) -> usize {
        self.pending.len()
    }

    /// The oldest command not finished (sent and unanswered, or queued):
    /// with every command from it on, what may still act on the target.
    pub fn oldest_unfinished(&self) -> Option<Ticket> {
        let running = self.running.values().map(|r| r.ticket);
        running.chain(self.pending.front().map(|(t, _)| *t)).min()
    }

    /// The ticket the next command queued will get: every command queued
    /// so far has a smaller one.
    pub fn next_ticket(&self) -> Ticket {
        Ticket(self.next_ticket)
    }

    /// Gives up every command without an answer, for a caller that will
    /// not have them sent again (a path under multipath, which retries them
    /// elsewhere): the tickets of those sent (their outcome unknown until
    /// the session is reinstated) and of those never sent, each oldest
    /// first.
    pub fn abandon(&mut self) -> (Vec<Ticket>, Vec<Ticket>) {
        let mut sent: Vec<Ticket> = self.running.drain().map(|(_, r)| r.ticket).collect();
        sent.sort();
        let unsent = self.pending.drain(..).map(|(t, _)| t).collect();
        self.recovery = None;
        // Settled once the session is reinstated, before anything else is
        // sent: the target ends the old session's tasks first.
        self.writes.clear();
        (sent, unsent)
    }

    /// Sends queued commands while the window and the queue depth have room.
    /// A write waits while an unsettled write, or an earlier waiting one,
    /// overlaps it ([`range_lock`](crate::range_lock)).
    fn pump(&mut self, now: Instant) {
        if self.logout_by.is_some() {
            return;
        }
        if self.pending.is_empty() {
            return;
        }
        let go = self
            .writes
            .admissible(self.pending.iter().map(|(_, c)| extent(c)));
        // Each command is moved out of the queue as it goes (the ones
        // before it taken already, its index is that many lower).
        for (taken, i) in go.into_iter().enumerate() {
            if self.running.len() >= self.queue_depth || !self.ffp.window_open() {
                break;
            }
            let (ticket, cmd) = self.pending.remove(i - taken).expect("an index of pending");
            match self.ffp.submit(&cmd) {
                Ok(task) => {
                    if let Some(e) = extent(&cmd) {
                        self.writes.lock(ticket, e);
                    }
                    let sent = now;
                    self.running.insert(task.itt, Running { ticket, cmd, sent });
                }
                Err(e) => self.done.push_back((ticket, Err(e))),
            }
        }
    }

    /// Sends a task management request (immediate, outside the window);
    /// its answer comes from [`Pipeline::take_answer`].
    pub fn task_management(&mut self, tmf: TaskManagement) -> u32 {
        self.ffp.task_management(tmf)
    }

    /// Sends a Logout Request closing the session; its answer comes from
    /// [`Pipeline::take_answer`].
    pub fn logout(&mut self) -> u32 {
        self.ffp.logout()
    }

    /// The response code of the task management or logout request tagged
    /// `itt`, once answered.
    pub fn take_answer(&mut self, itt: u32) -> Option<u8> {
        self.answers.remove(&itt)
    }

    /// The ITT and CmdSN a ticket's command went out with, while it runs.
    pub fn task_of(&self, ticket: Ticket) -> Option<crate::Task> {
        // Few commands run at once (the queue depth): a scan is fine.
        self.running
            .iter()
            .find(|(_, r)| r.ticket == ticket)
            .map(|(&itt, _)| crate::Task {
                itt,
                cmd_sn: self.ffp.cmd_sn_of(itt).unwrap_or_default(),
            })
    }

    /// Takes one PDU from the target at `now`. An error ends the
    /// connection (the target broke the protocol, or ended the session).
    pub fn receive(&mut self, pdu: InPdu, now: Instant) -> Result<(), Error> {
        self.keepalive.heard(now);
        self.ffp.receive(pdu)?;
        while let Some(event) = self.ffp.take_event(|_| true) {
            match event {
                Event::Scsi { itt, result } => {
                    if let Some(r) = self.running.remove(&itt) {
                        self.writes.unlock(r.ticket);
                        self.done.push_back((r.ticket, result));
                    }
                }
                Event::Tmf { itt, response } if self.recovery.is_some_and(|r| r.tmf() == itt) => {
                    let outcome = self.recovery.take().expect("checked").answered(response);
                    self.recover(outcome, now)?;
                }
                Event::Pong { itt, .. } => self.keepalive.answered(itt, now),
                Event::Logout { itt, .. } if self.requested_logout == Some(itt) => {
                    // Logged out as asked: the target ended the session's
                    // tasks; what had no answer goes on a new session.
                    return Err(Error::Closed);
                }
                Event::Tmf { itt, response } | Event::Logout { itt, response, .. } => {
                    self.answers.insert(itt, response);
                }
                Event::Async { message, .. } => match async_event::react(&message, now) {
                    Reaction::LogOut { by } => {
                        self.logout_by = Some(self.logout_by.map_or(by, |b| b.min(by)));
                    }
                    Reaction::Reconnect { after } => {
                        tracing::info!(
                            event = message.event,
                            ?after,
                            "the target drops the connection"
                        );
                        self.relogin_after = after;
                        return Err(Error::Closed);
                    }
                    Reaction::Ignore => tracing::debug!(?message, "async message ignored"),
                },
                other => tracing::debug!(?other, "event ignored by the pipeline"),
            }
        }
        self.log_out_if_due(now);
        self.pump(now);
        Ok(())
    }

    /// When [`Pipeline::tick`] has something to do next.
    pub fn deadline(&self) -> Option<Instant> {
        let recovery = if self.command_timeout.is_zero() {
            None
        } else if let Some(r) = self.recovery {
            Some(r.deadline(self.command_timeout))
        } else {
            self.oldest().map(|(_, r)| r.sent + self.command_timeout)
        };
        let logout = self.logout_by.filter(|_| self.requested_logout.is_none());
        [self.keepalive.deadline(), recovery, logout]
            .into_iter()
            .flatten()
            .min()
    }

    /// The command running longest.
    fn oldest(&self) -> Option<(u32, &Running)> {
        self.running
            .iter()
            .min_by_key(|(_, r)| (r.sent, r.ticket))
            .map(|(&itt, r)| (itt, r))
    }

    /// Does what is due at `now`: pings a silent target, aborts a command
    /// that took too long (and escalates); an error when a ping or a LUN
    /// reset went unanswered for its timeout (the connection is dead).
    pub fn tick(&mut self, now: Instant) -> Result<(), Error> {
        match self.keepalive.poll(now) {
            Action::Wait => {}
            Action::Ping => {
                let itt = self.ffp.ping(Bytes::new());
                self.keepalive.pinged(itt, now);
            }
            Action::Dead => return Err(Error::Timeout(self.keepalive_timeout())),
        }
        self.log_out_if_due(now);
        if self.command_timeout.is_zero() {
            return Ok(());
        }
        match self.recovery {
            Some(r) if now >= r.deadline(self.command_timeout) => {
                self.recovery = None;
                self.recover(r.timed_out(), now)
            }
            Some(_) => Ok(()),
            None => {
                let Some((itt, r)) = self.oldest() else {
                    return Ok(());
                };
                if now < r.sent + self.command_timeout {
                    return Ok(());
                }
                let lun = r.cmd.lun;
                let task = crate::Task {
                    itt,
                    cmd_sn: self.ffp.cmd_sn_of(itt).unwrap_or_default(),
                };
                tracing::debug!(itt, lun, "command timed out: ABORT TASK");
                let tmf = self
                    .ffp
                    .task_management(TaskManagement::abort_task(lun, task));
                self.recovery = Some(Recovery::new(
                    Step::Abort {
                        tmf,
                        task: itt,
                        lun,
                    },
                    now,
                ));
                Ok(())
            }
        }
    }

    /// Acts on what a recovery step came to.
    fn recover(&mut self, outcome: Outcome, now: Instant) -> Result<(), Error> {
        match outcome {
            Outcome::TaskEnded(itt) => self.abort(|i, _| i == itt),
            Outcome::LunEnded(lun) => self.abort(|_, r| r.cmd.lun == lun),
            Outcome::Reset(lun) => {
                tracing::debug!(lun, "ABORT TASK failed: LOGICAL UNIT RESET");
                let tmf = self
                    .ffp
                    .task_management(TaskManagement::of_lun(Function::LunReset, lun));
                self.recovery = Some(Recovery::new(Step::LunReset { tmf, lun }, now));
            }
            Outcome::GiveUp => return Err(Error::Timeout(self.command_timeout)),
        }
        Ok(())
    }

    /// Ends the running commands `which` picks, as aborted.
    fn abort(&mut self, which: impl Fn(u32, &Running) -> bool) {
        let ended: Vec<u32> = self
            .running
            .iter()
            .filter(|(&i, r)| which(i, r))
            .map(|(&i, _)| i)
            .collect();
        for itt in ended {
            self.ffp.forget(itt);
            let r = self.running.remove(&itt).expect("listed above");
            self.writes.unlock(r.ticket);
            self.done.push_back((r.ticket, Err(Error::Aborted)));
        }
    }

    fn keepalive_timeout(&self) -> std::time::Duration {
        self.keepalive.config().timeout
    }

    /// The PDUs to send, in order.
    pub fn take_output(&mut self) -> Vec<(Bhs, Bytes)> {
        self.ffp.take_output()
    }

    /// A command that ended, with its outcome.
    pub fn take_done(&mut self) -> Option<(Ticket, Result<ScsiResult, Error>)> {
        self.done.pop_front()
    }

    /// This pipeline carried over to `ffp`, the Full Feature Phase of the
    /// session that reinstated this one (same ISID, RFC 7143 §6.3.5: the
    /// target ended this session's tasks before it let the new one in):
    /// every command without an answer is queued again as a new task,
    /// oldest first, under its ticket.
    pub fn reinstated(mut self, ffp: FullFeature, now: Instant) -> Pipeline {
        let mut next = Pipeline {
            ffp,
            queue_depth: self.queue_depth,
            keepalive: Keepalive::new(self.keepalive.config(), now),
            next_ticket: self.next_ticket,
            pending: VecDeque::new(),
            running: HashMap::new(),
            command_timeout: self.command_timeout,
            recovery: None,
            // Outcomes not taken yet stay.
            done: std::mem::take(&mut self.done),
            answers: HashMap::new(),
            logout_by: None,
            requested_logout: None,
            relogin_after: Duration::ZERO,
            writes: RangeLocks::default(),
        };
        next.pending = self.into_unanswered().into();
        next.pump(now);
        next
    }

    /// The commands without an answer, sent or not, oldest first: what a
    /// new session must carry out when this one is gone.
    pub fn into_unanswered(self) -> Vec<(Ticket, Command)> {
        let mut sent: Vec<_> = self
            .running
            .into_values()
            .map(|r| (r.ticket, r.cmd))
            .collect();
        sent.sort_by_key(|(t, _)| *t);
        sent.extend(self.pending);
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fullfeature::tests::{pdu, session};
    use iscsi_proto::negotiate::Params;
    use iscsi_proto::pdu::{NopIn, ScsiResponse, Sns, RESERVED_TAG};

    fn commands(out: &[(Bhs, Bytes)]) -> Vec<u32> {
        out.iter()
            .filter_map(|(b, _)| match b {
                Bhs::ScsiCommand(c) => Some(c.itt),
                _ => None,
            })
            .collect()
    }

    fn status(itt: u32, stat_sn: u32, max_cmd_sn: u32) -> InPdu {
        let r = ScsiResponse {
            itt,
            sns: Sns {
                stat_sn,
                exp_cmd_sn: 11,
                max_cmd_sn,
            },
            ..Default::default()
        };
        pdu(Bhs::ScsiResponse(r), &[])
    }

    fn cfg(queue_depth: u32) -> PipelineConfig {
        PipelineConfig {
            queue_depth,
            keepalive: KeepaliveConfig {
                interval: Duration::from_millis(100),
                timeout: Duration::from_millis(50),
            },
            command_timeout: Duration::ZERO,
        }
    }

    #[test]
    fn commands_go_out_up_to_the_queue_depth_and_the_window() {
        let t0 = Instant::now();
        // The window allows CmdSN 10..=14: five commands.
        let mut f = session(Params::default());
        f.receive(pdu(
            Bhs::NopIn(NopIn {
                lun: 0,
                itt: RESERVED_TAG,
                ttt: RESERVED_TAG,
                sns: Sns {
                    stat_sn: 100,
                    exp_cmd_sn: 10,
                    max_cmd_sn: 14,
                },
            }),
            &[],
        ))
        .unwrap();
        let mut p = Pipeline::new(f, cfg(4), t0);
        let tickets: Vec<_> = (0..6)
            .map(|_| p.queue(Command::new(0, &[0; 6]), t0))
            .collect();
        let sent = commands(&p.take_output());
        assert_eq!(sent.len(), 4, "the queue depth holds the rest back");
        assert_eq!((p.in_flight(), p.queued()), (4, 2));
        // One answer lets one more go.
        p.receive(status(sent[1], 100, 14), t0).unwrap();
        assert_eq!(
            p.take_done().map(|(t, r)| (t, r.is_ok())),
            Some((tickets[1], true))
        );
        assert_eq!(commands(&p.take_output()).len(), 1);
        // A full window holds commands back even under the depth: CmdSN
        // 10..=14 are used, MaxCmdSN 14 allows no more.
        p.receive(status(sent[0], 101, 14), t0).unwrap();
        assert!(p.take_output().is_empty());
        assert_eq!((p.in_flight(), p.queued()), (3, 1));
        p.receive(status(sent[2], 102, 15), t0).unwrap();
        assert_eq!(commands(&p.take_output()).len(), 1);
        assert_eq!(p.queued(), 0);
    }

    #[test]
    fn unanswered_commands_are_held_for_a_new_session() {
        let t0 = Instant::now();
        let mut p = Pipeline::new(session(Params::default()), cfg(8), t0);
        // The window (MaxCmdSN 10) takes one command; the rest wait.
        let w = p.queue(Command::write(0, &[0x2a; 10], vec![5u8; 512]), t0);
        let r = p.queue(Command::read(0, &[0x28; 10], 512), t0);
        let sent = commands(&p.take_output());
        assert_eq!(sent.len(), 1);
        let left = p.into_unanswered();
        assert_eq!(left.iter().map(|(t, _)| *t).collect::<Vec<_>>(), [w, r]);
        assert_eq!(
            &left[0].1.data_out[..],
            &[5u8; 512][..],
            "the write's data is held"
        );
    }

    #[test]
    fn a_silent_target_is_pinged_and_then_given_up() {
        let t0 = Instant::now();
        let mut p = Pipeline::new(session(Params::default()), cfg(8), t0);
        assert_eq!(p.deadline(), Some(t0 + Duration::from_millis(100)));
        p.tick(t0 + Duration::from_millis(100)).unwrap();
        let out = p.take_output();
        let [(Bhs::NopOut(ping), _)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_ne!(ping.itt, RESERVED_TAG, "a ping that asks for an answer");
        assert!(matches!(
            p.tick(t0 + Duration::from_millis(150)),
            Err(Error::Timeout(_))
        ));
        // Answered in time, it is alive.
        let mut p = Pipeline::new(session(Params::default()), cfg(8), t0);
        p.tick(t0 + Duration::from_millis(100)).unwrap();
        let Some((Bhs::NopOut(ping), _)) = p.take_output().pop() else {
            panic!()
        };
        let pong = NopIn {
            lun: 0,
            itt: ping.itt,
            ttt: RESERVED_TAG,
            sns: Sns {
                stat_sn: 100,
                exp_cmd_sn: 10,
                max_cmd_sn: 10,
            },
        };
        p.receive(pdu(Bhs::NopIn(pong), &[]), t0 + Duration::from_millis(120))
            .unwrap();
        p.tick(t0 + Duration::from_millis(150)).unwrap();
        assert_eq!(p.deadline(), Some(t0 + Duration::from_millis(220)));
    }

    /// The TMF requests queued: (function, RTT, tag).
    fn tmfs(out: &[(Bhs, Bytes)]) -> Vec<(u8, u32, u32)> {
        out.iter()
            .filter_map(|(b, _)| match b {
                Bhs::TmfRequest(t) => Some((t.function, t.rtt, t.itt)),
                _ => None,
            })
            .collect()
    }

    fn tmf_response(itt: u32, response: u8, stat_sn: u32) -> InPdu {
        let r = iscsi_proto::pdu::TmfResponse {
            response,
            itt,
            sns: Sns {
                stat_sn,
                exp_cmd_sn: 11,
                max_cmd_sn: 20,
            },
        };
        pdu(Bhs::TmfResponse(r), &[])
    }

    fn timing_out() -> PipelineConfig {
        PipelineConfig {
            command_timeout: Duration::from_secs(1),
            keepalive: KeepaliveConfig {
                interval: Duration::ZERO,
                timeout: Duration::ZERO,
            },
            ..cfg(8)
        }
    }

    #[test]
    fn a_command_that_takes_too_long_is_aborted() {
        let t0 = Instant::now();
        let sec = Duration::from_secs(1);
        let mut p = Pipeline::new(session(Params::default()), timing_out(), t0);
        let t = p.queue(Command::read(3, &[0x28; 10], 512), t0);
        let itt = commands(&p.take_output())[0];
        assert_eq!(p.deadline(), Some(t0 + sec));
        p.tick(t0 + sec / 2).unwrap();
        assert!(p.take_output().is_empty());
        p.tick(t0 + sec).unwrap();
        let out = tmfs(&p.take_output());
        assert_eq!(
            out.iter().map(|t| (t.0, t.1)).collect::<Vec<_>>(),
            [(1, itt)],
            "ABORT TASK of it"
        );
        assert!(p.take_done().is_none(), "not ended until the answer");
        p.receive(tmf_response(out[0].2, crate::tmf::COMPLETE, 100), t0 + sec)
            .unwrap();
        assert!(matches!(p.take_done(), Some((d, Err(Error::Aborted))) if d == t));
        assert_eq!((p.in_flight(), p.full_feature().tasks_in_flight()), (0, 0));
    }

    #[test]
    fn an_unanswered_abort_resets_the_lun_and_an_unanswered_reset_drops_the_connection() {
        let t0 = Instant::now();
        let sec = Duration::from_secs(1);
        let mut f = session(Params::default());
        f.receive(status(0, 99, 20)).unwrap(); // opens the window
        let mut p = Pipeline::new(f, timing_out(), t0);
        let slow = p.queue(Command::read(3, &[0x28; 10], 512), t0);
        let other = p.queue(Command::read(3, &[0x28; 10], 512), t0 + sec / 2);
        let elsewhere = p.queue(Command::read(4, &[0x28; 10], 512), t0 + sec / 2);
        p.take_output();
        p.tick(t0 + sec).unwrap();
        assert_eq!(tmfs(&p.take_output())[0].0, 1);
        // No answer in time: LOGICAL UNIT RESET.
        p.tick(t0 + 2 * sec).unwrap();
        let reset = tmfs(&p.take_output());
        assert_eq!((reset[0].0, reset[0].1), (5, RESERVED_TAG));
        // Answered: every task of LUN 3 ended, LUN 4's runs on.
        p.receive(
            tmf_response(reset[0].2, crate::tmf::COMPLETE, 100),
            t0 + 2 * sec,
        )
        .unwrap();
        let mut ended: Vec<_> = std::iter::from_fn(|| p.take_done())
            .map(|(t, r)| (t, matches!(r, Err(Error::Aborted))))
            .collect();
        ended.sort();
        assert_eq!(ended, [(slow, true), (other, true)]);
        assert_eq!(p.in_flight(), 1);
        // LUN 4's command times out too; neither abort nor reset answers.
        p.tick(t0 + 3 * sec).unwrap();
        p.tick(t0 + 4 * sec).unwrap();
        assert!(matches!(p.tick(t0 + 5 * sec), Err(Error::Timeout(_))));
        let left = p.into_unanswered();
        assert_eq!(
            left.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            [elsewhere]
        );
    }

    #[test]
    fn a_reinstated_session_sends_every_unanswered_command_again() {
        let t0 = Instant::now();
        let mut f = session(Params::default());
        f.receive(status(0, 99, 11)).unwrap(); // CmdSN 10 and 11
        let mut p = Pipeline::new(f, cfg(8), t0);
        let a = p.queue(Command::write(0, &[0x2a; 10], vec![1u8; 512]), t0);
        let b = p.queue(Command::write(0, &[0x2a; 10], vec![2u8; 512]), t0);
        let c = p.queue(Command::read(0, &[0x28; 10], 512), t0);
        let sent = commands(&p.take_output());
        assert_eq!((sent.len(), p.queued()), (2, 1));
        // a is answered; b is in flight and c queued when the connection goes.
        p.receive(status(sent[0], 100, 12), t0).unwrap();
        let _ = commands(&p.take_output());
        let mut fresh = session(Params::default());
        fresh.receive(status(0, 99, 20)).unwrap();
        let mut q = p.reinstated(fresh, t0);
        assert!(
            matches!(q.take_done(), Some((t, Ok(_))) if t == a),
            "a's answer is kept"
        );
        let out = q.take_output();
        let again: Vec<_> = out
            .iter()
            .filter_map(|(h, d)| match h {
                Bhs::ScsiCommand(c) => Some((c.cmd_sn, d.first().copied())),
                _ => None,
            })
            .collect();
        // As new tasks of the new session, in order, the write with its data.
        assert_eq!(again, [(10, Some(2)), (11, None)]);
        assert_eq!(q.in_flight(), 2);
        let d = q.queue(Command::new(0, &[0; 6]), t0);
        assert!(d > b && d > c, "tickets go on from the old session's");
    }

    fn async_message(event: u8, params: [u16; 3], stat_sn: u32) -> InPdu {
        let m = iscsi_proto::pdu::AsyncMessage {
            event,
            params,
            sns: Sns {
                stat_sn,
                exp_cmd_sn: 11,
                max_cmd_sn: 20,
            },
            ..Default::default()
        };
        pdu(Bhs::AsyncMessage(m), &[])
    }

    /// The Logout Requests queued: their tags.
    fn logouts(out: &[(Bhs, Bytes)]) -> Vec<u32> {
        out.iter()
            .filter_map(|(b, _)| match b {
                Bhs::LogoutRequest(l) => Some(l.itt),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_requested_logout_waits_for_running_commands_and_holds_new_ones() {
        let t0 = Instant::now();
        let mut f = session(Params::default());
        f.receive(status(0, 99, 20)).unwrap(); // opens the window
        let mut p = Pipeline::new(f, cfg(8), t0);
        let _a = p.queue(Command::read(0, &[0x28; 10], 512), t0);
        let a_itt = commands(&p.take_output())[0];
        // Log out within 10 s: at t0 + 5 s at the latest.
        p.receive(async_message(1, [0, 0, 10], 100), t0).unwrap();
        let b = p.queue(Command::write(0, &[0x2a; 10], vec![3u8; 512]), t0);
        let out = p.take_output();
        assert!(commands(&out).is_empty(), "nothing new goes out");
        assert!(logouts(&out).is_empty(), "a command still runs");
        assert_eq!(p.deadline(), Some(t0 + Duration::from_millis(100)));
        // The running command ends: the logout goes out at once.
        p.receive(status(a_itt, 101, 20), t0).unwrap();
        let out = p.take_output();
        let [logout] = logouts(&out)[..] else {
            panic!("{out:?}")
        };
        assert!(commands(&out).is_empty());
        // Answered: the connection ends; b waits for the new session.
        let answer = iscsi_proto::pdu::LogoutResponse {
            itt: logout,
            sns: Sns {
                stat_sn: 102,
                exp_cmd_sn: 11,
                max_cmd_sn: 20,
            },
            ..Default::default()
        };
        let r = p.receive(pdu(Bhs::LogoutResponse(answer), &[]), t0);
        assert!(matches!(r, Err(Error::Closed)), "{r:?}");
        let left = p.into_unanswered();
        assert_eq!(left.iter().map(|(t, _)| *t).collect::<Vec<_>>(), [b]);
    }

    #[test]
    fn a_requested_logout_goes_out_by_half_of_parameter3_and_the_rest_is_sent_again() {
        let t0 = Instant::now();
        let sec = Duration::from_secs(1);
        let quiet = PipelineConfig {
            command_timeout: Duration::ZERO,
            ..timing_out()
        };
        let mut f = session(Params::default());
        f.receive(status(0, 99, 20)).unwrap();
        let mut p = Pipeline::new(f, quiet, t0);
        let a = p.queue(Command::read(0, &[0x28; 10], 512), t0);
        p.take_output();
        // Log out within 4 s: the command never answers; out at t0 + 2 s.
        p.receive(async_message(1, [0, 0, 4], 100), t0).unwrap();
        assert_eq!(p.deadline(), Some(t0 + 2 * sec));
        p.tick(t0 + sec).unwrap();
        assert!(logouts(&p.take_output()).is_empty());
        p.tick(t0 + 2 * sec).unwrap();
        assert_eq!(logouts(&p.take_output()).len(), 1, "due at t0 + 2 s");
        assert_eq!(p.deadline(), None, "sent once");
        // The unanswered command goes again on the new session.
        let mut fresh = session(Params::default());
        fresh.receive(status(0, 99, 20)).unwrap();
        let mut q = p.reinstated(fresh, t0 + 2 * sec);
        assert_eq!(commands(&q.take_output()).len(), 1);
        assert_eq!(q.into_unanswered()[0].0, a);
    }

    #[test]
    fn a_target_dropping_the_connection_is_left_at_once_and_its_time2wait_kept() {
        let t0 = Instant::now();
        for event in [2, 3] {
            let mut p = Pipeline::new(session(Params::default()), cfg(8), t0);
            let r = p.receive(async_message(event, [0, 2, 20], 100), t0);
            assert!(matches!(r, Err(Error::Closed)), "{r:?}");
            assert_eq!(p.relogin_after(), Duration::from_secs(2));
        }
        // Other events are not the connection's end.
        let mut p = Pipeline::new(session(Params::default()), cfg(8), t0);
        p.receive(async_message(0, [0; 3], 100), t0).unwrap();
        assert_eq!(p.relogin_after(), Duration::ZERO);
    }

    #[test]
    fn a_write_in_doubt_is_not_overtaken_by_an_overlapping_one() {
        let t0 = Instant::now();
        let sec = Duration::from_secs(1);
        let mut f = session(Params::default());
        f.receive(status(0, 99, 30)).unwrap();
        let mut p = Pipeline::new(f, timing_out(), t0);
        let write = |lba, blocks| {
            Command::write(
                2,
                &crate::disk_commands::write16(lba, blocks, false),
                vec![1u8; 512 * blocks as usize],
            )
        };
        let old = p.queue(write(0, 8), t0);
        assert_eq!(commands(&p.take_output()).len(), 1);
        // Its caller gave up on it; the command timeout aborts it.
        p.tick(t0 + sec).unwrap();
        let abort = tmfs(&p.take_output())[0];
        // A newer write over some of its blocks waits; one elsewhere, and
        // a read of the same blocks, go.
        let newer = p.queue(write(4, 8), t0 + sec);
        let behind = p.queue(write(10, 8), t0 + sec);
        let elsewhere = p.queue(write(32, 8), t0 + sec);
        let read = p.queue(
            Command::read(2, &crate::disk_commands::read16(0, 8), 4096),
            t0 + sec,
        );
        assert_eq!(commands(&p.take_output()).len(), 2);
        assert!(p.task_of(old).is_some() && p.task_of(newer).is_none());
        assert!(
            p.task_of(behind).is_none(),
            "it keeps its place behind the newer write"
        );
        assert!(p.task_of(elsewhere).is_some() && p.task_of(read).is_some());
        // Settled (ABORT TASK answered): the newer write goes out.
        p.receive(tmf_response(abort.2, crate::tmf::COMPLETE, 100), t0 + sec)
            .unwrap();
        assert!(matches!(p.take_done(), Some((t, Err(Error::Aborted))) if t == old));
        assert!(p.task_of(newer).is_some() && p.task_of(behind).is_none());
        // The newer write answered, the one behind it goes.
        let itt = p.task_of(newer).unwrap().itt;
        p.receive(status(itt, 101, 30), t0 + sec).unwrap();
        assert!(p.task_of(behind).is_some());
    }
}
