//! The admin commands: `opie status`, `opie isu add|suspend|resume|replace|
//! remove`, `opie array create|grow|scrub`, `opie volume create|grow|delete`,
//! `opie backup run|list|verify|restore|prune` and `opie task get|list|cancel`, each one request to the head's control
//! socket (`control` crate). `--json` prints the head's response line as
//! is; otherwise a readable table. `--wait` follows a long operation's task
//! to its end. Exit statuses: see [`exit`].

mod backup;
mod exit;
mod render;
mod wait;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use control::{Client, Reply, Request, Response, TaskId, TaskState};

use crate::output::write_text;
use aggregator::units::{parse_duration, parse_size};
use exit::Failure;

pub use backup::{backup, BackupCommand};

/// Where the head's control socket is, and how to print.
#[derive(Debug, Args)]
pub struct Conn {
    /// The head's control socket [default: <data-dir>/control/head.sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// The head's data directory, to find its socket.
    #[arg(long, value_name = "DIR", default_value = control::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Print the head's response line as is (one JSON object).
    #[arg(long)]
    json: bool,
    /// How long to wait for each answer of the head.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
}

impl Conn {
    fn socket(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| control::socket_path(&self.data_dir))
    }
}

/// A command that may start a long operation.
#[derive(Debug, Args)]
pub struct Long {
    #[command(flatten)]
    conn: Conn,
    /// Wait for the operation's task to end, showing its progress (a bar
    /// on a terminal, lines otherwise); Ctrl-C stops waiting, not the task.
    #[arg(long)]
    wait: bool,
}

/// `opie isu ...` on a running head.
#[derive(Debug, Subcommand)]
pub enum IsuCommand {
    /// Add an ISU to the head (unassigned, or a spare of an array).
    Add {
        /// Its name.
        isu: String,
        /// Its iSCSI portal, HOST[:PORT]; repeatable.
        #[arg(long = "portal", value_name = "HOST[:PORT]")]
        portals: Vec<String>,
        /// An AoE interface to find it on; repeatable.
        #[arg(long = "aoe", value_name = "IFACE")]
        aoe_interfaces: Vec<String>,
        /// Make its disks hot spares of this array.
        #[arg(long, value_name = "ARRAY")]
        spare_for: Option<String>,
        #[command(flatten)]
        long: Long,
    },
    /// Suspend an ISU for maintenance (its arrays serve degraded).
    Suspend {
        /// The ISU.
        isu: String,
        #[command(flatten)]
        long: Long,
    },
    /// Resume a suspended ISU (only what changed is resynced).
    Resume {
        /// The ISU.
        isu: String,
        #[command(flatten)]
        long: Long,
    },
    /// Replace an ISU online by an added one, then retire it.
    Replace {
        /// The ISU to retire.
        isu: String,
        /// The ISU that takes its place.
        #[arg(long, value_name = "ISU")]
        with: String,
        #[command(flatten)]
        long: Long,
    },
    /// Remove an ISU no array uses.
    Remove {
        /// The ISU.
        isu: String,
        #[command(flatten)]
        long: Long,
    },
}

/// `opie array ...`.
#[derive(Debug, Subcommand)]
pub enum ArrayCommand {
    /// Create a RAID5 array across members (ISU or ISU/DISK).
    Create {
        /// Its name.
        array: String,
        /// Its members: ISU (its only disk) or ISU/DISK.
        #[arg(required = true, num_args = 1..)]
        members: Vec<String>,
        /// A hot spare; repeatable.
        #[arg(long = "spare", value_name = "MEMBER")]
        spares: Vec<String>,
        /// Chunk size ("64K").
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        chunk_size: Option<u64>,
        #[command(flatten)]
        long: Long,
    },
    /// Grow an array onto more members (reshape, online).
    Grow {
        /// The array.
        array: String,
        /// The new members.
        #[arg(required = true, num_args = 1..)]
        members: Vec<String>,
        #[command(flatten)]
        long: Long,
    },
    /// Read the whole array and check its parity.
    Scrub {
        /// The array.
        array: String,
        #[command(flatten)]
        long: Long,
    },
}

/// `opie volume ...`.
#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create a volume on an array.
    Create {
        /// Its name.
        volume: String,
        /// The array to carve it from.
        #[arg(long, value_name = "ARRAY")]
        array: String,
        /// Its size ("10G").
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        size: u64,
        #[command(flatten)]
        long: Long,
    },
    /// Grow a volume online.
    Grow {
        /// The volume.
        volume: String,
        /// Its new size ("20G").
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        size: u64,
        #[command(flatten)]
        long: Long,
    },
    /// Delete a volume no export serves.
    Delete {
        /// The volume.
        volume: String,
        #[command(flatten)]
        long: Long,
    },
}

/// `opie task ...`.
#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// One task.
    Get {
        /// The task id.
        task: u64,
        #[command(flatten)]
        long: Long,
    },
    /// Every task the head still keeps.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Ask a running task to stop at its next safe point (with --wait:
    /// exit 0 once it has ended cancelled, 1 if it ended otherwise).
    Cancel {
        /// The task id.
        task: u64,
        #[command(flatten)]
        long: Long,
    },
}

