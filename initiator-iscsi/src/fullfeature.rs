//! The Full Feature Phase of one session over one connection, on the
//! initiator's side, sans-I/O (RFC 7143 §4, §11): sequence numbers and the
//! command window, task tags, SCSI commands with immediate and unsolicited
//! data, Data-Out for each R2T, Data-In collected into each task, answers
//! to the target's pings, task management, text exchanges, logout.
//!
//! [`FullFeature::receive`] takes each PDU from the target; what to send
//! is drained with [`FullFeature::take_output`], and what happened (a task
//! ended, a TMF answered, an asynchronous message) queues up as [`Event`]s.
//! Error recovery level 0: anything the target gets wrong ends the
//! connection.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use iscsi_proto::frame::InPdu;
use iscsi_proto::login::LoggedIn;
use iscsi_proto::negotiate::Params;
use iscsi_proto::pdu::{
    encode_lun, AsyncMessage, Bhs, DataOut, LogoutRequest, NopOut, ScsiCommand, Sns, TextRequest,
    TmfRequest, RESERVED_TAG,
};
use iscsi_proto::text::{TextAccumulator, TextList};

use crate::command::{Command, ScsiResult};
use crate::tmf::TaskManagement;
use crate::Error;

/// A task sent: its tag and CmdSN (what ABORT TASK names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Task {
    /// Initiator task tag.
    pub itt: u32,
    /// CmdSN.
    pub cmd_sn: u32,
}

/// Something the target did.
#[derive(Debug)]
pub enum Event {
    /// A SCSI command ended.
    Scsi {
        /// Its tag.
        itt: u32,
        /// Its status and data, or why it did not complete.
        result: Result<ScsiResult, Error>,
    },
    /// A task management request was answered.
    Tmf {
        /// Its tag.
        itt: u32,
        /// The response code.
        response: u8,
    },
    /// A text exchange ended (all of the target's text joined).
    Text {
        /// Its tag.
        itt: u32,
        /// The target's keys.
        result: Result<TextList, Error>,
    },
    /// A NOP-In answered our NOP-Out.
    Pong {
        /// The NOP-Out's tag.
        itt: u32,
        /// The data echoed.
        data: Bytes,
    },
    /// A Logout Request was answered.
    Logout {
        /// Its tag.
        itt: u32,
        /// The response (0: closed successfully).
        response: u8,
        /// Time2Wait.
        time2wait: u16,
        /// Time2Retain.
        time2retain: u16,
    },
    /// An asynchronous message (event 1: the target asks for a logout).
    Async {
        /// The header.
        message: AsyncMessage,
        /// Sense data or vendor data, if any.
        data: Bytes,
    },
    /// The target rejected a PDU that was not a SCSI command's.
    Reject {
        /// The rejected PDU's ITT, if it had one.
        itt: Option<u32>,
        /// The reason.
        reason: u8,
    },
}

/// Asynchronous events that end the session or the connection (§11.9.1):
/// the target asks for a logout, drops the connection, drops the session.
pub(crate) const ENDING_EVENTS: [u8; 3] = [1, 2, 3];

/// One SCSI command in flight.
#[derive(Debug)]
struct TaskState {
    lun: u64,
    cmd_sn: u32,
    data_out: Bytes,
    /// Bytes of data-out sent so far.
    sent: usize,
    data_in: Vec<u8>,
    expected_in: usize,
    /// The DataSN the next Data-In must carry.
    next_data_sn: u32,
}

/// The Full Feature Phase of one session over one connection.
#[derive(Debug)]
pub struct FullFeature {
    params: Params,
    cmd_sn: u32,
    exp_stat_sn: u32,
    exp_cmd_sn: u32,
    max_cmd_sn: u32,
    next_itt: u32,
    tasks: HashMap<u32, TaskState>,
    texts: HashMap<u32, TextAccumulator>,
    out: Vec<(Bhs, Bytes)>,
    events: VecDeque<Event>,
}

/// Whether sequence number `a` comes after `b` (serial arithmetic, RFC 1982).
fn later(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < 1 << 31
}

