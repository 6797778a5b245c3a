//! One connection: login, then the Full Feature Phase loop that feeds the
//! sans-I/O session with PDUs, SCSI completions and time, and carries out
//! its actions.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify};
use tracing::Instrument;

use iscsi_proto::digest::Digest;
use iscsi_proto::frame::{Decoder, FrameError, InPdu, OutPdu};
use iscsi_proto::login::{Established, Login, LoginOutcome, SessionType};
use iscsi_proto::pdu::{reject, Bhs};

use super::pending::PendingSlot;
use super::registry::{ConnContext, Registry};
use super::writer::SendQueue;
use crate::session::{Action, CloseReason, Session, SessionConfig};
use crate::tmf::TmfOutcome;
use chap::Admission;
use scsi_disk::{
    InitiatorPort, Nexus, Response, ScsiTarget, TasksEnded, TmfResponse, TransportFault,
};

/// Reads until one PDU is complete. `Ok(None)` at end of stream.
async fn read_pdu(
    s: &TcpStream,
    buf: &mut BytesMut,
    dec: &Decoder,
) -> Result<Option<InPdu>, FrameError> {
    loop {
        if let Some(p) = dec.decode(buf)? {
            return Ok(Some(p));
        }
        reserve(buf, dec);
        if s.readable().await.is_err() {
            return Ok(None);
        }
        match s.try_read_buf(buf) {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return Ok(None),
        }
    }
}

fn reserve(buf: &mut BytesMut, dec: &Decoder) {
    let need = dec.needed(buf).unwrap_or(0).max(buf.len() + 16 * 1024);
    if buf.capacity() < need {
        buf.reserve((need - buf.len()).max(64 * 1024));
    }
}

/// Serves one TCP connection to its end. `slot` counts it as a pending
/// login until it reaches Full Feature Phase.
pub(super) async fn serve(
    reg: Arc<Registry>,
    stream: TcpStream,
    peer: SocketAddr,
    tpgt: u16,
    slot: PendingSlot,
    stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap_or(peer);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut out = SendQueue::default();
    let login = tokio::time::timeout(
        reg.cfg.login_timeout,
        login(&reg, &stream, &mut buf, &mut out, tpgt, peer, &slot),
    );
    let login = login.await;
    drop(slot);
    match login {
        Ok(Some(est)) => {
            let span = tracing::info_span!(
                "session",
                initiator = %est.key.initiator,
                isid = %hex(&est.key.isid),
                tsih = est.tsih,
                kind = ?est.session_type,
            );
            full_feature(&reg, *est, &stream, buf, &mut out, local, peer, tpgt, stop)
                .instrument(span)
                .await;
        }
        Ok(None) => {}
        Err(_) => tracing::info!("login timed out"),
    }
    // Whatever is still queued (a final response, a Reject) goes out before
    // the connection closes, unless the peer stopped reading.
    let _ = tokio::time::timeout(Duration::from_secs(5), out.flush_all(&stream)).await;
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn login(
    reg: &Registry,
    s: &TcpStream,
    buf: &mut BytesMut,
    out: &mut SendQueue,
    tpgt: u16,
    peer: SocketAddr,
    slot: &PendingSlot,
) -> Option<Box<Established>> {
    let dec = Decoder::new((reg.cfg.limits.max_recv_data_segment_length as usize).max(8192));
    let mut login = Login::new(tpgt, reg.cfg.limits.clone());
    let ctx = ConnContext {
        reg,
        access: reg.access(),
        peer: peer.ip(),
        tpgt,
    };
    let idle = reg.cfg.login_limits.idle_timeout;
    let mut attempt = None;
    loop {
        let read = tokio::time::timeout(idle, read_pdu(s, buf, &dec));
        let pdu = tokio::select! {
            r = read => match r {
                Ok(Ok(Some(p))) => p,
                Ok(Ok(None)) => return None,
                Ok(Err(e)) => {
                    tracing::info!(error = %e, "bad PDU during login");
                    return None;
                }
                Err(_) => {
                    tracing::debug!(?idle, first = attempt.is_none(), "no complete Login Request in time; dropped");
                    return None;
                }
            },
            _ = slot.evicted() => {
                tracing::debug!("silent connection dropped to make room for a newer one");
                return None;
            }
        };
        if attempt.is_none() {
            // Only a connection that sent a Login Request takes one of its
            // source's logins in flight: idle ones cannot crowd out a
            // neighbour. A source with recent failures, or with many logins
            // in progress, waits before its login is looked at.
            slot.spoke();
            attempt = Some(Attempt::admit(reg, peer).await);
        }
        let Ok(Bhs::LoginRequest(req)) = pdu.bhs else {
            // Only Login Requests are allowed before Full Feature Phase.
            tracing::info!(opcode = pdu.raw[0] & 0x3f, "non-login PDU during login");
            return None;
        };
        let reply = login.handle(&req, &pdu.data, &ctx);
        if matches!(reply.outcome, LoginOutcome::Failed) {
            let st = (reply.bhs.status_class, reply.bhs.status_detail);
            if counts_as_failure(st, login.authenticating()) {
                // Hold the answer back so secrets cannot be guessed at line rate.
                let hold = lock(&reg.backoff).record_failure(peer.ip(), Instant::now());
                if !hold.is_zero() {
                    tokio::time::sleep(hold).await;
                }
            }
        } else if matches!(reply.outcome, LoginOutcome::FullFeature(_)) && login.authenticating() {
            lock(&reg.backoff).record_success(peer.ip(), Instant::now());
        }
        out.push(
            OutPdu::new(
                &Bhs::LoginResponse(reply.bhs),
                reply.data,
                Digest::None,
                Digest::None,
            )
            .into(),
        );
        if out.flush_all(s).await.is_err() {
            return None;
        }
        match reply.outcome {
            LoginOutcome::Continue => {}
            LoginOutcome::Failed => {
                tracing::info!(
                    class = reply.bhs.status_class,
                    detail = reply.bhs.status_detail,
                    "login failed"
                );
                return None;
            }
            LoginOutcome::FullFeature(est) => return Some(est),
        }
    }
}

/// One login admitted by the backoff limiter; counted in flight for its
/// source until dropped, whatever way the login ends.
struct Attempt<'a> {
    reg: &'a Registry,
    source: std::net::IpAddr,
}

