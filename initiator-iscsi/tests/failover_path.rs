//! An iSCSI session as one path of a multipath device (`IscsiPath`): when
//! its link goes silent, commands come back within the keepalive's bound
//! with an error multipath retries elsewhere, instead of waiting through
//! the reinstatement; its fence resolves only once the session has been
//! reinstated (the target ended the old session's tasks).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blockdev::{DeviceIdentity, ErrorClass, MemDevice, WriteFlags};
use initiator_iscsi::{
    FailoverConfig, IscsiDevice, IscsiPath, KeepaliveConfig, LoginConfig, PipelineConfig,
    PipelinedSession, ReinstateConfig,
};
use multipath::{AluaState, Path};
use target_iscsi::access::Access;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod common;
use common::{INITIATOR, IQN};

/// A TCP proxy whose links can go silent (bytes held, sockets open: a
/// pulled cable, not a reset), and which can refuse new connections.
struct SilentProxy {
    addr: SocketAddr,
    /// One flag per link made: set, the link forwards nothing more.
    links: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
    refusing: Arc<AtomicBool>,
}

impl SilentProxy {
    async fn start(target: SocketAddr) -> SilentProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let links: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let refusing = Arc::new(AtomicBool::new(false));
        let (l, r) = (links.clone(), refusing.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if r.load(Ordering::SeqCst) {
                    continue;
                }
                let silent = Arc::new(AtomicBool::new(false));
                l.lock().unwrap().push(silent.clone());
                let outbound = TcpStream::connect(target).await.unwrap();
                let (ir, iw) = inbound.into_split();
                let (or, ow) = outbound.into_split();
                tokio::spawn(forward(ir, ow, silent.clone()));
                tokio::spawn(forward(or, iw, silent));
            }
        });
        SilentProxy {
            addr,
            links,
            refusing,
        }
    }

    /// Every link made so far goes silent both ways.
    fn silence(&self) {
        for s in self.links.lock().unwrap().iter() {
            s.store(true, Ordering::SeqCst);
        }
    }
}

/// Copies one way until the link goes silent (then holds what it read).
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    silent: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while silent.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

const KEEPALIVE: KeepaliveConfig = KeepaliveConfig {
    interval: Duration::from_millis(500),
    timeout: Duration::from_millis(500),
};

async fn path(
    failover: FailoverConfig,
) -> (IscsiPath, SilentProxy, tokio::sync::oneshot::Sender<()>) {
    let disk = Arc::new(MemDevice::new(512, 1 << 12, DeviceIdentity::from_name("p")));
    let (target, stop) = common::start(disk, Access::default()).await;
    let proxy = SilentProxy::start(target).await;
    let login = LoginConfig::new(INITIATOR, Some(IQN));
    let cfg = PipelineConfig {
        keepalive: KEEPALIVE,
        ..PipelineConfig::default()
    };
    let reinstate = ReinstateConfig {
        attempts: 1000,
        delay: Duration::from_millis(50),
    };
    let session = PipelinedSession::connect_failover(proxy.addr, login, cfg, reinstate, failover)
        .await
        .unwrap();
    let dev = IscsiDevice::open(session, 0).await.unwrap();
    (IscsiPath::new(dev), proxy, stop)
}

#[tokio::test]
async fn a_silent_link_fails_fast_and_the_fence_waits_for_the_reinstatement() {
    let (path, proxy, _stop) = path(FailoverConfig::multipath()).await;
    // opie's target reports TPGS: the check reads the port group's state.
    assert_eq!(path.check().await.unwrap(), AluaState::ActiveOptimized);
    let dev = path.device().clone();
    let block = vec![7u8; 512];
    dev.write(3, block.clone().into(), WriteFlags::default())
        .await
        .unwrap();

    // The cable is pulled; the session cannot log in again meanwhile.
    proxy.refusing.store(true, Ordering::SeqCst);
    proxy.silence();
    let cut = Instant::now();
    let in_flight = dev
        .write(3, vec![8u8; 512].into(), WriteFlags::default())
        .await
        .unwrap_err();
    let detected = cut.elapsed();
    // Sent before the loss was seen: its outcome is unknown, which
    // multipath retries on another path and fences on this one.
    assert_eq!(
        in_flight.class(),
        ErrorClass::OutcomeUnknown,
        "{in_flight:?}"
    );
    let bound = KEEPALIVE.interval + KEEPALIVE.timeout;
    assert!(
        detected < bound + Duration::from_secs(1),
        "the loss came back after {detected:?}, keepalive bound {bound:?}"
    );
    // While the session is reinstated, commands are not held: path down.
    let asked = Instant::now();
    let e = dev.read(0, 1).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::RetryElsewhere, "{e:?}");
    assert!(
        asked.elapsed() < Duration::from_millis(500),
        "{:?}",
        asked.elapsed()
    );
    assert!(
        path.check().await.is_err(),
        "the checker sees the path down"
    );

    // The write sent before the loss may still land: not fenced yet.
    assert!(path.iscsi().session().in_doubt().lost_since.is_some());
    let fence = tokio::time::timeout(Duration::from_secs(1), path.fence()).await;
    assert!(fence.is_err(), "fenced before the session was reinstated");

    // The target can be reached again: the session is reinstated (same
    // ISID), which ends the old session's tasks: the fence resolves.
    proxy.refusing.store(false, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(10), path.fence())
        .await
        .expect("fenced once the session was reinstated");
    assert_eq!(path.iscsi().session().in_doubt().lost_since, None);
    // The write given up was not sent again by the session: the block holds
    // what was written before the loss, or the lost write if it landed.
    let now = dev.read(3, 1).await.unwrap();
    assert!(now[..] == block[..] || now[..] == [8u8; 512][..]);
    assert_eq!(path.check().await.unwrap(), AluaState::ActiveOptimized);
}

#[tokio::test]
async fn alone_a_session_holds_its_commands_through_the_reinstatement() {
    let (path, proxy, _stop) = path(FailoverConfig::default()).await;
    let dev = path.device().clone();
    proxy.refusing.store(true, Ordering::SeqCst);
    proxy.silence();
    let write = tokio::spawn({
        let dev = dev.clone();
        async move {
            dev.write(5, vec![9u8; 512].into(), WriteFlags::default())
                .await
        }
    });
    tokio::time::sleep(KEEPALIVE.interval + KEEPALIVE.timeout + Duration::from_secs(1)).await;
    assert!(!write.is_finished(), "held while the session is reinstated");
    proxy.refusing.store(false, Ordering::SeqCst);
    write.await.unwrap().unwrap();
    assert_eq!(&dev.read(5, 1).await.unwrap()[..], &[9u8; 512][..]);
}

#[tokio::test]
async fn a_quiet_path_is_fenced_at_once() {
    let (path, _proxy, _stop) = path(FailoverConfig::multipath()).await;
    path.device().read(0, 1).await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), path.fence())
        .await
        .expect("nothing unanswered: fenced at once");
}
