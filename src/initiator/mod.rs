//! `opie initiator`: what a head would see of an ISU, from the command
//! line: `discover` (SendTargets), `login` (a target's LUNs with identity,
//! size and limits), `ls` (every disk behind a set of portals with its
//! paths). Each takes `--json`. Exit status: 0 done, 1 a portal could not
//! be reached or broke off, 2 a bad command line or secret file, 3 the
//! login was refused (credentials, access lists), 4 no such target or LUN.
//! `discover` and `ls` also take `--aoe IFACE` for AoE targets.

mod aoe;
mod buffers;
mod credentials;
mod discovery;
mod error;
mod listing;
mod lun;
mod perf;
mod portal;

use crate::output::outln;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde::Serialize;

use credentials::ChapArgs;
use error::CliError;
use lun::Login;
use portal::{Portal, DEFAULT_INITIATOR};

/// `opie initiator` subcommands.
#[derive(Debug, Subcommand)]
pub enum InitiatorCommand {
    /// List the targets each portal reports (iSCSI SendTargets).
    Discover(DiscoverArgs),
    /// Log in to a target and describe its LUNs: identity, size, limits.
    Login(LoginArgs),
    /// Every disk behind the portals, grouped by identity, with its paths.
    Ls(LsArgs),
    /// Throughput: IOPS, MB/s and CPU per I/O at a queue depth; over
    /// several portals through multipath round-robin, each path's share.
    Perf(perf::PerfArgs),
}

/// Options every subcommand shares.
#[derive(Debug, Args)]
pub struct Common {
    /// Portal, ADDR[:PORT] (port 3260 by default); repeatable.
    #[arg(short, long = "portal", value_name = "ADDR[:PORT]")]
    portals: Vec<String>,
    /// Our iSCSI name.
    #[arg(long, value_name = "IQN", default_value = DEFAULT_INITIATOR)]
    initiator_name: String,
    /// Print JSON on stdout (a failure as {"error", "exit_code"}).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    chap: ChapArgs,
}

/// AoE interfaces to look on, for `discover` and `ls`.
#[derive(Debug, Args)]
pub struct AoeArgs {
    /// Broadcast AoE Query Config on this interface too (repeatable; needs
    /// root).
    #[arg(long = "aoe", value_name = "IFACE")]
    interfaces: Vec<String>,
    /// How long to wait for AoE targets to answer.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    aoe_wait: Duration,
}

/// `discover`.
#[derive(Debug, Args)]
pub struct DiscoverArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    aoe: AoeArgs,
}

/// What `discover` found: the iSCSI portals' targets and, with `--aoe`,
/// the AoE targets (JSON: an array, the AoE entry last).
#[derive(Serialize)]
#[serde(untagged)]
enum Discovered {
    Iscsi(discovery::PortalTargets),
    Aoe(aoe::AoeDiscovery),
}

/// `login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    #[command(flatten)]
    common: Common,
    /// The target name.
    #[arg(short, long, value_name = "IQN")]
    target: String,
}

/// `ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    #[command(flatten)]
    common: Common,
    /// Only these targets (repeatable; default every target discovered).
    #[arg(short, long = "target", value_name = "IQN")]
    targets: Vec<String>,
    /// Authenticate the discovery sessions with the CHAP credentials too.
    #[arg(long)]
    chap_discovery: bool,
    #[command(flatten)]
    aoe: AoeArgs,
}

impl Common {
    /// The portals; at least one.
    fn portals(&self) -> Result<Vec<Portal>, CliError> {
        if self.portals.is_empty() {
            return Err(CliError::Usage(
                "give a portal: --portal ADDR[:PORT]".into(),
            ));
        }
        self.any_portals()
    }

    /// The portals, none allowed when `aoe` names interfaces instead.
    fn portals_or(&self, aoe: &AoeArgs) -> Result<Vec<Portal>, CliError> {
        if aoe.interfaces.is_empty() {
            return self.portals();
        }
        self.any_portals()
    }

    fn any_portals(&self) -> Result<Vec<Portal>, CliError> {
        self.portals.iter().map(|p| Portal::parse(p)).collect()
    }