impl FullFeature {
    /// The phase a login opened.
    pub fn new(session: &LoggedIn) -> FullFeature {
        FullFeature {
            params: session.params.clone(),
            cmd_sn: session.cmd_sn,
            exp_stat_sn: session.exp_stat_sn,
            exp_cmd_sn: session.exp_cmd_sn,
            max_cmd_sn: session.max_cmd_sn,
            next_itt: 1,
            tasks: HashMap::new(),
            texts: HashMap::new(),
            out: Vec::new(),
            events: VecDeque::new(),
        }
    }

    /// The negotiated parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The CmdSN the next command takes.
    pub fn cmd_sn(&self) -> u32 {
        self.cmd_sn
    }

    /// The StatSN expected next.
    pub fn exp_stat_sn(&self) -> u32 {
        self.exp_stat_sn
    }

    /// Whether the target's command window takes another command
    /// (CmdSN up to MaxCmdSN, §4.2.2.1).
    pub fn window_open(&self) -> bool {
        !later(self.cmd_sn, self.max_cmd_sn)
    }

    /// The CmdSN of the SCSI command tagged `itt`, while it runs.
    pub fn cmd_sn_of(&self, itt: u32) -> Option<u32> {
        self.tasks.get(&itt).map(|t| t.cmd_sn)
    }

    /// Forgets the SCSI command tagged `itt`, ended by task management:
    /// nothing more of it will come.
    pub fn forget(&mut self, itt: u32) {
        self.tasks.remove(&itt);
    }

    /// SCSI commands sent and not ended.
    pub fn tasks_in_flight(&self) -> usize {
        self.tasks.len()
    }

    fn itt(&mut self) -> u32 {
        let itt = self.next_itt;
        self.next_itt = self.next_itt.wrapping_add(1);
        if self.next_itt == RESERVED_TAG {
            self.next_itt = 1;
        }
        itt
    }

    /// The CmdSN of a non-immediate request, which moves the window on.
    fn take_cmd_sn(&mut self) -> u32 {
        let sn = self.cmd_sn;
        self.cmd_sn = sn.wrapping_add(1);
        sn
    }

    /// Sends a SCSI command with as much immediate data as negotiated and,
    /// without InitialR2T, its unsolicited Data-Out up to FirstBurstLength;
    /// the rest goes as the target asks for it (R2T). Call only while the
    /// window is open. Fails for a CDB over 16 bytes (an AHS this initiator
    /// does not send).
    pub fn submit(&mut self, cmd: &Command) -> Result<Task, Error> {
        if cmd.cdb.is_empty() || cmd.cdb.len() > 16 {
            return Err(Error::Protocol(format!(
                "a CDB of {} bytes (1 to 16 are sent)",
                cmd.cdb.len()
            )));
        }
        let itt = self.itt();
        let cmd_sn = self.take_cmd_sn();
        let len = cmd.data_out.len();
        let seg = self.params.send_data_segment_length.max(1) as usize;
        let first = self.params.first_burst_length as usize;
        let immediate = if self.params.immediate_data {
            len.min(first).min(seg)
        } else {
            0
        };
        let unsolicited = if self.params.initial_r2t {
            immediate
        } else {
            len.min(first)
        };
        let mut cdb = [0u8; 16];
        cdb[..cmd.cdb.len()].copy_from_slice(&cmd.cdb);
        let lun = encode_lun(cmd.lun);
        let header = ScsiCommand {
            immediate: false,
            final_: unsolicited == immediate,
            read: cmd.data_in > 0,
            write: len > 0,
            attr: cmd.attr.bits(),
            lun,
            itt,
            edtl: if len > 0 { len as u32 } else { cmd.data_in },
            cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            cdb,
        };
        self.out
            .push((Bhs::ScsiCommand(header), cmd.data_out.slice(..immediate)));
        self.data_out(
            lun,
            itt,
            RESERVED_TAG,
            &cmd.data_out,
            immediate,
            unsolicited,
        );
        self.tasks.insert(
            itt,
            TaskState {
                lun,
                cmd_sn,
                data_out: cmd.data_out.clone(),
                sent: unsolicited,
                data_in: Vec::new(),
                expected_in: cmd.data_in as usize,
                next_data_sn: 0,
            },
        );
        Ok(Task { itt, cmd_sn })
    }

