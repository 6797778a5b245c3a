//! Multipath over real links: the head's `MultipathDevice` over two iSCSI
//! sessions, one per link, to opie's target in another network namespace,
//! under verified random I/O while links are cut with `ip link set down`.
//! Needs root (see `mpnet`).

mod mpnet;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use blockdev::SharedDevice;
use initiator_iscsi::{IscsiDevice, LoginConfig, PipelineConfig, PipelinedSession};
use multipath::{Config, MultipathDevice, Path, PathState, Transport};
use tokio::time::Instant;

use mpnet::{workload, Net, INITIATOR, IQN};

/// One session as a path.
#[derive(Debug)]
struct SessionPath {
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
fn head_runtime(net: &Net) -> tokio::runtime::Runtime {
    net.enter_head();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A multipath device over one session per portal (each its own ISID).
async fn multipath_over(portals: [std::net::SocketAddr; 2], config: Config) -> MultipathDevice {
    let mut paths: Vec<Arc<dyn Path>> = Vec::new();
    for (i, portal) in portals.into_iter().enumerate() {
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
async fn failed(dev: &MultipathDevice, path: usize) -> Instant {
    let mut states = dev.path_states();
    let _ = states
        .wait_for(|s| matches!(s[path], PathState::Failed { .. } | PathState::Dead))
        .await;
    Instant::now()
}

#[test]
fn a_cut_link_fails_over_with_no_error_and_no_mismatch() {
    let Some(net) = Net::new() else { return };
    let portals = net.start_target(mpnet::disk(1 << 15));
    let rt = head_runtime(&net);
    rt.block_on(async {
        let dev = Arc::new(multipath_over(portals, Config::default()).await);
        let until = Instant::now() + Duration::from_secs(6);
        let io = tokio::spawn(workload::run(dev.clone(), 8, 2048, until));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let down = Instant::now();
        net.set_link(0, false);
        let failed_at = tokio::time::timeout(Duration::from_secs(3), failed(&dev, 0))
            .await
            .expect("the cut path is taken out of use");
        let report = io.await.unwrap();
        let took = report.failover(down, failed_at);
        eprintln!(
            "{} I/Os; path out of use {:?} after the cut; failover {took:?}",
            report.ios,
            failed_at - down
        );
        assert_eq!(
            report.errors,
            Vec::<String>::new(),
            "errors reached the caller"
        );
        assert_eq!(
            report.mismatches,
            Vec::<String>::new(),
            "blocks read back wrong"
        );
        let paths = dev.paths();
        assert!(paths[1].stats.completed > 0);
    });
}
