//! The server on loopback, driven by the test initiator (`initiator-iscsi`)
//! and its raw side: logins, discovery, I/O and malformed input. Every bad input must get the RFC's answer (Reject, a
//! login failure status or a dropped connection) and the server must keep
//! serving other sessions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use blockdev::{DeviceIdentity, FileDevice, MemDevice, SharedDevice};
use bytes::Bytes;
use initiator_iscsi::tmf::{self, Function};
use initiator_iscsi::{
    Auth, Command, Connection, Error, LoginConfig, LoginError, ScsiResult, Session, Task,
    TaskManagement,
};
use iscsi_proto::digest::Digest;
use iscsi_proto::frame::{InPdu, OutPdu};
use iscsi_proto::pdu::{self, Bhs, DataOut, LoginRequest, NopOut, ScsiCommand, Stage, BHS_LEN};
use iscsi_proto::text::TextList;
use scsi_disk::{LuConfig, ScsiTarget};
use target_iscsi::server::{Portal, Server, ServerConfig, TargetConfig};
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

const INITIATOR: &str = "iqn.2026-01.test:init";

/// A login straight from the operational stage with the initiator's usual
/// values and the keys of `extra` offered as they are.
fn config(isid: [u8; 6], extra: &[(&str, &str)]) -> LoginConfig {
    let mut c = LoginConfig::new(INITIATOR, Some(IQN));
    c.isid = isid;
    c.auth = Auth::Skip;
    for (k, v) in extra {
        c.overrides.push(*k, *v);
    }
    c
}

/// A session; what it is sent raw goes unanswered after 2 s of silence.
async fn login(addr: SocketAddr, isid: [u8; 6], extra: &[(&str, &str)]) -> Session {
    let mut s = Session::connect(addr, config(isid, extra))
        .await
        .expect("login");
    s.connection().set_timeout(Duration::from_secs(2));
    s
}

/// One Login Request with `keys` as they are, straight from the
/// operational stage: the response, its keys, and the connection.
async fn login_keys(
    addr: SocketAddr,
    isid: [u8; 6],
    keys: &[(&str, &str)],
) -> (pdu::LoginResponse, TextList, Connection) {
    let mut c = Connection::connect(addr).await.unwrap();
    c.set_timeout(Duration::from_secs(2));
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
        cmd_sn: 1,
        exp_stat_sn: 0,
    };
    c.send(&Bhs::LoginRequest(req), &text.encode())
        .await
        .unwrap();
    let p = c.recv().await.expect("login response");
    let Ok(Bhs::LoginResponse(r)) = p.bhs else {
        panic!("not a login response: {:?}", p.bhs)
    };
    (r, TextList::parse(&p.data).unwrap(), c)
}

/// Runs a command to its status: (status, data-in).
async fn run(s: &mut Session, cdb: &[u8], edtl: u32, write: Option<&[u8]>) -> (u8, Vec<u8>) {
    let cmd = match write {
        Some(w) => Command::write(0, cdb, w.to_vec()),
        None => Command::read(0, cdb, edtl),
    };
    let r = s.command(cmd).await.expect("command");
    (r.status, r.data)
}

async fn ping(s: &mut Session) -> bool {
    matches!(s.ping(b"ping").await, Ok(d) if &d[..] == b"ping")
}

/// The next PDU read raw, or None once the connection is closed or silent.
async fn recv(s: &mut Session) -> Option<InPdu> {
    s.connection().recv().await.ok()
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
    let mut c = login(addr, isid, &[]).await;
    // The new nexus first reports its unit attention.
    let _ = run(&mut c, &[0, 0, 0, 0, 0, 0], 0, None).await;
    let payload: Vec<u8> = (0..300_000u32)
        .map(|i| (i * 7 + u32::from(isid[5])) as u8)
        .collect();
    let blocks = (payload.len() / 512) as u16;
    let payload = &payload[..usize::from(blocks) * 512];
    let (st, _) = run(
        &mut c,
        &write10(100, blocks),
        payload.len() as u32,
        Some(payload),
    )
    .await;
    assert_eq!(st, 0);
    let (st, back) = run(&mut c, &read10(100, blocks), payload.len() as u32, None).await;
    assert_eq!(st, 0);
    assert!(back == payload, "read back differs");
}

