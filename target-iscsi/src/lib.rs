//! opie's iSCSI target (RFC 7143): the target's session state machine, its
//! login policy and a thin tokio server at the edge, serving the SCSI logical
//! units of `scsi-disk` over the protocol core of `iscsi-proto`.
//!
//! The ISUs export their disks with it and the head re-exports RAID5 volumes
//! with the very same code.
//!
//! Sans-I/O (no sockets, no clock): [`session`] (Full Feature Phase: command
//! window, data transfer, NOP, task management, logout), [`r2t`] (Data-Out
//! collection), [`tmf`] (the transport side of task management),
//! [`discovery`] (SendTargets), [`access`] (CHAP and ACLs: the login
//! policy) and [`outgoing`] (PDUs to send, data in a file's page cache
//! included). The tokio edge is [`server`].

pub mod access;
pub mod discovery;
pub mod outgoing;
pub mod r2t;
pub mod server;
pub mod session;
pub mod tmf;
