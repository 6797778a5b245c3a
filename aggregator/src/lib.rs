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
//! [`head`] (the whole lifetime: start, serve, stop); [`added`] keeps the
//! ISUs the admin added at run time in the data directory. While it serves,
//! [`live`] holds what runs (ISUs, disks, arrays), [`monitor`] drives the
//! arrays' maintenance and records changes in [`events`] (and a
//! reshape's [`pace`]), and
//! [`control_api`] answers the control socket ([`control_socket`], bound
//! from the start: `opie status`, `opie isu ...`), its `status` filled by [`report`], its tasks following the
//! arrays with [`follow`]. [`units`] and [`portal`] are
//! the config syntax shared with the ISU's `isu.toml`. Backups (`opie
//! backup ...`, `[backup]` in `head.toml`): [`backup_run`] snapshots and
//! backs up volumes through [`backup_source`], [`backup_ops`] lists,
//! verifies, restores and prunes, [`backup_task`] runs them as tasks,
//! [`backup_schedule`] starts the configured runs, [`backup_target`] opens
//! the stores of [`backup_config`], [`backup_error`] says what failed.

pub mod added;
pub mod backup_config;
pub mod backup_error;
pub mod backup_ops;
pub mod backup_run;
pub mod backup_schedule;
pub mod backup_source;
pub mod backup_target;
pub mod backup_task;
pub mod config;
pub mod control_api;
pub mod control_socket;
pub mod events;
pub mod export;
pub mod follow;
pub mod head;
pub mod live;
pub mod monitor;
pub mod pace;
pub mod portal;
pub mod reach;
pub mod report;
pub mod startup;
pub mod units;
pub mod volumes;
