//! An iSCSI initiator (RFC 7143) built on `iscsi-proto`'s initiator side:
//! opie's test initiator, and the seed of the head's.
//!
//! Sans-I/O inside, tokio at the edge:
//!
//! * the login is `iscsi-proto`'s [`InitiatorLogin`](iscsi_proto::login::InitiatorLogin)
//!   (negotiation from the key table, CHAP through `chap`), configured with
//!   a [`LoginConfig`];
//! * [`FullFeature`] is the Full Feature Phase of one session over one
//!   connection: sequence numbers and the command window, task tags, SCSI
//!   commands with immediate and unsolicited data, Data-Out for each R2T,
//!   Data-In, the target's pings, task management, text, logout;
//! * [`Connection`] is the TCP edge (digests, segment limits, the login
//!   driven to its end) with a raw side for tests that send malformed PDUs;
//!   [`Session`] drives a [`FullFeature`] over it, one call at a time.
//!
//! ```no_run
//! # async fn f() -> Result<(), initiator_iscsi::Error> {
//! use initiator_iscsi::{Command, LoginConfig, Session};
//! let addr = "127.0.0.1:3260".parse().unwrap();
//! let cfg = LoginConfig::new("iqn.2026-01.org.example:host", Some("iqn.2026-01.org.example:disk"));
//! let mut s = Session::connect(addr, cfg).await?;
//! let inquiry = s.command(Command::read(0, &[0x12, 0, 0, 0, 96, 0], 96)).await?;
//! assert!(inquiry.is_good());
//! s.logout().await
//! # }
//! ```

pub mod alua;
mod command;
mod connection;
mod device;
pub mod disk_commands;
mod error;
mod fullfeature;
pub mod keepalive;
mod path;
mod pipeline;
mod pipelined;
mod recovery;
mod session;
pub mod tmf;

pub use command::{Command, ScsiResult, TaskAttr, CHECK_CONDITION, UNIT_ATTENTION};
pub use connection::{Connection, DEFAULT_TIMEOUT};
pub use device::IscsiDevice;
pub use error::Error;
pub use fullfeature::{Event, FullFeature, Task};
pub use iscsi_proto::login::{Auth, LoggedIn, LoginConfig, LoginError};
pub use iscsi_proto::negotiate::{Limits, Params};
pub use keepalive::KeepaliveConfig;
pub use path::IscsiPath;
pub use pipeline::{Pipeline, PipelineConfig, Ticket};
pub use pipelined::{
    FailoverConfig, InDoubt, PipelinedSession, ReinstateConfig, DEFAULT_SESSION_HORIZON,
};
pub use session::Session;
pub use tmf::{TaskManagement, TmfResult};