    /// Data-Out PDUs for bytes `from..to` of `data`, one sequence.
    fn data_out(&mut self, lun: u64, itt: u32, ttt: u32, data: &Bytes, from: usize, to: usize) {
        let seg = self.params.send_data_segment_length.max(1) as usize;
        let mut offset = from;
        let mut data_sn = 0;
        while offset < to {
            let n = (to - offset).min(seg);
            let header = DataOut {
                final_: offset + n == to,
                lun,
                itt,
                ttt,
                exp_stat_sn: self.exp_stat_sn,
                data_sn,
                buffer_offset: offset as u32,
            };
            self.out
                .push((Bhs::DataOut(header), data.slice(offset..offset + n)));
            offset += n;
            data_sn += 1;
        }
    }

    /// Whether all of a task's data-out has been sent (or the task ended).
    pub fn data_sent(&self, itt: u32) -> bool {
        self.tasks
            .get(&itt)
            .is_none_or(|t| t.sent >= t.data_out.len())
    }

    /// Sends a task management request (immediate); returns its tag.
    pub fn task_management(&mut self, tmf: TaskManagement) -> u32 {
        let itt = self.itt();
        let header = TmfRequest {
            immediate: true,
            function: tmf.function.code(),
            lun: encode_lun(tmf.lun),
            itt,
            rtt: tmf.rtt,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            ref_cmd_sn: tmf.ref_cmd_sn,
            exp_data_sn: 0,
        };
        self.out.push((Bhs::TmfRequest(header), Bytes::new()));
        itt
    }

    /// Sends a Text Request with `keys`; returns its tag. Call only while
    /// the window is open.
    pub fn text(&mut self, keys: &TextList) -> u32 {
        let itt = self.itt();
        self.texts.insert(itt, TextAccumulator::repeating());
        self.text_request(itt, RESERVED_TAG, Bytes::from(keys.encode()));
        itt
    }

    fn text_request(&mut self, itt: u32, ttt: u32, data: Bytes) {
        let header = TextRequest {
            immediate: false,
            final_: true,
            cont: false,
            lun: 0,
            itt,
            ttt,
            cmd_sn: self.take_cmd_sn(),
            exp_stat_sn: self.exp_stat_sn,
        };
        self.out.push((Bhs::TextRequest(header), data));
    }

    /// Sends a NOP-Out ping (immediate) carrying `data`; returns its tag.
    pub fn ping(&mut self, data: Bytes) -> u32 {
        let itt = self.itt();
        let header = NopOut {
            immediate: true,
            lun: 0,
            itt,
            ttt: RESERVED_TAG,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        };
        self.out.push((Bhs::NopOut(header), data));
        itt
    }

    /// Sends a Logout Request (immediate) closing the session; returns its
    /// tag.
    pub fn logout(&mut self) -> u32 {
        let itt = self.itt();
        let header = LogoutRequest {
            immediate: true,
            reason: 0,
            itt,
            cid: 0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        };
        self.out.push((Bhs::LogoutRequest(header), Bytes::new()));
        itt
    }

    /// The PDUs to send, in order.
    pub fn take_output(&mut self) -> Vec<(Bhs, Bytes)> {
        std::mem::take(&mut self.out)
    }

    /// The first event `want` picks, taken off the queue.
    pub fn take_event(&mut self, want: impl Fn(&Event) -> bool) -> Option<Event> {
        let i = self.events.iter().position(want)?;
        self.events.remove(i)
    }

