//! A pipelined session at the edge (tokio): a [`Pipeline`] driven by a
//! task of its own, which also reads the connection, so that any number of
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
//! [`Error::ConnectionLost`]. Before anything held is sent again, each
//! logical unit opened on the session is read again ([`readmission`]): a
//! different disk behind the same name ends the session, and every held
//! and later command gets [`Error::IdentityChanged`] without being sent.
//!
//! [`readmission`]: crate::readmission
//!
//! A session that is one path of several ([`FailoverConfig::fail_fast`])
//! does not hold its commands through a reinstatement: when the connection
//! is lost, the commands without an answer end at once (those sent with
//! [`Error::ConnectionLost`], the others with [`Error::Reinstating`]), and
//! so do the commands that come while the session is being reinstated;
//! the multipath layer sends them on another path. What was sent may still
//! land until the target ends the old session: [`PipelinedSession::settled`]
//! tells when it no longer can.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use iscsi_proto::frame::InPdu;
use iscsi_proto::login::{LoggedIn, LoginConfig};
use iscsi_proto::pdu::Bhs;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::command::{Command, ScsiResult};
use crate::connection::{Connection, Reader, Writer};
use crate::fullfeature::FullFeature;
use crate::keepalive::KeepaliveConfig;
use crate::pipeline::{Pipeline, PipelineConfig, Ticket};
use crate::readmission::{self, Admission, Expected};
use crate::session::Session;
use crate::Error;

/// What a caller asks of the session's task.
#[derive(Debug)]
enum Request {
    Command(Command, oneshot::Sender<Result<ScsiResult, Error>>),
    Logout(oneshot::Sender<Result<(), Error>>),
    /// The ticket the next command will get: every command asked for
    /// before this request has a smaller one.
    Mark(oneshot::Sender<Ticket>),
}

/// How a session behaves as one path of several.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailoverConfig {
    /// Fail fast (like dm-multipath's `fast_io_fail`): when the connection
    /// is lost, the commands without an answer end at once instead of being
    /// sent again after the reinstatement, and commands that come while
    /// the session is reinstated end at once with [`Error::Reinstating`].
    /// Off, the session holds them and sends them again (a device without
    /// another path).
    pub fail_fast: bool,
    /// How long after a lost connection the target is sure to have ended
    /// the old session and its tasks, when the session cannot be
    /// reinstated (or logged out) to make sure of it.
    pub session_horizon: Duration,
}

/// opie's target ends a session whose initiator is silent after its
/// `nop_interval` (5 s) and `nop_timeout` (10 s), retaining nothing
/// (DefaultTime2Retain 0): 15 s; twice that, for a margin.
pub const DEFAULT_SESSION_HORIZON: Duration = Duration::from_secs(30);

impl Default for FailoverConfig {
    /// A session alone: commands held through a reinstatement.
    fn default() -> FailoverConfig {
        FailoverConfig {
            fail_fast: false,
            session_horizon: DEFAULT_SESSION_HORIZON,
        }
    }
}

impl FailoverConfig {
    /// A session that is one path of a multipath device: fail fast.
    pub fn multipath() -> FailoverConfig {
        FailoverConfig {
            fail_fast: true,
            ..FailoverConfig::default()
        }
    }
}

/// What of the commands given to a session may still act on the target,
/// published by the session's task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InDoubt {
    /// The oldest command the session still runs or holds: it and any
    /// later one may still act.
    pub oldest_unfinished: Option<Ticket>,
    /// Since when commands that were sent have ended without an answer
    /// (fail fast, or the session given up) while the target may still
    /// run them; cleared when the session is reinstated (the target ended
    /// the old session's tasks first).
    pub lost_since: Option<std::time::Instant>,
    /// The session was logged out: the target ended it and its tasks.
    pub logged_out: bool,
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
    admission: Arc<Admission>,
    /// Each new connection's socket is tuned to it.
    keepalive: KeepaliveConfig,
}

/// A logged-in session shared by concurrent callers.
#[derive(Debug)]
pub struct PipelinedSession {
    requests: mpsc::Sender<Request>,
    info: Arc<LoggedIn>,
    admission: Arc<Admission>,
    failover: FailoverConfig,
    in_doubt: watch::Receiver<InDoubt>,
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

