//! The head's lifetime: reach the ISUs and bring every array up (waiting
//! for its members), open the volumes, export them, serve until told to
//! stop, then drain the sessions, flush and close the arrays (marking them
//! clean on their members) and let go of the ISUs.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use target_iscsi::server::{Server, ServerError};
use tracing::{info, warn};

use crate::added::{AddedError, AddedIsu, AddedIsus};
use crate::backup_run::Backups;
use crate::backup_schedule;
use crate::config::{ExportConfig, HeadConfig};
use crate::control_api::HeadControl;
use crate::control_socket::ControlSocket;
use crate::events::EventLog;
use crate::export::{self, ExportError};
use crate::live::Live;
use crate::monitor;
use crate::reach::{Isus, ReachError, Reached};
use crate::startup::{self, ArrayUp, StartError};
use crate::volumes::{VolumeError, Volumes};

/// How often the monitor drives the arrays' maintenance and looks at
/// their states.
const MONITOR_EVERY: Duration = Duration::from_secs(1);
/// How long the stop waits for the clients' sessions to drain and the
/// exports to flush (I/O to members that do not answer waits for their
/// `member_timeout`).
const DRAIN_BOUND: Duration = Duration::from_secs(5);
/// How long the stop waits for a control request being answered.
const CONTROL_BOUND: Duration = Duration::from_secs(2);
/// How long closing one array (flush, clean superblocks) may take at the
/// stop.
const CLOSE_BOUND: Duration = Duration::from_secs(5);

