//! A logged-in session at the edge (tokio): the sans-I/O
//! [`FullFeature`] driven over a [`Connection`]. Nothing runs in the
//! background: each call sends what it must and reads the target's PDUs
//! (answering R2Ts and pings of every task on the way) until its own answer
//! is there.

use std::net::SocketAddr;

use bytes::Bytes;
use iscsi_proto::login::{LoggedIn, LoginConfig};
use iscsi_proto::negotiate::Params;
use iscsi_proto::text::TextList;

use crate::command::{Command, ScsiResult};
use crate::connection::Connection;
use crate::fullfeature::{Event, FullFeature, Task, ENDING_EVENTS};
use crate::tmf::{TaskManagement, TmfResult};
use crate::Error;

/// A session over one connection, in Full Feature Phase.
#[derive(Debug)]
pub struct Session {
    conn: Connection,
    ffp: FullFeature,
    info: LoggedIn,
}

impl Session {
    /// Connects to `addr` and logs in with `cfg`.
    pub async fn connect(addr: SocketAddr, cfg: LoginConfig) -> Result<Session, Error> {
        let mut conn = Connection::connect(addr).await?;
        let info = conn.login(cfg).await?;
        Ok(Session::new(conn, info))
    }

    /// The session a login on `conn` opened.
    pub fn new(mut conn: Connection, info: LoggedIn) -> Session {
        conn.apply(&info.params);
        Session {
            ffp: FullFeature::new(&info),
            conn,
            info,
        }
    }

    /// What the login established (TSIH, the target's keys, ...).
    pub fn info(&self) -> &LoggedIn {
        &self.info
    }

    /// The negotiated parameters.
    pub fn params(&self) -> &Params {
        self.ffp.params()
    }