#[tokio::test]
async fn io_round_trip_with_and_without_digests() {
    let (addrs, _stop) = start().await;
    io_works(addrs[0], [0x80, 0, 0, 0, 0, 1]).await;
    let digests = [("HeaderDigest", "CRC32C"), ("DataDigest", "CRC32C")];
    let mut c = login(addrs[1], [0x80, 0, 0, 0, 0, 2], &digests).await;
    assert_eq!(c.connection().digests(), (Digest::Crc32c, Digest::Crc32c));
    let _ = run(&mut c, &[0, 0, 0, 0, 0, 0], 0, None).await;
    let data = vec![0x5au8; 64 * 1024];
    let w = run(&mut c, &write10(7, 128), data.len() as u32, Some(&data)).await;
    assert_eq!(w.0, 0);
    let (st, back) = run(&mut c, &read10(7, 128), data.len() as u32, None).await;
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
    let digests = [("HeaderDigest", "CRC32C"), ("DataDigest", "CRC32C")];
    let mut c = login(addrs[0], [0x80, 0, 0, 0, 0, 4], &digests).await;
    let _ = run(&mut c, &[0, 0, 0, 0, 0, 0], 0, None).await;
    let data: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 253) as u8).collect();
    let (st, _) = run(&mut c, &write10(2000, 512), data.len() as u32, Some(&data)).await;
    assert_eq!(st, 0);
    for _ in 0..2 {
        let (st, back) = run(&mut c, &read10(2000, 512), data.len() as u32, None).await;
        assert_eq!((st, back == data), (0, true));
    }
    // Many reads in flight at once on a session without digests; each
    // one's Data-In in order (the initiator checks offsets and DataSNs).
    let mut c = login(addrs[0], [0x80, 0, 0, 0, 0, 5], &[]).await;
    let _ = run(&mut c, &[0, 0, 0, 0, 0, 0], 0, None).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let read = Command::read(0, &read10(2000, 512), data.len() as u32);
        tasks.push(c.start(read).await.unwrap());
    }
    for t in tasks {
        let r = c.wait(t).await.expect("in-order Data-In");
        assert_eq!(r.status, 0);
        assert!(r.data == data, "read {} differs", t.itt);
    }
}

#[tokio::test]
async fn discovery_lists_every_portal_in_its_form() {
    let (addrs, _stop) = start().await;
    let mut cfg = LoginConfig::new(INITIATOR, None);
    cfg.auth = Auth::Skip;
    let mut c = Session::connect(addrs[0], cfg).await.unwrap();
    let text = c.send_targets("All").await.unwrap().encode();
    let expected = format!(
        "TargetName={IQN}\0TargetAddress=127.0.0.1:{},1\0TargetAddress=[::1]:{},1\0",
        addrs[0].port(),
        addrs[1].port()
    );
    assert_eq!(String::from_utf8(text).unwrap(), expected);
    // The target is not reachable on portal group 2.
    let mut c = Connection::connect(addrs[2]).await.unwrap();
    let e = c
        .login(config([0x80, 0, 0, 0, 0, 9], &[]))
        .await
        .unwrap_err();
    let Error::Login(e) = e else { panic!("{e}") };
    assert!(matches!(e, LoginError::TargetNotFound { .. }), "{e}");
    assert_eq!(e.status(), Some((2, 3)));
}

