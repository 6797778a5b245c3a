//! A TCP proxy in front of one portal that can hold what the head sends on
//! its connections of the moment (their data stays in the proxy, the
//! connection to the target stays open, as in a congested switch or a
//! stuck NIC queue), refuse new connections (the path is dead), and later
//! release the held data to the target, late.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The proxy's controls.
#[derive(Debug)]
pub struct HoldingProxy {
    /// Where the head connects.
    pub addr: SocketAddr,
    shared: Arc<Controls>,
}

#[derive(Debug, Default)]
struct Controls {
    /// Connections accepted so far; those numbered below `held_below` are
    /// held.
    accepted: AtomicU64,
    held_below: AtomicU64,
    refusing: AtomicBool,
    /// Bumped to release every held byte.
    release: watch::Sender<u64>,
}

impl HoldingProxy {
    /// A proxy on a free port of `listen`'s address, to `target`.
    pub async fn start(listen: std::net::IpAddr, target: SocketAddr) -> HoldingProxy {
        let listener = TcpListener::bind(SocketAddr::new(listen, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Controls::default());
        let c = shared.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if c.refusing.load(Ordering::SeqCst) {
                    continue;
                }
                let id = c.accepted.fetch_add(1, Ordering::SeqCst);
                let c = c.clone();
                tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(target).await {
                        link(id, inbound, outbound, c).await;
                    }
                });
            }
        });
        HoldingProxy { addr, shared }
    }

    /// Holds from now on what the head sends on the connections open now.
    pub fn hold(&self) {
        let n = self.shared.accepted.load(Ordering::SeqCst);
        self.shared.held_below.store(n, Ordering::SeqCst);
    }

    /// Refuses (drops) new connections, or takes them again.
    pub fn refuse(&self, refusing: bool) {
        self.shared.refusing.store(refusing, Ordering::SeqCst);
    }

    /// Sends everything held to the target now, on the connections it was
    /// held from (if the target has not closed them).
    pub fn release(&self) {
        self.shared.release.send_modify(|g| *g += 1);
    }
}

async fn link(id: u64, inbound: TcpStream, outbound: TcpStream, c: Arc<Controls>) {
    let (mut in_r, mut in_w) = inbound.into_split();
    let (mut out_r, out_w) = outbound.into_split();
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut out_r, &mut in_w).await;
    });
    let out_w = Arc::new(tokio::sync::Mutex::new(out_w));
    let held: Arc<Mutex<Vec<u8>>> = Arc::default();
    let mut release = c.release.subscribe();
    // The release of held data outlives the head's side of the connection.
    {
        let (out_w, held) = (out_w.clone(), held.clone());
        tokio::spawn(async move {
            while release.changed().await.is_ok() {
                let data = std::mem::take(&mut *held.lock().unwrap());
                if !data.is_empty() {
                    let _ = send(&out_w, &data).await;
                }
            }
        });
    }
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match in_r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if id < c.held_below.load(Ordering::SeqCst) {
            held.lock().unwrap().extend_from_slice(&buf[..n]);
        } else if send(&out_w, &buf[..n]).await.is_err() {
            break;
        }
    }
    // A held connection stays open towards the target until released.
    if id >= c.held_below.load(Ordering::SeqCst) {
        let _ = out_w.lock().await.shutdown().await;
    }
}

async fn send(w: &tokio::sync::Mutex<OwnedWriteHalf>, data: &[u8]) -> std::io::Result<()> {
    w.lock().await.write_all(data).await
}
