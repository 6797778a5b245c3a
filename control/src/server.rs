//! The server, at the edge (tokio): accepts on the socket, checks each
//! peer's credentials, reads one request per line within the limits of
//! [`ServerConfig`], answers `task.*` from the [`Tasks`] registry and the
//! rest through the [`Handler`], one response line per request in order.
//! Each client has its own task, so a slow or silent one stalls nobody.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::codec::{AnyDelimiterCodec, AnyDelimiterCodecError, Decoder};

use crate::error::ControlError;
use crate::rate::{Bucket, RateLimit};
use crate::request::Request;
use crate::response::{Reply, Response};
use crate::socket::{self, ServerError};
use crate::tasks::Tasks;

/// Who is on the other end of a connection (from SO_PEERCRED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Its user id.
    pub uid: u32,
    /// Its process id, when the kernel tells.
    pub pid: Option<i32>,
}

/// What the head implements: the answer to every request but `task.*`
/// (those the server answers from its [`Tasks`]). A long operation starts
/// a task with [`Tasks::spawn`] and answers [`Reply::Task`] at once. For
/// `status` the server replaces `tasks` with the registry's list.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Answers one request from `peer`.
    async fn handle(&self, request: Request, peer: Peer) -> Result<Reply, ControlError>;
}

/// The server's limits.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Longest request line in bytes; a longer one is answered `invalid`
    /// and skipped up to its newline, and the connection goes on.
    pub max_line: usize,
    /// Clients connected at once; one more is answered `busy` and closed.
    pub max_clients: usize,
    /// Requests per client; one over the rate is answered `busy`.
    pub rate: RateLimit,
    /// A client that completes no request line for this long (since it
    /// connected or since its last one) is disconnected, however it
    /// dribbles bytes meanwhile.
    pub idle_timeout: Duration,
    /// A client that does not take a response within this is disconnected.
    pub write_timeout: Duration,
    /// User ids allowed to connect (SO_PEERCRED); others are answered
    /// `denied` and closed.
    pub allowed_uids: Vec<u32>,
}

impl Default for ServerConfig {
    /// 64 KiB lines, 32 clients, 20 requests per second with bursts of 40,
    /// 60 s idle, 10 s per write, root and the daemon's own uid.
    fn default() -> Self {
        let mut allowed_uids = vec![0];
        if socket::euid() != 0 {
            allowed_uids.push(socket::euid());
        }
        ServerConfig {
            max_line: 64 * 1024,
            max_clients: 32,
            rate: RateLimit {
                per_second: 20.0,
                burst: 40.0,
            },
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            allowed_uids,
        }
    }
}

struct Context {
    config: ServerConfig,
    handler: Arc<dyn Handler>,
    tasks: Tasks,
}

/// The control server on its socket.
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    ctx: Arc<Context>,
}