#[tokio::test]
async fn malformed_input_gets_the_rfc_answer() {
    let (addrs, _stop) = start().await;
    let a = addrs[0];

    // Bad opcode: Reject (command not supported), session goes on.
    let mut c = login(a, [0x80, 0, 0, 0, 1, 1], &[]).await;
    let mut raw = [0u8; BHS_LEN];
    raw[0] = 0x1f;
    raw[16..20].copy_from_slice(&77u32.to_be_bytes());
    c.connection().send_raw(&raw).await.unwrap();
    let p = recv(&mut c).await.unwrap();
    let Ok(Bhs::Reject(r)) = p.bhs else {
        panic!("{:?}", p.bhs)
    };
    assert_eq!(r.reason, pdu::reject::COMMAND_NOT_SUPPORTED);
    assert_eq!(&p.data[..], &raw[..]);
    assert!(ping(&mut c).await);

    // Out-of-window CmdSN: ignored without an answer; in-window works after.
    let good = c.full_feature().cmd_sn();
    for cmd_sn in [good.wrapping_add(1000), good.wrapping_sub(5)] {
        let cmd = ScsiCommand {
            final_: true,
            itt: cmd_sn ^ 0x5a5a,
            cmd_sn,
            ..Default::default()
        };
        c.connection()
            .send(&Bhs::ScsiCommand(cmd), &[])
            .await
            .unwrap();
    }
    let (st, _) = run(&mut c, &[0, 0, 0, 0, 0, 0], 0, None).await; // UA or GOOD, but answered
    assert!(st == 0 || st == 2);

    // Data segment over our MaxRecvDataSegmentLength: Reject, then drop.
    let n = NopOut {
        immediate: true,
        lun: 0,
        itt: 9,
        ttt: pdu::RESERVED_TAG,
        cmd_sn: c.full_feature().cmd_sn(),
        exp_stat_sn: 0,
    };
    let huge = Bhs::NopOut(n).to_bytes(pdu::Framing {
        ahs_len: 0,
        data_len: 16_000_000,
    });
    c.connection().send_raw(&huge).await.unwrap();
    let p = recv(&mut c).await.unwrap();
    let Ok(Bhs::Reject(r)) = p.bhs else {
        panic!("{:?}", p.bhs)
    };
    assert_eq!(r.reason, pdu::reject::PROTOCOL_ERROR);
    assert!(c.connection().closed().await);

    // Wrong data digest: Reject (data digest error), session goes on.
    let digests = [("HeaderDigest", "CRC32C"), ("DataDigest", "CRC32C")];
    let mut c = login(a, [0x80, 0, 0, 0, 1, 2], &digests).await;
    let n = NopOut {
        itt: 3,
        cmd_sn: c.full_feature().cmd_sn(),
        ..n
    };
    let (hd, dd) = c.connection().digests();
    let mut bytes = OutPdu::new(&Bhs::NopOut(n), Bytes::from_static(b"abcd"), hd, dd).to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    c.connection().send_raw(&bytes).await.unwrap();
    let p = recv(&mut c).await.unwrap();
    let Ok(Bhs::Reject(r)) = p.bhs else {
        panic!("{:?}", p.bhs)
    };
    assert_eq!(r.reason, pdu::reject::DATA_DIGEST_ERROR);
    assert!(ping(&mut c).await);

    // Wrong header digest: the stream cannot be trusted, connection dropped.
    let mut bytes = OutPdu::new(&Bhs::NopOut(n), Bytes::new(), hd, dd).to_vec();
    bytes[BHS_LEN] ^= 1;
    c.connection().send_raw(&bytes).await.unwrap();
    assert!(c.connection().closed().await);

    // Data-Out with a wrong DataSN: the task ends with CHECK CONDITION.
    let solicited = [("InitialR2T", "Yes"), ("ImmediateData", "No")];
    let mut c = login(a, [0x80, 0, 0, 0, 1, 3], &solicited).await;
    let _ = run(&mut c, &[0, 0, 0, 0, 0, 0], 0, None).await;
    let task = c
        .start(Command::write(0, &write10(0, 2), vec![0u8; 1024]))
        .await
        .unwrap();
    let p = recv(&mut c).await.unwrap();
    let Ok(Bhs::R2t(r)) = p.bhs else {
        panic!("{:?}", p.bhs)
    };
    let d = DataOut {
        final_: false,
        lun: 0,
        itt: task.itt,
        ttt: r.ttt,
        exp_stat_sn: 0,
        data_sn: 5,
        buffer_offset: 0,
    };
    c.connection()
        .send(&Bhs::DataOut(d), &[0u8; 512])
        .await
        .unwrap();
    let p = recv(&mut c).await.unwrap();
    let Ok(Bhs::ScsiResponse(s)) = p.bhs else {
        panic!("{:?}", p.bhs)
    };
    assert_eq!((s.itt, s.status), (task.itt, 2));
    assert!(ping(&mut c).await);

    // Logins with bad keys.
    let init = ("InitiatorName", INITIATOR);
    type Case<'a> = (Vec<(&'a str, &'a str)>, (u8, u8));
    let cases: Vec<Case> = vec![
        (vec![("TargetName", IQN)], (2, 7)),
        (vec![init], (2, 7)),
        (vec![init, ("TargetName", "iqn.2026-01.nope:x")], (2, 3)),
        (vec![init, ("SessionType", "Bogus")], (2, 9)),
    ];
    for (keys, want) in cases {
        let (r, _, mut c) = login_keys(a, [0x80, 0, 0, 0, 2, 1], &keys).await;
        assert_eq!((r.status_class, r.status_detail), want, "{keys:?}");
        assert!(c.closed().await);
    }
    // Bad values in negotiated keys are answered with Reject; the login succeeds with defaults.
    let bad = [
        ("MaxBurstLength", "12x"),
        ("HeaderDigest", "MD5"),
        ("X-com.example.k", "1"),
    ];
    let mut c = login(a, [0x80, 0, 0, 0, 2, 2], &bad).await;
    let t = &c.info().target_keys;
    assert_eq!(t.get("MaxBurstLength"), Some("Reject"));
    assert_eq!(t.get("HeaderDigest"), Some("Reject"));
    assert_eq!(t.get("X-com.example.k"), Some("NotUnderstood"));
    assert!(ping(&mut c).await);

    // Garbage instead of a login: dropped.
    let mut c = Connection::connect(a).await.unwrap();
    c.set_timeout(Duration::from_secs(2));
    c.send_raw(&[0xffu8; 200]).await.unwrap();
    assert!(c.closed().await);

    // And the server still serves.
    io_works(a, [0x80, 0, 0, 0, 3, 1]).await;
}

