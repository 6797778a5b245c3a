//! The server on loopback, driven with raw TCP: logins, discovery, I/O and
//! malformed input. Every bad input must get the RFC's answer (Reject, a
//! login failure status or a dropped connection) and the server must keep
//! serving other sessions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use blockdev::{DeviceIdentity, FileDevice, MemDevice, SharedDevice};
use bytes::{Bytes, BytesMut};
use iscsi_proto::digest::Digest;
use iscsi_proto::frame::{Decoder, InPdu, OutPdu};
use iscsi_proto::pdu::{
    self, Bhs, DataOut, LoginRequest, NopOut, ScsiCommand, Stage, TextRequest, BHS_LEN,
};
use iscsi_proto::text::TextList;
use scsi_disk::{LuConfig, ScsiTarget};
use target_iscsi::server::{Portal, Server, ServerConfig, TargetConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const IQN: &str = "iqn.2026-01.org.opie:wire";

type RunHandle = tokio::task::JoinHandle<Result<(), target_iscsi::server::ServerError>>;

async fn start() -> (Vec<SocketAddr>, tokio::sync::oneshot::Sender<()>) {
    let (addrs, stop, _) = start_with(ServerConfig::default()).await;
    (addrs, stop)
}

async fn start_with(
    base: ServerConfig,
) -> (Vec<SocketAddr>, tokio::sync::oneshot::Sender<()>, RunHandle) {
    let dev = MemDevice::new(512, 8192, DeviceIdentity::from_name("wire"));
    start_on(Arc::new(dev), base).await
}

async fn start_on(
    device: SharedDevice,
    base: ServerConfig,
) -> (Vec<SocketAddr>, tokio::sync::oneshot::Sender<()>, RunHandle) {
    let lu = LuConfig {
        device,
        read_only: false,
        state_path: None,
    };
    let scsi = ScsiTarget::new(IQN, vec![(0, lu)], vec![]).unwrap();
    let cfg = ServerConfig {
        portals: vec![
            Portal {
                listen: "127.0.0.1:0".parse().unwrap(),
                advertise: None,
                tpgt: 1,
            },
            Portal {
                listen: "[::1]:0".parse().unwrap(),
                advertise: None,
                tpgt: 1,
            },
            Portal {
                listen: "127.0.0.1:0".parse().unwrap(),
                advertise: Some("isu.example:3260".into()),
                tpgt: 2,
            },
        ],
        targets: vec![TargetConfig {
            iqn: IQN.into(),
            alias: Some("wire".into()),
            scsi,
            portals: Some(vec![1]),
        }],
        ..base
    };
    let server = Server::bind(cfg).await.unwrap();
    let addrs = server.local_addrs();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    (addrs, tx, run)
}

struct Client {
    s: TcpStream,
    buf: BytesMut,
    dec: Decoder,
    hd: Digest,
    dd: Digest,
    cmd_sn: u32,
    itt: u32,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).await.unwrap();
        Client {
            s,
            buf: BytesMut::new(),
            dec: Decoder::new(1 << 20),
            hd: Digest::None,
            dd: Digest::None,
            cmd_sn: 1,
            itt: 1,
        }
    }

    async fn send(&mut self, bhs: Bhs, data: &[u8]) {
        let p = OutPdu::new(&bhs, Bytes::copy_from_slice(data), self.hd, self.dd);
        self.s.write_all(&p.to_vec()).await.unwrap();
    }

    /// The next PDU, or None when the connection is closed (or silent for 2 s).
    async fn recv(&mut self) -> Option<InPdu> {
        loop {
            if let Some(p) = self
                .dec
                .decode(&mut self.buf)
                .expect("valid framing from the target")
            {
                return Some(p);
            }
            let r =
                tokio::time::timeout(Duration::from_secs(2), self.s.read_buf(&mut self.buf)).await;
            match r {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(_)) => {}
            }
        }
    }

    async fn closed(&mut self) -> bool {
        loop {
            match self.recv().await {
                None => {
                    return tokio::time::timeout(Duration::from_millis(100), self.s.read_u8())
                        .await
                        .map(|r| r.is_err())
                        .unwrap_or(false)
                }
                Some(_) => continue,
            }
        }
    }

    async fn login_keys(
        &mut self,
        isid: [u8; 6],
        keys: &[(&str, &str)],
    ) -> (pdu::LoginResponse, TextList) {
        let text = TextList(
            keys.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
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
            cmd_sn: self.cmd_sn,
            exp_stat_sn: 0,
        };
        self.send(Bhs::LoginRequest(req), &text.encode()).await;
        let p = self.recv().await.expect("login response");
        let Ok(Bhs::LoginResponse(r)) = p.bhs else {
            panic!("not a login response: {:?}", p.bhs)
        };
        (r, TextList::parse(&p.data).unwrap())
    }

    async fn login(&mut self, isid: [u8; 6], extra: &[(&str, &str)]) -> TextList {
        let mut keys = vec![
            ("InitiatorName", "iqn.2026-01.test:init"),
            ("TargetName", IQN),
            ("MaxRecvDataSegmentLength", "65536"),
        ];
        keys.extend_from_slice(extra);
        let (r, t) = self.login_keys(isid, &keys).await;
        assert_eq!(
            (r.status_class, r.status_detail),
            (0, 0),
            "login failed: {t:?}"
        );
        assert!(r.transit && r.nsg == Stage::FullFeature);
        if t.get("HeaderDigest") == Some("CRC32C") {
            self.hd = Digest::Crc32c;
            self.dec.header_digest = Digest::Crc32c;
        }
        if t.get("DataDigest") == Some("CRC32C") {
            self.dd = Digest::Crc32c;
            self.dec.data_digest = Digest::Crc32c;
        }
        t
    }

    fn next_itt(&mut self) -> u32 {
        self.itt += 1;
        self.itt
    }

    async fn command(&mut self, cdb: &[u8], edtl: u32, write: Option<&[u8]>) -> u32 {
        let mut c = [0u8; 16];
        c[..cdb.len()].copy_from_slice(cdb);
        let itt = self.next_itt();
        let cmd = ScsiCommand {
            immediate: false,
            final_: true,
            read: write.is_none() && edtl > 0,
            write: write.is_some(),
            attr: 0,
            lun: 0,
            itt,
            edtl,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: 0,
            cdb: c,
        };
        self.cmd_sn += 1;
        let w = write.unwrap_or(&[]);
        self.send(Bhs::ScsiCommand(cmd), &w[..w.len().min(8192)])
            .await;
        itt
    }

    /// Runs a command to its status, answering R2Ts; returns (status, data-in).
    async fn run(&mut self, cdb: &[u8], edtl: u32, write: Option<&[u8]>) -> (u8, Vec<u8>) {
        let itt = self.command(cdb, edtl, write).await;
        let mut data = Vec::new();
        loop {
            let p = self.recv().await.expect("response");
            match p.bhs.unwrap() {
                Bhs::DataIn(d) => {
                    assert_eq!(d.itt, itt);
                    assert_eq!(d.buffer_offset as usize, data.len());
                    data.extend_from_slice(&p.data);
                    if d.status_present {
                        return (d.status, data);
                    }
                }
                Bhs::ScsiResponse(r) => {
                    assert_eq!(r.itt, itt);
                    return (r.status, data);
                }
                Bhs::R2t(r) => {
                    let w = write.unwrap();
                    let burst =
                        &w[r.buffer_offset as usize..(r.buffer_offset + r.desired_length) as usize];
                    for (i, chunk) in burst.chunks(65536).enumerate() {
                        let offset = r.buffer_offset + (i * 65536) as u32;
                        let last = offset as usize + chunk.len()
                            == (r.buffer_offset + r.desired_length) as usize;
                        let d = DataOut {
                            final_: last,
                            lun: 0,
                            itt,
                            ttt: r.ttt,
                            exp_stat_sn: 0,
                            data_sn: i as u32,
                            buffer_offset: offset,
                        };
                        self.send(Bhs::DataOut(d), chunk).await;
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    async fn ping(&mut self) -> bool {
        let itt = self.next_itt();
        let n = NopOut {
            immediate: true,
            lun: 0,
            itt,
            ttt: pdu::RESERVED_TAG,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: 0,
        };
        self.send(Bhs::NopOut(n), b"ping").await;
        loop {
            match self.recv().await {
                Some(p) => {
                    if let Ok(Bhs::NopIn(r)) = p.bhs {
                        if r.itt == itt {
                            return &p.data[..] == b"ping";
                        }
                    }
                }
                None => return false,
            }
        }
    }
}

impl Client {
    /// Sends an immediate task management request for LUN 0; returns its ITT.
    async fn tmf(&mut self, function: u8, rtt: u32, ref_cmd_sn: u32) -> u32 {
        let itt = self.next_itt();
        let t = pdu::TmfRequest {
            immediate: true,
            function,
            lun: 0,
            itt,
            rtt,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: 0,
            ref_cmd_sn,
            exp_data_sn: 0,
        };
        self.send(Bhs::TmfRequest(t), &[]).await;
        itt
    }
}

fn write10(lba: u32, blocks: u16) -> [u8; 10] {
    let l = lba.to_be_bytes();
    let b = blocks.to_be_bytes();
    [0x2a, 0, l[0], l[1], l[2], l[3], 0, b[0], b[1], 0]
}

fn read10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = write10(lba, blocks);
    c[0] = 0x28;
    c
}

async fn io_works(addr: SocketAddr, isid: [u8; 6]) {
    let mut c = Client::connect(addr).await;
    c.login(isid, &[]).await;
    // The new nexus first reports its unit attention.
    let _ = c.run(&[0, 0, 0, 0, 0, 0], 0, None).await;
    let payload: Vec<u8> = (0..300_000u32)
        .map(|i| (i * 7 + u32::from(isid[5])) as u8)
        .collect();
    let blocks = (payload.len() / 512) as u16;
    let payload = &payload[..usize::from(blocks) * 512];
    let (st, _) = c
        .run(&write10(100, blocks), payload.len() as u32, Some(payload))
        .await;
    assert_eq!(st, 0);
    let (st, back) = c
        .run(&read10(100, blocks), payload.len() as u32, None)
        .await;
    assert_eq!(st, 0);
    assert!(back == payload, "read back differs");
}

#[tokio::test]
async fn io_round_trip_with_and_without_digests() {
    let (addrs, _stop) = start().await;
    io_works(addrs[0], [0x80, 0, 0, 0, 0, 1]).await;
    let mut c = Client::connect(addrs[1]).await;
    c.login(
        [0x80, 0, 0, 0, 0, 2],
        &[("HeaderDigest", "CRC32C"), ("DataDigest", "CRC32C")],
    )
    .await;
    assert_eq!((c.hd, c.dd), (Digest::Crc32c, Digest::Crc32c));
    let _ = c.run(&[0, 0, 0, 0, 0, 0], 0, None).await;
    let data = vec![0x5au8; 64 * 1024];
    assert_eq!(
        c.run(&write10(7, 128), data.len() as u32, Some(&data))
            .await
            .0,
        0
    );
    let (st, back) = c.run(&read10(7, 128), data.len() as u32, None).await;
    assert_eq!((st, back == data), (0, true));
}

/// A file-backed LUN: large reads of cached blocks leave with `sendfile`
/// (without data digests), split into Data-In PDUs like any other data.
#[tokio::test]
async fn file_backed_reads_round_trip_with_and_without_digests() {
    let dir = tempfile::tempdir().unwrap();
    let opts = blockdev::file::FileOptions {
        create_size: Some(4 << 20),
        ..Default::default()
    };
    let dev = FileDevice::open(
        dir.path().join("l.img"),
        &opts,
        DeviceIdentity::from_name("f"),
    )
    .unwrap();
    let (addrs, _stop, _) = start_on(Arc::new(dev), ServerConfig::default()).await;
    io_works(addrs[0], [0x80, 0, 0, 0, 0, 3]).await;
    let mut c = Client::connect(addrs[0]).await;
    c.login(
        [0x80, 0, 0, 0, 0, 4],
        &[("HeaderDigest", "CRC32C"), ("DataDigest", "CRC32C")],
    )
    .await;
    let _ = c.run(&[0, 0, 0, 0, 0, 0], 0, None).await;
    let data: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 253) as u8).collect();
    let (st, _) = c
        .run(&write10(2000, 512), data.len() as u32, Some(&data))
        .await;
    assert_eq!(st, 0);
    for _ in 0..2 {
        let (st, back) = c.run(&read10(2000, 512), data.len() as u32, None).await;
        assert_eq!((st, back == data), (0, true));
    }
    // Many reads in flight at once on a session without digests.
    let mut c = Client::connect(addrs[0]).await;
    c.login([0x80, 0, 0, 0, 0, 5], &[]).await;
    let _ = c.run(&[0, 0, 0, 0, 0, 0], 0, None).await;
    let mut itts = Vec::new();
    for _ in 0..8 {
        itts.push(c.command(&read10(2000, 512), data.len() as u32, None).await);
    }
    let mut got: std::collections::HashMap<u32, Vec<u8>> = Default::default();
    let mut done = 0;
    while done < itts.len() {
        let p = c.recv().await.expect("data-in");
        let Ok(Bhs::DataIn(d)) = p.bhs else {
            panic!("unexpected {:?}", p.bhs)
        };
        let v = got.entry(d.itt).or_default();
        assert_eq!(d.buffer_offset as usize, v.len());
        v.extend_from_slice(&p.data);
        if d.status_present {
            assert_eq!(d.status, 0);
            done += 1;
        }
    }
    for itt in itts {
        assert!(got[&itt] == data, "read {itt} differs");
    }
}

#[tokio::test]
async fn discovery_lists_every_portal_in_its_form() {
    let (addrs, _stop) = start().await;
    let mut c = Client::connect(addrs[0]).await;
    let (r, _) = c
        .login_keys(
            [0x80, 0, 0, 0, 0, 9],
            &[
                ("InitiatorName", "iqn.2026-01.test:init"),
                ("SessionType", "Discovery"),
            ],
        )
        .await;
    assert_eq!(r.status_class, 0);
    let t = TextRequest {
        immediate: true,
        final_: true,
        cont: false,
        lun: 0,
        itt: 5,
        ttt: pdu::RESERVED_TAG,
        cmd_sn: 1,
        exp_stat_sn: 0,
    };
    c.send(Bhs::TextRequest(t), b"SendTargets=All\0").await;
    let p = c.recv().await.unwrap();
    let text = String::from_utf8(p.data.to_vec()).unwrap();
    let expected = format!(
        "TargetName={IQN}\0TargetAddress=127.0.0.1:{},1\0TargetAddress=[::1]:{},1\0",
        addrs[0].port(),
        addrs[1].port()
    );
    assert_eq!(text, expected);
    // The target is not reachable on portal group 2.
    let mut c = Client::connect(addrs[2]).await;
    let (r, _) = c
        .login_keys(
            [0x80, 0, 0, 0, 0, 9],
            &[
                ("InitiatorName", "iqn.2026-01.test:init"),
                ("TargetName", IQN),
            ],
        )
        .await;
    assert_eq!((r.status_class, r.status_detail), (2, 3));
}

#[tokio::test]
async fn malformed_input_gets_the_rfc_answer() {
    let (addrs, _stop) = start().await;
    let a = addrs[0];

    // Bad opcode: Reject (command not supported), session goes on.
    let mut c = Client::connect(a).await;
    c.login([0x80, 0, 0, 0, 1, 1], &[]).await;
    let mut raw = [0u8; BHS_LEN];
    raw[0] = 0x1f;
    raw[16..20].copy_from_slice(&77u32.to_be_bytes());
    c.s.write_all(&raw).await.unwrap();
    let p = c.recv().await.unwrap();
    let Ok(Bhs::Reject(r)) = p.bhs else {
        panic!("{:?}", p.bhs)
    };
    assert_eq!(r.reason, pdu::reject::COMMAND_NOT_SUPPORTED);
    assert_eq!(&p.data[..], &raw[..]);
    assert!(c.ping().await);

    // Out-of-window CmdSN: ignored without an answer; in-window works after.
    let good = c.cmd_sn;
    c.cmd_sn = good + 1000;
    c.command(&[0, 0, 0, 0, 0, 0], 0, None).await;
    c.cmd_sn = good.wrapping_sub(5);
    c.command(&[0, 0, 0, 0, 0, 0], 0, None).await;
    c.cmd_sn = good;
    let (st, _) = c.run(&[0, 0, 0, 0, 0, 0], 0, None).await; // UA or GOOD, but answered
    assert!(st == 0 || st == 2);

    // Data segment over our MaxRecvDataSegmentLength: Reject, then drop.
    let n = NopOut {
        immediate: true,
        lun: 0,
        itt: 9,
        ttt: pdu::RESERVED_TAG,
        cmd_sn: c.cmd_sn,
        exp_stat_sn: 0,
    };
    let huge = Bhs::NopOut(n).to_bytes(pdu::Framing {
        ahs_len: 0,
        data_len: 16_000_000,
    });
    c.s.write_all(&huge).await.unwrap();
    let p = c.recv().await.unwrap();
    let Ok(Bhs::Reject(r)) = p.bhs else {
        panic!("{:?}", p.bhs)
    };
    assert_eq!(r.reason, pdu::reject::PROTOCOL_ERROR);
    assert!(c.closed().await);

    // Wrong data digest: Reject (data digest error), session goes on.
    let mut c = Client::connect(a).await;
    c.login(
        [0x80, 0, 0, 0, 1, 2],
        &[("HeaderDigest", "CRC32C"), ("DataDigest", "CRC32C")],
    )
    .await;
    let n = NopOut {
        immediate: true,
        lun: 0,
        itt: 3,
        ttt: pdu::RESERVED_TAG,
        cmd_sn: c.cmd_sn,
        exp_stat_sn: 0,
    };
    let mut bytes = OutPdu::new(&Bhs::NopOut(n), Bytes::from_static(b"abcd"), c.hd, c.dd).to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    c.s.write_all(&bytes).await.unwrap();
    let p = c.recv().await.unwrap();
    let Ok(Bhs::Reject(r)) = p.bhs else {
        panic!("{:?}", p.bhs)
    };
    assert_eq!(r.reason, pdu::reject::DATA_DIGEST_ERROR);
    assert!(c.ping().await);

    // Wrong header digest: the stream cannot be trusted, connection dropped.
    let mut bytes = OutPdu::new(&Bhs::NopOut(n), Bytes::new(), c.hd, c.dd).to_vec();
    bytes[BHS_LEN] ^= 1;
    c.s.write_all(&bytes).await.unwrap();
    assert!(c.closed().await);

    // Data-Out with a wrong DataSN: the task ends with CHECK CONDITION.
    let mut c = Client::connect(a).await;
    c.login(
        [0x80, 0, 0, 0, 1, 3],
        &[("InitialR2T", "Yes"), ("ImmediateData", "No")],
    )
    .await;
    let _ = c.run(&[0, 0, 0, 0, 0, 0], 0, None).await;
    let itt = c.command(&write10(0, 2), 1024, Some(&[])).await;
    let p = c.recv().await.unwrap();
    let Ok(Bhs::R2t(r)) = p.bhs else {
        panic!("{:?}", p.bhs)
    };
    let d = DataOut {
        final_: false,
        lun: 0,
        itt,
        ttt: r.ttt,
        exp_stat_sn: 0,
        data_sn: 5,
        buffer_offset: 0,
    };
    c.send(Bhs::DataOut(d), &[0u8; 512]).await;
    let p = c.recv().await.unwrap();
    let Ok(Bhs::ScsiResponse(s)) = p.bhs else {
        panic!("{:?}", p.bhs)
    };
    assert_eq!((s.itt, s.status), (itt, 2));
    assert!(c.ping().await);

    // Logins with bad keys.
    let init = ("InitiatorName", "iqn.2026-01.test:init");
    type Case<'a> = (Vec<(&'a str, &'a str)>, (u8, u8));
    let cases: Vec<Case> = vec![
        (vec![("TargetName", IQN)], (2, 7)),
        (vec![init], (2, 7)),
        (vec![init, ("TargetName", "iqn.2026-01.nope:x")], (2, 3)),
        (vec![init, ("SessionType", "Bogus")], (2, 9)),
    ];
    for (keys, want) in cases {
        let mut c = Client::connect(a).await;
        let (r, _) = c.login_keys([0x80, 0, 0, 0, 2, 1], &keys).await;
        assert_eq!((r.status_class, r.status_detail), want, "{keys:?}");
        assert!(c.closed().await);
    }
    // Bad values in negotiated keys are answered with Reject; the login succeeds with defaults.
    let mut c = Client::connect(a).await;
    let t = c
        .login(
            [0x80, 0, 0, 0, 2, 2],
            &[
                ("MaxBurstLength", "12x"),
                ("HeaderDigest", "MD5"),
                ("X-com.example.k", "1"),
            ],
        )
        .await;
    assert_eq!(t.get("MaxBurstLength"), Some("Reject"));
    assert_eq!(t.get("HeaderDigest"), Some("Reject"));
    assert_eq!(t.get("X-com.example.k"), Some("NotUnderstood"));
    assert!(c.ping().await);

    // Garbage instead of a login: dropped.
    let mut c = Client::connect(a).await;
    c.s.write_all(&[0xffu8; 200]).await.unwrap();
    assert!(c.closed().await);

    // And the server still serves.
    io_works(a, [0x80, 0, 0, 0, 3, 1]).await;
}

#[tokio::test]
async fn reinstatement_closes_the_old_session() {
    let (addrs, _stop) = start().await;
    let isid = [0x80, 0, 0, 0, 4, 1];
    let mut old = Client::connect(addrs[0]).await;
    old.login(isid, &[]).await;
    assert!(old.ping().await);
    let mut new = Client::connect(addrs[0]).await;
    new.login(isid, &[]).await;
    assert!(old.closed().await);
    assert!(new.ping().await);
    // Another ISID of the same initiator is an independent session.
    let mut other = Client::connect(addrs[0]).await;
    other.login([0x80, 0, 0, 0, 4, 2], &[]).await;
    assert!(new.ping().await && other.ping().await);
}

#[tokio::test]
async fn silent_initiators_are_pinged_then_dropped() {
    let base = ServerConfig {
        nop_interval: Duration::from_millis(200),
        nop_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let (addrs, _stop, _) = start_with(base).await;
    let mut c = Client::connect(addrs[0]).await;
    c.login([0x80, 0, 0, 0, 5, 1], &[]).await;
    let p = c.recv().await.expect("a ping");
    let Ok(Bhs::NopIn(ping)) = p.bhs else {
        panic!("{:?}", p.bhs)
    };
    assert_eq!(ping.itt, pdu::RESERVED_TAG);
    assert_ne!(ping.ttt, pdu::RESERVED_TAG);
    // Not answering: the target gives up on us.
    assert!(c.closed().await);
    // An initiator that answers stays connected.
    let mut c = Client::connect(addrs[0]).await;
    c.login([0x80, 0, 0, 0, 5, 2], &[]).await;
    for _ in 0..3 {
        let p = c.recv().await.expect("a ping");
        let Ok(Bhs::NopIn(ping)) = p.bhs else {
            panic!("{:?}", p.bhs)
        };
        let n = NopOut {
            immediate: true,
            lun: 0,
            itt: pdu::RESERVED_TAG,
            ttt: ping.ttt,
            cmd_sn: c.cmd_sn,
            exp_stat_sn: ping.sns.stat_sn,
        };
        c.send(Bhs::NopOut(n), &[]).await;
    }
    assert!(c.ping().await);
}

#[tokio::test]
async fn shutdown_drains_and_closes() {
    let (addrs, stop, run) = start_with(ServerConfig::default()).await;
    let mut c = Client::connect(addrs[0]).await;
    c.login([0x80, 0, 0, 0, 6, 1], &[]).await;
    let _ = c.run(&[0, 0, 0, 0, 0, 0], 0, None).await;
    let data = vec![7u8; 4096];
    assert_eq!(c.run(&write10(9, 8), 4096, Some(&data)).await.0, 0);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("run returns")
        .unwrap()
        .expect("clean shutdown");
    assert!(c.closed().await);
    assert!(
        TcpStream::connect(addrs[0]).await.is_err(),
        "still accepting after shutdown"
    );
}

/// How a held write is cut short in [`cut_short`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    AbortTask,
    LunReset,
    /// The connection drops and the initiator logs in again with the same ISID.
    SessionEnd,
}

/// Runs a write to GOOD status, past a unit attention.
async fn write_past_attention(c: &mut Client, cdb: &[u8], data: &[u8]) {
    let mut st = c.run(cdb, data.len() as u32, Some(data)).await.0;
    if st == 2 {
        st = c.run(cdb, data.len() as u32, Some(data)).await.0;
    }
    assert_eq!(st, 0, "write {cdb:02x?}");
}

/// A write the device holds is cut short; the answer to that (the TMF
/// response, or for a session end the new session's first write) must not
/// come before the held write has landed, and newer data written after it
/// must be what the device keeps.
async fn cut_short(cut: Cut, isid: [u8; 6]) {
    use blockdev::BlockDevice;
    let mem = Arc::new(MemDevice::new(512, 8192, DeviceIdentity::from_name("held")));
    let faulty = Arc::new(blockdev::FaultyDevice::new(mem.clone(), 1));
    let (addrs, _stop, _) = start_on(faulty.clone(), ServerConfig::default()).await;
    let mut c = Client::connect(addrs[0]).await;
    c.login(isid, &[]).await;
    let _ = c.run(&[0, 0, 0, 0, 0, 0], 0, None).await; // the new nexus's attention
                                                       // An 8 KiB write (all immediate data) that the device holds.
    faulty.hold_next_writes(1);
    let long = c.command(&write10(0, 16), 8192, Some(&[0xAA; 8192])).await;
    let long_sn = c.cmd_sn - 1;
    let t0 = std::time::Instant::now();
    while faulty.held_writes() == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the write never reached the device"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let newer = vec![0x5C; 4096];
    let newer_cdb = write10(8, 8); // the second half of the held write's range
                                   // The answer that must wait for the held write.
    let answer = match cut {
        Cut::AbortTask => Some(c.tmf(1, long, long_sn).await),
        Cut::LunReset => Some(c.tmf(5, pdu::RESERVED_TAG, long_sn).await),
        Cut::SessionEnd => {
            drop(c);
            c = Client::connect(addrs[0]).await;
            c.login(isid, &[]).await;
            c.command(&newer_cdb, 4096, Some(&newer)).await;
            None
        }
    };
    let early = tokio::time::timeout(Duration::from_millis(300), c.recv())
        .await
        .ok()
        .flatten();
    if let Some(p) = &early {
        // Answered while the write was held: write the newer data now (past
        // the unit attention of a reset or a new nexus), as an initiator
        // told "function complete" may.
        match (p.bhs.as_ref().expect("valid PDU"), answer) {
            (Bhs::TmfResponse(_), Some(_)) => {
                write_past_attention(&mut c, &newer_cdb, &newer).await
            }
            (Bhs::ScsiResponse(r), None) if r.status == 2 => {
                write_past_attention(&mut c, &newer_cdb, &newer).await
            }
            (Bhs::ScsiResponse(r), None) => assert_eq!(r.status, 0),
            (other, _) => panic!("unexpected {other:?}"),
        }
    }
    faulty.release_writes();
    if early.is_none() {
        let p = c
            .recv()
            .await
            .expect("the answer once the write is released");
        assert_eq!(
            faulty.held_writes(),
            0,
            "{cut:?} answered before the held write had landed"
        );
        match (p.bhs.expect("valid PDU"), answer) {
            (Bhs::TmfResponse(r), Some(itt)) => {
                assert_eq!((r.itt, r.response), (itt, 0), "function complete");
                write_past_attention(&mut c, &newer_cdb, &newer).await;
            }
            (Bhs::ScsiResponse(r), None) if r.status == 2 => {
                write_past_attention(&mut c, &newer_cdb, &newer).await
            }
            (Bhs::ScsiResponse(r), None) => assert_eq!(r.status, 0),
            (other, _) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        c.run(&[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0, None).await.0,
        0
    );
    while faulty.held_writes() > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let kept = mem.read(8, 8).await.unwrap() == newer;
    assert!(
        early.is_none() && kept,
        "{cut:?}: answered while the write it ended was still held: {}; \
         the newer data survived: {kept}",
        early.is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_task_is_answered_only_once_the_aborted_write_has_landed() {
    cut_short(Cut::AbortTask, [0x80, 0, 0, 0, 7, 1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lun_reset_is_answered_only_once_the_aborted_write_has_landed() {
    cut_short(Cut::LunReset, [0x80, 0, 0, 0, 7, 2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reinstated_session_runs_only_once_the_old_sessions_write_has_landed() {
    cut_short(Cut::SessionEnd, [0x80, 0, 0, 0, 7, 3]).await;
}