/// Why the head stopped with an error; each variant is its own subsystem's.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// The state file of the ISUs added at run time is unreadable,
    /// corrupt or of another version (its path is named).
    #[error(transparent)]
    Added(#[from] AddedError),
    /// The ISUs' secrets could not be loaded.
    #[error(transparent)]
    Reach(#[from] ReachError),
    /// An array could not be brought up.
    #[error(transparent)]
    Start(#[from] StartError),
    /// A volume could not be opened.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// The exports could not be set up.
    #[error(transparent)]
    Export(#[from] ExportError),
    /// The iSCSI server failed (bind, or flush at shutdown).
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The control socket could not be set up.
    #[error(transparent)]
    Control(#[from] control::ServerError),
    /// The clients' sessions did not drain and flush within the bound at the
    /// stop: they were dropped. Writes acknowledged as durable (FUA, or
    /// before a SYNCHRONIZE CACHE that succeeded) are on the members; the
    /// arrays are closed as usual after it.
    #[error("sessions not drained and flushed within {0:?} at the stop")]
    Drain(Duration),
    /// An array could not be closed cleanly at the stop (it resyncs at the
    /// next assembly).
    #[error("array {array:?}: close at shutdown: {message}")]
    Close {
        /// The array.
        array: String,
        /// Why.
        message: String,
    },
}

/// Runs the head of `cfg` until `shutdown` resolves. `state_dir` gives the
/// directory for an export's persistent state (reservations). `serving` is
/// called once, with a one-line summary, when every export listens (the
/// daemon's readiness). A shutdown while members are still awaited stops
/// at once, having written nothing.
pub async fn run(
    cfg: &HeadConfig,
    state_dir: impl Fn(&ExportConfig) -> Option<PathBuf>,
    serving: impl FnOnce(&str),
    shutdown: impl Future<Output = ()>,
) -> Result<(), HeadError> {
    tokio::pin!(shutdown);
    let added = load_added(cfg)?;
    // The ISUs added at run time are surveyed and reached like configured
    // ones: a spare or a grown-in member on them is found again.
    let mut all = cfg.clone();
    all.isus.extend(added.0.iter().map(AddedIsu::config));
    let isus = Isus::new(&all)?;
    // Access is checked before waiting for anything: a bad secrets file
    // is reported at once.
    export::access(cfg)?;
    let control = ControlSocket::start(cfg)?;
    let mut up: Vec<ArrayUp> = Vec::new();
    let brought = tokio::select! {
        r = startup::bring_up(&isus, &cfg.arrays, &mut up) => Some(r),
        _ = &mut shutdown => None,
    };
    match brought {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            stop_control(control).await;
            return Err(e.into());
        }
        None => {
            let waited: Vec<&str> = cfg
                .arrays
                .iter()
                .filter(|a| !up.iter().any(|u| u.name == a.name))
                .map(|a| a.name.as_str())
                .collect();
            info!(arrays = ?waited, "stopped while waiting for members");
            stop_control(control).await;
            return close_all(up).await;
        }
    }
    let mut reached_since = Vec::new();
    let result = serve(
        cfg,
        added,
        &up,
        ServeHooks { state_dir, serving },
        shutdown,
        &control,
        &mut reached_since,
    )
    .await;
    stop_control(control).await;
    let closed = close_all(up).await;
    // Disks reached while serving (added ISUs, replacements, grown-in
    // members): logged out of once the arrays above them are closed.
    for r in reached_since {
        let unclean = r.log_out().await;
        if !unclean.is_empty() {
            warn!(disk = %r.device_identity(), portals = ?unclean, "sessions not logged out cleanly (no answer): dropped");
        }
    }
    result?;
    closed
}

/// The ISUs added at run time, from the data directory's state file. An
/// entry named like an ISU of `head.toml` is dropped (`head.toml` wins: it
/// is how an added ISU is made part of the config), with a warning, and the
/// file rewritten without it.
fn load_added(cfg: &HeadConfig) -> Result<(Vec<AddedIsu>, AddedIsus), AddedError> {
    let store = AddedIsus::in_dir(&cfg.data_dir);
    let mut added = store.load()?;
    let before = added.len();
    added.retain(|a| {
        let clash = cfg.isu(&a.name).is_some();
        if clash {
            warn!(isu = %a.name, config = %cfg.source.display(), state = %store.path().display(), "isu added at run time is configured in head.toml too: head.toml's is used, the added one forgotten");
        }
        !clash
    });
    if added.len() != before {
        store.save(&added)?;
    }
    if !added.is_empty() {
        info!(state = %store.path().display(), isus = ?added.iter().map(|a| &a.name).collect::<Vec<_>>(), "isus added at run time");
    }
    Ok((added, store))
}

/// What the daemon around the head gives [`serve`]: where an export keeps
/// its state, and whom to tell once every export listens.
struct ServeHooks<S, R> {
    state_dir: S,
    serving: R,
}

async fn serve(
    cfg: &HeadConfig,
    added: (Vec<AddedIsu>, AddedIsus),
    up: &[ArrayUp],
    hooks: ServeHooks<impl Fn(&ExportConfig) -> Option<PathBuf>, impl FnOnce(&str)>,
    shutdown: impl Future<Output = ()>,
    control: &ControlSocket,
    reached_since: &mut Vec<Reached>,
) -> Result<(), HeadError> {
    let volumes = Volumes::open(up, &cfg.volumes).await?;
    let mut targets = Vec::new();
    for e in &cfg.exports {
        let v = cfg
            .volumes
            .iter()
            .find(|v| v.name == e.volume)
            .expect("the config checks export volumes");
        let device: blockdev::SharedDevice = volumes.device(v)?;
        info!(
            export = %e.iqn,
            volume = %v.name,
            identity = %device.identity(),
            blocks = device.geometry().num_blocks,
            block_size = device.geometry().block_size,
            "exporting"
        );
        targets.push(export::target(cfg, e, device, (hooks.state_dir)(e))?);
    }
    let server = Server::bind(export::server_config(cfg, targets)?).await?;
    for a in server.local_addrs() {
        info!(portal = %a, "listening");
    }
    info!(
        arrays = up.len(),
        exports = cfg.exports.len(),
        "head serving"
    );
    (hooks.serving)(&format!(
        "serving {} exports of {} arrays on {}",
        cfg.exports.len(),
        up.len(),
        server
            .local_addrs()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    ));
    // The monitor drives the arrays' maintenance from here on.
    for a in up {
        a.maintenance.abort();
    }
    let live = Arc::new(Live::new(
        cfg,
        added,
        up,
        volumes.pools(),
        EventLog::default(),
    ));
    let at_start = live.disks().len();
    let monitor = tokio::spawn(monitor::run(live.clone(), control.tasks(), MONITOR_EVERY));
    let backups = Arc::new(Backups::new(live.clone()));
    let scheduler = tokio::spawn(backup_schedule::run(backups.clone(), control.tasks()));
    control.ready(Arc::new(HeadControl::new(
        live.clone(),
        control.tasks(),
        backups,
    )));
    // Every step of the stop is bounded: the drain here, then each array's
    // close and logouts (close_all).
    let stopping = Arc::new(tokio::sync::Notify::new());
    let signalled = {
        let stopping = stopping.clone();
        async move {
            shutdown.await;
            stopping.notify_one();
        }
    };
    let result = tokio::select! {
        r = server.run(signalled) => r.map_err(HeadError::from),
        () = async {
            stopping.notified().await;
            tokio::time::sleep(DRAIN_BOUND).await;
        } => {
            warn!(bound = ?DRAIN_BOUND, "sessions not drained and flushed within the bound (members not answering?): dropped; what they had not acknowledged is lost to them, what the arrays hold unflushed is replayed or resynced at the next assembly");
            Err(HeadError::Drain(DRAIN_BOUND))
        }
    };
    monitor.abort();
    scheduler.abort();
    reached_since.extend(live.disks().into_iter().skip(at_start).map(|d| d.reached));
    if result.is_ok() {
        close_pools(&volumes).await;
    }
    result
}

/// Closes every array's volume pool once the exports have drained: each
/// volume's changed-block map is written whole and marked clean, so the
/// next incremental backup after this restart reads only what changed.
/// A pool not closed (bounded by [`CLOSE_BOUND`]) is no data at risk: its
/// maps open all dirty and the next backup reads those volumes whole.
async fn close_pools(volumes: &Volumes) {
    for (array, pool) in volumes.pools() {
        match tokio::time::timeout(CLOSE_BOUND, pool.close()).await {
            Ok(Ok(())) => info!(array = %array, "volume pool closed: changed-block maps kept"),
            Ok(Err(e)) => {
                warn!(array = %array, error = %e, "volume pool not closed: the next backup of its volumes reads them whole")
            }
            Err(_) => {
                warn!(array = %array, bound = ?CLOSE_BOUND, "volume pool not closed within the bound: the next backup of its volumes reads them whole")
            }
        }
    }
}

/// Stops the control socket, waiting at most [`CONTROL_BOUND`] for a
/// request being answered.
async fn stop_control(control: ControlSocket) {
    if tokio::time::timeout(CONTROL_BOUND, control.stop())
        .await
        .is_err()
    {
        warn!(bound = ?CONTROL_BOUND, "control socket request still running at the stop: dropped");
    }
}

/// Flushes and closes every array (clean on its members), stops its
/// maintenance, and logs out of the ISUs. Each close is bounded by
/// [`CLOSE_BOUND`] and each disk's logouts by
/// [`crate::reach::LOGOUT_BOUND`]: members that do not answer are given up
/// on and named in the log; the array is then not marked clean, and the
/// next assembly replays its journal and resyncs.
async fn close_all(up: Vec<ArrayUp>) -> Result<(), HeadError> {
    let mut first = None;
    for a in up {
        a.maintenance.abort();
        let message = match tokio::time::timeout(CLOSE_BOUND, a.array.close()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!(
                "not closed within {CLOSE_BOUND:?} (members not answering)"
            )),
        };
        match message {
            None => info!(array = %a.name, "array flushed and closed clean"),
            Some(message) => {
                warn!(array = %a.name, error = %message, "array not closed clean: the next assembly replays its journal and resyncs");
                first.get_or_insert(HeadError::Close {
                    array: a.name.clone(),
                    message,
                });
            }
        }
        let mut unclean = Vec::new();
        for r in &a.reached {
            let u = r.log_out().await;
            if !u.is_empty() {
                unclean.push(format!("{} via {u:?}", r.device_identity()));
            }
        }
        if unclean.is_empty() {
            info!(array = %a.name, "logged out of its members");
        } else {
            warn!(array = %a.name, "sessions dropped without a logout (no answer): {}", unclean.join("; "));
        }
    }
    first.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::added::Role;

    #[test]
    fn an_added_isu_configured_in_head_toml_too_is_dropped_from_the_state_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = HeadConfig::parse(
            "[head]\ninitiator = \"iqn.2026-01.org.opie:head\"\nlisten = [\"127.0.0.1:3260\"]\n\n[[isu]]\nname = \"isu1\"\nportals = [\"127.0.0.1:3261\"]\n",
            Path::new("head.toml"),
        )
        .unwrap();
        cfg.data_dir = dir.path().to_path_buf();
        let added = |name: &str| AddedIsu {
            name: name.into(),
            portals: vec!["127.0.0.1:3265".parse().unwrap()],
            aoe: Vec::new(),
            role: Role::Unassigned,
            array: None,
        };
        let store = AddedIsus::in_dir(dir.path());
        store.save(&[added("isu1"), added("isu5")]).unwrap();
        let (kept, _) = load_added(&cfg).unwrap();
        assert_eq!(kept, [added("isu5")]);
        assert_eq!(store.load().unwrap(), [added("isu5")]);
    }
}
