//! opie's iSCSI target: the RFC 7143 protocol (sans-I/O codec and state
//! machines, with a thin tokio server at the edge) and SCSI disk emulation
//! (SBC-4/SPC-4) over the shared [`blockdev::BlockDevice`] trait.
//!
//! The ISUs export their disks with it and the head re-exports RAID5 volumes
//! with the very same code.
//!
//! Protocol modules, all without sockets or clocks: [`pdu`] (header codec),
//! [`digest`], [`text`] (key=value lists), [`negotiate`] (key table),
//! [`login`], [`discovery`] (SendTargets), [`session`] (Full Feature Phase:
//! command window, data transfer, NOP, task management, logout). The tokio
//! edge is [`server`].

pub mod access;
pub mod digest;
pub mod discovery;
pub mod frame;
pub mod login;
pub mod negotiate;
pub mod pdu;
pub mod r2t;
pub mod scsi;
pub mod server;
pub mod session;
pub mod text;
pub mod tmf;