#[tokio::test]
async fn reinstatement_closes_the_old_session() {
    let (addrs, _stop) = start().await;
    let isid = [0x80, 0, 0, 0, 4, 1];
    let mut old = login(addrs[0], isid, &[]).await;
    assert!(ping(&mut old).await);
    let mut new = login(addrs[0], isid, &[]).await;
    assert!(old.connection().closed().await);
    assert!(ping(&mut new).await);
    // Another ISID of the same initiator is an independent session.
    let mut other = login(addrs[0], [0x80, 0, 0, 0, 4, 2], &[]).await;
    assert!(ping(&mut new).await && ping(&mut other).await);
}

#[tokio::test]
async fn silent_initiators_are_pinged_then_dropped() {
    let base = ServerConfig {
        nop_interval: Duration::from_millis(200),
        nop_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let (addrs, _stop, _) = start_with(base).await;
    let mut c = login(addrs[0], [0x80, 0, 0, 0, 5, 1], &[]).await;
    let p = recv(&mut c).await.expect("a ping");
    let Ok(Bhs::NopIn(ping_in)) = p.bhs else {
        panic!("{:?}", p.bhs)
    };
    assert_eq!(ping_in.itt, pdu::RESERVED_TAG);
    assert_ne!(ping_in.ttt, pdu::RESERVED_TAG);
    // Not answering: the target gives up on us.
    assert!(c.connection().closed().await);
    // An initiator that answers stays connected.
    let mut c = login(addrs[0], [0x80, 0, 0, 0, 5, 2], &[]).await;
    for _ in 0..3 {
        let p = recv(&mut c).await.expect("a ping");
        let Ok(Bhs::NopIn(ping_in)) = p.bhs else {
            panic!("{:?}", p.bhs)
        };
        let n = NopOut {
            immediate: true,
            lun: 0,
            itt: pdu::RESERVED_TAG,
            ttt: ping_in.ttt,
            cmd_sn: c.full_feature().cmd_sn(),
            exp_stat_sn: ping_in.sns.stat_sn,
        };
        c.connection().send(&Bhs::NopOut(n), &[]).await.unwrap();
    }
    assert!(ping(&mut c).await);
}

#[tokio::test]
async fn shutdown_drains_and_closes() {
    let (addrs, stop, run_handle) = start_with(ServerConfig::default()).await;
    let mut c = login(addrs[0], [0x80, 0, 0, 0, 6, 1], &[]).await;
    let _ = run(&mut c, &[0, 0, 0, 0, 0, 0], 0, None).await;
    let data = vec![7u8; 4096];
    assert_eq!(run(&mut c, &write10(9, 8), 4096, Some(&data)).await.0, 0);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), run_handle)
        .await
        .expect("run returns")
        .unwrap()
        .expect("clean shutdown");
    assert!(c.connection().closed().await);
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
async fn write_past_attention(c: &mut Session, cdb: &[u8], data: &[u8]) {
    let mut st = run(c, cdb, data.len() as u32, Some(data)).await.0;
    if st == 2 {
        st = run(c, cdb, data.len() as u32, Some(data)).await.0;
    }
    assert_eq!(st, 0, "write {cdb:02x?}");
}

