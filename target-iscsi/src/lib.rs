//! opie's iSCSI target: the RFC 7143 protocol (sans-I/O codec and state
//! machines, with a thin tokio server at the edge) and SCSI disk emulation
//! (SBC-4/SPC-4) over the shared [`blockdev::BlockDevice`] trait.
//!
//! The ISUs export their disks with it and the head re-exports RAID5 volumes
//! with the very same code.

pub mod scsi;