impl<'a> Attempt<'a> {
    async fn admit(reg: &'a Registry, peer: SocketAddr) -> Attempt<'a> {
        loop {
            let decision = lock(&reg.backoff).admit(peer.ip(), Instant::now());
            match decision {
                Admission::Proceed(wait) => {
                    let attempt = Attempt {
                        reg,
                        source: peer.ip(),
                    };
                    if !wait.is_zero() {
                        tracing::debug!(
                            ?wait,
                            "login from a source with recent failures held back"
                        );
                        tokio::time::sleep(wait).await;
                    }
                    return attempt;
                }
                Admission::Retry(wait) => {
                    tracing::debug!(
                        ?wait,
                        "too many logins in progress from this source; waiting"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        lock(&self.reg.backoff).finish(self.source);
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether a failed login is one the backoff counts: authentication and
/// authorization failures, unknown targets (name guessing), and any initiator
/// error once CHAP has begun (probing with malformed keys).
fn counts_as_failure(st: (u8, u8), authenticating: bool) -> bool {
    use iscsi_proto::login::status;
    st == status::AUTH_FAILURE
        || st == status::AUTHORIZATION_FAILURE
        || st == status::NOT_FOUND
        || (authenticating && st.0 == 2)
}

type TaskOutput = (u32, u64, std::thread::Result<Response>);
type TaskFuture = Pin<Box<dyn Future<Output = TaskOutput> + Send>>;

/// SCSI commands executing for this connection, polled by its own task.
///
/// A command's future is never dropped before it is done: an aborted task
/// is aborted in the task set (so it never starts, or its I/O finishes) and
/// runs on here to its end, with its response thrown away. So whatever
/// answers the abort can wait for the task's I/O to be over.
struct Running {
    futs: FuturesUnordered<TaskFuture>,
    /// ITT -> (generation, data-out length the CDB implies) of the tasks
    /// whose responses are wanted.
    handles: HashMap<u32, (u64, Option<u64>)>,
    generation: u64,
    /// Tasks aborted by the session for the task management function that
    /// comes next: its answer waits for them.
    ended: TasksEnded,
}

/// Most completions taken in one wake-up before the responses are written.
/// Small enough that an initiator whose whole queue arrives in one write
/// (the head's) gets its first answers, and refills its queue, while the
/// rest are still being served: at 64 a QD32 queue moved in lock-step, the
/// target idle while the initiator refilled (pinned 4 KiB random reads, our
/// initiator 123k IOPS at 64, 186k at 8; iscsi-perf 153k and 149k).
const READY_BATCH: usize = 8;

impl Running {
    /// Hands a finished command's response to the session, unless the task
    /// was aborted (or its tag reused) meanwhile.
    fn finish(&mut self, session: &mut Session, done: TaskOutput) {
        let (itt, gen, result) = done;
        let wanted = match self.handles.get(&itt) {
            Some(&(g, wanted)) if g == gen => wanted,
            _ => return,
        };
        self.handles.remove(&itt);
        let resp = result.unwrap_or_else(|_| {
            tracing::error!(itt, "SCSI task panicked");
            Response::transport_fault(TransportFault::InternalFailure)
        });
        session.complete(itt, resp, wanted);
    }
}

#[allow(clippy::too_many_arguments)]
async fn full_feature(
    reg: &Registry,
    est: Established,
    stream: &TcpStream,
    mut buf: BytesMut,
    out: &mut SendQueue,
    local: SocketAddr,
    peer: SocketAddr,
    tpgt: u16,
    mut stop: watch::Receiver<bool>,
) {
    let target = est
        .key
        .target
        .and_then(|i| reg.targets.by_id(i))
        .map(|t| t.cfg);
    let backend: Option<Arc<ScsiTarget>> = match est.session_type {
        SessionType::Normal => match &target {
            Some(t) => Some(t.scsi.clone()),
            None => {
                tracing::info!("target removed during the login; session closed");
                return;
            }
        },
        SessionType::Discovery => None,
    };
    let nexus = Nexus {
        id: reg.nexus_id(),
        initiator: InitiatorPort::iscsi(&est.key.initiator, est.key.isid),
        relative_port: tpgt,
    };
    let kill = Arc::new(Notify::new());
    if let Some(b) = &backend {
        let superseded = b.nexus_login(&nexus);
        reg.attach(&est.key, est.tsih, kill.clone());
        // A removal that came after the lookup above did not see this
        // session registered: it ends at once.
        if est.key.target.and_then(|i| reg.targets.by_id(i)).is_none() {
            kill.notify_one();
        }
        // A reinstated session's commands still in the backend end first,
        // so none of its writes lands after one of ours.
        if !superseded.is_empty() {
            tracing::debug!(
                tasks = superseded.len(),
                "waiting for the reinstated session's tasks"
            );
            superseded.wait().await;
        }
    }
    tracing::info!("logged in");
    let cfg = SessionConfig {
        queue_depth: reg.cfg.queue_depth,
        nop_interval: reg.cfg.nop_interval,
        nop_timeout: reg.cfg.nop_timeout,
    };
    let mut session = Session::new(
        &est,
        cfg,
        reg.discovery(local, &est.key.initiator, peer.ip()),
        target.as_ref().map(|t| t.iqn.clone()),
        Instant::now(),
    );
    let p = session.params().clone();
    let dec = Decoder {
        header_digest: p.header_digest,
        data_digest: p.data_digest,
        max_data: p.recv_data_segment_length as usize,
    };
    let mut run = Running {
        futs: FuturesUnordered::new(),
        handles: HashMap::new(),
        generation: 0,
        ended: TasksEnded::default(),
    };
    let (tmf_tx, mut tmf_rx) = mpsc::unbounded_channel::<(u32, TmfOutcome)>();
    let mut draining = *stop.borrow();
    let mut reading = true;
    let why: String = loop {
        let mut close = drain(
            &mut session,
            out,
            &mut run,
            backend.as_ref(),
            &nexus,
            &tmf_tx,
        );
        // Completions that are ready now (cached reads finish when first
        // polled) are taken in this wake-up, so their responses leave
        // together in one system call rather than one each.
        let mut taken = 0;
        while taken < READY_BATCH && !run.futs.is_empty() {
            let Some(Some(done)) = run.futs.next().now_or_never() else {
                break;
            };
            run.finish(&mut session, done);
            taken += 1;
            if let Some(r) = drain(
                &mut session,
                out,
                &mut run,
                backend.as_ref(),
                &nexus,
                &tmf_tx,
            ) {
                close.get_or_insert(r);
            }
        }
        if let Err(e) = out.flush(stream) {
            break format!("write failed: {e}");
        }
        if let Some(r) = close {
            break format!("{r:?}");
        }
        if draining && run.futs.is_empty() {
            break "shutdown".into();
        }
        let deadline = session.poll_timeout();
        tokio::select! {
            biased;
            _ = kill.notified() => break "reinstated, or its target removed".into(),
            Some(done) = run.futs.next(), if !run.futs.is_empty() => run.finish(&mut session, done),
            r = stream.writable(), if !out.is_empty() => {
                if r.is_err() {
                    break "connection lost".into();
                }
            }
            r = stream.readable(), if reading && !draining => {
                if r.is_err() {
                    break "connection lost".into();
                }
                match read_some(stream, &mut buf, &dec, &mut session) {
                    ReadOutcome::More => {}
                    ReadOutcome::Closed => break "connection closed by the initiator".into(),
                    ReadOutcome::Violation => reading = false,
                }
            }
            Some((itt, o)) = tmf_rx.recv() => session.tmf_done(itt, o),
            _ = sleep_until(deadline), if deadline.is_some() => session.handle_timeout(Instant::now()),
            _ = stop.changed(), if !draining => draining = true,
        }
    };
    tracing::info!(reason = %why, "session ended");
    if let Some(b) = &backend {
        // Every task of the session is aborted (those not started never
        // run) and the session ends only once none of them is executing:
        // their writes are in the backend before a reinstated session, a
        // reset or a shutdown flush can follow.
        let mut ended = b.end_session(&nexus);
        ended.extend(std::mem::take(&mut run.ended));
        if !run.futs.is_empty() {
            tracing::debug!(tasks = run.futs.len(), "waiting for the session's tasks");
        }
        while run.futs.next().await.is_some() {}
        ended.wait().await;
        b.nexus_logout(&nexus);
        reg.detach(&est.key, est.tsih);
    }
}

enum ReadOutcome {
    More,
    Closed,
    Violation,
}

/// Reads what the socket has (a bounded number of times) and feeds every
/// complete PDU to the session.
fn read_some(
    stream: &TcpStream,
    buf: &mut BytesMut,
    dec: &Decoder,
    session: &mut Session,
) -> ReadOutcome {
    for _ in 0..4 {
        reserve(buf, dec);
        match stream.try_read_buf(buf) {
            Ok(0) => return ReadOutcome::Closed,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return ReadOutcome::More,
            Err(_) => return ReadOutcome::Closed,
        }
        let now = Instant::now();
        loop {
            match dec.decode(buf) {
                Ok(Some(pdu)) => session.handle_pdu(pdu, now),
                Ok(None) => break,
                Err(FrameError::TooLong { raw, len, limit }) => {
                    tracing::warn!(
                        len,
                        limit,
                        "DataSegmentLength over MaxRecvDataSegmentLength"
                    );
                    session.violation(&raw, reject::PROTOCOL_ERROR);
                    return ReadOutcome::Violation;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "unrecoverable framing error");
                    session.violation(&[0; 48], reject::PROTOCOL_ERROR);
                    return ReadOutcome::Violation;
                }
            }
        }
    }
    ReadOutcome::More
}

async fn sleep_until(t: Option<Instant>) {
    if let Some(t) = t {
        tokio::time::sleep_until(t.into()).await;
    }
}

fn drain(
    session: &mut Session,
    out: &mut SendQueue,
    run: &mut Running,
    backend: Option<&Arc<ScsiTarget>>,
    nexus: &Nexus,
    tmf_tx: &mpsc::UnboundedSender<(u32, TmfOutcome)>,
) -> Option<CloseReason> {
    let mut close = None;
    while let Some(a) = session.poll_action() {
        match a {
            Action::Send(p) => out.push(p),
            Action::Execute { itt, cmd } => {
                let Some(b) = backend else { continue };
                let wanted = b.data_out_len(cmd.lun, &cmd.cdb);
                let task = AssertUnwindSafe(b.submit(nexus, cmd))
                    .catch_unwind()
                    .instrument(tracing::debug_span!("task", itt));
                run.generation += 1;
                let gen = run.generation;
                run.futs
                    .push(Box::pin(async move { (itt, gen, task.await) }));
                run.handles.insert(itt, (gen, wanted));
            }
            Action::Abort { itts } => {
                for i in &itts {
                    run.handles.remove(i);
                }
                if let Some(b) = backend {
                    run.ended.extend(b.abort_tasks(nexus, &itts));
                }
            }
            Action::TaskManagement { itt, lun, function } => {
                let tmf_tx = tmf_tx.clone();
                // The tasks the session aborted for this function: it is
                // answered once their backend I/O is over.
                let ended = std::mem::take(&mut run.ended);
                match backend {
                    Some(b) => {
                        let b = b.clone();
                        let n = nexus.clone();
                        tokio::spawn(async move {
                            ended.wait().await;
                            let o = match b.task_management(&n, lun, function).await {
                                TmfResponse::Complete => TmfOutcome::Complete,
                                TmfResponse::TaskDoesNotExist => TmfOutcome::TaskDoesNotExist,
                                TmfResponse::LunDoesNotExist => TmfOutcome::LunDoesNotExist,
                                TmfResponse::NotSupported => TmfOutcome::NotSupported,
                                TmfResponse::Rejected => TmfOutcome::Rejected,
                            };
                            let _ = tmf_tx.send((itt, o));
                        });
                    }
                    None => {
                        let _ = tmf_tx.send((itt, TmfOutcome::Rejected));
                    }
                }
            }
            Action::Close(r) => close = Some(r),
        }
    }
    close
}
