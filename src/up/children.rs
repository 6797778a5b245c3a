//! The appliance's daemons as child processes of `opie up`: started from
//! the same binary, each in its own process group (so the terminal's
//! Ctrl-C reaches `opie up` alone, which stops them in order) and with
//! `PR_SET_PDEATHSIG` (so none outlives `opie up`, however it ends: the
//! kernel sends each its death signal, [`spawn`](Fleet::spawn)'s
//! `death_signal`).
//!
//! Children are spawned from the thread that runs `opie up`'s event loop
//! (the main thread: the death signal follows the spawning *thread*), and
//! reaped on SIGCHLD.

use std::ffi::OsString;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use tokio::signal::unix::{signal, Signal, SignalKind};

use super::error::UpError;

/// One daemon of the appliance.
#[derive(Debug)]
struct Daemon {
    name: String,
    child: Child,
    log: PathBuf,
    /// How it ended, once reaped.
    exited: Option<ExitStatus>,
}

/// The running daemons, in start order.
#[derive(Debug)]
pub struct Fleet {
    daemons: Vec<Daemon>,
    sigchld: Signal,
}

/// How often a stop that takes long says what it waits for.
const STOP_NOTE_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Index of a daemon in its [`Fleet`].
pub type DaemonId = usize;

/// How an exit status reads in messages.
fn describe(st: ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => st.to_string(),
    }
}

/// The last `lines` lines of the file at `path`, indented, after a newline
/// (empty when there is nothing to show).
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)));
    let mut text = String::new();
    let _ = f.read_to_string(&mut text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| format!("\n    {l}"))
        .collect()
}

impl Fleet {
    /// An empty fleet, watching SIGCHLD (before any child can exit).
    pub fn new() -> Result<Fleet, UpError> {
        Ok(Fleet {
            daemons: Vec::new(),
            sigchld: signal(SignalKind::child()).map_err(UpError::Runtime)?,
        })
    }

    /// Starts `opie ARGS` as `name`, its output appended to `log`; the
    /// kernel sends it `death_signal` when `opie up` ends without stopping
    /// it.
    pub fn spawn(
        &mut self,
        name: &str,
        args: &[OsString],
        log: &Path,
        death_signal: libc::c_int,
    ) -> Result<DaemonId, UpError> {
        let spawn_err = |source| UpError::Spawn {
            name: name.to_string(),
            source,
        };
        let exe = std::env::current_exe().map_err(spawn_err)?;
        let mut logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|source| UpError::Io {
                path: log.to_path_buf(),
                source,
            })?;
        let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        let _ = writeln!(logf, "---- {stamp} opie up starts {name}");
        let err = logf.try_clone().map_err(spawn_err)?;
        let parent = std::process::id() as libc::pid_t;
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(logf)
            .stderr(err)
            .process_group(0);
        // SAFETY: the closure runs in the child between fork and exec and
        // calls only async-signal-safe functions (prctl, getppid).
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, death_signal) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before the prctl: then nobody
                // would ever send the death signal.
                if libc::getppid() != parent {
                    return Err(io::Error::other("opie up exited"));
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(spawn_err)?;
        self.daemons.push(Daemon {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
            exited: None,
        });
        Ok(self.daemons.len() - 1)
    }

    /// Reaps what has exited; the first daemon found exited (not asked to)
    /// is the error.
    pub fn check(&mut self) -> Result<(), UpError> {
        for d in &mut self.daemons {
            if d.exited.is_some() {
                continue;
            }
            if let Ok(Some(st)) = d.child.try_wait() {
                d.exited = Some(st);
                return Err(UpError::ChildDied {
                    name: d.name.clone(),
                    pid: d.child.id(),
                    status: describe(st),
                    log: d.log.clone(),
                    tail: tail(&d.log, 12),
                });
            }
        }
        Ok(())
    }

    /// Resolves with the error of the first daemon that exits.
    pub async fn died(&mut self) -> UpError {
        loop {
            if let Err(e) = self.check() {
                return e;
            }
            self.sigchld.recv().await;
        }
    }

    /// Sends `sig` to every daemon of `ids` still running.
    fn signal(&mut self, ids: &[DaemonId], sig: libc::c_int) {
        for &i in ids {
            let d = &mut self.daemons[i];
            if d.exited.is_none() && matches!(d.child.try_wait(), Ok(None)) {
                // SAFETY: kill(2) on our own child, not yet reaped (so its
                // pid is not reused).
                unsafe {
                    libc::kill(d.child.id() as libc::pid_t, sig);
                }
            }
        }
    }

    /// Stops the daemons `ids` that still run together: SIGTERM (they
    /// drain and flush), and waits until every one has exited. Each stop signal of
    /// `opie up`'s own that comes meanwhile is passed on (a daemon's second
    /// SIGTERM makes it exit at once). The first one that did not exit
    /// cleanly is the error.
    pub async fn stop(
        &mut self,
        ids: &[DaemonId],
        stops: &mut super::Stops,
    ) -> Result<(), UpError> {
        // Those already exited were reported when they did.
        let ids: Vec<DaemonId> = ids
            .iter()
            .copied()
            .filter(|&i| self.daemons[i].exited.is_none())
            .collect();
        let ids = &ids[..];
        self.signal(ids, libc::SIGTERM);
        loop {
            for &i in ids {
                let d = &mut self.daemons[i];
                if d.exited.is_none() {
                    if let Ok(Some(st)) = d.child.try_wait() {
                        d.exited = Some(st);
                    }
                }
            }
            if ids.iter().all(|&i| self.daemons[i].exited.is_some()) {
                break;
            }
            tokio::select! {
                _ = self.sigchld.recv() => {}
                _ = stops.next() => {
                    eprintln!("opie up: second stop signal: telling the daemons to exit at once");
                    self.signal(ids, libc::SIGTERM);
                }
                _ = tokio::time::sleep(STOP_NOTE_EVERY) => {
                    let waiting: Vec<String> = ids
                        .iter()
                        .map(|&i| &self.daemons[i])
                        .filter(|d| d.exited.is_none())
                        .map(|d| format!("{} ({})", d.name, d.log.display()))
                        .collect();
                    eprintln!(
                        "opie up: still waiting for {} to stop; a second Ctrl-C makes them exit at once",
                        waiting.join(", ")
                    );
                }
            }
        }
        for &i in ids {
            let d = &self.daemons[i];
            let st = d.exited.expect("waited for");
            if !st.success() {
                return Err(UpError::StopFailed {
                    name: d.name.clone(),
                    pid: d.child.id(),
                    status: describe(st),
                    log: d.log.clone(),
                });
            }
        }
        Ok(())
    }

    /// A daemon's pid.
    pub fn pid(&self, id: DaemonId) -> u32 {
        self.daemons[id].child.id()
    }
}