/// `opie status`.
pub fn status(conn: Conn) -> ExitCode {
    execute(&conn, Request::Status, false)
}

/// `opie isu add|suspend|resume|replace|remove`.
pub fn isu(cmd: IsuCommand) -> ExitCode {
    let (request, long) = match cmd {
        IsuCommand::Add {
            isu,
            portals,
            aoe_interfaces,
            spare_for,
            long,
        } => (
            Request::IsuAdd {
                isu,
                portals,
                aoe_interfaces,
                spare_for,
            },
            long,
        ),
        IsuCommand::Suspend { isu, long } => (Request::IsuSuspend { isu }, long),
        IsuCommand::Resume { isu, long } => (Request::IsuResume { isu }, long),
        IsuCommand::Replace { isu, with, long } => (Request::IsuReplace { isu, with }, long),
        IsuCommand::Remove { isu, long } => (Request::IsuRemove { isu }, long),
    };
    execute(&long.conn, request, long.wait)
}

/// `opie array create|grow|scrub`.
pub fn array(cmd: ArrayCommand) -> ExitCode {
    let (request, long) = match cmd {
        ArrayCommand::Create {
            array,
            members,
            spares,
            chunk_size,
            long,
        } => (
            Request::ArrayCreate {
                array,
                members,
                spares,
                chunk_size,
            },
            long,
        ),
        ArrayCommand::Grow {
            array,
            members,
            long,
        } => (Request::ArrayGrow { array, members }, long),
        ArrayCommand::Scrub { array, long } => (Request::ArrayScrub { array }, long),
    };
    execute(&long.conn, request, long.wait)
}

/// `opie volume create|grow|delete`.
pub fn volume(cmd: VolumeCommand) -> ExitCode {
    let (request, long) = match cmd {
        VolumeCommand::Create {
            volume,
            array,
            size,
            long,
        } => (
            Request::VolumeCreate {
                volume,
                array,
                size,
            },
            long,
        ),
        VolumeCommand::Grow { volume, size, long } => (Request::VolumeGrow { volume, size }, long),
        VolumeCommand::Delete { volume, long } => (Request::VolumeDelete { volume }, long),
    };
    execute(&long.conn, request, long.wait)
}

/// `opie task get|list|cancel`.
pub fn task(cmd: TaskCommand) -> ExitCode {
    match cmd {
        TaskCommand::Get { task, long } => execute(
            &long.conn,
            Request::TaskGet { task: TaskId(task) },
            long.wait,
        ),
        TaskCommand::List { conn } => execute(&conn, Request::TaskList, false),
        TaskCommand::Cancel { task, long } => execute(
            &long.conn,
            Request::TaskCancel { task: TaskId(task) },
            long.wait,
        ),
    }
}

/// Sends one request (and with `wait` follows the task it answers); returns
/// the head's last response line, if any, and the outcome. A followed task
/// succeeds by ending `done`, or for `task cancel` by ending `cancelled`.
fn call(conn: &Conn, request: &Request, wait: bool) -> (Option<String>, Result<Reply, Failure>) {
    let success = if matches!(request, Request::TaskCancel { .. }) {
        TaskState::Cancelled
    } else {
        TaskState::Done
    };
    let mut client = match Client::connect(&conn.socket(), conn.timeout) {
        Ok(c) => c,
        Err(e) => return (None, Err(e.into())),
    };
    let (line, response) = match client.call(request) {
        Ok(r) => r,
        Err(e) => return (None, Err(e.into())),
    };
    match response {
        Response::Error(e) => (Some(line), Err(Failure::Refused(e))),
        Response::Result(Reply::Task(t)) if wait && !t.state.is_final() => {
            match wait::follow(&mut client, t, conn.json) {
                Ok((line, t)) if t.state == success => (Some(line), Ok(Reply::Task(t))),
                Ok((line, t)) => (
                    Some(line),
                    Err(Failure::Task(render::task_line(&t), exit::of_task(&t))),
                ),
                Err(f) => (None, Err(f)),
            }
        }
        Response::Result(Reply::Task(t)) if wait && t.state != success => (
            Some(line),
            Err(Failure::Task(render::task_line(&t), exit::of_task(&t))),
        ),
        Response::Result(reply) => (Some(line), Ok(reply)),
    }
}

/// Runs one request and prints its outcome: with `--json` one JSON line on
/// stdout (the head's response as is, or, when the head gave none, an
/// `{"error": ...}` of the CLI's own); otherwise a table on stdout and
/// errors on stderr.
fn execute(conn: &Conn, request: Request, wait: bool) -> ExitCode {
    let (line, outcome) = call(conn, &request, wait);
    if conn.json {
        let _ = match (&line, &outcome) {
            (Some(line), _) => write_text(&format!("{line}\n")),
            (None, Err(f)) => write_text(&format!(
                "{}\n",
                serde_json::json!({"error": {"code": f.json_code(), "message": f.to_string()}})
            )),
            (None, Ok(_)) => true,
        };
    }
    match outcome {
        Ok(reply) => {
            if !conn.json {
                write_text(&render::reply(&reply));
            }
            exit::code(exit::EXIT_OK)
        }
        Err(f) => {
            eprintln!("opie: {f}");
            exit::code(f.exit())
        }
    }
}
