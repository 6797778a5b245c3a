//! The opie head (`opie head serve`): logs in to the ISUs, reaches each of
//! their disks over every portal as one multipath device, assembles the
//! RAID5 arrays from their members' superblocks (creating one only on first
//! start), carves the configured volumes from them and re-exports those as
//! iSCSI targets with the same SCSI and target code as the ISU.
//!
//! Modules, in the order the head uses them: [`config`] (`head.toml`),
//! [`reach`] (an ISU's disks as multipath devices), [`startup`] (waiting
//! for members, assembling or creating the arrays), [`volumes`] (the
//! volumes carved from each array), [`export`] (the iSCSI targets), and
//! [`head`] (the whole lifetime: start, serve, stop). [`units`] and
//! [`portal`] are the config syntax shared with the ISU's `isu.toml`.

pub mod config;
pub mod export;
pub mod head;
pub mod portal;
pub mod reach;
pub mod startup;
pub mod units;
pub mod volumes;
