//! A pipelined session at the edge (tokio): a [`Pipeline`] driven by a
//! task of its own, with a reader task beside it, so that any number of
//! callers share the session and their commands run at once (up to the
//! command window and the queue depth). The target's pings are answered
//! and the target is pinged when silent, whether or not anyone calls.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use iscsi_proto::login::{LoggedIn, LoginConfig};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::command::{Command, ScsiResult};
use crate::connection::{Connection, Reader, Writer};
use crate::fullfeature::FullFeature;
use crate::pipeline::{Pipeline, PipelineConfig, Ticket};
use crate::Error;

/// What a caller asks of the session's task.
#[derive(Debug)]
enum Request {
    Command(Command, oneshot::Sender<Result<ScsiResult, Error>>),
    Logout(oneshot::Sender<Result<(), Error>>),
}

/// A logged-in session shared by concurrent callers.
#[derive(Debug)]
pub struct PipelinedSession {
    requests: mpsc::Sender<Request>,
    info: Arc<LoggedIn>,
    /// The session's task, ended with the handle.
    driver: AbortOnDrop,
}

impl PipelinedSession {
    /// Connects to `addr`, logs in with `login` and starts the session.
    pub async fn connect(
        addr: SocketAddr,
        login: LoginConfig,
        cfg: PipelineConfig,
    ) -> Result<PipelinedSession, Error> {
        let mut conn = Connection::connect(addr).await?;
        let info = conn.login(login).await?;
        Ok(PipelinedSession::start(conn, info, cfg))
    }

    /// Starts the session a login on `conn` opened.
    pub fn start(mut conn: Connection, info: LoggedIn, cfg: PipelineConfig) -> PipelinedSession {
        conn.apply(&info.params);
        let pipe = Pipeline::new(FullFeature::new(&info), cfg, Instant::now().into_std());
        let (reader, writer) = conn.into_split();
        let (tx, rx) = mpsc::channel(cfg.queue_depth.max(1) as usize);
        PipelinedSession {
            requests: tx,
            info: Arc::new(info),
            driver: AbortOnDrop(tokio::spawn(drive(pipe, reader, writer, rx))),
        }
    }

    /// What the login established.
    pub fn info(&self) -> &LoggedIn {
        &self.info
    }

    /// Whether the session has ended (logged out or its connection lost).
    pub fn is_closed(&self) -> bool {
        self.requests.is_closed()
    }

    /// Runs a command to its end. [`Error::ConnectionLost`] when the
    /// connection failed before the answer; [`Error::SessionClosed`] when
    /// the command was never sent.
    pub async fn command(&self, cmd: Command) -> Result<ScsiResult, Error> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(Request::Command(cmd, tx))
            .await
            .map_err(|_| Error::SessionClosed)?;
        rx.await.map_err(|_| Error::SessionClosed)?
    }

    /// Logs out and waits for the answer and the session's end.
    pub async fn logout(mut self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(Request::Logout(tx))
            .await
            .map_err(|_| Error::SessionClosed)?;
        let result = rx.await.map_err(|_| Error::SessionClosed)?;
        let _ = (&mut self.driver.0).await;
        result
    }
}

/// Aborts a task when dropped.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The session's task: takes requests, sends what the pipeline queues,
/// feeds it what the reader task receives and its deadlines, and hands
/// out the answers. On a failure every caller waiting learns of it.
async fn drive(
    mut pipe: Pipeline,
    mut reader: Reader,
    mut writer: Writer,
    mut requests: mpsc::Receiver<Request>,
) {
    let (pdu_tx, mut pdus) = mpsc::unbounded_channel();
    let _reading = AbortOnDrop(tokio::spawn(async move {
        loop {
            let pdu = reader.recv().await;
            let end = pdu.is_err();
            if pdu_tx.send(pdu).is_err() || end {
                return;
            }
        }
    }));
    let mut waiters: HashMap<Ticket, oneshot::Sender<Result<ScsiResult, Error>>> = HashMap::new();
    let mut logout: Option<(u32, oneshot::Sender<Result<(), Error>>)> = None;
    let failure = loop {
        let out = pipe.take_output();
        if !out.is_empty() {
            if let Err(e) = writer.send_all(out).await {
                break e;
            }
        }
        while let Some((ticket, result)) = pipe.take_done() {
            if let Some(w) = waiters.remove(&ticket) {
                let _ = w.send(result);
            }
        }
        if let Some(response) = logout.as_ref().and_then(|(itt, _)| pipe.take_answer(*itt)) {
            let (_, w) = logout.take().expect("checked above");
            let _ = w.send(match response {
                0 => Ok(()),
                r => Err(Error::LogoutRefused(r)),
            });
            break Error::SessionClosed;
        }
        let deadline = pipe.deadline().map(Instant::from_std);
        tokio::select! {
            req = requests.recv(), if logout.is_none() => match req {
                Some(Request::Command(cmd, w)) => {
                    waiters.insert(pipe.queue(cmd, Instant::now().into_std()), w);
                }
                Some(Request::Logout(w)) => logout = Some((pipe.logout(), w)),
                None => break Error::SessionClosed,
            },
            pdu = pdus.recv() => match pdu {
                Some(Ok(pdu)) => {
                    if let Err(e) = pipe.receive(pdu, Instant::now().into_std()) {
                        break e;
                    }
                }
                Some(Err(e)) => break e,
                None => break Error::Closed,
            },
            () = sleep_until(deadline) => {
                if let Err(e) = pipe.tick(Instant::now().into_std()) {
                    break e;
                }
            }
        }
    };
    tracing::debug!(%failure, in_flight = waiters.len(), "session ended");
    requests.close();
    for (_, w) in waiters {
        let _ = w.send(Err(Error::ConnectionLost(failure.to_string())));
    }
    if let Some((_, w)) = logout {
        let _ = w.send(Err(Error::ConnectionLost(failure.to_string())));
    }
    // Requests that came in meanwhile were never sent.
    while let Ok(req) = requests.try_recv() {
        match req {
            Request::Command(_, w) => drop(w.send(Err(Error::SessionClosed))),
            Request::Logout(w) => drop(w.send(Err(Error::SessionClosed))),
        }
    }
}

/// Sleeps until `deadline`; forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
