//! The tokio edge: listeners, one reader/driver task and one writer task per
//! connection, commands executed concurrently. All protocol decisions are
//! made by the sans-I/O [`iscsi_proto::login`] and [`crate::session`] machines;
//! this module only moves bytes, runs SCSI futures and keeps time.

mod connection;
mod log_limit;
mod pending;
mod registry;
mod targets;
mod writer;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use chap::BackoffConfig;

use iscsi_proto::negotiate::Limits;

use crate::access::Access;
use log_limit::LogLimit;
use pending::{Caps, Full, PendingSlot};
use registry::Registry;
use scsi_disk::ScsiTarget;

/// A listening portal.
#[derive(Debug, Clone)]
pub struct Portal {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// `host:port` as SendTargets shows it; None: the connection's local address.
    pub advertise: Option<String>,
    /// Target portal group tag (also the SCSI relative target port id).
    pub tpgt: u16,
}

/// One exported target (IQN).
#[derive(Clone)]
pub struct TargetConfig {
    /// Target name.
    pub iqn: String,
    /// TargetAlias, if any.
    pub alias: Option<String>,
    /// The SCSI target behind it.
    pub scsi: Arc<ScsiTarget>,
    /// Portal group tags it is reachable on; None = all.
    pub portals: Option<Vec<u16>>,
}

impl std::fmt::Debug for TargetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetConfig")
            .field("iqn", &self.iqn)
            .field("alias", &self.alias)
            .field("portals", &self.portals)
            .finish()
    }
}

/// Limits on connections that have not logged in yet ("pending logins"):
/// they hold a file descriptor and a task before proving anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginLimits {
    /// Longest wait for each complete Login Request, the first one included;
    /// a connection that sends none in time is dropped. Idle connections
    /// therefore do not linger, and they never count against the per-source
    /// logins in flight of [`BackoffConfig::max_in_flight`], which only a
    /// connection that sent a Login Request takes.
    pub idle_timeout: Duration,
    /// Most pending logins of all sources together (lowered at start to half
    /// the open file limit if that is less). At the cap the oldest pending
    /// login that has sent nothing yet is dropped to make room.
    pub max_pending: usize,
    /// Most pending logins of one source (an IPv4 address, an IPv6 /64);
    /// likewise.
    pub max_pending_per_source: usize,
}

impl Default for LoginLimits {
    fn default() -> Self {
        LoginLimits {
            idle_timeout: Duration::from_secs(5),
            max_pending: 1024,
            max_pending_per_source: 64,
        }
    }
}

/// Server configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Portals to listen on.
    pub portals: Vec<Portal>,
    /// Targets to export at start (more can be added, and these removed,
    /// through [`TargetsHandle`]).
    pub targets: Vec<TargetConfig>,
    /// Silence after which an initiator is pinged (zero: never).
    pub nop_interval: Duration,
    /// Unanswered ping after which the connection is dropped.
    pub nop_timeout: Duration,
    /// Negotiation limits (MaxRecvDataSegmentLength, MaxBurstLength, ...).
    pub limits: Limits,
    /// Commands each session may have outstanding (CmdSN window).
    pub queue_depth: u32,
    /// Longest a login may take before the connection is dropped.
    pub login_timeout: Duration,
    /// Who may log in to what, and how (replaceable at run time through
    /// [`AccessHandle`]).
    pub access: Access,
    /// Slow-down of repeated login failures per source.
    pub backoff: BackoffConfig,
    /// Limits on connections that have not logged in yet.
    pub login_limits: LoginLimits,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            portals: Vec::new(),
            targets: Vec::new(),
            nop_interval: Duration::from_secs(5),
            nop_timeout: Duration::from_secs(10),
            limits: Limits::default(),
            queue_depth: 128,
            login_timeout: Duration::from_secs(30),
            access: Access::default(),
            backoff: BackoffConfig::default(),
            login_limits: LoginLimits::default(),
        }
    }
}

/// Errors of the server edge.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A portal could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The portal address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Flushing a target at shutdown failed.
    #[error("flushing {target} at shutdown failed: {reason}")]
    Flush {
        /// Target IQN.
        target: String,
        /// What went wrong.
        reason: String,
    },
}

/// Replaces the access policy and the login backoff settings of a running
/// [`Server`]: new logins use the new policy, established sessions stay.
#[derive(Clone)]
pub struct AccessHandle(Arc<Registry>);

impl std::fmt::Debug for AccessHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessHandle")
    }
}

impl AccessHandle {
    /// Installs `access` for every login that starts from now on.
    pub fn set(&self, access: Access) {
        self.0.set_access(access);
    }

    /// Installs new login backoff settings and returns the ones they
    /// replace. The failures, logins in flight and admission times already
    /// recorded per source are kept: a reload forgives no attacker.
    pub fn set_backoff(&self, backoff: BackoffConfig) -> BackoffConfig {
        let mut b = self.0.backoff.lock().unwrap_or_else(|e| e.into_inner());
        let old = b.config().clone();
        b.set_config(backoff);
        old
    }
}