impl Server {
    /// Binds the socket at `path` (see [`crate::socket_path`]): its
    /// directory created 0700 or checked private, the socket 0600. Must be
    /// called within a tokio runtime.
    pub fn bind(
        path: &Path,
        config: ServerConfig,
        handler: Arc<dyn Handler>,
        tasks: Tasks,
    ) -> Result<Server, ServerError> {
        let std_listener = socket::bind(path)?;
        let listener = UnixListener::from_std(std_listener).map_err(|source| ServerError::Io {
            path: path.to_owned(),
            source,
        })?;
        Ok(Server {
            listener,
            path: path.to_owned(),
            ctx: Arc::new(Context {
                config,
                handler,
                tasks,
            }),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves until `shutdown` resolves, then drops every connection and
    /// removes the socket.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let clients = Arc::new(Semaphore::new(self.ctx.config.max_clients));
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let ctx = self.ctx.clone();
                        let clients = clients.clone();
                        connections.spawn(admit(stream, ctx, clients));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "control socket: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        connections.shutdown().await;
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Checks a new client's credentials and the client cap, then serves it.
async fn admit(stream: UnixStream, ctx: Arc<Context>, clients: Arc<Semaphore>) {
    let (mut rd, mut wr) = stream.into_split();
    let peer = match rd.as_ref().peer_cred() {
        Ok(c) => Peer {
            uid: c.uid(),
            pid: c.pid(),
        },
        Err(e) => {
            tracing::warn!(error = %e, "control socket: no peer credentials; connection closed");
            return;
        }
    };
    if !ctx.config.allowed_uids.contains(&peer.uid) {
        tracing::warn!(uid = peer.uid, pid = ?peer.pid, "control socket: peer refused");
        let e = ControlError::Denied(format!(
            "uid {} may not use the control socket (root or the daemon's user only)",
            peer.uid
        ));
        let _ = respond(&mut wr, &Response::Error(e), &ctx.config).await;
        return;
    }
    let Ok(_permit) = clients.try_acquire() else {
        let e = ControlError::Busy(format!(
            "{} control clients are connected already; retry later",
            ctx.config.max_clients
        ));
        let _ = respond(&mut wr, &Response::Error(e), &ctx.config).await;
        return;
    };
    tracing::debug!(uid = peer.uid, pid = ?peer.pid, "control client connected");
    serve_client(&mut rd, &mut wr, peer, &ctx).await;
    let _ = wr.shutdown().await;
}

/// Reads requests until the client closes, idles out, or fails to take a
/// response.
async fn serve_client(
    rd: &mut tokio::net::unix::OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    peer: Peer,
    ctx: &Context,
) {
    let max = ctx.config.max_line;
    let mut codec = AnyDelimiterCodec::new_with_max_length(vec![b'\n'], vec![b'\n'], max);
    let mut buf = BytesMut::with_capacity(4096);
    let mut bucket = Bucket::new(ctx.config.rate, Instant::now());
    let mut eof = false;
    // Reset by each complete line, not by each byte: a client dribbling a
    // line out byte by byte holds its place no longer than a silent one.
    let mut deadline = tokio::time::Instant::now() + ctx.config.idle_timeout;
    loop {
        let decoded = if eof {
            codec.decode_eof(&mut buf)
        } else {
            codec.decode(&mut buf)
        };
        let response = match decoded {
            Ok(Some(line)) => {
                deadline = tokio::time::Instant::now() + ctx.config.idle_timeout;
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if bucket.take(Instant::now()) {
                    answer(&line, peer, ctx).await
                } else {
                    Response::Error(ControlError::Busy(format!(
                        "too many requests: at most {} per second; retry later",
                        ctx.config.rate.per_second
                    )))
                }
            }
            Err(AnyDelimiterCodecError::MaxChunkLengthExceeded) => {
                tracing::debug!(uid = peer.uid, "control request line too long");
                Response::Error(ControlError::Invalid(format!(
                    "request line longer than {max} bytes"
                )))
            }
            Err(AnyDelimiterCodecError::Io(_)) => return,
            Ok(None) if eof => return,
            Ok(None) => {
                match tokio::time::timeout_at(deadline, rd.read_buf(&mut buf)).await {
                    Ok(Ok(0)) => eof = true,
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => return,
                    Err(_) => {
                        tracing::debug!(uid = peer.uid, "control client idle; closed");
                        return;
                    }
                }
                continue;
            }
        };
        if respond(wr, &response, &ctx.config).await.is_err() {
            return;
        }
    }
}

/// The answer to one request line.
async fn answer(line: &[u8], peer: Peer, ctx: &Context) -> Response {
    let request: Request = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => {
            return Response::Error(ControlError::Invalid(format!("not a request: {e}")));
        }
    };
    tracing::debug!(op = request.op(), uid = peer.uid, pid = ?peer.pid, "control request");
    if let Some(answer) = ctx.tasks.answer(&request) {
        return answer.into();
    }
    let mut reply = ctx.handler.handle(request, peer).await;
    if let Ok(Reply::Status(status)) = &mut reply {
        status.tasks = ctx.tasks.list();
    }
    reply.into()
}

/// Writes one response line within the write timeout.
async fn respond(
    wr: &mut OwnedWriteHalf,
    response: &Response,
    config: &ServerConfig,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(response).map_err(std::io::Error::other)?;
    line.push(b'\n');
    match tokio::time::timeout(config.write_timeout, wr.write_all(&line)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}
