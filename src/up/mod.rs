//! `opie up`: a whole appliance on this machine with one command. It keeps
//! everything in one data directory (`./opie-data/` unless `--data-dir`,
//! see [`layout`]): at the first run it writes the configs of three ISUs and
//! a head ([`configs`]); every run starts the ISUs and then the head as
//! child processes of this binary ([`children`]), waits until the head's
//! export answers a login and TEST UNIT READY ([`ready`]), prints how to
//! attach ([`attach`]) and supervises them until SIGINT/SIGTERM (the head
//! stopped first, drained and flushed, then the ISUs) or until one of them
//! dies (reported; the rest stopped; exit status 1). A second run finds
//! the configs and the disks and the head re-assembles the same array.

mod attach;
mod children;
mod configs;
mod error;
mod layout;
mod ports;
mod ready;

use crate::output::{out, outln};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use aggregator::config::HeadConfig;
use aggregator::portal::PortalSpec;
use clap::Args;
use target_iscsi::access::AuthMethod;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::config::{IsuConfig, Overrides};
use crate::state::{DataDir, StateError};
use children::{DaemonId, Fleet};
use configs::Plan;
use error::UpError;
use layout::{Found, Layout, ISUS, UP_LOCK_FILE};

/// `opie up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// The appliance's directory: configs, disk files, state and logs.
    #[arg(long, value_name = "DIR", default_value = "opie-data")]
    data_dir: PathBuf,
    /// The head's port on 127.0.0.1 (default 3260). Used when the configs
    /// are created; with existing ones it must agree with head.toml.
    #[arg(long, value_name = "PORT", conflicts_with = "listen")]
    port: Option<u16>,
    /// A head portal HOST:PORT[,TPGT], repeatable, instead of --port.
    #[arg(long, value_name = "HOST:PORT[,TPGT]")]
    listen: Vec<String>,
    /// Each ISU's sparse disk file ("1G", "64M", ...; default 1G). Used
    /// when the configs are created; with existing ones it must agree.
    #[arg(long, value_name = "SIZE", value_parser = aggregator::units::parse_size)]
    size: Option<u64>,
}

/// How long one readiness probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The default size of each ISU's disk.
const DEFAULT_DISK_BYTES: u64 = 1 << 30;

/// `opie up`'s own stop signals.
#[derive(Debug)]
pub struct Stops {
    term: Signal,
    int: Signal,
}

impl Stops {
    fn new() -> Result<Stops, UpError> {
        Ok(Stops {
            term: signal(SignalKind::terminate()).map_err(UpError::Runtime)?,
            int: signal(SignalKind::interrupt()).map_err(UpError::Runtime)?,
        })
    }

