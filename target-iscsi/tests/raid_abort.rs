//! Task termination over a RAID5 volume: the LU is a `raid::RaidArray` over
//! three fault-injecting members, and one member holds the writes of a
//! WRITE. ABORT TASK, LUN RESET, or the loss of the connection (and a new
//! login with the same ISID) cuts it short; the answer (the TMF response, or
//! the new session's first command) must come only after the held member
//! writes were released and have landed, and newer data written into the
//! same range afterwards must be what the volume keeps, with every block
//! and parity of the array consistent.
//!
//! A compact raw iSCSI client on `iscsi_proto`'s codec, as `wire.rs` uses.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use blockdev::{BlockDevice, DeviceIdentity, FaultyDevice, MemDevice, SharedDevice};
use bytes::{Bytes, BytesMut};
use iscsi_proto::digest::Digest;
use iscsi_proto::frame::{Decoder, InPdu, OutPdu};
use iscsi_proto::pdu::{self, Bhs, LoginRequest, ScsiCommand, Stage, TmfRequest};
use iscsi_proto::text::TextList;
use raid::{Config, RaidArray, SystemClock};
use scsi_disk::{LuConfig, ScsiTarget};
use target_iscsi::server::{Portal, Server, ServerConfig, TargetConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const IQN: &str = "iqn.2026-01.org.opie:raid-abort";
const BS: usize = 512;
/// Blocks per chunk: a row of the 3-member array holds 32 data blocks.
const CHUNK: u32 = 16;

/// A RAID5 volume over three held-write-capable members, served on loopback.
struct Rig {
    array: RaidArray,
    members: Vec<Arc<FaultyDevice>>,
    addr: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Rig {
    async fn start() -> Rig {
        let members: Vec<Arc<FaultyDevice>> = (0..3)
            .map(|i| {
                let id = DeviceIdentity::from_name(&format!("raid-abort-{i}"));
                let mem = MemDevice::new(BS as u32, 8192, id);
                Arc::new(FaultyDevice::new(Arc::new(mem), i))
            })
            .collect();
        let cfg = Config {
            chunk_blocks: CHUNK,
            ..Config::default()
        };
        let shared = members.iter().map(|m| m.clone() as SharedDevice).collect();
        let array = RaidArray::create(shared, vec![], cfg, Arc::new(SystemClock::new()))
            .await
            .expect("create the array");
        let lu = LuConfig {
            device: Arc::new(array.clone()),
            read_only: false,
            state_path: None,
        };
        let scsi = ScsiTarget::new(IQN, vec![(0, lu)], vec![]).unwrap();
        let cfg = ServerConfig {
            portals: vec![Portal {
                listen: "127.0.0.1:0".parse().unwrap(),
                advertise: None,
                tpgt: 1,
            }],
            targets: vec![TargetConfig {
                iqn: IQN.into(),
                alias: None,
                scsi,
                portals: None,
            }],
            ..ServerConfig::default()
        };
        let server = Server::bind(cfg).await.unwrap();
        let addr = server.local_addrs()[0];
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Rig {
            array,
            members,
            addr,
            _stop: stop,
        }
    }

    /// The member device holding data chunk `k` of row 0.
    async fn data_member(&self, k: u32) -> &FaultyDevice {
        let slot = self.array.layout().await.data_member(0, k);
        let id = self.array.member_identities()[slot as usize]
            .clone()
            .expect("a member in the slot");
        self.members
            .iter()
            .find(|m| m.identity() == &id)
            .expect("one of the rig's members")
    }

    fn held(&self) -> usize {
        self.members.iter().map(|m| m.held_writes()).sum()
    }
}

/// One connection, logged in straight to the Full Feature Phase.
struct Session {
    s: TcpStream,
    buf: BytesMut,
    dec: Decoder,
    cmd_sn: u32,
    itt: u32,
}

impl Session {
    async fn login(addr: SocketAddr, isid: [u8; 6]) -> Session {
        let mut c = Session {
            s: TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::new(),
            dec: Decoder::new(1 << 20),
            cmd_sn: 1,
            itt: 0,
        };
        let keys = [
            ("InitiatorName", "iqn.2026-01.test:raid-abort"),
            ("TargetName", IQN),
        ];
        let text = TextList(
            keys.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        let req = LoginRequest {
            transit: true,
            cont: false,
            csg: Stage::Operational,
            nsg: Stage::FullFeature,
            version_max: 0,
            version_min: 0,
            isid,
            tsih: 0,
            itt: 0,
            cid: 0,
            cmd_sn: c.cmd_sn,
            exp_stat_sn: 0,
        };
        c.send(Bhs::LoginRequest(req), &text.encode()).await;
        match c.recv().await.map(|p| p.bhs) {
            Some(Ok(Bhs::LoginResponse(r))) => {
                assert_eq!((r.status_class, r.status_detail), (0, 0), "login")
            }
            other => panic!("no login response: {other:?}"),
        }
        c
    }

    async fn send(&mut self, bhs: Bhs, data: &[u8]) {
        let p = OutPdu::new(
            &bhs,
            Bytes::copy_from_slice(data),
            Digest::None,
            Digest::None,
        );
        self.s.write_all(&p.to_vec()).await.unwrap();
    }

    /// The next PDU; None when the connection closed or stays silent for 2 s.
    async fn recv(&mut self) -> Option<InPdu> {
        loop {
            if let Some(p) = self.dec.decode(&mut self.buf).expect("valid framing") {
                return Some(p);
            }
            let read = self.s.read_buf(&mut self.buf);
            match tokio::time::timeout(Duration::from_secs(2), read).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    /// Sends a command whose data-out (at most 8 KiB) is all immediate;
    /// returns its ITT.
    async fn command(&mut self, cdb: &[u8], write: Option<&[u8]>) -> u32 {
        let mut c = [0u8; 16];
        c[..cdb.len()].copy_from_slice(cdb);
        self.itt += 1;
        let w = write.unwrap_or(&[]);
        assert!(w.len() <= 8192, "no R2T here");
        let cmd = ScsiCommand {
            immediate: false,
            final_: true,
            read: false,
            write: write.is_some(),
            attr: 0,
            lun: 0,
            itt: self.itt,
            edtl: w.len() as u32,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: 0,
            cdb: c,
        };
        self.cmd_sn += 1;
        self.send(Bhs::ScsiCommand(cmd), w).await;
        self.itt
    }

    /// Runs a command to its status.
    async fn run(&mut self, cdb: &[u8], write: Option<&[u8]>) -> u8 {
        let itt = self.command(cdb, write).await;
        status_of(self.recv().await.expect("a response"), itt)
    }

    /// A write to GOOD status, past a unit attention.
    async fn write(&mut self, lba: u32, data: &[u8], fua: bool) {
        let cdb = write10(lba, data.len() / BS, fua);
        let mut st = self.run(&cdb, Some(data)).await;
        if st == 2 {
            st = self.run(&cdb, Some(data)).await;
        }
        assert_eq!(st, 0, "write at {lba}");
    }

    /// Sends an immediate task management request for LUN 0; returns its ITT.
    async fn tmf(&mut self, function: u8, rtt: u32, ref_cmd_sn: u32) -> u32 {
        self.itt += 1;
        let t = TmfRequest {
            immediate: true,
            function,
            lun: 0,
            itt: self.itt,
            rtt,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: 0,
            ref_cmd_sn,
            exp_data_sn: 0,
        };
        self.send(Bhs::TmfRequest(t), &[]).await;
        self.itt
    }
}

fn status_of(p: InPdu, itt: u32) -> u8 {
    match p.bhs.expect("a valid PDU") {
        Bhs::ScsiResponse(r) if r.itt == itt => r.status,
        other => panic!("not the response to {itt}: {other:?}"),
    }
}

fn write10(lba: u32, blocks: usize, fua: bool) -> [u8; 10] {
    let l = lba.to_be_bytes();
    let b = (blocks as u16).to_be_bytes();
    let flags = if fua { 0x08 } else { 0 };
    [0x2a, flags, l[0], l[1], l[2], l[3], 0, b[0], b[1], 0]
}

/// How the held write is cut short.
#[derive(Debug, Clone, Copy)]
enum Cut {
    AbortTask,
    LunReset,
    /// The connection drops; the initiator logs in again with the same ISID.
    ConnectionLoss,
}

async fn cut_short(cut: Cut, isid: [u8; 6]) {
    let rig = Rig::start().await;
    let mut c = Session::login(rig.addr, isid).await;
    // A write elsewhere in row 0 makes the array and the row's bitmap region
    // dirty, so the next write's first member writes are the row's own.
    c.write(24, &[0x11; 4 * BS], true).await;
    // A FUA write of data chunk 0 of row 0 (blocks 0..16) goes to the members
    // at once; its data member holds the data and the tag write.
    let member = rig.data_member(0).await;
    member.hold_next_writes(2);
    let long = c
        .command(&write10(0, 16, true), Some(&[0xAA; 16 * BS]))
        .await;
    let long_sn = c.cmd_sn - 1;
    while member.held_writes() == 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let newer = vec![0x5C; 8 * BS];
    // The answer that must wait for the held writes.
    let answer = match cut {
        Cut::AbortTask => Some(c.tmf(1, long, long_sn).await),
        Cut::LunReset => Some(c.tmf(5, pdu::RESERVED_TAG, long_sn).await),
        Cut::ConnectionLoss => {
            drop(c);
            c = Session::login(rig.addr, isid).await;
            // The second half of the held write's range.
            c.command(&write10(8, 8, false), Some(&newer)).await;
            None
        }
    };
    // Not answered while the member holds the writes (a correct target and
    // array wait; the time is a chance for a wrong one to show, not a
    // deadline).
    let early = tokio::time::timeout(Duration::from_millis(300), c.recv())
        .await
        .ok()
        .flatten();
    assert!(
        early.is_none(),
        "{cut:?} answered while its write was held: {:?}",
        early.map(|p| p.bhs)
    );
    member.release_writes();
    let p = c
        .recv()
        .await
        .expect("the answer once the writes are released");
    assert_eq!(
        rig.held(),
        0,
        "{cut:?} answered before the held writes had landed"
    );
    match (p.bhs.expect("a valid PDU"), answer) {
        (Bhs::TmfResponse(r), Some(itt)) => {
            assert_eq!((r.itt, r.response), (itt, 0), "function complete");
            c.write(8, &newer, false).await;
        }
        // The reinstated session's write: GOOD, or the new nexus's attention.
        (Bhs::ScsiResponse(r), None) if r.status == 2 => c.write(8, &newer, false).await,
        (Bhs::ScsiResponse(r), None) => assert_eq!(r.status, 0),
        (other, _) => panic!("unexpected {other:?}"),
    }
    // SYNCHRONIZE CACHE, then the volume as the initiator left it.
    assert_eq!(c.run(&[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], None).await, 0);
    assert_eq!(
        &rig.array.read(8, 8).await.unwrap()[..],
        &newer[..],
        "{cut:?}: the newer data did not survive"
    );
    let report = rig.array.check().await.unwrap();
    assert!(report.clean(), "{cut:?}: {report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_task_over_raid5_is_answered_once_the_member_writes_landed() {
    cut_short(Cut::AbortTask, [0x80, 0, 0, 0, 8, 1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lun_reset_over_raid5_is_answered_once_the_member_writes_landed() {
    cut_short(Cut::LunReset, [0x80, 0, 0, 0, 8, 2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_over_raid5_lets_the_new_session_run_once_the_member_writes_landed() {
    cut_short(Cut::ConnectionLoss, [0x80, 0, 0, 0, 8, 3]).await;
}
