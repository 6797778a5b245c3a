//! The tokio edge: listeners, one reader/driver task and one writer task per
//! connection, commands executed concurrently. All protocol decisions are
//! made by the sans-I/O [`crate::login`] and [`crate::session`] machines;
//! this module only moves bytes, runs SCSI futures and keeps time.

mod connection;
mod registry;
mod writer;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;

use chap::BackoffConfig;

use crate::access::Access;
use crate::negotiate::Limits;
use crate::scsi::ScsiTarget;
use registry::Registry;

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

/// Server configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Portals to listen on.
    pub portals: Vec<Portal>,
    /// Targets to export.
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
        for (i, t) in cfg.targets.iter().enumerate() {
            if cfg.targets[..i].iter().any(|o| o.iqn == t.iqn) {
                return Err(ServerError::Config(format!(
                    "target {} configured twice",
                    t.iqn
                )));
            }
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
        Ok(Server {
            listeners,
            registry: Arc::new(Registry::new(cfg)),
        })
    }

    /// A handle to replace the access policy while the server runs.
    pub fn access_handle(&self) -> AccessHandle {
        AccessHandle(self.registry.clone())
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
        let (conn_tx, mut conn_rx) = tokio::sync::mpsc::unbounded_channel();
        for (l, tpgt) in self.listeners {
            let tx = conn_tx.clone();
            accepts.spawn(async move {
                loop {
                    match l.accept().await {
                        Ok((s, peer)) => {
                            if tx.send((s, peer, tpgt)).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            });
        }
        drop(conn_tx);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some((stream, peer, tpgt)) = conn_rx.recv() => {
                    let reg = self.registry.clone();
                    let stop = stop_rx.clone();
                    let span = tracing::info_span!("connection", %peer, tpgt);
                    conns.spawn(connection::serve(reg, stream, peer, tpgt, stop).instrument(span));
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        accepts.shutdown().await;
        let _ = stop_tx.send(true);
        while conns.join_next().await.is_some() {}
        let mut first_err = None;
        for t in &self.registry.cfg.targets {
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
