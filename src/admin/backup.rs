//! `opie backup run|list|verify|restore|prune`: the head's backups, each
//! one request to its control socket. `run`, `verify`, `restore` and
//! `prune` start a task (`--wait` follows it with a progress bar on a
//! terminal); a failed backup task exits by its error's code (see
//! [`super::exit`]): 7 when the store refused the credentials, 6 when it
//! was unreachable or the snapshot was dropped, 4 when the head refused
//! (an exported volume, a bad chunk found by verify), 5 for an unknown
//! volume, target or backup.

use std::process::ExitCode;

use clap::Subcommand;
use control::Request;

use super::{execute, Conn, Long};

/// `opie backup ...`.
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Back up volumes (several: one consistency group, one instant);
    /// incremental to the newest backup in the target unless --full.
    Run {
        /// The volumes.
        #[arg(required = true, num_args = 1..)]
        volumes: Vec<String>,
        /// The backup target ([[backup.target]] name) [default: the first].
        #[arg(long = "to", value_name = "TARGET")]
        target: Option<String>,
        /// A full backup, no parent.
        #[arg(long)]
        full: bool,
        /// Read the volumes at most this fast, e.g. 100MiB/s [default:
        /// backup.rate_limit in head.toml, else unlimited].
        #[arg(long, value_name = "RATE", value_parser = aggregator::units::parse_rate)]
        rate_limit: Option<u64>,
        #[command(flatten)]
        long: Long,
    },
    /// The complete backups in a target.
    List {
        /// Only this volume's.
        volume: Option<String>,
        /// The backup target [default: the first].
        #[arg(long = "from", value_name = "TARGET")]
        target: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Check every chunk of a backup (exit 4 naming the bad ones).
    Verify {
        /// The backup's id.
        id: String,
        /// The backup target [default: the first].
        #[arg(long = "from", value_name = "TARGET")]
        target: Option<String>,
        #[command(flatten)]
        long: Long,
    },
    /// Restore a backup, verified first, to a volume no export serves
    /// (created with the backup's size when missing) or to a file on the head.
    Restore {
        /// The backup's id.
        id: String,
        /// The volume to write.
        #[arg(
            long,
            value_name = "VOLUME",
            conflicts_with = "to_file",
            required_unless_present = "to_file"
        )]
        to_volume: Option<String>,
        /// The array to create a new volume on [default: the only one].
        #[arg(long, value_name = "ARRAY", requires = "to_volume")]
        array: Option<String>,
        /// The file (on the head) to write.
        #[arg(long, value_name = "PATH")]
        to_file: Option<String>,
        /// The backup target [default: the first].
        #[arg(long = "from", value_name = "TARGET")]
        target: Option<String>,
        #[command(flatten)]
        long: Long,
    },
    /// Delete the backups [backup.retention] does not keep, then collect
    /// the chunks no backup uses (older than backup.grace).
    Prune {
        /// The backup target [default: the first].
        #[arg(long = "from", value_name = "TARGET")]
        target: Option<String>,
        /// Only say which backups would go.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        long: Long,
    },
}

/// `opie backup ...`.
pub fn backup(cmd: BackupCommand) -> ExitCode {
    let (request, long) = match cmd {
        BackupCommand::Run {
            volumes,
            target,
            full,
            rate_limit,
            long,
        } => (
            Request::BackupRun {
                volumes,
                target,
                full,
                rate_limit,
            },
            long,
        ),
        BackupCommand::List {
            volume,
            target,
            conn,
        } => return execute(&conn, Request::BackupList { volume, target }, false),
        BackupCommand::Verify { id, target, long } => (Request::BackupVerify { id, target }, long),
        BackupCommand::Restore {
            id,
            to_volume,
            array,
            to_file,
            target,
            long,
        } => {
            // The head writes the file: make a relative path the caller's.
            let to_file = to_file.map(|p| {
                std::path::absolute(&p)
                    .map(|a| a.display().to_string())
                    .unwrap_or(p)
            });
            (
                Request::BackupRestore {
                    id,
                    target,
                    to_volume,
                    array,
                    to_file,
                },
                long,
            )
        }
        BackupCommand::Prune {
            target,
            dry_run,
            long,
        } => (Request::BackupPrune { target, dry_run }, long),
    };
    execute(&long.conn, request, long.wait)
}
