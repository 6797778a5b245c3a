//! The head's lifetime: reach the ISUs and bring every array up (waiting
//! for its members), open the volumes, export them, serve until told to
//! stop, then drain the sessions, flush and close the arrays (marking them
//! clean on their members) and let go of the ISUs.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use raid::MemberState;
use target_iscsi::server::{Server, ServerError};
use tracing::{info, warn};

use crate::config::{ExportConfig, HeadConfig};
use crate::export::{self, ExportError};
use crate::reach::{Isus, ReachError};
use crate::startup::{self, ArrayUp, StartError};
use crate::volumes::{VolumeError, Volumes};

/// How often array states are looked at for the log.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Why the head stopped with an error; each variant is its own subsystem's.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
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
/// directory for an export's persistent state (reservations). A shutdown
/// while members are still awaited stops at once, having written nothing.
pub async fn run(
    cfg: &HeadConfig,
    state_dir: impl Fn(&ExportConfig) -> Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), HeadError> {
    tokio::pin!(shutdown);
    let isus = Isus::new(cfg)?;
    // Access is checked before waiting for anything: a bad secrets file
    // is reported at once.
    export::access(cfg)?;
    let mut up: Vec<ArrayUp> = Vec::new();
    for a in &cfg.arrays {
        tokio::select! {
            r = startup::bring_up(&isus, a) => up.push(r?),
            _ = &mut shutdown => {
                info!(array = %a.name, "stopped while waiting for members");
                return close_all(up).await;
            }
        }
    }
    let result = serve(cfg, &up, state_dir, shutdown).await;
    let closed = close_all(up).await;
    result?;
    closed
}

async fn serve(
    cfg: &HeadConfig,
    up: &[ArrayUp],
    state_dir: impl Fn(&ExportConfig) -> Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
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
        targets.push(export::target(cfg, e, device, state_dir(e))?);
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
    let watch = tokio::spawn(watch_arrays(
        up.iter()
            .map(|a| (a.name.clone(), a.array.clone()))
            .collect(),
    ));
    let result = server.run(shutdown).await;
    watch.abort();
    Ok(result?)
}

/// Logs every change of an array's member states (degraded, rebuilding,
/// back in sync).
async fn watch_arrays(arrays: Vec<(String, raid::RaidArray)>) {
    let mut last: Vec<Option<Vec<MemberState>>> = vec![None; arrays.len()];
    loop {
        for ((name, array), last) in arrays.iter().zip(last.iter_mut()) {
            let now = array.member_states();
            let kinds = |s: &[MemberState]| -> Vec<String> {
                s.iter()
                    .map(|m| match m {
                        MemberState::InSync => "in-sync".to_string(),
                        MemberState::Rebuilding => "rebuilding".to_string(),
                        MemberState::Faulty { .. } => "failed".to_string(),
                        MemberState::Suspended { .. } => "suspended".to_string(),
                    })
                    .collect()
            };
            if last.as_deref().map(kinds) != Some(kinds(&now)) {
                let members = kinds(&now).join(", ");
                if array.degraded() {
                    warn!(array = %name, %members, "array degraded");
                } else {
                    info!(array = %name, %members, "array healthy");
                }
                *last = Some(now);
            }
        }
        tokio::time::sleep(WATCH_EVERY).await;
    }
}

/// Flushes and closes every array (clean on its members), stops its
/// maintenance, and logs out of the ISUs.
async fn close_all(up: Vec<ArrayUp>) -> Result<(), HeadError> {
    let mut first = None;
    for a in up {
        a.maintenance.abort();
        match a.array.close().await {
            Ok(()) => info!(array = %a.name, "array flushed and closed clean"),
            Err(e) => {
                warn!(array = %a.name, error = %e, "array not closed clean");
                first.get_or_insert(HeadError::Close {
                    array: a.name.clone(),
                    message: e.to_string(),
                });
            }
        }
        for r in &a.reached {
            r.log_out().await;
        }
        info!(array = %a.name, "logged out of its members");
    }
    first.map_or(Ok(()), Err)
}