/// Changes the exported targets of a running [`Server`]. Their logical
/// units change through their [`ScsiTarget`]s ([`ScsiTarget::add_lun`],
/// [`ScsiTarget::remove_lun`]).
#[derive(Clone)]
pub struct TargetsHandle(Arc<Registry>);

impl std::fmt::Debug for TargetsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TargetsHandle")
    }
}

impl TargetsHandle {
    /// Exports another target: logins and discovery find it from now on.
    /// A second target of the same name is refused.
    pub fn add(&self, target: TargetConfig) -> Result<(), ServerError> {
        let iqn = target.iqn.clone();
        self.0.targets.add(target)?;
        tracing::info!(target = %iqn, "target added");
        Ok(())
    }

    /// Stops exporting the target named `iqn`: logins to it are refused
    /// (0203, no such target) and discovery no longer shows it from now on,
    /// and each of its sessions ends (its commands run to their end first).
    /// [`TargetRemoval::wait`] returns once they all have. None if there is
    /// no such target.
    pub fn remove(&self, iqn: &str) -> Option<TargetRemoval> {
        let t = self.0.targets.remove(iqn)?;
        let sessions = self.0.end_sessions_of(t.id);
        tracing::info!(target = %t.cfg.iqn, sessions, "target removed; its sessions end");
        Some(TargetRemoval {
            reg: self.0.clone(),
            id: t.id,
            scsi: t.cfg.scsi,
        })
    }

    /// Replaces the TargetAlias and the portal groups of the target named
    /// `iqn`, for logins from now on (established sessions stay); false if
    /// there is no such target.
    pub fn update(&self, iqn: &str, alias: Option<String>, portals: Option<Vec<u16>>) -> bool {
        self.0.targets.update(iqn, alias, portals)
    }

    /// The SCSI target behind the target named `iqn`.
    pub fn get(&self, iqn: &str) -> Option<Arc<ScsiTarget>> {
        self.0.targets.by_name(iqn).map(|t| t.cfg.scsi)
    }

    /// The names of the targets exported now.
    pub fn names(&self) -> Vec<String> {
        self.0
            .targets
            .snapshot()
            .iter()
            .map(|t| t.cfg.iqn.clone())
            .collect()
    }
}

/// A target taken out of a running server ([`TargetsHandle::remove`]).
#[must_use = "its sessions may still be running commands until `wait` returns"]
pub struct TargetRemoval {
    reg: Arc<Registry>,
    id: usize,
    scsi: Arc<ScsiTarget>,
}

impl std::fmt::Debug for TargetRemoval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetRemoval")
            .field("target", &self.scsi.name())
            .finish()
    }
}

impl TargetRemoval {
    /// Waits until every session of the target has ended, with its
    /// commands, and hands back its SCSI target (to flush its devices).
    pub async fn wait(self) -> Arc<ScsiTarget> {
        self.reg.sessions_gone(self.id).await;
        self.scsi
    }
}

/// A bound iSCSI server.
pub struct Server {
    listeners: Vec<(TcpListener, u16)>,
    registry: Arc<Registry>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addrs", &self.local_addrs())
            .finish()
    }
}