    /// [`PipelinedSession::connect_with`], the session behaving as
    /// `failover` says (as one path of several, or alone).
    pub async fn connect_failover(
        addr: SocketAddr,
        login: LoginConfig,
        cfg: PipelineConfig,
        reinstate: ReinstateConfig,
        failover: FailoverConfig,
    ) -> Result<PipelinedSession, Error> {
        let mut conn = Connection::connect(addr).await?;
        let info = conn.login(login.clone()).await?;
        let relogin = Relogin {
            addr,
            login,
            cfg: reinstate,
            admission: Arc::default(),
            keepalive: cfg.keepalive,
        };
        Ok(PipelinedSession::spawn(
            conn,
            info,
            cfg,
            Some(relogin),
            failover,
        ))
    }

    /// [`PipelinedSession::connect`], a lost connection replaced as
    /// `reinstate` says.
    pub async fn connect_with(
        addr: SocketAddr,
        login: LoginConfig,
        cfg: PipelineConfig,
        reinstate: ReinstateConfig,
    ) -> Result<PipelinedSession, Error> {
        let failover = FailoverConfig::default();
        PipelinedSession::connect_failover(addr, login, cfg, reinstate, failover).await
    }

    /// Starts the session a login on `conn` opened; a lost connection ends
    /// it.
    pub fn start(conn: Connection, info: LoggedIn, cfg: PipelineConfig) -> PipelinedSession {
        PipelinedSession::spawn(conn, info, cfg, None, FailoverConfig::default())
    }

    fn spawn(
        mut conn: Connection,
        info: LoggedIn,
        cfg: PipelineConfig,
        relogin: Option<Relogin>,
        failover: FailoverConfig,
    ) -> PipelinedSession {
        conn.apply(&info.params);
        if let Err(e) = conn.tune(cfg.keepalive) {
            tracing::warn!(%e, "socket options not set");
        }
        let pipe = Pipeline::new(FullFeature::new(&info), cfg, Instant::now().into_std());
        let (tx, rx) = mpsc::channel(cfg.queue_depth.max(1) as usize);
        let (doubt_tx, doubt_rx) = watch::channel(InDoubt::default());
        let admission = relogin
            .as_ref()
            .map_or_else(Arc::default, |r| r.admission.clone());
        let driver = Driver {
            requests: rx,
            waiters: Waiters::default(),
            in_doubt: doubt_tx,
            failover,
        };
        PipelinedSession {
            requests: tx,
            info: Arc::new(info),
            admission,
            failover,
            in_doubt: doubt_rx,
            driver: AbortOnDrop(tokio::spawn(drive(pipe, conn, driver, relogin))),
        }
    }

    /// From now on, a reinstatement checks that the logical unit
    /// `expected.lun` is still `expected` before anything is sent again.
    pub fn expect(&self, expected: Expected) {
        self.admission.expect(expected);
    }

    /// Why a command was not carried out when the session's task took no
    /// more: another disk behind the name, or the session closed.
    fn gone(&self) -> Error {
        self.admission.refused().unwrap_or(Error::SessionClosed)
    }

    /// How the session behaves as a path.
    pub fn failover(&self) -> FailoverConfig {
        self.failover
    }

    /// What of the commands given to the session may still act, now.
    pub fn in_doubt(&self) -> InDoubt {
        *self.in_doubt.borrow()
    }

