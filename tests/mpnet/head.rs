//! The head's side: its runtime in the head namespace, one iSCSI session
//! per portal (each its own ISID) as a multipath path (`IscsiPath`), and
//! the multipath device over them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use initiator_iscsi::{
    FailoverConfig, IscsiDevice, IscsiPath, LoginConfig, PipelineConfig, PipelinedSession,
    ReinstateConfig,
};
use multipath::{Config, MultipathDevice, Path, PathState};
use tokio::time::Instant;

use super::{Net, INITIATOR, IQN};

/// The head's runtime, in the head's namespace.
pub fn head_runtime(net: &Net) -> tokio::runtime::Runtime {
    net.enter_head();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A path's session keeps logging in again while its link is down, as a
/// head's must (it is one of several paths; multipath decides when to give
/// up on I/O, not the session).
const REINSTATE: ReinstateConfig = ReinstateConfig {
    attempts: u32::MAX,
    delay: Duration::from_millis(100),
};

/// A multipath device over one `IscsiPath` per portal (each its own ISID,
/// failing fast while it is reinstated).
pub async fn multipath_over(portals: &[SocketAddr], config: Config) -> MultipathDevice {
    let mut paths: Vec<Arc<dyn Path>> = Vec::new();
    for (i, &portal) in portals.iter().enumerate() {
        let mut login = LoginConfig::new(INITIATOR, Some(IQN));
        login.isid = [0x80, 0, 0, 0, 0, 1 + i as u8];
        let session = PipelinedSession::connect_failover(
            portal,
            login,
            PipelineConfig::default(),
            REINSTATE,
            FailoverConfig::multipath(),
        )
        .await
        .expect("log in");
        let lu = IscsiDevice::open(session, 0).await.expect("open the LU");
        paths.push(Arc::new(IscsiPath::new(lu)));
    }
    MultipathDevice::new(paths, config).unwrap()
}

/// When path `path` is next seen failed.
pub async fn failed(dev: &MultipathDevice, path: usize) -> Instant {
    let mut states = dev.path_states();
    let _ = states
        .wait_for(|s| matches!(s[path], PathState::Failed { .. } | PathState::Dead))
        .await;
    Instant::now()
}