    /// Events not taken yet, oldest first.
    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.events.iter()
    }

    /// The sequence numbers of a PDU from the target; `advances` for the
    /// PDUs that carry a status (§4.2.2.2).
    fn note(&mut self, sns: &Sns, advances: bool) {
        if advances {
            self.exp_stat_sn = sns.stat_sn.wrapping_add(1);
        }
        // §4.2.2.1: a MaxCmdSN below ExpCmdSN - 1 is ignored.
        if later(sns.exp_cmd_sn.wrapping_sub(1), sns.max_cmd_sn) {
            return;
        }
        if later(sns.exp_cmd_sn, self.exp_cmd_sn) {
            self.exp_cmd_sn = sns.exp_cmd_sn;
        }
        if later(sns.max_cmd_sn, self.max_cmd_sn) {
            self.max_cmd_sn = sns.max_cmd_sn;
        }
    }

    /// Takes one PDU from the target. An error is the target's breach of
    /// the protocol: the connection must go.
    pub fn receive(&mut self, pdu: InPdu) -> Result<(), Error> {
        let bhs = pdu
            .bhs
            .map_err(|e| Error::Protocol(format!("a header that does not decode: {e}")))?;
        if pdu.data_digest_error {
            return Err(Error::Protocol("a data digest error".into()));
        }
        let data = pdu.data;
        match bhs {
            Bhs::DataIn(d) => {
                self.note(&d.sns, d.status_present);
                self.data_in(&d, data);
            }
            Bhs::ScsiResponse(r) => {
                self.note(&r.sns, true);
                let Some(task) = self.tasks.remove(&r.itt) else {
                    tracing::debug!(itt = r.itt, "status of an unknown task");
                    return Ok(());
                };
                let result = if r.response != 0 {
                    Err(Error::TargetFailure(r.response))
                } else {
                    let sense = if data.len() >= 2 {
                        let n = usize::from(u16::from_be_bytes([data[0], data[1]]));
                        data.slice(2..(2 + n).min(data.len()))
                    } else {
                        Bytes::new()
                    };
                    Ok(ScsiResult {
                        status: r.status,
                        sense,
                        data: task.data_in,
                        residual: residual(r.underflow, r.overflow, r.residual),
                    })
                };
                self.events.push_back(Event::Scsi { itt: r.itt, result });
            }
            Bhs::R2t(r) => {
                self.note(&r.sns, false);
                let Some(task) = self.tasks.get_mut(&r.itt) else {
                    tracing::debug!(itt = r.itt, "R2T for an unknown task");
                    return Ok(());
                };
                let from = r.buffer_offset as usize;
                let to = from + r.desired_length as usize;
                if to > task.data_out.len() {
                    return Err(Error::Protocol(format!(
                        "R2T for bytes {from}..{to} of a {}-byte write",
                        task.data_out.len()
                    )));
                }
                task.sent += to - from;
                let (lun, data) = (task.lun, task.data_out.clone());
                self.data_out(lun, r.itt, r.ttt, &data, from, to);
            }
            Bhs::NopIn(n) => {
                let ping = n.ttt != RESERVED_TAG;
                self.note(&n.sns, n.itt != RESERVED_TAG);
                if ping {
                    // The target's ping: answer with its TTT, at once.
                    let header = NopOut {
                        immediate: true,
                        lun: n.lun,
                        itt: RESERVED_TAG,
                        ttt: n.ttt,
                        cmd_sn: self.cmd_sn,
                        exp_stat_sn: self.exp_stat_sn,
                    };
                    self.out.push((Bhs::NopOut(header), data.clone()));
                }
                if n.itt != RESERVED_TAG {
                    self.events.push_back(Event::Pong { itt: n.itt, data });
                }
            }
            Bhs::TmfResponse(t) => {
                self.note(&t.sns, true);
                self.events.push_back(Event::Tmf {
                    itt: t.itt,
                    response: t.response,
                });
            }
            Bhs::TextResponse(t) => {
                self.note(&t.sns, true);
                let Some(acc) = self.texts.get_mut(&t.itt) else {
                    return Err(Error::Protocol("a Text Response nobody asked for".into()));
                };
                let more = t.cont || !t.final_;
                match acc.push(&data, t.cont) {
                    Err(e) => {
                        self.texts.remove(&t.itt);
                        self.events.push_back(Event::Text {
                            itt: t.itt,
                            result: Err(Error::Protocol(format!("text: {e}"))),
                        });
                    }
                    Ok(keys) if !more => {
                        self.texts.remove(&t.itt);
                        self.events.push_back(Event::Text {
                            itt: t.itt,
                            result: Ok(keys.unwrap_or_default()),
                        });
                    }
                    // More to come: ask for it.
                    Ok(_) => self.text_request(t.itt, t.ttt, Bytes::new()),
                }
            }
            Bhs::LogoutResponse(l) => {
                self.note(&l.sns, true);
                self.events.push_back(Event::Logout {
                    itt: l.itt,
                    response: l.response,
                    time2wait: l.time2wait,
                    time2retain: l.time2retain,
                });
            }
            Bhs::AsyncMessage(a) => {
                self.note(&a.sns, true);
                self.events.push_back(Event::Async { message: a, data });
            }
            Bhs::Reject(r) => {
                self.note(&r.sns, true);
                let itt = (data.len() >= 20)
                    .then(|| u32::from_be_bytes([data[16], data[17], data[18], data[19]]))
                    .filter(|&i| i != RESERVED_TAG);
                match itt.and_then(|i| self.tasks.remove(&i).map(|_| i)) {
                    Some(itt) => self.events.push_back(Event::Scsi {
                        itt,
                        result: Err(Error::Rejected(r.reason)),
                    }),
                    None => self.events.push_back(Event::Reject {
                        itt,
                        reason: r.reason,
                    }),
                }
            }
            other => {
                return Err(Error::Protocol(format!(
                    "opcode {:#04x} in Full Feature Phase",
                    other.opcode()
                )))
            }
        }
        Ok(())
    }

    /// Puts a Data-In segment in its task's buffer at its BufferOffset,
    /// checked against the expected transfer length first. A segment that
    /// is the task's whole data becomes its buffer (no copy when the
    /// connection gave it its own allocation); others are appended to a
    /// buffer allocated once, at the expected length, and never zeroed
    /// except for a gap the target leaves with data out of order.
    fn data_in(&mut self, d: &iscsi_proto::pdu::DataIn, data: Bytes) {
        let Some(task) = self.tasks.get_mut(&d.itt) else {
            tracing::debug!(itt = d.itt, "Data-In for an unknown task");
            return;
        };
        let from = d.buffer_offset as usize;
        let to = from + data.len();
        // With data in order (§13.19, §13.20) each Data-In continues where
        // the last one ended; DataSN counts them from 0 (§11.7.5).
        let in_order = self.params.data_pdu_in_order && self.params.data_sequence_in_order;
        let fault = if to > task.expected_in {
            Some(format!(
                "Data-In for bytes {from}..{to} of a {}-byte read",
                task.expected_in
            ))
        } else if in_order && from != task.data_in.len() {
            Some(format!(
                "Data-In at offset {from} after {} bytes, with data in order",
                task.data_in.len()
            ))
        } else if d.data_sn != task.next_data_sn {
            Some(format!(
                "Data-In DataSN {} where {} was due",
                d.data_sn, task.next_data_sn
            ))
        } else {
            None
        };
        if let Some(fault) = fault {
            self.tasks.remove(&d.itt);
            self.events.push_back(Event::Scsi {
                itt: d.itt,
                result: Err(Error::Protocol(fault)),
            });
            return;
        }
        task.next_data_sn = task.next_data_sn.wrapping_add(1);
        let held = task.data_in.len();
        if held == 0 && from == 0 && (to == task.expected_in || d.status_present) {
            task.data_in = Vec::from(data);
        } else {
            if task.data_in.capacity() == 0 {
                task.data_in.reserve_exact(task.expected_in);
            }
            if from > held {
                task.data_in.resize(from, 0);
            }
            let overlap = to.min(held).saturating_sub(from);
            task.data_in[from..from + overlap].copy_from_slice(&data[..overlap]);
            task.data_in.extend_from_slice(&data[overlap..]);
        }
        if d.status_present {
            let task = self.tasks.remove(&d.itt).expect("looked up above");
            self.events.push_back(Event::Scsi {
                itt: d.itt,
                result: Ok(ScsiResult {
                    status: d.status,
                    sense: Bytes::new(),
                    data: task.data_in,
                    residual: residual(d.underflow, d.overflow, d.residual),
                }),
            });
        }
    }
}