    /// The next SIGTERM or SIGINT, by name.
    pub async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Runs `opie up` to its end: 0 after a clean stop, 1 when something
/// failed or a daemon died, 2 for a bad config or flag.
pub fn run(args: UpArgs, verbose: u8) -> ExitCode {
    // One thread: the children's death signal follows the thread that
    // spawned them, which must live as long as the process.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("opie up: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut reported = false;
    match rt.block_on(up(args, verbose, &mut reported)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !reported {
                eprintln!("opie up: {e}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// The configs, loaded as the daemons will load them.
struct Loaded {
    isus: Vec<IsuConfig>,
    head: HeadConfig,
}

impl Loaded {
    fn load(layout: &Layout) -> Result<Loaded, UpError> {
        let isus = (0..ISUS)
            .map(|n| {
                IsuConfig::load(&layout.isu_config(n), &Overrides::default())
                    .map_err(|e| UpError::Config(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let head =
            HeadConfig::load(&layout.head_config()).map_err(|e| UpError::Config(e.to_string()))?;
        Ok(Loaded { isus, head })
    }
}

/// The head portals the flags ask for (None: no flag).
fn requested_listen(args: &UpArgs) -> Result<Option<Vec<PortalSpec>>, UpError> {
    if let Some(p) = args.port {
        return Ok(Some(vec![
            PortalSpec::parse(&format!("127.0.0.1:{p}")).map_err(UpError::Flags)?
        ]));
    }
    if args.listen.is_empty() {
        return Ok(None);
    }
    args.listen
        .iter()
        .map(|s| PortalSpec::parse(s).map_err(|e| UpError::Flags(format!("--listen {e}"))))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Writes the configs of a new appliance, or checks the flags against
/// those of an existing one (whose files are never touched).
fn prepare(layout: &Layout, args: &UpArgs) -> Result<(Loaded, Found), UpError> {
    let listen = requested_listen(args)?;
    let found = layout.found()?;
    if found == Found::Nothing {
        let head_listen = match &listen {
            Some(l) => l.clone(),
            None => vec![PortalSpec::parse("127.0.0.1:3260").expect("a portal")],
        };
        // Before anything is written: a port in use is then fixed with
        // --port, not by editing the new head.toml.
        ports::check_free(
            &head_listen,
            "the head's portal",
            &layout.head_config(),
            "choose another port with --port",
        )?;
        let isu_ports = ports::pick_isu_ports(&head_listen).map_err(UpError::Flags)?;
        let size = args.size.unwrap_or(DEFAULT_DISK_BYTES);
        if size == 0 || !size.is_multiple_of(512) {
            return Err(UpError::Flags(format!(
                "--size {size}: must be a positive multiple of 512 bytes"
            )));
        }
        configs::write_new(
            layout,
            &Plan {
                head_listen,
                isu_ports,
                disk_bytes: size,
            },
        )?;
    }
    let loaded = Loaded::load(layout)?;
    if found == Found::Everything {
        let head_file = layout.head_config();
        if let Some(l) = listen {
            let want: Vec<String> = l.iter().map(ToString::to_string).collect();
            let have: Vec<String> = loaded
                .head
                .listen
                .iter()
                .map(|p| p.spec.to_string())
                .collect();
            // A TPGT left out defaults to the position in head.toml.
            let same = want.len() == have.len()
                && l.iter()
                    .zip(&loaded.head.listen)
                    .all(|(w, h)| w.host == h.spec.host && w.port == h.spec.port);
            if !same {
                return Err(UpError::Flags(format!(
                    "{} listens on {}, not {}: drop --port/--listen, or edit the file",
                    head_file.display(),
                    have.join(" "),
                    want.join(" ")
                )));
            }
        }
        if let Some(size) = args.size {
            for (n, c) in loaded.isus.iter().enumerate() {
                if c.disks.iter().any(|d| d.size != Some(size)) {
                    return Err(UpError::Flags(format!(
                        "{} gives its disk another size than --size {size}: drop --size (an existing disk keeps its size)",
                        layout.isu_config(n).display()
                    )));
                }
            }
        }
    }
    Ok((loaded, found))
}

/// The head's addresses to reach it on, from its config.
fn head_addrs(layout: &Layout, head: &HeadConfig) -> Result<Vec<SocketAddr>, UpError> {
    let mut all = Vec::new();
    for l in &head.listen {
        all.extend(ports::connect_addrs(&l.spec, &layout.head_config())?);
    }
    Ok(all)
}

/// Waits until every address of `addrs` accepts a TCP connection, or a
/// daemon dies, or a stop signal comes (`Ok(false)`).
async fn wait_listening(
    addrs: &[SocketAddr],
    fleet: &mut Fleet,
    stops: &mut Stops,
) -> Result<bool, UpError> {
    for a in addrs {
        loop {
            if tokio::net::TcpStream::connect(a).await.is_ok() {
                break;
            }
            tokio::select! {
                e = fleet.died() => return Err(e),
                _ = stops.next() => return Ok(false),
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }
    Ok(true)
}

/// Waits until each export answers on the head's first portal: our
/// initiator logs in and gets TEST UNIT READY through (an export our probe
/// may not log in to, CHAP or an initiator list, counts once the portal
/// accepts connections). `Ok(None)`: a stop signal came first.
async fn wait_ready(
    head: &HeadConfig,
    portal: SocketAddr,
    log: &Path,
    fleet: &mut Fleet,
    stops: &mut Stops,
) -> Result<Option<Vec<attach::Export>>, UpError> {
    let mut exports = Vec::new();
    let started = tokio::time::Instant::now();
    let mut next_note = started + Duration::from_secs(15);
    for e in &head.exports {
        let probed = e.auth == AuthMethod::None && e.initiators.is_none();
        let capacity = loop {
            let attempt = async {
                if probed {
                    ready::probe(portal, &e.iqn).await.map(Some)
                } else {
                    tokio::net::TcpStream::connect(portal)
                        .await
                        .map(|_| None)
                        .map_err(|e| e.to_string())
                }
            };
            // A head that accepts but does not answer must not hide a
            // daemon's death or a stop signal.
            let r = tokio::select! {
                r = tokio::time::timeout(PROBE_TIMEOUT, attempt) => {
                    r.unwrap_or_else(|_| Err("no answer to the login".into()))
                }
                e = fleet.died() => return Err(e),
                _ = stops.next() => return Ok(None),
            };
            match r {
                Ok(c) => break c,
                Err(why) if tokio::time::Instant::now() >= next_note => {
                    // What the head is busy with (creating a volume
                    // writes all of it) is its last log line.
                    outln!(
                        "opie up: still waiting for the head to serve {} ({why}); {} says:{}",
                        e.iqn,
                        log.display(),
                        children::tail(log, 1)
                    );
                    next_note += Duration::from_secs(15);
                }
                Err(_) => {}
            }
            tokio::select! {
                e = fleet.died() => return Err(e),
                _ = stops.next() => return Ok(None),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        };
        exports.push(attach::Export {
            iqn: e.iqn.clone(),
            capacity,
        });
    }
    Ok(Some(exports))
}

/// Stops the head, then the ISUs.
async fn stop_all(
    fleet: &mut Fleet,
    head: Option<DaemonId>,
    isus: &[DaemonId],
    stops: &mut Stops,
) -> Result<(), UpError> {
    let head_result = match head {
        Some(h) => fleet.stop(&[h], stops).await,
        None => Ok(()),
    };
    let isus_result = fleet.stop(isus, stops).await;
    head_result.and(isus_result)
}

fn os(args: &[&str], paths: &[&Path]) -> Vec<OsString> {
    args.iter()
        .map(OsString::from)
        .chain(paths.iter().map(|p| p.as_os_str().to_owned()))
        .collect()
}

/// Brings the appliance up and supervises it; `reported` is set when the
/// error returned was printed already (before the rest was stopped).
async fn up(args: UpArgs, verbose: u8, reported: &mut bool) -> Result<(), UpError> {
    // Installed first: from here on a Ctrl-C is ours to handle.
    let mut stops = Stops::new()?;
    let data = DataDir::open_locked_by(&args.data_dir, UP_LOCK_FILE).map_err(|e| match e {
        StateError::Locked { .. } => UpError::DataDir(e),
        e => UpError::DataDirUnusable {
            dir: args.data_dir.clone(),
            source: e,
        },
    })?;
    let layout = Layout::new(data.root());
    let (loaded, found) = prepare(&layout, &args)?;
    match found {
        Found::Nothing => outln!(
            "opie up: new appliance in {} (configs written: {})",
            args.data_dir.display(),
            layout
                .configs()
                .iter()
                .map(|p| p
                    .strip_prefix(data.root())
                    .unwrap_or(p)
                    .display()
                    .to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Found::Everything => outln!(
            "opie up: starting the appliance in {} again (its configs as they are)",
            args.data_dir.display()
        ),
    }
    for (n, c) in loaded.isus.iter().enumerate() {
        let file = layout.isu_config(n);
        let fix = format!("edit {}", file.display());
        ports::check_free(&c.listen, &format!("ISU isu{n}"), &file, &fix)?;
    }
    let head_listen: Vec<PortalSpec> = loaded.head.listen.iter().map(|l| l.spec.clone()).collect();
    let fix = format!("edit {}", layout.head_config().display());
    ports::check_free(
        &head_listen,
        "the head's portal",
        &layout.head_config(),
        &fix,
    )?;
    let mut isu_addrs = Vec::new();
    for (n, c) in loaded.isus.iter().enumerate() {
        for p in &c.listen {
            isu_addrs.extend(ports::connect_addrs(p, &layout.isu_config(n))?);
        }
    }
    let addrs = head_addrs(&layout, &loaded.head)?;

    let verbosity: Vec<&str> = (0..verbose.min(2)).map(|_| "-v").collect();
    let mut fleet = Fleet::new()?;
    let mut isus = Vec::new();
    let mut result = Ok(());
    for (n, c) in loaded.isus.iter().enumerate() {
        let name = format!("isu{n}");
        let mut a = verbosity.clone();
        a.extend(["isu", "serve", "--config"]);
        // An ISU left alone drains and flushes on SIGTERM.
        match fleet.spawn(
            &name,
            &os(&a, &[&layout.isu_config(n)]),
            &layout.isu_log(n),
            libc::SIGTERM,
        ) {
            Ok(id) => isus.push(id),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
        let portals: Vec<String> = c.listen.iter().map(|p| p.to_string()).collect();
        outln!(
            "opie up: {name} (pid {}) on {}",
            fleet.pid(*isus.last().expect("pushed")),
            portals.join(" ")
        );
    }
    let mut head = None;
    let mut up = false;
    if result.is_ok() {
        result = match wait_listening(&isu_addrs, &mut fleet, &mut stops).await {
            Ok(true) => {
                let mut a = verbosity.clone();
                a.extend(["head", "serve", "--config"]);
                // Left alone the head cannot stop cleanly (its ISUs stop at
                // the same time, and a head whose members are all gone does
                // not finish closing): SIGKILL, which loses nothing it
                // acknowledged (the next assembly resyncs).
                fleet
                    .spawn(
                        "head",
                        &os(&a, &[&layout.head_config()]),
                        &layout.head_log(),
                        libc::SIGKILL,
                    )
                    .map(|id| {
                        outln!(
                            "opie up: head (pid {}) on {}; waiting for its export (log: {})",
                            fleet.pid(id),
                            head_listen
                                .iter()
                                .map(|p| p.to_string())
                                .collect::<Vec<_>>()
                                .join(" "),
                            layout.head_log().display()
                        );
                        head = Some(id);
                    })
            }
            Ok(false) => Ok(()),
            Err(e) => Err(e),
        };
    }
    if let (Ok(()), Some(_)) = (&result, head) {
        result = match wait_ready(
            &loaded.head,
            addrs[0],
            &layout.head_log(),
            &mut fleet,
            &mut stops,
        )
        .await
        {
            Ok(Some(exports)) => {
                let socket = control::socket_path(&loaded.head.data_dir);
                let status = socket
                    .exists()
                    .then(|| format!("opie status --data-dir {}", loaded.head.data_dir.display()));
                out!(
                    "{}",
                    attach::instructions(&args.data_dir, &addrs, &exports, status)
                );
                up = true;
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
    }
    if up {
        result = tokio::select! {
            e = fleet.died() => Err(e),
            sig = stops.next() => {
                outln!("opie up: {sig}: stopping the head (drain, flush), then the ISUs");
                Ok(())
            }
        };
    } else if result.is_ok() {
        outln!("opie up: stop signal before the appliance was up: stopping");
    }
    if let Err(e) = &result {
        eprintln!("opie up: {e}");
        eprintln!("opie up: stopping the rest");
        *reported = true;
    }
    let stopped = stop_all(&mut fleet, head, &isus, &mut stops).await;
    match (result, stopped) {
        (Err(e), _) => Err(e),
        (Ok(()), Err(e)) => {
            *reported = false;
            Err(e)
        }
        (Ok(()), Ok(())) => {
            outln!("opie up: stopped cleanly");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path, port: Option<u16>, size: Option<u64>) -> UpArgs {
        UpArgs {
            data_dir: dir.to_path_buf(),
            port,
            listen: Vec::new(),
            size,
        }
    }

    /// With configs there, the flags must agree with them: an existing
    /// appliance keeps its port and its disks' size.
    #[test]
    fn flags_must_agree_with_existing_configs() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (_, found) = prepare(&layout, &args(dir.path(), Some(port), Some(32 << 20))).unwrap();
        assert_eq!(found, Found::Nothing);
        let (loaded, found) = prepare(&layout, &args(dir.path(), Some(port), None)).unwrap();
        assert_eq!(found, Found::Everything);
        assert_eq!(loaded.head.listen[0].spec.port, port);
        assert!(prepare(&layout, &args(dir.path(), None, Some(32 << 20))).is_ok());
        let e = prepare(&layout, &args(dir.path(), Some(port - 1), None))
            .err()
            .unwrap();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("head.toml listens on"), "{e}");
        let e = prepare(&layout, &args(dir.path(), None, Some(64 << 20)))
            .err()
            .unwrap();
        assert!(e.to_string().contains("another size than --size"), "{e}");
    }
}
