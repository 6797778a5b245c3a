//! The head's local control API, shared by the daemon (which serves it)
//! and the `opie` CLI (which speaks it).
//!
//! The protocol: one JSON [`Request`] per line over a Unix stream socket,
//! one JSON [`Response`] per line back, in order. A request names its
//! operation in `"op"`; a response is `{"result": {"type": ...}}` or
//! `{"error": {"code": ..., "message": ...}}` with a stable code
//! ([`ErrorCode`]). Long operations answer at once with a task
//! ([`Reply::Task`]) whose progress `task.get` follows.
//!
//! The daemon side: [`Server`] at the edge (tokio) with the socket in a
//! private directory, peer credentials, bounded lines and rates; the head
//! implements [`Handler`] and runs long operations through [`Tasks`]. The
//! CLI side: the blocking [`Client`]. The [`status`] module holds the status
//! model the head fills in.

mod client;
mod error;
mod rate;
mod registry;
mod request;
mod response;
mod server;
mod socket;
pub mod status;
mod task;
mod tasks;

use std::path::{Path, PathBuf};

pub use client::{Client, ClientError};
pub use error::{ControlError, ErrorCode};
pub use rate::RateLimit;
pub use request::Request;
pub use response::{Reply, Response};
pub use server::{Handler, Peer, Server, ServerConfig};
pub use socket::ServerError;
pub use status::Status;
pub use task::{TaskId, TaskInfo, TaskKind, TaskState};
pub use tasks::{TaskHandle, Tasks, DEFAULT_KEEP, DEFAULT_MAX_ENDED};

/// The head's data directory when none is given: relative to the working
/// directory for the CLI, to `head.toml`'s directory for the head (which
/// uses this default too), so the CLI run beside the config finds the
/// socket. Not the ISU's `opie-data`, so an ISU and a head configured in
/// one directory keep apart.
pub const DEFAULT_DATA_DIR: &str = "head-data";

/// Where the head of data directory `data_dir` puts its control socket:
/// `<data_dir>/control/head.sock` (the `control/` directory is private to
/// the daemon's user, mode 0700).
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("control").join("head.sock")
}