    fn login(&self) -> Result<Login, CliError> {
        Ok(Login {
            initiator: self.initiator_name.clone(),
            auth: self.chap.auth()?,
        })
    }
}

/// A failure in the JSON form.
#[derive(Serialize)]
struct JsonError {
    error: String,
    exit_code: u8,
}

/// Prints `value` (JSON or text) or the failure, and gives the exit status.
fn finish<T: Serialize>(json: bool, r: Result<T, CliError>, text: impl FnOnce(&T)) -> ExitCode {
    match r {
        Ok(v) => {
            if json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&v).expect("serializable")
                );
            } else {
                text(&v);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let exit_code = e.exit_code();
            if json {
                let j = JsonError {
                    error: e.to_string(),
                    exit_code,
                };
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&j).expect("serializable")
                );
            }
            eprintln!("opie: {e}");
            ExitCode::from(exit_code)
        }
    }
}

/// Runs an `opie initiator` command to its exit status.
pub fn run(cmd: InitiatorCommand) -> ExitCode {
    buffers::keep_freed_buffers();
    let rt = match runtime(&cmd) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("opie: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run_async(cmd))
}

/// The runtime a command runs on. `perf` runs on one thread, as a head
/// would pin a session to one: on the multi-thread runtime each answer woke
/// its caller on another thread (a futex wake and a context switch per
/// I/O, a fifth of the CPU time of a 4 KiB read), and the workers competed
/// for the cores with the target.
fn runtime(cmd: &InitiatorCommand) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = match cmd {
        InitiatorCommand::Perf(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    b.enable_all().thread_name("opie-initiator").build()
}

async fn run_async(cmd: InitiatorCommand) -> ExitCode {
    match cmd {
        InitiatorCommand::Discover(a) => {
            let c = &a.common;
            let r = async {
                let (portals, login) = (c.portals_or(&a.aoe)?, c.login()?);
                let mut found = Vec::new();
                for p in &portals {
                    let targets = discovery::discover(p, &login.initiator, &login.auth).await?;
                    found.push(Discovered::Iscsi(targets));
                }
                if !a.aoe.interfaces.is_empty() {
                    let d = aoe::discover(&a.aoe.interfaces, a.aoe.aoe_wait).await?;
                    found.push(Discovered::Aoe(d));
                }
                Ok(found)
            }
            .await;
            finish(c.json, r, |f| {
                for d in f {
                    match d {
                        Discovered::Iscsi(p) => discovery::print(std::slice::from_ref(p)),
                        Discovered::Aoe(d) => aoe::print(d),
                    }
                }
            })
        }
        InitiatorCommand::Login(a) => {
            let c = &a.common;
            let r = async {
                let (portals, login) = (c.portals()?, c.login()?);
                let mut all = Vec::new();
                for p in &portals {
                    all.push(login.describe(p, &a.target, false).await?);
                }
                Ok(all)
            }
            .await;
            finish(c.json, r, |all| all.iter().for_each(lun::print))
        }
        InitiatorCommand::Perf(a) => {
            let r = perf::perf(&a).await;
            let code = match &r {
                Ok(rep) if rep.results.iter().any(|m| m.error.is_some()) => Some(1),
                _ => None,
            };
            let exit = finish(a.common.json, r, perf::print);
            code.map_or(exit, ExitCode::from)
        }
        InitiatorCommand::Ls(a) => {
            let c = &a.common;
            let r = async {
                let (portals, login) = (c.portals_or(&a.aoe)?, c.login()?);
                let discovery_auth = if a.chap_discovery {
                    login.auth.clone()
                } else {
                    initiator_iscsi::Auth::None
                };
                let aoe = if a.aoe.interfaces.is_empty() {
                    None
                } else {
                    Some(aoe::disks(&a.aoe.interfaces, a.aoe.aoe_wait).await?)
                };
                Ok(listing::list(&portals, &a.targets, &login, &discovery_auth, aoe).await)
            }
            .await;
            let code = match &r {
                Ok(l) => l.errors.first().map(|e| e.exit_code),
                Err(_) => None,
            };
            let exit = finish(c.json, r, listing::print);
            match code {
                Some(c) => ExitCode::from(c),
                None => exit,
            }
        }
    }
}
