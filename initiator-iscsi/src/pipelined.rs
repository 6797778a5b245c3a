//! A pipelined session at the edge (tokio): a [`Pipeline`] driven by a
//! task of its own, with a reader task beside it, so that any number of
//! callers share the session and their commands run at once (up to the
//! command window and the queue depth). The target's pings are answered
//! and the target is pinged when silent, whether or not anyone calls.
//!
//! A session that knows how to log in again ([`PipelinedSession::connect`])
//! replaces a lost connection by ERL 0 session reinstatement: a new login
//! with the same ISID (so the target ends the old session's tasks before
//! the new session is used), every command without an answer sent again
//! as a new task, its write data held until then; a bounded number of
//! attempts in a row without an answer in between, then the callers get
//! [`Error::ConnectionLost`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use iscsi_proto::login::{LoggedIn, LoginConfig};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::command::{Command, ScsiResult};
use crate::connection::Connection;
use crate::fullfeature::FullFeature;
use crate::pipeline::{Pipeline, PipelineConfig, Ticket};
use crate::Error;

/// What a caller asks of the session's task.
#[derive(Debug)]
enum Request {
    Command(Command, oneshot::Sender<Result<ScsiResult, Error>>),
    Logout(oneshot::Sender<Result<(), Error>>),
}

/// How a lost connection is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReinstateConfig {
    /// Logins tried in a row (each after `delay`) before the session is
    /// given up; and how many lost connections in a row, without an answer
    /// to any command in between, are replaced. Zero: never.
    pub attempts: u32,
    /// Wait before each login.
    pub delay: Duration,
}

impl Default for ReinstateConfig {
    fn default() -> ReinstateConfig {
        ReinstateConfig {
            attempts: 3,
            delay: Duration::from_millis(100),
        }
    }
}

/// Where and how to log in again.
#[derive(Debug, Clone)]
struct Relogin {
    addr: SocketAddr,
    login: LoginConfig,
    cfg: ReinstateConfig,
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
    /// Connects to `addr`, logs in with `login` and starts the session;
    /// a lost connection is replaced as [`ReinstateConfig::default`] says.
    pub async fn connect(
        addr: SocketAddr,
        login: LoginConfig,
        cfg: PipelineConfig,
    ) -> Result<PipelinedSession, Error> {
        PipelinedSession::connect_with(addr, login, cfg, ReinstateConfig::default()).await
    }

    /// [`PipelinedSession::connect`], a lost connection replaced as
    /// `reinstate` says.
    pub async fn connect_with(
        addr: SocketAddr,
        login: LoginConfig,
        cfg: PipelineConfig,
        reinstate: ReinstateConfig,
    ) -> Result<PipelinedSession, Error> {
        let mut conn = Connection::connect(addr).await?;
        let info = conn.login(login.clone()).await?;
        let relogin = Relogin {
            addr,
            login,
            cfg: reinstate,
        };
        Ok(PipelinedSession::spawn(conn, info, cfg, Some(relogin)))
    }

    /// Starts the session a login on `conn` opened; a lost connection ends
    /// it.
    pub fn start(conn: Connection, info: LoggedIn, cfg: PipelineConfig) -> PipelinedSession {
        PipelinedSession::spawn(conn, info, cfg, None)
    }

