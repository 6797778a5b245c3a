//! The `opie` command: ISU and head daemons.
//!
//! `opie up` runs a whole appliance on one machine (three ISUs and a head,
//! as child processes; `src/up/`).
//!
//! `opie isu serve --config FILE` runs a storage unit: it exports the disks
//! named in FILE as iSCSI targets. `opie initiator ...` shows what a head
//! sees of ISUs (discovery, LUNs, paths). `opie head serve --config FILE` runs
//! the head: RAID5 arrays across ISUs, re-exported over iSCSI. `opie status`,
//! `opie isu add|suspend|...`, `opie array ...`, `opie volume ...` and `opie
//! task ...` manage a running head through its control socket (`src/admin/`).

mod admin;
mod config;
mod head;
mod initiator;
mod isu;
mod logging;
mod output;
mod service;
mod signals;

mod state;
mod units;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// opie: reliable block storage from commodity boxes.
#[derive(Debug, Parser)]
#[command(name = "opie", version, about, propagate_version = true)]
struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A whole appliance on this machine: three ISUs and a head with a
    /// RAID5 array, its export on 127.0.0.1:3260, until Ctrl-C.
    Up(up::UpArgs),
    /// Storage unit (ISU): exports local disks over iSCSI; on a head, manages its ISUs.
    Isu {
        #[command(subcommand)]
        command: IsuCommand,
    },
    /// Head: RAID5 arrays across ISUs, re-exported over iSCSI.
    Head {
        #[command(subcommand)]
        command: head::HeadCommand,
    },
    /// Initiator: what a head sees of ISUs (discovery, LUNs, paths).
    Initiator {
        #[command(subcommand)]
        command: initiator::InitiatorCommand,
    },
    /// A running head's ISUs, arrays, volumes, tasks and recent events.
    Status(admin::Conn),
    /// A running head's RAID5 arrays.
    Array {
        #[command(subcommand)]
        command: admin::ArrayCommand,
    },
    /// A running head's volumes.
    Volume {
        #[command(subcommand)]
        command: admin::VolumeCommand,
    },
    /// A running head's backups.
    Backup {
        #[command(subcommand)]
        command: admin::BackupCommand,
    },
    /// A running head's long operations.
    Task {
        #[command(subcommand)]
        command: admin::TaskCommand,
    },
    /// systemd units for the ISU and the head daemons.
    Systemd {
        #[command(subcommand)]
        command: units::SystemdCommand,
    },
}

#[derive(Debug, Subcommand)]
enum IsuCommand {
    /// Serve the disks of a config file until SIGTERM or SIGINT.
    Serve(ServeArgs),
    /// Check a config file as serve would at startup (creating and locking
    /// nothing), print what it means, and exit: 0 valid, 2 bad config, 1
    /// what serve would refuse at startup (a disk, the data dir, a portal).
    Check(CheckArgs),
    /// Manage the ISUs of a running head (add, suspend, resume, replace, remove).
    #[command(flatten)]
    Admin(admin::IsuCommand),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// The ISU config file (TOML).
    #[arg(short, long, value_name = "FILE")]
    config: PathBuf,
    /// Portal to listen on, HOST:PORT[,TPGT]; repeatable; replaces isu.listen.
    #[arg(short, long, value_name = "ADDR:PORT")]
    listen: Vec<String>,
    /// Data directory; replaces isu.data_dir.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct CheckArgs {
    #[command(flatten)]
    serve: ServeArgs,
}

impl ServeArgs {
    fn load(&self) -> Result<config::IsuConfig, config::ConfigError> {
        let ov = config::Overrides {
            listen: self.listen.clone(),
            data_dir: self.data_dir.clone(),
        };
        config::IsuConfig::load(&self.config, &ov)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.verbose);
    match cli.command {
        Command::Up(args) => up::run(args, cli.verbose),
        Command::Initiator { command } => initiator::run(command),
        Command::Head { command } => match command {
            head::HeadCommand::Serve(args) => {
                let cfg = match args.load() {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("opie: {e}");
                        return ExitCode::from(2);
                    }
                };
                run_daemon("opie-head", head::serve(cfg))
            }
        },
        Command::Status(conn) => admin::status(conn),
        Command::Array { command } => admin::array(command),
        Command::Volume { command } => admin::volume(command),
        Command::Backup { command } => admin::backup(command),
        Command::Task { command } => admin::task(command),
        Command::Systemd { command } => units::run(command),
        Command::Isu { command } => match command {
            IsuCommand::Admin(command) => admin::isu(command),
            IsuCommand::Check(args) => match args.serve.load() {
                Ok(cfg) => match isu::check(&cfg) {
                    Ok(()) => {
                        isu::describe(&cfg);
                        ExitCode::SUCCESS
                    }
                    // What serve would refuse at startup, with its status.
                    Err(e) => {
                        eprintln!("opie: {e}");
                        ExitCode::FAILURE
                    }
                },
                Err(e) => {
                    eprintln!("opie: {e}");
                    ExitCode::from(2)
                }
            },
            IsuCommand::Serve(args) => {
                let cfg = match args.load() {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("opie: {e}");
                        return ExitCode::from(2);
                    }
                };
                run_daemon("opie-isu", isu::serve(cfg))
            }
        },
    }
}

/// Runs a daemon's future on a multi-threaded runtime whose threads are
/// named `name`: exit status 0 when it ends well, 1 with its error.
fn run_daemon<E: std::fmt::Display>(
    name: &str,
    daemon: impl std::future::Future<Output = Result<(), E>>,
) -> ExitCode {
    limit_malloc_arenas();
    raise_open_file_limit();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(name)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("opie: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(async {
        service::spawn_watchdog();
        daemon.await
    }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("opie: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit, so the usual soft limit
/// of 1024 does not run out under many connections (the caps on pending
/// logins are then taken from the raised figure), and logs the figure.
fn raise_open_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a valid rlimit struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    let before = lim.rlim_cur;
    // Linux refuses a soft limit above fs.nr_open (2^20 by default), which an
    // unlimited hard limit would ask for.
    let target = if lim.rlim_max == libc::RLIM_INFINITY {
        1 << 20
    } else {
        lim.rlim_max
    };
    if target > before {
        lim.rlim_cur = target;
        // SAFETY: setrlimit reads a valid rlimit struct; raising the soft
        // limit up to the hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            tracing::warn!(
                limit = before,
                error = %std::io::Error::last_os_error(),
                "open file limit could not be raised"
            );
            return;
        }
        tracing::info!(
            from = before,
            to = target,
            "open file limit raised to the hard limit"
        );
    } else {
        tracing::info!(limit = before, "open file limit (already the hard limit)");
    }
}

/// One malloc arena for the whole daemon. Data buffers are allocated on one
/// thread (the connection's) and freed on another (the blocking pool's, after
/// the write), so with glibc's default of an arena per thread freed buffers
/// pile up in arenas that other threads do not reuse: with 8 busy sessions
/// the resident size doubles (about 100 MiB against 70 MiB with one arena,
/// `interop/bench-vs-tgt`), at no measurable cost in throughput. Must run
/// before the runtime starts its threads.
fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator parameters (and is thread-safe).
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