    /// Resolves once no command asked of this session before the call can
    /// act on the target any more: each was answered, aborted (answered),
    /// or never sent; and those that ended without an answer have been
    /// ended by the target: the session was reinstated (same ISID: the
    /// target ends the old session's tasks before it lets the new one in)
    /// or logged out, or [`FailoverConfig::session_horizon`] passed since
    /// the connection was lost.
    pub async fn settled(&self) {
        let (tx, rx) = oneshot::channel();
        // A closed session answers nothing: all it was asked before is
        // answered or ended, and only what it lost may still act.
        let mark = match self.requests.send(Request::Mark(tx)).await {
            Ok(()) => rx.await.ok(),
            Err(_) => None,
        };
        let mut doubt = self.in_doubt.clone();
        loop {
            let now = Instant::now().into_std();
            let d = *doubt.borrow_and_update();
            let running = mark.is_some_and(|m| d.oldest_unfinished.is_some_and(|o| o < m));
            let horizon = d.lost_since.map(|t| t + self.failover.session_horizon);
            let lost = horizon.is_some_and(|h| now < h);
            if d.logged_out || (!running && !lost) {
                return;
            }
            let wait_horizon = sleep_until(horizon.map(Instant::from_std));
            tokio::select! {
                changed = doubt.changed() => {
                    if changed.is_err() {
                        // The session's task has ended: what it published
                        // last stays; only the horizon is left to pass.
                        sleep_until(horizon.map(Instant::from_std)).await;
                        return;
                    }
                }
                () = wait_horizon => {}
            }
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
            .map_err(|_| self.gone())?;
        rx.await.map_err(|_| self.gone())?
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

    /// Logs out of a session whose handle is shared (held by an
    /// [`crate::IscsiDevice`] and the paths over it) and waits for the
    /// target's answer: the orderly end of a session at a head's stop.
    /// Commands given afterwards fail, the session being gone.
    pub async fn log_out(&self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(Request::Logout(tx))
            .await
            .map_err(|_| Error::SessionClosed)?;
        rx.await.map_err(|_| Error::SessionClosed)?
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

/// The session task's state, across connections.
#[derive(Debug)]
struct Driver {
    requests: mpsc::Receiver<Request>,
    waiters: Waiters,
    in_doubt: watch::Sender<InDoubt>,
    failover: FailoverConfig,
}

impl Driver {
    /// Publishes the oldest command that may still act, when it changed.
    fn publish(&self, pipe: &Pipeline) {
        let oldest = pipe.oldest_unfinished();
        self.in_doubt.send_if_modified(|d| {
            let changed = d.oldest_unfinished != oldest;
            d.oldest_unfinished = oldest;
            changed
        });
    }

    /// Commands sent ended without an answer at `at`: they may act until
    /// the target ends the old session.
    fn lost(&self, at: std::time::Instant) {
        self.in_doubt.send_if_modified(|d| {
            let first = d.lost_since.is_none();
            d.lost_since = d.lost_since.or(Some(at));
            first
        });
    }

    /// Hands out the answers the pipeline has.
    fn answer(&mut self, pipe: &mut Pipeline) -> bool {
        let mut answered = false;
        while let Some((ticket, result)) = pipe.take_done() {
            answered = true;
            if let Some(w) = self.waiters.commands.remove(&ticket) {
                let _ = w.send(result);
            }
        }
        answered
    }

    /// Fail fast: ends every command without an answer now, instead of
    /// sending it again after the reinstatement.
    fn give_up(&mut self, pipe: &mut Pipeline, failure: &Error) {
        self.answer(pipe);
        let (sent, unsent) = pipe.abandon();
        if !sent.is_empty() {
            self.lost(Instant::now().into_std());
        }
        let mut end = |ticket, e: Error| {
            if let Some(w) = self.waiters.commands.remove(&ticket) {
                let _ = w.send(Err(e));
            }
        };
        for t in sent {
            end(t, Error::ConnectionLost(failure.to_string()));
        }
        for t in unsent {
            end(t, Error::Reinstating);
        }
        self.publish(pipe);
    }

    /// Logs in again with the same ISID; failing fast, the requests that
    /// come meanwhile are answered at once.
    async fn reinstate(
        &mut self,
        r: &Relogin,
        pipe: &Pipeline,
    ) -> Result<(Connection, FullFeature), Error> {
        let login = reinstate(r, pipe.relogin_after());
        tokio::pin!(login);
        if !self.failover.fail_fast {
            return login.await;
        }
        loop {
            tokio::select! {
                done = &mut login => return done,
                req = self.requests.recv() => match req {
                    Some(Request::Command(_, w)) => drop(w.send(Err(Error::Reinstating))),
                    Some(Request::Logout(w)) => drop(w.send(Err(Error::Reinstating))),
                    Some(Request::Mark(w)) => drop(w.send(pipe.next_ticket())),
                    None => return Err(Error::SessionClosed),
                },
            }
        }
    }
}

/// The session's task: serves the connection; when it is lost, reinstates
/// the session (if it knows how) and serves the new one; in the end tells
/// every caller still waiting.
async fn drive(mut pipe: Pipeline, mut conn: Connection, mut d: Driver, relogin: Option<Relogin>) {
    let mut lost_in_a_row = 0;
    let mut lost_at;
    let failure = loop {
        let (failure, answered) = serve(&mut pipe, conn, &mut d).await;
        lost_at = Instant::now().into_std();
        if answered {
            lost_in_a_row = 0;
        }
        lost_in_a_row += 1;
        let ended = matches!(failure, Error::SessionClosed) || d.waiters.logout.is_some();
        let Some(r) = relogin
            .as_ref()
            .filter(|r| !ended && lost_in_a_row <= r.cfg.attempts)
        else {
            break failure;
        };
        tracing::info!(%failure, in_flight = pipe.in_flight(), "connection lost: reinstating the session");
        if d.failover.fail_fast {
            d.give_up(&mut pipe, &failure);
        }
        match d.reinstate(r, &pipe).await {
            Ok((c, ffp)) => {
                pipe = pipe.reinstated(ffp, Instant::now().into_std());
                conn = c;
                // The target ended the old session's tasks.
                d.in_doubt.send_modify(|x| x.lost_since = None);
                d.publish(&pipe);
            }
            Err(Error::IdentityChanged(why)) => {
                r.admission.refuse(why.clone());
                break Error::IdentityChanged(why);
            }
            Err(e) => break e,
        }
    };
    tracing::debug!(%failure, in_flight = d.waiters.commands.len(), "session ended");
    d.requests.close();
    d.answer(&mut pipe);
    if !d.waiters.commands.is_empty() {
        d.lost(lost_at);
    }
    d.in_doubt.send_modify(|x| x.oldest_unfinished = None);
    let lost = || {
        Err(match &failure {
            Error::IdentityChanged(why) => Error::IdentityChanged(why.clone()),
            other => Error::ConnectionLost(other.to_string()),
        })
    };
    for (_, w) in d.waiters.commands.drain() {
        let _ = w.send(lost());
    }
    if let Some((_, w)) = d.waiters.logout.take() {
        let _ = w.send(lost().map(drop));
    }
    // Requests that came in meanwhile were never sent.
    while let Ok(req) = d.requests.try_recv() {
        match req {
            Request::Command(_, w) => drop(w.send(Err(Error::SessionClosed))),
            Request::Logout(w) => drop(w.send(Err(Error::SessionClosed))),
            Request::Mark(w) => drop(w.send(pipe.next_ticket())),
        }
    }
}

/// Logs in again with the same ISID, up to the attempts allowed, the
/// first after `wait` at least (the target's Time2Wait), and checks the
/// units opened on the session (see [`readmission`]).
///
/// [`readmission`]: crate::readmission
async fn reinstate(r: &Relogin, wait: Duration) -> Result<(Connection, FullFeature), Error> {
    let mut last = Error::SessionClosed;
    for attempt in 0..r.cfg.attempts {
        let delay = match attempt {
            0 => r.cfg.delay.max(wait),
            _ => r.cfg.delay,
        };
        tokio::time::sleep(delay).await;
        let login = async {
            let mut conn = Connection::connect(r.addr).await?;
            conn.tune(r.keepalive)?;
            let info = conn.login(r.login.clone()).await?;
            let mut session = Session::new(conn, info);
            // The checks get as long to answer as the keepalive gives a
            // ping: a target that logs in and then says nothing is lost.
            if !r.keepalive.interval.is_zero() {
                let bound = r.keepalive.interval + r.keepalive.timeout;
                session
                    .connection()
                    .set_timeout(bound.max(Duration::from_secs(1)));
            }
            readmission::verify(&mut session, &r.admission.expected()).await?;
            Ok::<_, Error>(session.into_parts())
        };
        match login.await {
            Ok(done) => return Ok(done),
            Err(e @ Error::IdentityChanged(_)) => return Err(e),
            Err(e) => {
                tracing::debug!(%e, "reinstatement login failed");
                last = e;
            }
        }
    }
    Err(last)
}

/// Serves one connection: takes requests, sends what the pipeline queues,
/// feeds it the PDUs it reads and its deadlines, and hands out the answers;
/// until the connection fails or the session ends. Also whether any
/// command was answered.
///
/// The connection is read by this task itself (no reader task beside it:
/// an answer reaches its caller with one wake-up, not two). While a write
/// is under way the connection is read too, so a target that stops
/// reading until its own answers are taken cannot stall the write.
async fn serve(pipe: &mut Pipeline, conn: Connection, d: &mut Driver) -> (Error, bool) {
    let (mut reader, mut writer) = conn.into_split();
    // PDUs read while a write was under way, taken in before the next wait.
    let mut arrived = VecDeque::new();
    let mut answered = false;
    // One timer for the connection, moved when the deadline moves (a new
    // one per event would register and cancel a timer each time).
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    let mut armed = None;
    // The end of the connection (a read error), met while taking in what
    // was ready: taken after what came before it was answered.
    let mut stash = None;
    let failure = loop {
        // The callers answered first: they queue their next commands while
        // this task writes.
        answered |= d.answer(pipe);
        let out = pipe.take_output();
        if !out.is_empty() {
            if let Err(e) = send_reading(&mut writer, out, &mut reader, &mut arrived).await {
                break e;
            }
        }
        d.publish(pipe);
        let logout = d.waiters.logout.as_ref().map(|(itt, _)| *itt);
        if let Some(response) = logout.and_then(|itt| pipe.take_answer(itt)) {
            let (_, w) = d.waiters.logout.take().expect("checked above");
            if response == 0 {
                d.in_doubt.send_modify(|x| x.logged_out = true);
            }
            let _ = w.send(match response {
                0 => Ok(()),
                r => Err(Error::LogoutRefused(r)),
            });
            break Error::SessionClosed;
        }
        let deadline = pipe.deadline().map(Instant::from_std);
        if deadline != armed {
            if let Some(at) = deadline {
                timer.as_mut().reset(at);
            }
            armed = deadline;
        }
        let first = match stash.take().or_else(|| arrived.pop_front().map(Ready::Pdu)) {
            Some(ready) => ready,
            None => tokio::select! {
            req = d.requests.recv(), if logout.is_none() => Ready::Request(req),
            pdu = reader.recv() => Ready::Pdu(pdu),
            () = &mut timer, if armed.is_some() => {
                armed = None;
                if let Err(e) = pipe.tick(Instant::now().into_std()) {
                    break e;
                }
                continue;
            }
            },
        };
        // Everything else ready now is taken in too, so that the PDUs it
        // queues go out together, in one write.
        let mut incoming = Incoming {
            reader: &mut reader,
            arrived: &mut arrived,
        };
        if let Err(e) = take_ready(pipe, d, &mut incoming, first, &mut stash) {
            break e;
        }
    };
    (failure, answered)
}

/// Sends `out`, reading the connection meanwhile into `arrived`. A read
/// that fails ends the write where it stands (the connection is lost; the
/// failure is queued behind the PDUs read before it).
async fn send_reading(
    writer: &mut Writer,
    out: Vec<(Bhs, Bytes)>,
    reader: &mut Reader,
    arrived: &mut VecDeque<Result<InPdu, Error>>,
) -> Result<(), Error> {
    let send = writer.send_all(out);
    tokio::pin!(send);
    loop {
        tokio::select! {
            biased;
            sent = &mut send => return sent,
            pdu = reader.recv() => {
                let end = pdu.is_err();
                arrived.push_back(pdu);
                if end {
                    return Ok(());
                }
            }
        }
    }
}

/// Where PDUs come from: those read during a write first, then the
/// connection.
struct Incoming<'a> {
    reader: &'a mut Reader,
    arrived: &'a mut VecDeque<Result<InPdu, Error>>,
}

impl Incoming<'_> {
    /// A PDU (or the connection's failure) that is ready now, if any.
    fn ready(&mut self) -> Option<Result<InPdu, Error>> {
        if let Some(pdu) = self.arrived.pop_front() {
            return Some(pdu);
        }
        // Polled once: a PDU buffered or already in the socket, else none
        // (cancel-safe: a PDU half read stays buffered).
        let recv = std::pin::pin!(self.reader.recv());
        match recv.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(pdu) => Some(pdu),
            Poll::Pending => None,
        }
    }
}

/// What the session's task was woken by.
enum Ready {
    Request(Option<Request>),
    Pdu(Result<InPdu, Error>),
}

/// Takes in `first`, then every request and PDU already waiting, until a
/// logout is asked (its answer is looked for before anything else is
/// taken); an error ends the connection. A failure of the connection is
/// left in `stash`, for the next round.
fn take_ready(
    pipe: &mut Pipeline,
    d: &mut Driver,
    incoming: &mut Incoming<'_>,
    first: Ready,
    stash: &mut Option<Ready>,
) -> Result<(), Error> {
    // One reading of the clock for what was ready at once.
    let now = Instant::now().into_std();
    let mut next = Some(first);
    while let Some(ready) = next.take() {
        match ready {
            Ready::Request(req) => match req {
                Some(Request::Command(cmd, w)) => {
                    d.waiters.commands.insert(pipe.queue(cmd, now), w);
                }
                Some(Request::Logout(w)) => d.waiters.logout = Some((pipe.logout(), w)),
                Some(Request::Mark(w)) => drop(w.send(pipe.next_ticket())),
                None => return Err(Error::SessionClosed),
            },
            Ready::Pdu(pdu) => pipe.receive(pdu?, now)?,
        }
        if d.waiters.logout.is_some() {
            break;
        }
        next = match incoming.ready() {
            Some(Ok(pdu)) => Some(Ready::Pdu(Ok(pdu))),
            Some(Err(e)) => {
                *stash = Some(Ready::Pdu(Err(e)));
                None
            }
            None => d.requests.try_recv().ok().map(|r| Ready::Request(Some(r))),
        };
    }
    Ok(())
}

/// Sleeps until `deadline`; forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
