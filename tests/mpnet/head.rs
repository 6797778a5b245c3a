//! The head's side: its runtime in the head namespace, one iSCSI session
//! per portal (each its own ISID) as a multipath path, and the multipath
//! device over them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use blockdev::SharedDevice;
use initiator_iscsi::{IscsiDevice, LoginConfig, PipelineConfig, PipelinedSession};
use multipath::{Config, MultipathDevice, Path, PathState, Transport};
use tokio::time::Instant;

use super::{Net, INITIATOR, IQN};

/// One session as a path: a stand-in until initiator-iscsi's `IscsiPath`.
/// Its fence only waits for the session to end, which does not stop a copy
/// of a write held in the network from landing later (see
/// `multipath_stale_write.rs`).
#[derive(Debug)]
pub struct SessionPath {
    dev: SharedDevice,
    iscsi: Arc<IscsiDevice>,
}

#[async_trait]
impl Path for SessionPath {
    fn device(&self) -> &SharedDevice {
        &self.dev
    }

    fn transport(&self) -> Transport {
        Transport::Iscsi
    }

    async fn fence(&self) {
        while !self.iscsi.session().is_closed() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The head's runtime, in the head's namespace.
pub fn head_runtime(net: &Net) -> tokio::runtime::Runtime {
    net.enter_head();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A multipath device over one session per portal (each its own ISID).
pub async fn multipath_over(portals: &[SocketAddr], config: Config) -> MultipathDevice {
    let mut paths: Vec<Arc<dyn Path>> = Vec::new();
    for (i, &portal) in portals.iter().enumerate() {
        let mut login = LoginConfig::new(INITIATOR, Some(IQN));
        login.isid = [0x80, 0, 0, 0, 0, 1 + i as u8];
        let session = PipelinedSession::connect(portal, login, PipelineConfig::default())
            .await
            .expect("log in");
        let iscsi = Arc::new(IscsiDevice::open(session, 0).await.expect("open the LU"));
        paths.push(Arc::new(SessionPath {
            dev: iscsi.clone(),
            iscsi,
        }));
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