    fn spawn(
        mut conn: Connection,
        info: LoggedIn,
        cfg: PipelineConfig,
        relogin: Option<Relogin>,
    ) -> PipelinedSession {
        conn.apply(&info.params);
        let pipe = Pipeline::new(FullFeature::new(&info), cfg, Instant::now().into_std());
        let (tx, rx) = mpsc::channel(cfg.queue_depth.max(1) as usize);
        PipelinedSession {
            requests: tx,
            info: Arc::new(info),
            driver: AbortOnDrop(tokio::spawn(drive(pipe, conn, rx, relogin))),
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

/// Callers waiting for answers, across connections.
#[derive(Debug, Default)]
struct Waiters {
    commands: HashMap<Ticket, oneshot::Sender<Result<ScsiResult, Error>>>,
    logout: Option<(u32, oneshot::Sender<Result<(), Error>>)>,
}

/// The session's task: serves the connection; when it is lost, reinstates
/// the session (if it knows how) and serves the new one; in the end tells
/// every caller still waiting.
async fn drive(
    mut pipe: Pipeline,
    mut conn: Connection,
    mut requests: mpsc::Receiver<Request>,
    relogin: Option<Relogin>,
) {
    let mut waiters = Waiters::default();
    let mut lost_in_a_row = 0;
    let failure = loop {
        let (failure, answered) = serve(&mut pipe, conn, &mut requests, &mut waiters).await;
        if answered {
            lost_in_a_row = 0;
        }
        lost_in_a_row += 1;
        let ended = matches!(failure, Error::SessionClosed) || waiters.logout.is_some();
        let Some(r) = relogin
            .as_ref()
            .filter(|r| !ended && lost_in_a_row <= r.cfg.attempts)
        else {
            break failure;
        };
        tracing::info!(%failure, in_flight = pipe.in_flight(), "connection lost: reinstating the session");
        match reinstate(r).await {
            Ok((c, info)) => {
                pipe = pipe.reinstated(FullFeature::new(&info), Instant::now().into_std());
                conn = c;
            }
            Err(e) => break e,
        }
    };
    tracing::debug!(%failure, in_flight = waiters.commands.len(), "session ended");
    requests.close();
    let lost = || Err(Error::ConnectionLost(failure.to_string()));
    for (_, w) in waiters.commands {
        let _ = w.send(lost());
    }
    if let Some((_, w)) = waiters.logout {
        let _ = w.send(lost().map(drop));
    }
    // Requests that came in meanwhile were never sent.
    while let Ok(req) = requests.try_recv() {
        match req {
            Request::Command(_, w) => drop(w.send(Err(Error::SessionClosed))),
            Request::Logout(w) => drop(w.send(Err(Error::SessionClosed))),
        }
    }
}

/// Logs in again with the same ISID, up to the attempts allowed.
async fn reinstate(r: &Relogin) -> Result<(Connection, LoggedIn), Error> {
    let mut last = Error::SessionClosed;
    for _ in 0..r.cfg.attempts {
        tokio::time::sleep(r.cfg.delay).await;
        let login = async {
            let mut conn = Connection::connect(r.addr).await?;
            let info = conn.login(r.login.clone()).await?;
            conn.apply(&info.params);
            Ok::<_, Error>((conn, info))
        };
        match login.await {
            Ok(done) => return Ok(done),
            Err(e) => {
                tracing::debug!(%e, "reinstatement login failed");
                last = e;
            }
        }
    }
    Err(last)
}

/// Serves one connection: takes requests, sends what the pipeline queues,
/// feeds it what the reader task receives and its deadlines, and hands out
/// the answers; until the connection fails or the session ends. Also
/// whether any command was answered.
async fn serve(
    pipe: &mut Pipeline,
    conn: Connection,
    requests: &mut mpsc::Receiver<Request>,
    waiters: &mut Waiters,
) -> (Error, bool) {
    let (mut reader, mut writer) = conn.into_split();
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
    let mut answered = false;
    let failure = loop {
        let out = pipe.take_output();
        if !out.is_empty() {
            if let Err(e) = writer.send_all(out).await {
                break e;
            }
        }
        while let Some((ticket, result)) = pipe.take_done() {
            answered = true;
            if let Some(w) = waiters.commands.remove(&ticket) {
                let _ = w.send(result);
            }
        }
        let logout = waiters.logout.as_ref().map(|(itt, _)| *itt);
        if let Some(response) = logout.and_then(|itt| pipe.take_answer(itt)) {
            let (_, w) = waiters.logout.take().expect("checked above");
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
                    waiters.commands.insert(pipe.queue(cmd, Instant::now().into_std()), w);
                }
                Some(Request::Logout(w)) => waiters.logout = Some((pipe.logout(), w)),
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
    (failure, answered)
}

/// Sleeps until `deadline`; forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