    /// The connection, for raw PDUs (the session's sequence numbers do not
    /// see them).
    pub fn connection(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// The session's state machine (sequence numbers, tasks, events).
    pub fn full_feature(&mut self) -> &mut FullFeature {
        &mut self.ffp
    }

    async fn flush(&mut self) -> Result<(), Error> {
        let out = self.ffp.take_output();
        if out.is_empty() {
            return Ok(());
        }
        self.conn.send_all(out).await
    }

    /// Sends what is queued, then reads and takes one PDU.
    async fn drive(&mut self) -> Result<(), Error> {
        self.flush().await?;
        let pdu = self.conn.recv().await?;
        self.ffp.receive(pdu)?;
        self.flush().await
    }

    /// Drives until `f` finds what it waits for.
    async fn until<T>(
        &mut self,
        mut f: impl FnMut(&mut FullFeature) -> Option<T>,
    ) -> Result<T, Error> {
        loop {
            if let Some(t) = f(&mut self.ffp) {
                self.flush().await?;
                return Ok(t);
            }
            self.drive().await?;
        }
    }

    /// Sends a command (once the command window has room) with its
    /// immediate and unsolicited data; returns without waiting for more.
    pub async fn start(&mut self, cmd: Command) -> Result<Task, Error> {
        self.until(|f| f.window_open().then_some(())).await?;
        let task = self.ffp.submit(&cmd)?;
        self.flush().await?;
        Ok(task)
    }

    /// Drives until all of `task`'s data-out is sent (as the target asks
    /// for it), or the task ends.
    pub async fn send_data(&mut self, task: Task) -> Result<(), Error> {
        self.until(|f| f.data_sent(task.itt).then_some(())).await
    }

    /// Drives until `task` ends; its status and data.
    pub async fn wait(&mut self, task: Task) -> Result<ScsiResult, Error> {
        let event = self
            .until(|f| f.take_event(|e| matches!(e, Event::Scsi { itt, .. } if *itt == task.itt)))
            .await?;
        match event {
            Event::Scsi { result, .. } => result,
            _ => unreachable!("picked a SCSI event"),
        }
    }

    /// Runs a command to its end.
    pub async fn command(&mut self, cmd: Command) -> Result<ScsiResult, Error> {
        let task = self.start(cmd).await?;
        self.wait(task).await
    }

    /// Sends a task management request and waits for its answer.
    pub async fn task_management(&mut self, tmf: TaskManagement) -> Result<TmfResult, Error> {
        let itt = self.start_task_management(tmf).await?;
        self.wait_task_management(itt).await
    }

    /// Sends a task management request; returns its tag without waiting.
    pub async fn start_task_management(&mut self, tmf: TaskManagement) -> Result<u32, Error> {
        let itt = self.ffp.task_management(tmf);
        self.flush().await?;
        Ok(itt)
    }

    /// Drives until the task management request tagged `itt` is answered.
    pub async fn wait_task_management(&mut self, itt: u32) -> Result<TmfResult, Error> {
        let response = self.answer(itt).await?;
        let Event::Tmf { response, .. } = response else {
            return Err(Error::Protocol("not a TMF response".into()));
        };
        let completed_before = self
            .ffp
            .events()
            .filter_map(|e| match e {
                Event::Scsi { itt, .. } => Some(*itt),
                _ => None,
            })
            .collect();
        Ok(TmfResult {
            response,
            completed_before,
        })
    }

    /// The answer (or the Reject) to the request tagged `itt`.
    async fn answer(&mut self, itt: u32) -> Result<Event, Error> {
        let event = self
            .until(|f| {
                f.take_event(|e| match e {
                    Event::Tmf { itt: i, .. }
                    | Event::Text { itt: i, .. }
                    | Event::Pong { itt: i, .. }
                    | Event::Logout { itt: i, .. } => *i == itt,
                    Event::Reject { itt: i, .. } => *i == Some(itt),
                    _ => false,
                })
            })
            .await?;
        match event {
            Event::Reject { reason, .. } => Err(Error::Rejected(reason)),
            e => Ok(e),
        }
    }

    /// A text exchange: sends `keys`, returns the target's (all of it,
    /// continued responses joined).
    pub async fn text(&mut self, keys: &TextList) -> Result<TextList, Error> {
        self.until(|f| f.window_open().then_some(())).await?;
        let itt = self.ffp.text(keys);
        match self.answer(itt).await? {
            Event::Text { result, .. } => result,
            _ => Err(Error::Protocol("not a Text Response".into())),
        }
    }

    /// SendTargets (`All`, or a target name): TargetName and TargetAddress
    /// keys, in the target's order.
    pub async fn send_targets(&mut self, which: &str) -> Result<TextList, Error> {
        let mut keys = TextList::default();
        keys.push("SendTargets", which);
        self.text(&keys).await
    }

    /// A NOP-Out ping carrying `data`; the data the target echoed.
    pub async fn ping(&mut self, data: &[u8]) -> Result<Bytes, Error> {
        let itt = self.ffp.ping(Bytes::copy_from_slice(data));
        match self.answer(itt).await? {
            Event::Pong { data, .. } => Ok(data),
            _ => Err(Error::Protocol("not a NOP-In".into())),
        }
    }

    /// Logs out (closes the session) and waits for the answer.
    pub async fn logout(mut self) -> Result<(), Error> {
        self.logout_inner().await
    }

    async fn logout_inner(&mut self) -> Result<(), Error> {
        let itt = self.ffp.logout();
        match self.answer(itt).await? {
            Event::Logout { response: 0, .. } => Ok(()),
            Event::Logout { response, .. } => Err(Error::LogoutRefused(response)),
            _ => Err(Error::Protocol("not a Logout Response".into())),
        }
    }

    /// Waits for the target to end the session: an asynchronous message
    /// asking for a logout (answered), or dropping the connection or the
    /// session, or the connection closing. False if none of this happens
    /// within the timeout.
    pub async fn await_target_close(&mut self) -> bool {
        loop {
            let ending = self.ffp.take_event(|e| {
                matches!(e, Event::Async { message, .. } if ENDING_EVENTS.contains(&message.event))
            });
            if let Some(Event::Async { message, .. }) = ending {
                if message.event == 1 {
                    let _ = self.logout_inner().await;
                }
                return true;
            }
            match self.drive().await {
                Ok(()) => {}
                Err(Error::Timeout(_)) => return false,
                Err(_) => return true,
            }
        }
    }

    /// The connection and the session's state machine, to go on with
    /// elsewhere (a pipelined session, after the reinstated session was
    /// checked one call at a time).
    pub fn into_parts(self) -> (Connection, FullFeature) {
        (self.conn, self.ffp)
    }

    /// Drops the connection with a TCP reset, without logging out.
    pub fn reset(self) {
        self.conn.reset();
    }
}
