//! A simulated network between the initiator and a target: a loopback
//! proxy that splits both byte streams into PDUs (with the digests the
//! session negotiated once its login is over) and asks a script what to
//! do with each: pass it, cut the connection before, after or in the
//! middle of it, corrupt its header or data digest, hold it back while
//! later ones go on, send it twice, or swallow it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use iscsi_proto::digest::Digest;
use iscsi_proto::frame::Decoder;
use iscsi_proto::pdu::BHS_LEN;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Which way a PDU goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// From the initiator to the target.
    ToTarget,
    /// From the target to the initiator.
    ToInitiator,
}

/// A PDU on the wire, as the script sees it.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    /// The connection (0 for the first accepted).
    pub conn: usize,
    /// Its way.
    pub dir: Dir,
    /// PDUs seen on the wire before this one, all connections counted.
    pub n: usize,
    /// Opcode.
    pub opcode: u8,
    /// Whether the connection was still logging in.
    pub login: bool,
    /// The data segment's length.
    pub data_len: usize,
    /// The basic header segment.
    pub header: [u8; BHS_LEN],
}

/// What the wire does with a PDU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Passes it on.
    Pass,
    /// Cuts the connection instead of passing it.
    Cut,
    /// Passes half its bytes, then cuts.
    CutMidway,
    /// Passes it, then cuts.
    PassThenCut,
    /// Passes it with its header digest wrong.
    BadHeaderDigest,
    /// Passes it with its data digest wrong.
    BadDataDigest,
    /// Passes it after this long; the PDUs after it go on meanwhile.
    Hold(Duration),
    /// Passes it twice.
    Twice,
    /// Never passes it.
    Swallow,
}

/// A script: what to do with each PDU.
pub type Script = Box<dyn FnMut(&Seen) -> Fault + Send>;

/// The proxy.
pub struct Wire {
    /// Where the initiator connects.
    pub addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    accepted: Arc<AtomicUsize>,
}

impl Wire {
    /// A wire to `target` passing everything; `digests`: whether the
    /// sessions through it use CRC32C digests (both, after the login).
    pub async fn start(target: SocketAddr, digests: bool) -> Wire {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let wire = Wire {
            addr: listener.local_addr().unwrap(),
            script: Arc::new(Mutex::new(Box::new(|_: &Seen| Fault::Pass))),
            seen: Arc::default(),
            accepted: Arc::default(),
        };
        let (script, seen, accepted) = (
            wire.script.clone(),
            wire.seen.clone(),
            wire.accepted.clone(),
        );
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let conn = accepted.fetch_add(1, Ordering::SeqCst);
                let outbound = TcpStream::connect(target).await.unwrap();
                let link = Link {
                    conn,
                    digests,
                    ffp: Arc::new(AtomicBool::new(false)),
                    script: script.clone(),
                    seen: seen.clone(),
                };
                tokio::spawn(link.run(inbound, outbound));
            }
        });
        wire
    }

    /// Puts `script` in force for the PDUs from now on.
    pub fn script(&self, script: impl FnMut(&Seen) -> Fault + Send + 'static) {
        *self.script.lock().unwrap() = Box::new(script);
    }

    /// Every PDU seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// PDUs seen so far.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// One proxied connection.
#[derive(Clone)]
struct Link {
    conn: usize,
    digests: bool,
    /// The login is over (the digests are in force).
    ffp: Arc<AtomicBool>,
    script: Arc<Mutex<Script>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// What a writer task writes.
enum Out {
    Bytes(Vec<u8>),
    Close,
}

impl Link {
    async fn run(self, inbound: TcpStream, outbound: TcpStream) {
        let (ir, iw) = inbound.into_split();
        let (or, ow) = outbound.into_split();
        let (to_initiator, w1) = writer(iw);
        let (to_target, w2) = writer(ow);
        let up = self.clone().pump(Dir::ToTarget, ir, to_target.clone());
        let down = self
            .clone()
            .pump(Dir::ToInitiator, or, to_initiator.clone());
        tokio::select! {
            () = up => {},
            () = down => {},
        }
        let _ = to_initiator.send(Out::Close);
        let _ = to_target.send(Out::Close);
        let _ = tokio::join!(w1, w2);
    }

    /// Carries one way's PDUs, as the script says, until the connection
    /// ends or is cut.
    async fn pump(self, dir: Dir, mut from: OwnedReadHalf, to: mpsc::UnboundedSender<Out>) {
        let mut buf = BytesMut::new();
        loop {
            let mut decoder = Decoder::new(usize::MAX);
            let ffp = self.ffp.load(Ordering::SeqCst);
            if ffp && self.digests {
                decoder.header_digest = Digest::Crc32c;
                decoder.data_digest = Digest::Crc32c;
            }
            let whole = decoder.needed(&buf).filter(|&n| buf.len() >= n);
            let Some(len) = whole else {
                match from.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            };
            let mut pdu = buf.split_to(len).to_vec();
            let data_len = u32::from_be_bytes([0, pdu[5], pdu[6], pdu[7]]) as usize;
            let seen = {
                let mut all = self.seen.lock().unwrap();
                let s = Seen {
                    conn: self.conn,
                    dir,
                    n: all.len(),
                    opcode: pdu[0] & 0x3f,
                    login: !ffp,
                    data_len,
                    header: pdu[..BHS_LEN].try_into().expect("a whole header"),
                };
                all.push(s);
                s
            };
            // The final Login Response (T, NSG 3, success) ends the login.
            if dir == Dir::ToInitiator
                && seen.opcode == 0x23
                && pdu[1] & 0x83 == 0x83
                && pdu[36] == 0
            {
                self.ffp.store(true, Ordering::SeqCst);
            }
            let fault = (self.script.lock().unwrap())(&seen);
            let hlen = BHS_LEN + usize::from(pdu[4]) * 4;
            match fault {
                Fault::Pass => drop(to.send(Out::Bytes(pdu))),
                Fault::Cut => return,
                Fault::CutMidway => {
                    let half = pdu.len() / 2;
                    let _ = to.send(Out::Bytes(pdu[..half].to_vec()));
                    return;
                }
                Fault::PassThenCut => {
                    let _ = to.send(Out::Bytes(pdu));
                    return;
                }
                Fault::BadHeaderDigest => {
                    pdu[hlen + 3] ^= 0xff;
                    let _ = to.send(Out::Bytes(pdu));
                }
                Fault::BadDataDigest => {
                    *pdu.last_mut().expect("a PDU") ^= 0xff;
                    let _ = to.send(Out::Bytes(pdu));
                }
                Fault::Hold(d) => {
                    let to = to.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(d).await;
                        let _ = to.send(Out::Bytes(pdu));
                    });
                }
                Fault::Twice => {
                    let _ = to.send(Out::Bytes(pdu.clone()));
                    let _ = to.send(Out::Bytes(pdu));
                }
                Fault::Swallow => {}
            }
        }
    }
}

/// A task writing what it is sent to `half`, in order, until told to close.
fn writer(mut half: OwnedWriteHalf) -> (mpsc::UnboundedSender<Out>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Some(Out::Bytes(b)) = rx.recv().await {
            if half.write_all(&b).await.is_err() {
                return;
            }
        }
    });
    (tx, task)
}
