//! Task termination over a RAID5 volume: the LU is a `raid::RaidArray` over
//! three fault-injecting members, and one member holds the writes of a
//! WRITE. ABORT TASK, LUN RESET, or the loss of the connection (and a new
//! login with the same ISID) cuts it short; the answer (the TMF response, or
//! the new session's first command) must come only after the held member
//! writes were released and have landed, and newer data written into the
//! same range afterwards must be what the volume keeps, with every block
//! and parity of the array consistent.
//!
//! Driven by the test initiator (`initiator-iscsi`), as `wire.rs` is.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use blockdev::{BlockDevice, DeviceIdentity, FaultyDevice, MemDevice, SharedDevice};
use initiator_iscsi::tmf::{self, Function};
use initiator_iscsi::{
    Auth, Command, Error, LoginConfig, ScsiResult, Session, Task, TaskManagement, CHECK_CONDITION,
};
use raid::{Config, RaidArray, SystemClock};
use scsi_disk::{LuConfig, ScsiTarget};
use target_iscsi::server::{Portal, Server, ServerConfig, TargetConfig};

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

/// A session on the rig's target, logged in straight to the Full Feature
/// Phase with `isid`.
async fn login(addr: SocketAddr, isid: [u8; 6]) -> Session {
    let mut cfg = LoginConfig::new("iqn.2026-01.test:raid-abort", Some(IQN));
    cfg.isid = isid;
    cfg.auth = Auth::Skip;
    let mut s = Session::connect(addr, cfg).await.expect("login");
    s.connection().set_timeout(Duration::from_secs(5));
    s
}

/// A write to GOOD status, past a unit attention.
async fn write(c: &mut Session, lba: u32, data: &[u8], fua: bool) {
    let cmd = Command::write(0, &write10(lba, data.len() / BS, fua), data.to_vec());
    let mut r = c.command(cmd.clone()).await.expect("write");
    if r.status == CHECK_CONDITION {
        r = c.command(cmd).await.expect("write");
    }
    assert!(r.is_good(), "write at {lba}: {r:?}");
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

/// The answer that must wait for the held writes: a TMF response, or the
/// status of the new session's first write.
#[derive(Debug)]
enum Answer {
    Tmf(u8),
    Scsi(ScsiResult),
}

/// What the answer is to: a TMF's tag, or the new session's write.
#[derive(Debug, Clone, Copy)]
enum Awaited {
    Tmf(u32),
    Write(Task),
}

async fn answer(c: &mut Session, awaited: Awaited) -> Result<Answer, Error> {
    match awaited {
        Awaited::Tmf(itt) => c
            .wait_task_management(itt)
            .await
            .map(|r| Answer::Tmf(r.response)),
        Awaited::Write(t) => c.wait(t).await.map(Answer::Scsi),
    }
}

async fn cut_short(cut: Cut, isid: [u8; 6]) {
    let rig = Rig::start().await;
    let mut c = login(rig.addr, isid).await;
    // A write elsewhere in row 0 makes the array and the row's bitmap region
    // dirty, so the next write's first member writes are the row's own.
    write(&mut c, 24, &[0x11; 4 * BS], true).await;
    // A FUA write of data chunk 0 of row 0 (blocks 0..16, all immediate
    // data) goes to the members at once; its data member holds the data and
    // the tag write.
    let member = rig.data_member(0).await;
    member.hold_next_writes(2);
    let long = c
        .start(Command::write(
            0,
            &write10(0, 16, true),
            vec![0xAA; 16 * BS],
        ))
        .await
        .expect("the held write sent");
    while member.held_writes() == 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let newer = vec![0x5C; 8 * BS];
    // The answer that must wait for the held writes.
    let awaited = match cut {
        Cut::AbortTask => {
            let tmf = TaskManagement::abort_task(0, long);
            Awaited::Tmf(c.start_task_management(tmf).await.unwrap())
        }
        Cut::LunReset => {
            let tmf = TaskManagement::of_lun(Function::LunReset, 0);
            Awaited::Tmf(c.start_task_management(tmf).await.unwrap())
        }
        Cut::ConnectionLoss => {
            drop(c);
            c = login(rig.addr, isid).await;
            // The second half of the held write's range.
            let w = Command::write(0, &write10(8, 8, false), newer.clone());
            Awaited::Write(c.start(w).await.unwrap())
        }
    };
    // Not answered while the member holds the writes (a correct target and
    // array wait; the time is a chance for a wrong one to show, not a
    // deadline).
    c.connection().set_timeout(Duration::from_millis(300));
    match answer(&mut c, awaited).await {
        Err(Error::Timeout(_)) => {}
        early => panic!("{cut:?} answered while its write was held: {early:?}"),
    }
    c.connection().set_timeout(Duration::from_secs(5));
    member.release_writes();
    let a = answer(&mut c, awaited)
        .await
        .expect("the answer once the writes are released");
    assert_eq!(
        rig.held(),
        0,
        "{cut:?} answered before the held writes had landed"
    );
    match a {
        Answer::Tmf(response) => {
            assert_eq!(response, tmf::COMPLETE, "function complete");
            write(&mut c, 8, &newer, false).await;
        }
        // The reinstated session's write: GOOD, or the new nexus's attention.
        Answer::Scsi(r) if r.status == CHECK_CONDITION => write(&mut c, 8, &newer, false).await,
        Answer::Scsi(r) => assert!(r.is_good(), "{r:?}"),
    }
    // SYNCHRONIZE CACHE, then the volume as the initiator left it.
    let sync = Command::new(0, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert!(c.command(sync).await.expect("sync").is_good());
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