impl Server {
    /// Binds every portal.
    pub async fn bind(cfg: ServerConfig) -> Result<Server, ServerError> {
        if cfg.portals.is_empty() {
            return Err(ServerError::Config("no portal".into()));
        }
        if cfg.limits.max_recv_data_segment_length < 512
            || cfg.limits.max_recv_data_segment_length > 16_777_215
        {
            return Err(ServerError::Config(
                "MaxRecvDataSegmentLength must be in 512..=16777215".into(),
            ));
        }
        let mut listeners = Vec::new();
        let mut bound = Vec::new();
        for p in &cfg.portals {
            let l = TcpListener::bind(p.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: p.listen,
                    source,
                })?;
            let local = l.local_addr().map_err(|source| ServerError::Bind {
                addr: p.listen,
                source,
            })?;
            bound.push(Portal {
                listen: local,
                ..p.clone()
            });
            listeners.push((l, p.tpgt));
        }
        let mut cfg = cfg;
        cfg.portals = bound;
        let caps = pending_caps(&cfg.login_limits, open_file_limit());
        Ok(Server {
            listeners,
            registry: Arc::new(Registry::new(cfg, caps)?),
        })
    }

    /// A handle to replace the access policy while the server runs.
    pub fn access_handle(&self) -> AccessHandle {
        AccessHandle(self.registry.clone())
    }

    /// A handle to add and remove targets while the server runs.
    pub fn targets_handle(&self) -> TargetsHandle {
        TargetsHandle(self.registry.clone())
    }

    /// The addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }

    /// Serves until `shutdown` completes, then stops accepting, drains the
    /// commands in flight, flushes every LU and closes every connection.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut conns = tokio::task::JoinSet::new();
        let mut accepts = tokio::task::JoinSet::new();
        let (conn_tx, mut conn_rx) = mpsc::unbounded_channel();
        for (l, tpgt) in self.listeners {
            accepts.spawn(accept_loop(l, tpgt, self.registry.clone(), conn_tx.clone()));
        }
        drop(conn_tx);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(Accepted { stream, peer, tpgt, slot }) = conn_rx.recv() => {
                    let reg = self.registry.clone();
                    let stop = stop_rx.clone();
                    let span = tracing::info_span!("connection", %peer, tpgt);
                    conns.spawn(connection::serve(reg, stream, peer, tpgt, slot, stop).instrument(span));
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        accepts.shutdown().await;
        let _ = stop_tx.send(true);
        while conns.join_next().await.is_some() {}
        let mut first_err = None;
        for t in self.registry.targets.snapshot().iter().map(|e| &e.cfg) {
            if let Err(e) = t.scsi.flush_all().await {
                let reason = e.to_string();
                tracing::error!(target = %t.iqn, %reason, "flush at shutdown failed");
                first_err.get_or_insert(ServerError::Flush {
                    target: t.iqn.clone(),
                    reason,
                });
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// A connection accepted and counted as a pending login.
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    tpgt: u16,
    slot: PendingSlot,
}

/// How often a repeated accept error or cap event is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// Longest pause between accepts after errors.
const MAX_ACCEPT_PAUSE: Duration = Duration::from_secs(1);

/// Accepts connections on one portal and counts each as a pending login;
/// a cap may drop an older silent one to make room, or refuse the new one.
/// When accept fails (typically EMFILE: out of file descriptors) the oldest
/// silent pending login is dropped to free one, accept pauses (10 ms,
/// doubling up to 1 s while errors go on) instead of spinning, and the
/// errors are logged at most once per [`LOG_EVERY`].
async fn accept_loop(
    l: TcpListener,
    tpgt: u16,
    reg: Arc<Registry>,
    tx: mpsc::UnboundedSender<Accepted>,
) {
    let mut errors = LogLimit::new(LOG_EVERY);
    let mut evictions = LogLimit::new(LOG_EVERY);
    let mut refusals = LogLimit::new(LOG_EVERY);
    let mut pause = Duration::ZERO;
    loop {
        match l.accept().await {
            Ok((stream, peer)) => {
                pause = Duration::ZERO;
                match reg.pending.admit(peer.ip()) {
                    Ok((slot, made)) => {
                        let dropped = made.evicted_same_source + made.evicted_other;
                        if dropped > 0 {
                            if let Some(left_out) = evictions.check(Instant::now()) {
                                tracing::info!(
                                    %peer,
                                    same_source = made.evicted_same_source > 0,
                                    left_out,
                                    "pending-login cap reached: the oldest connection that sent nothing yet was dropped to make room"
                                );
                            }
                        }
                        let a = Accepted {
                            stream,
                            peer,
                            tpgt,
                            slot,
                        };
                        if tx.send(a).is_err() {
                            return;
                        }
                    }
                    Err(full) => {
                        if let Some(left_out) = refusals.check(Instant::now()) {
                            let cap = match full {
                                Full::Source => "per source",
                                Full::Total => "in all",
                            };
                            tracing::warn!(%peer, cap, left_out, "pending-login cap reached and every pending login is under way: connection refused");
                        }
                    }
                }
            }
            Err(e) => {
                let out_of_fds = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                let freed = out_of_fds && reg.pending.evict_oldest_silent();
                if let Some(left_out) = errors.check(Instant::now()) {
                    tracing::warn!(error = %e, freed, left_out, "accept failed");
                }
                pause = (pause * 2).clamp(Duration::from_millis(10), MAX_ACCEPT_PAUSE);
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// The soft RLIMIT_NOFILE of the process, if it has one.
fn open_file_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the limit into a valid rlimit struct.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    (ok && lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
}

/// The caps in force: the configured ones, the total one at most half the
/// open file limit (the rest is for sessions, disks and the daemon).
fn pending_caps(limits: &LoginLimits, fd_limit: Option<u64>) -> Caps {
    let by_fds = fd_limit.map_or(usize::MAX, |l| usize::try_from(l / 2).unwrap_or(usize::MAX));
    let total = limits.max_pending.min(by_fds).max(1);
    let caps = Caps {
        total,
        per_source: limits.max_pending_per_source.min(total).max(1),
    };
    if total < limits.max_pending {
        tracing::info!(
            configured = limits.max_pending,
            open_file_limit = fd_limit,
            total = caps.total,
            per_source = caps.per_source,
            "pending logins capped at half the open file limit"
        );
    } else {
        tracing::info!(
            total = caps.total,
            per_source = caps.per_source,
            open_file_limit = fd_limit,
            "pending logins capped"
        );
    }
    caps
}