/// The residual count as a signed number: positive for an underflow,
/// negative for an overflow.
fn residual(underflow: bool, overflow: bool, count: u32) -> i64 {
    if underflow {
        i64::from(count)
    } else if overflow {
        -i64::from(count)
    } else {
        0
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use iscsi_proto::login::SessionType;
    use iscsi_proto::pdu::{DataIn, NopIn, R2t, ScsiResponse};

    pub(crate) fn session(params: Params) -> FullFeature {
        FullFeature::new(&LoggedIn {
            session_type: SessionType::Normal,
            isid: [0x80, 0, 0, 0, 0, 1],
            tsih: 1,
            cid: 0,
            params,
            cmd_sn: 10,
            exp_stat_sn: 100,
            exp_cmd_sn: 10,
            max_cmd_sn: 10,
            target_keys: TextList::default(),
            target_alias: None,
            tpgt: Some(1),
            authenticated_target: None,
        })
    }

    pub(crate) fn pdu(bhs: Bhs, data: &[u8]) -> InPdu {
        InPdu {
            raw: [0; 48],
            bhs: Ok(bhs),
            ahs: Bytes::new(),
            data: Bytes::copy_from_slice(data),
            data_digest_error: false,
        }
    }

    fn sns(stat_sn: u32, max_cmd_sn: u32) -> Sns {
        Sns {
            stat_sn,
            exp_cmd_sn: 11,
            max_cmd_sn,
        }
    }

    /// (offset, length, final, DataSN, TTT) of each Data-Out queued.
    fn data_outs(out: &[(Bhs, Bytes)]) -> Vec<(u32, usize, bool, u32, u32)> {
        out.iter()
            .filter_map(|(b, d)| match b {
                Bhs::DataOut(o) => Some((o.buffer_offset, d.len(), o.final_, o.data_sn, o.ttt)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_write_goes_immediate_unsolicited_then_solicited() {
        let mut f = session(Params {
            immediate_data: true,
            initial_r2t: false,
            first_burst_length: 8192,
            send_data_segment_length: 4096,
            ..Params::default()
        });
        assert!(f.window_open());
        let t = f
            .submit(&Command::write(0, &[0x2a; 10], vec![7u8; 20_000]))
            .unwrap();
        assert_eq!(t.cmd_sn, 10);
        assert!(!f.window_open(), "MaxCmdSN 10 is used up");
        let out = f.take_output();
        let Bhs::ScsiCommand(c) = &out[0].0 else {
            panic!("{out:?}")
        };
        assert!(!c.final_ && c.write && c.edtl == 20_000);
        assert_eq!(out[0].1.len(), 4096, "immediate data");
        assert_eq!(data_outs(&out), [(4096, 4096, true, 0, RESERVED_TAG)]);
        assert!(!f.data_sent(t.itt));
        let r2t = R2t {
            itt: t.itt,
            ttt: 7,
            sns: sns(100, 20),
            buffer_offset: 8192,
            desired_length: 11_808,
            ..Default::default()
        };
        f.receive(pdu(Bhs::R2t(r2t), &[])).unwrap();
        assert_eq!(
            data_outs(&f.take_output()),
            [
                (8192, 4096, false, 0, 7),
                (12288, 4096, false, 1, 7),
                (16384, 3616, true, 2, 7)
            ]
        );
        assert!(f.data_sent(t.itt));
        assert!(f.window_open(), "the R2T's MaxCmdSN opened the window");
        assert_eq!(f.exp_stat_sn(), 100, "an R2T carries no status");
        // An R2T past the end of the data is the target's fault.
        let bad = R2t {
            buffer_offset: 16384,
            desired_length: 8192,
            ..r2t
        };
        assert!(matches!(
            f.receive(pdu(Bhs::R2t(bad), &[])),
            Err(Error::Protocol(_))
        ));
    }

    #[test]
    fn with_initial_r2t_and_no_immediate_data_nothing_goes_unasked() {
        let mut f = session(Params {
            immediate_data: false,
            initial_r2t: true,
            ..Params::default()
        });
        f.submit(&Command::write(0, &[0x2a; 10], vec![1u8; 1024]))
            .unwrap();
        let out = f.take_output();
        assert_eq!(out.len(), 1);
        assert!(matches!(&out[0].0, Bhs::ScsiCommand(c) if c.final_));
        assert!(out[0].1.is_empty());
    }

    #[test]
    fn data_in_is_collected_in_order() {
        let mut f = session(Params::default());
        let t = f.submit(&Command::read(0, &[0x28; 10], 8)).unwrap();
        let d = |offset, data_sn, last| DataIn {
            final_: last,
            status_present: last,
            itt: t.itt,
            sns: sns(100, 20),
            data_sn,
            buffer_offset: offset,
            ..Default::default()
        };
        f.receive(pdu(Bhs::DataIn(d(0, 0, false)), b"abcd"))
            .unwrap();
        assert_eq!(f.exp_stat_sn(), 100);
        f.receive(pdu(Bhs::DataIn(d(4, 1, true)), b"efgh")).unwrap();
        assert_eq!(f.exp_stat_sn(), 101, "the status advances StatSN");
        let e = f.take_event(|_| true);
        let Some(Event::Scsi { result: Ok(r), .. }) = e else {
            panic!("{e:?}")
        };
        assert_eq!((r.status, &r.data[..]), (0, &b"abcdefgh"[..]));
        // Out of order (the data is in order by default): the task fails.
        let t = f.submit(&Command::read(0, &[0x28; 10], 8)).unwrap();
        let late = DataIn {
            itt: t.itt,
            ..d(4, 0, false)
        };
        f.receive(pdu(Bhs::DataIn(late), b"efgh")).unwrap();
        assert_task_failed(&mut f);
    }

    /// The next event is a SCSI command failed for the target's breach.
    fn assert_task_failed(f: &mut FullFeature) {
        let e = f.take_event(|_| true);
        assert!(
            matches!(
                e,
                Some(Event::Scsi {
                    result: Err(Error::Protocol(_)),
                    ..
                })
            ),
            "{e:?}"
        );
    }

    fn data_in(itt: u32, offset: u32, data_sn: u32, last: bool) -> DataIn {
        DataIn {
            final_: last,
            status_present: last,
            itt,
            sns: sns(100, 20),
            data_sn,
            buffer_offset: offset,
            ..Default::default()
        }
    }

    #[test]
    fn a_read_in_one_segment_keeps_the_segments_allocation() {
        let mut f = session(Params::default());
        let t = f.submit(&Command::read(0, &[0x28; 10], 8192)).unwrap();
        let segment = Bytes::from(vec![0x5a; 8192]);
        let at = segment.as_ptr();
        let mut p = pdu(Bhs::DataIn(data_in(t.itt, 0, 0, true)), &[]);
        p.data = segment;
        f.receive(p).unwrap();
        let Some(Event::Scsi { result: Ok(r), .. }) = f.take_event(|_| true) else {
            panic!()
        };
        assert_eq!(r.data.len(), 8192);
        assert_eq!(r.data.as_ptr(), at, "the data was copied");
    }

    #[test]
    fn data_out_of_order_lands_at_its_offsets() {
        let mut f = session(Params {
            data_pdu_in_order: false,
            ..Params::default()
        });
        let t = f.submit(&Command::read(0, &[0x28; 10], 12)).unwrap();
        f.receive(pdu(Bhs::DataIn(data_in(t.itt, 8, 0, false)), b"ijkl"))
            .unwrap();
        f.receive(pdu(Bhs::DataIn(data_in(t.itt, 0, 1, false)), b"abcd"))
            .unwrap();
        f.receive(pdu(Bhs::DataIn(data_in(t.itt, 4, 2, true)), b"efgh"))
            .unwrap();
        let Some(Event::Scsi { result: Ok(r), .. }) = f.take_event(|_| true) else {
            panic!()
        };
        assert_eq!(&r.data[..], b"abcdefghijkl");
        // A segment past the expected length fails the task, whatever the
        // order allowed.
        let t = f.submit(&Command::read(0, &[0x28; 10], 12)).unwrap();
        let past = data_in(t.itt, u32::MAX - 2, 0, false);
        f.receive(pdu(Bhs::DataIn(past), b"abcd")).unwrap();
        assert_task_failed(&mut f);
    }

    #[test]
    fn a_response_carries_status_and_sense() {
        let mut f = session(Params::default());
        let t = f.submit(&Command::new(0, &[0; 6])).unwrap();
        let r = ScsiResponse {
            status: 2,
            itt: t.itt,
            sns: sns(100, 20),
            ..Default::default()
        };
        let sense = [0, 8, 0x70, 0, 6, 0, 0, 0, 0, 0];
        f.receive(pdu(Bhs::ScsiResponse(r), &sense)).unwrap();
        let Some(Event::Scsi { result: Ok(r), .. }) = f.take_event(|_| true) else {
            panic!()
        };
        assert!(r.is_unit_attention());
        assert_eq!(r.sense.len(), 8);
        // The target could not complete another.
        let t = f.submit(&Command::new(0, &[0; 6])).unwrap();
        let r = ScsiResponse {
            response: 1,
            itt: t.itt,
            sns: sns(101, 20),
            ..Default::default()
        };
        f.receive(pdu(Bhs::ScsiResponse(r), &[])).unwrap();
        assert!(matches!(
            f.take_event(|_| true),
            Some(Event::Scsi {
                result: Err(Error::TargetFailure(1)),
                ..
            })
        ));
    }

    #[test]
    fn the_targets_ping_is_answered_at_once() {
        let mut f = session(Params::default());
        let ping = NopIn {
            lun: 0,
            itt: RESERVED_TAG,
            ttt: 5,
            sns: sns(100, 10),
        };
        f.receive(pdu(Bhs::NopIn(ping), b"x")).unwrap();
        assert_eq!(f.exp_stat_sn(), 100, "a ping does not advance StatSN");
        let out = f.take_output();
        assert!(
            matches!(&out[..], [(Bhs::NopOut(n), d)] if n.ttt == 5 && n.itt == RESERVED_TAG && &d[..] == b"x"),
            "{out:?}"
        );
        assert!(f.events().next().is_none());
        // Our own ping's answer is an event.
        let itt = f.ping(Bytes::from_static(b"y"));
        let pong = NopIn {
            itt,
            ttt: RESERVED_TAG,
            ..ping
        };
        f.receive(pdu(Bhs::NopIn(pong), b"y")).unwrap();
        assert!(matches!(f.take_event(|_| true), Some(Event::Pong { itt: i, .. }) if i == itt));
    }

    proptest::proptest! {
        /// Whatever the target sends, the phase takes it or fails the
        /// connection: it never panics.
        #[test]
        fn arbitrary_pdus_never_panic(
            pdus in proptest::collection::vec(
                (
                    proptest::sample::select(vec![0x20u8, 0x21, 0x22, 0x24, 0x25, 0x26, 0x31, 0x32, 0x3f, 0x23]),
                    proptest::prelude::any::<[u8; 48]>(),
                    proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
                    proptest::prelude::any::<bool>(),
                ),
                1..16,
            ),
        ) {
            let mut f = session(Params::default());
            let w = f.submit(&Command::write(0, &[0x2a; 10], vec![1u8; 3000])).unwrap();
            let r = f.submit(&Command::read(0, &[0x28; 10], 100)).unwrap();
            let t = f.text(&TextList::default());
            for (op, mut raw, data, ours) in pdus {
                raw[0] = op;
                if ours {
                    let itt = [w.itt, r.itt, t][usize::from(raw[1]) % 3];
                    raw[16..20].copy_from_slice(&itt.to_be_bytes());
                }
                let bhs = Bhs::decode(&raw);
                let p = InPdu { raw, bhs, ahs: Bytes::new(), data: Bytes::from(data), data_digest_error: false };
                if f.receive(p).is_err() {
                    break;
                }
                f.take_output();
            }
        }
    }
}
