//! The target's asynchronous messages, scripted: a proxy in front of
//! opie's target cuts the target's stream into whole PDUs and slips an
//! Asynchronous Message in between two of them, as a target would send it.
//! Event 1 (logout requested) must end in a logout and a new login within
//! Parameter3 seconds, with every command done and nothing lost; not in a
//! dropped connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::{BlockDevice, DeviceIdentity, MemDevice, WriteFlags};
use bytes::{Bytes, BytesMut};
use initiator_iscsi::{IscsiDevice, LoginConfig, PipelineConfig, PipelinedSession};
use iscsi_proto::digest::Digest;
use iscsi_proto::frame::{Decoder, OutPdu};
use iscsi_proto::pdu::{AsyncMessage, Bhs, Sns};
use target_iscsi::access::Access;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

mod common;
use common::{INITIATOR, IQN};

/// Opcode of a Logout Request (byte 0, without the immediate bit).
const LOGOUT_REQUEST: u8 = 0x06;
/// Opcode of a SCSI Response.
const SCSI_RESPONSE: u8 = 0x21;

/// Where the newest connection's async messages (event, parameters) go.
type Injector = Arc<std::sync::Mutex<Option<mpsc::UnboundedSender<(u8, [u16; 3])>>>>;

/// The proxy: counts connections and logouts, and injects async messages
/// into the newest connection.
struct Scripted {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    logged_out: Arc<AtomicBool>,
    inject: Injector,
}

impl Scripted {
    async fn start(target: SocketAddr) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = Scripted {
            addr: listener.local_addr().unwrap(),
            accepted: Arc::default(),
            logged_out: Arc::default(),
            inject: Arc::default(),
        };
        let (accepted, logged_out, inject) =
            (s.accepted.clone(), s.logged_out.clone(), s.inject.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let outbound = TcpStream::connect(target).await.unwrap();
                let (ir, iw) = inbound.into_split();
                let (or, ow) = outbound.into_split();
                let (tx, rx) = mpsc::unbounded_channel();
                *inject.lock().unwrap() = Some(tx);
                tokio::spawn(from_initiator(ir, ow, logged_out.clone()));
                tokio::spawn(from_target(or, iw, rx));
            }
        });
        s
    }

    /// Sends async event `event` with `params` to the initiator.
    fn inject(&self, event: u8, params: [u16; 3]) {
        let tx = self.inject.lock().unwrap().clone().unwrap();
        tx.send((event, params)).unwrap();
    }
}

/// Whole PDUs off the front of `buf`, as they came.
fn whole_pdus(buf: &mut BytesMut) -> Vec<Bytes> {
    let decoder = Decoder::new(1 << 24);
    let mut out = Vec::new();
    while let Some(n) = decoder.needed(buf).filter(|&n| buf.len() >= n) {
        out.push(buf.split_to(n).freeze());
    }
    out
}

/// Initiator to target: forwarded, Logout Requests noted.
async fn from_initiator(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    logged_out: Arc<AtomicBool>,
) {
    let mut buf = BytesMut::new();
    loop {
        if from.read_buf(&mut buf).await.unwrap_or(0) == 0 {
            return;
        }
        for pdu in whole_pdus(&mut buf) {
            if pdu[0] & 0x3f == LOGOUT_REQUEST {
                logged_out.store(true, Ordering::SeqCst);
            }
            if to.write_all(&pdu).await.is_err() {
                return;
            }
        }
    }
}

/// Target to initiator: forwarded a whole PDU at a time, with the async
/// messages asked for slipped in between (numbered after the last status).
async fn from_target(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut inject: mpsc::UnboundedReceiver<(u8, [u16; 3])>,
) {
    let mut buf = BytesMut::new();
    let mut sns = Sns::default();
    loop {
        tokio::select! {
            n = from.read_buf(&mut buf) => {
                if n.unwrap_or(0) == 0 {
                    return;
                }
                for pdu in whole_pdus(&mut buf) {
                    if pdu[0] & 0x3f == SCSI_RESPONSE {
                        let at = |i: usize| u32::from_be_bytes(pdu[i..i + 4].try_into().unwrap());
                        sns = Sns { stat_sn: at(24), exp_cmd_sn: at(28), max_cmd_sn: at(32) };
                    }
                    if to.write_all(&pdu).await.is_err() {
                        return;
                    }
                }
            }
            Some((event, params)) = inject.recv() => {
                // Same StatSN as the last status: the initiator's count
                // stays where the target's is.
                let m = AsyncMessage { event, params, sns, ..Default::default() };
                let pdu = OutPdu::new(&Bhs::AsyncMessage(m), Bytes::new(), Digest::None, Digest::None);
                if to.write_all(&pdu.to_vec()).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[tokio::test]
async fn a_requested_logout_is_a_clean_logout_and_a_new_login_in_time() {
    let disk = Arc::new(MemDevice::new(512, 1 << 12, DeviceIdentity::from_name("a")));
    let (target, _stop) = common::start(disk, Access::default()).await;
    let proxy = Scripted::start(target).await;
    let login = LoginConfig::new(INITIATOR, Some(IQN));
    let session = PipelinedSession::connect(proxy.addr, login, PipelineConfig::default())
        .await
        .unwrap();
    let dev = Arc::new(IscsiDevice::open(session, 0).await.unwrap());
    dev.write(0, vec![1u8; 512].into(), WriteFlags::default())
        .await
        .unwrap();

    let asked = Instant::now();
    proxy.inject(1, [0, 0, 4]);
    // Callers keep going meanwhile: held while the session logs out and in.
    let writers: Vec<_> = (0..8u64)
        .map(|i| {
            let dev = dev.clone();
            tokio::spawn(async move {
                for g in 0..10u8 {
                    let lba = i * 16 + u64::from(g);
                    dev.write(lba, vec![g + 1; 512].into(), WriteFlags::default())
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    while proxy.accepted.load(Ordering::SeqCst) < 2 {
        assert!(
            asked.elapsed() < Duration::from_secs(4),
            "no new login within Parameter3"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        proxy.logged_out.load(Ordering::SeqCst),
        "logged out, not dropped"
    );
    for i in 0..8u64 {
        for g in 0..10u8 {
            let back = dev.read(i * 16 + u64::from(g), 1).await.unwrap();
            assert_eq!(&back[..], &[g + 1; 512][..]);
        }
    }
}