/// The answer that must wait for the held write: a TMF response, or the
/// status of the new session's first write.
#[derive(Debug)]
enum Answer {
    Tmf(u8),
    Scsi(ScsiResult),
}

/// Waits for the TMF tagged `tmf`, or for the `newer` write.
async fn answer(c: &mut Session, tmf: Option<u32>, newer: Option<Task>) -> Result<Answer, Error> {
    match (tmf, newer) {
        (Some(itt), _) => c
            .wait_task_management(itt)
            .await
            .map(|r| Answer::Tmf(r.response)),
        (None, Some(t)) => c.wait(t).await.map(Answer::Scsi),
        (None, None) => unreachable!("something to wait for"),
    }
}

/// After the answer, the newer data goes over the held write's range.
async fn follow_up(c: &mut Session, a: Answer, cdb: &[u8], data: &[u8]) {
    match a {
        Answer::Tmf(response) => {
            assert_eq!(response, tmf::COMPLETE, "function complete");
            write_past_attention(c, cdb, data).await
        }
        Answer::Scsi(r) if r.status == 2 => write_past_attention(c, cdb, data).await,
        Answer::Scsi(r) => assert_eq!(r.status, 0),
    }
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
    let mut c = login(addrs[0], isid, &[]).await;
    let _ = run(&mut c, &[0, 0, 0, 0, 0, 0], 0, None).await; // the new nexus's attention
                                                             // An 8 KiB write (all immediate data) that the device holds.
    faulty.hold_next_writes(1);
    let long = c
        .start(Command::write(0, &write10(0, 16), vec![0xAA; 8192]))
        .await
        .unwrap();
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
                                   // What must wait for the held write: a TMF's tag, or the newer write.
    let tmf = match cut {
        Cut::AbortTask => Some(TaskManagement::abort_task(0, long)),
        Cut::LunReset => Some(TaskManagement::of_lun(Function::LunReset, 0)),
        Cut::SessionEnd => None,
    };
    let (tmf_itt, newer_task) = match tmf {
        Some(t) => (Some(c.start_task_management(t).await.unwrap()), None),
        None => {
            drop(c);
            c = login(addrs[0], isid, &[]).await;
            let w = Command::write(0, &newer_cdb, newer.clone());
            (None, Some(c.start(w).await.unwrap()))
        }
    };
    c.connection().set_timeout(Duration::from_millis(300));
    let early = match answer(&mut c, tmf_itt, newer_task).await {
        Ok(a) => Some(a),
        Err(Error::Timeout(_)) => None,
        Err(e) => panic!("{e}"),
    };
    c.connection().set_timeout(Duration::from_secs(5));
    // Answered while the write was held (or once it was released): write
    // the newer data now (past the unit attention of a reset or a new
    // nexus), as an initiator told "function complete" may.
    let was_early = early.is_some();
    if let Some(a) = early {
        follow_up(&mut c, a, &newer_cdb, &newer).await;
    }
    faulty.release_writes();
    if !was_early {
        let a = answer(&mut c, tmf_itt, newer_task)
            .await
            .expect("the answer once the write is released");
        assert_eq!(
            faulty.held_writes(),
            0,
            "{cut:?} answered before the held write had landed"
        );
        follow_up(&mut c, a, &newer_cdb, &newer).await;
    }
    assert_eq!(
        run(&mut c, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0, None)
            .await
            .0,
        0
    );
    while faulty.held_writes() > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let kept = mem.read(8, 8).await.unwrap() == newer;
    assert!(
        !was_early && kept,
        "{cut:?}: answered while the write it ended was still held: {was_early}; \
         the newer data survived: {kept}"
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
