//! Connection loss under verified I/O: a proxy between the initiator and
//! opie's target in-process cuts every connection while writers run; the
//! session is reinstated with the same ISID, unanswered commands go again,
//! and every caller sees its I/O done and every block reads back. A target
//! that cannot be reached again ends in a typed error, not a hang.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blockdev::{BlockDevice, DeviceIdentity, ErrorClass, MemDevice};
use initiator_iscsi::{IscsiDevice, LoginConfig, PipelineConfig, PipelinedSession};
use target_iscsi::access::Access;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

mod common;
use common::{verified_writers, INITIATOR, IQN};

/// A TCP proxy that can cut its connections and refuse new ones.
struct Proxy {
    addr: SocketAddr,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accepted: Arc<AtomicUsize>,
    refusing: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accepted = Arc::new(AtomicUsize::new(0));
        let refusing = Arc::new(AtomicBool::new(false));
        let (l, a, r) = (links.clone(), accepted.clone(), refusing.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if r.load(Ordering::SeqCst) {
                    continue;
                }
                a.fetch_add(1, Ordering::SeqCst);
                l.lock().unwrap().push(tokio::spawn(async move {
                    let mut outbound = TcpStream::connect(target).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }));
            }
        });
        Proxy {
            addr,
            links,
            accepted,
            refusing,
        }
    }

    /// Drops every connection through the proxy, both ways.
    fn cut(&self) {
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }
}

async fn device() -> (Arc<IscsiDevice>, Proxy, tokio::sync::oneshot::Sender<()>) {
    let disk = Arc::new(MemDevice::new(512, 1 << 14, DeviceIdentity::from_name("r")));
    let (target, stop) = common::start(disk, Access::default()).await;
    let proxy = Proxy::start(target).await;
    let login = LoginConfig::new(INITIATOR, Some(IQN));
    let session = PipelinedSession::connect(proxy.addr, login, PipelineConfig::default())
        .await
        .unwrap();
    let dev = Arc::new(IscsiDevice::open(session, 0).await.unwrap());
    (dev, proxy, stop)
}

#[tokio::test]
async fn cut_connections_are_invisible_to_callers() {
    let (dev, proxy, _stop) = device().await;
    let writers = verified_writers(dev.clone(), 8, 64, 32, 20);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        proxy.cut();
    }
    for w in writers {
        w.await.unwrap();
    }
    assert!(
        proxy.accepted.load(Ordering::SeqCst) >= 2,
        "the session was reinstated"
    );
}

#[tokio::test]
async fn a_target_out_of_reach_ends_in_a_typed_error() {
    let (dev, proxy, _stop) = device().await;
    dev.read(0, 1).await.unwrap();
    proxy.refusing.store(true, Ordering::SeqCst);
    proxy.cut();
    let e = dev.read(0, 1).await.unwrap_err();
    assert!(
        matches!(
            e.class(),
            ErrorClass::RetryElsewhere | ErrorClass::OutcomeUnknown
        ),
        "{e:?}"
    );
    assert!(dev.session().is_closed());
}
