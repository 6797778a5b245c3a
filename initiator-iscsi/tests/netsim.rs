//! The initiator against opie's target on a simulated network (a proxy
//! that handles every PDU as a script says, `common::wire`): a connection
//! cut at every step of a login (CHAP and digests included), of a write
//! solicited by R2Ts, of a Data-In sequence; header and data digest
//! errors; a target answering late, twice, or never. Login errors are
//! typed; I/O completes verified after reinstatement, or fails with a
//! typed error within a bound; nothing hangs and no stale data lands.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use blockdev::{BlockDevice, DeviceIdentity, ErrorClass, MemDevice, WriteFlags};
use chap::{Algorithm, AlgorithmList, Credential, ResponderConfig};
use initiator_iscsi::{Auth, Error, IscsiDevice, LoginConfig, PipelineConfig, PipelinedSession};
use iscsi_proto::digest::Digest;
use target_iscsi::access::AuthMethod;

mod common;
use common::wire::{Dir, Fault, Seen, Wire};
use common::{stamps, verified_writers, verify, INITIATOR, IQN};

/// Longer than anything here may take: past it, the initiator hangs.
const BOUND: Duration = Duration::from_secs(20);

/// SCSI Command, Data-Out, SCSI Response, Data-In, R2T.
const TASK_PDUS: [u8; 5] = [0x01, 0x05, 0x21, 0x25, 0x31];

async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(BOUND, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no end within {BOUND:?}"))
}

/// How the sessions under test log in and run.
#[derive(Clone)]
struct Setup {
    login: LoginConfig,
    pipe: PipelineConfig,
}

impl Setup {
    /// Mutual CHAP (SHA-256), CRC32C digests both ways.
    fn new() -> Setup {
        let mut login = LoginConfig::new(INITIATOR, Some(IQN));
        login.auth = Auth::Chap(ResponderConfig {
            algorithms: AlgorithmList::new([Algorithm::Sha256]).unwrap(),
            credential: Credential::new("host", "host-secret-16by"),
            mutual: Some(Credential::new("disk", "disk-secret-16by")),
        });
        login.limits.header_digests = vec![Digest::Crc32c];
        login.limits.data_digests = vec![Digest::Crc32c];
        Setup {
            login,
            pipe: PipelineConfig::default(),
        }
    }

    /// Every byte of a write solicited by R2Ts, 4 KiB per burst.
    fn solicited(mut self) -> Setup {
        self.login.limits.initial_r2t = true;
        self.login.limits.immediate_data = false;
        self.login.limits.max_burst_length = 4096;
        self.login.limits.first_burst_length = 4096;
        self
    }

    /// Data-In in PDUs of 4 KiB at most.
    fn small_data_in(mut self) -> Setup {
        self.login.limits.max_recv_data_segment_length = 4096;
        self
    }

    /// A command aborted after `t` without an answer.
    fn command_timeout(mut self, t: Duration) -> Setup {
        self.pipe.command_timeout = t;
        self
    }

    /// A target with CHAP required, and a wire to it.
    async fn target(&self) -> (Wire, tokio::sync::oneshot::Sender<()>) {
        let disk = Arc::new(MemDevice::new(512, 4096, DeviceIdentity::from_name("n")));
        let access = common::chap_access(&common::host_and_disk_secrets(), AuthMethod::None);
        let (addr, stop) = common::start(disk, access).await;
        (Wire::start(addr, true).await, stop)
    }

    /// PDUs of a clean login, both ways.
    async fn login_steps(&self) -> usize {
        let (wire, _stop) = self.target().await;
        let s = self.session(wire.addr).await.unwrap();
        s.logout().await.unwrap();
        let seen = wire.seen();
        seen.iter().filter(|s| s.login).count()
    }

    async fn session(&self, addr: SocketAddr) -> Result<PipelinedSession, Error> {
        PipelinedSession::connect(addr, self.login.clone(), self.pipe).await
    }

    /// A target, a wire, and the device through it (opened).
    async fn device(&self) -> (Arc<IscsiDevice>, Wire, tokio::sync::oneshot::Sender<()>) {
        let (wire, stop) = self.target().await;
        let s = self.session(wire.addr).await.unwrap();
        let dev = IscsiDevice::open(s, 0).await.unwrap();
        (Arc::new(dev), wire, stop)
    }
}

/// A script applying `fault` to the `k`-th PDU on connection 0 that
/// `pick` selects (counted from when the script is put in force), passing
/// everything else.
fn at(
    k: usize,
    fault: Fault,
    pick: impl Fn(&Seen) -> bool + Send + 'static,
) -> impl FnMut(&Seen) -> Fault + Send {
    let mut i = 0;
    move |s: &Seen| {
        if s.conn != 0 || !pick(s) {
            return Fault::Pass;
        }
        i += 1;
        if i - 1 == k {
            fault
        } else {
            Fault::Pass
        }
    }
}

/// The PDUs `pick` selects on connection 0 while `io` runs on a clean wire.
async fn steps<F: std::future::Future>(
    wire: &Wire,
    pick: impl Fn(&Seen) -> bool,
    io: F,
) -> Vec<Seen> {
    let base = wire.count();
    io.await;
    wire.seen()[base..]
        .iter()
        .filter(|s| s.conn == 0 && pick(s))
        .copied()
        .collect()
}

fn task_pdu(s: &Seen) -> bool {
    TASK_PDUS.contains(&s.opcode)
}

async fn write(dev: &IscsiDevice, lba: u64, blocks: u64, generation: u64) -> blockdev::Result<()> {
    let data = stamps(lba, blocks, generation, 512);
    dev.write(lba, data.into(), WriteFlags::default()).await
}

async fn check(dev: &IscsiDevice, lba: u64, blocks: u64, generation: u64) {
    let back = dev.read(lba, blocks as u32).await.unwrap();
    verify(&back, lba, generation, 512).unwrap();
}

#[tokio::test]
async fn a_login_cut_at_any_step_is_a_typed_error() {
    let setup = Setup::new();
    let login_steps = setup.login_steps().await;
    // Security (CHAP_A, CHAP_I/C, CHAP_N/R and the target's), then
    // operational: each a request and a response.
    assert!(login_steps >= 6, "{login_steps} login PDUs");
    for k in 0..login_steps {
        let (wire, _stop) = setup.target().await;
        wire.script(at(k, Fault::Cut, |_| true));
        let e = bounded("login", setup.session(wire.addr))
            .await
            .unwrap_err();
        assert!(
            matches!(e, Error::Closed | Error::Io(_)),
            "cut at login step {k}: {e:?}"
        );
    }
}

#[tokio::test]
async fn a_reinstatement_login_cut_at_any_step_is_retried_and_io_completes() {
    let setup = Setup::new();
    let login_steps = setup.login_steps().await;
    for k in 0..login_steps {
        let (dev, wire, _stop) = setup.device().await;
        // Connection 0 is cut at its next SCSI command; the login of
        // connection 1 at step k; connection 2 logs in.
        let mut on_1 = 0;
        wire.script(move |s: &Seen| match s.conn {
            0 if s.opcode == 0x01 => Fault::Cut,
            1 => {
                on_1 += 1;
                if on_1 - 1 == k {
                    Fault::Cut
                } else {
                    Fault::Pass
                }
            }
            _ => Fault::Pass,
        });
        for w in verified_writers(dev.clone(), 4, 16, 8, 2) {
            bounded("verified writers", w).await.unwrap();
        }
        assert!(wire.connections() >= 3, "login step {k}");
        // Every login names the session by the same ISID (with TSIH 0:
        // reinstatement), so the target ends the old tasks first.
        let logins: Vec<_> = wire
            .seen()
            .into_iter()
            .filter(|s| s.dir == Dir::ToTarget && s.opcode == 0x03)
            .map(|s| (s.header[8..14].to_vec(), [s.header[14], s.header[15]]))
            .collect();
        assert!(logins.iter().all(|l| *l == (logins[0].0.clone(), [0, 0])));
    }
}

#[tokio::test]
async fn a_write_cut_at_any_step_of_its_r2ts_lands_whole_and_once() {
    let setup = Setup::new().solicited();
    let (dev, wire, _stop) = setup.device().await;
    let all = steps(&wire, task_pdu, async {
        write(&dev, 0, 32, 1).await.unwrap();
    })
    .await;
    let r2ts = all.iter().filter(|s| s.opcode == 0x31).count();
    assert!(r2ts >= 4, "16 KiB in 4 KiB bursts: {all:?}");
    for (k, step) in all.iter().enumerate() {
        let mut faults = vec![Fault::Cut, Fault::PassThenCut];
        if step.opcode == 0x05 {
            faults.push(Fault::CutMidway);
        }
        for fault in faults {
            let (dev, wire, _stop) = setup.device().await;
            write(&dev, 64, 32, 1).await.unwrap();
            wire.script(at(k, fault, task_pdu));
            bounded("write", write(&dev, 64, 32, 2))
                .await
                .unwrap_or_else(|e| panic!("{fault:?} at {step:?}: {e}"));
            check(&dev, 64, 32, 2).await;
            assert_eq!(wire.connections(), 2, "{fault:?} at {step:?}");
            // Nothing of the old session lands later over newer data.
            write(&dev, 64, 32, 3).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            check(&dev, 64, 32, 3).await;
        }
    }
}

#[tokio::test]
async fn a_read_cut_before_or_after_any_data_in_returns_verified_data() {
    let setup = Setup::new().small_data_in();
    let (dev, wire, _stop) = setup.device().await;
    write(&dev, 0, 64, 1).await.unwrap();
    let is_data_in = |s: &Seen| s.opcode == 0x25;
    let data_ins = steps(&wire, is_data_in, async {
        check(&dev, 0, 64, 1).await;
    })
    .await;
    assert_eq!(data_ins.len(), 8, "32 KiB in 4 KiB PDUs");
    for k in 0..data_ins.len() {
        for fault in [Fault::Cut, Fault::PassThenCut] {
            let (dev, wire, _stop) = setup.device().await;
            write(&dev, 128, 64, 7).await.unwrap();
            wire.script(at(k, fault, is_data_in));
            bounded("read", check(&dev, 128, 64, 7)).await;
            // After the last Data-In (status in it) the read was done
            // before the cut: the next command finds the connection gone.
            bounded("read", check(&dev, 128, 64, 7)).await;
            assert_eq!(wire.connections(), 2, "{fault:?} at Data-In {k}");
        }
    }
}

#[tokio::test]
async fn digest_errors_either_way_end_in_verified_io() {
    let setup = Setup::new().solicited().small_data_in();
    let cases = [
        (Dir::ToInitiator, 0x25, Fault::BadHeaderDigest),
        (Dir::ToInitiator, 0x25, Fault::BadDataDigest),
        (Dir::ToInitiator, 0x21, Fault::BadHeaderDigest),
        (Dir::ToInitiator, 0x31, Fault::BadHeaderDigest),
        (Dir::ToTarget, 0x01, Fault::BadHeaderDigest),
        (Dir::ToTarget, 0x05, Fault::BadHeaderDigest),
        (Dir::ToTarget, 0x05, Fault::BadDataDigest),
    ];
    for (dir, opcode, fault) in cases {
        let (dev, wire, _stop) = setup.device().await;
        write(&dev, 0, 32, 1).await.unwrap();
        wire.script(at(0, fault, move |s| s.dir == dir && s.opcode == opcode));
        let what = format!("{fault:?} on {opcode:#04x} {dir:?}");
        if let Err(e) = bounded(&what, write(&dev, 0, 32, 2)).await {
            // A Data-Out whose data digest is wrong is rejected by the
            // target (reason 02h) and the write ended (retry later); the others go
            // through a new connection.
            assert!(
                (dir, opcode, fault) == (Dir::ToTarget, 0x05, Fault::BadDataDigest),
                "{what}: {e:?}"
            );
            // Ended by the target and not the write's fault: again later.
            assert_eq!(e.class(), blockdev::ErrorClass::RetryLater, "{what}: {e:?}");
            eprintln!("{what}: {e:?} ({:?})", e.class());
            // Each block old or new, whole; the write again lands.
            let back = dev.read(0, 32).await.unwrap();
            for (i, b) in back.chunks(512).enumerate() {
                let lba = i as u64;
                assert!(verify(b, lba, 1, 512).is_ok() || verify(b, lba, 2, 512).is_ok());
            }
            write(&dev, 0, 32, 2).await.unwrap();
        }
        bounded(&what, check(&dev, 0, 32, 2)).await;
        eprintln!("{what}: {} connections", wire.connections());
    }
}

/// `fault` on the first SCSI Response of a write: the write ends (done or
/// with a typed error) within the bound, later I/O reads back verified.
async fn answered(fault: Fault) -> (blockdev::Result<()>, usize) {
    let setup = Setup::new().command_timeout(Duration::from_millis(300));
    let (dev, wire, _stop) = setup.device().await;
    write(&dev, 0, 16, 1).await.unwrap();
    wire.script(at(0, fault, |s| s.opcode == 0x21));
    let w = bounded("write", write(&dev, 0, 16, 2)).await;
    // Whatever comes late has come; newer data stays.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    bounded("write", write(&dev, 0, 16, 3)).await.unwrap();
    bounded("read", check(&dev, 0, 16, 3)).await;
    (w, wire.connections())
}

#[tokio::test]
async fn a_late_answer_is_aborted_and_dropped_when_it_comes() {
    let (w, connections) = answered(Fault::Hold(Duration::from_millis(800))).await;
    match w {
        Ok(()) => {}
        Err(ref e) => assert_eq!(e.class(), ErrorClass::RetryLater, "{e:?}"),
    }
    eprintln!("late: {w:?}, {connections} connections");
}

#[tokio::test]
async fn a_duplicate_answer_is_dropped() {
    let (w, connections) = answered(Fault::Twice).await;
    w.unwrap();
    eprintln!("twice: {connections} connections");
}

#[tokio::test]
async fn an_answer_that_never_comes_is_a_typed_error_within_the_bound() {
    let (w, connections) = answered(Fault::Swallow).await;
    let e = w.unwrap_err();
    assert_eq!(e.class(), ErrorClass::RetryLater, "{e:?}");
    eprintln!("never: {e:?}, {connections} connections");
}

#[tokio::test]
async fn a_write_that_reaches_the_target_late_never_lands_over_a_newer_one() {
    let setup = Setup::new().command_timeout(Duration::from_millis(300));
    let (dev, wire, _stop) = setup.device().await;
    write(&dev, 0, 8, 1).await.unwrap();
    // The command of generation 2 reaches the target after the initiator
    // gave it up (ABORT TASK naming a command the target has not seen).
    wire.script(at(0, Fault::Hold(Duration::from_millis(800)), |s| {
        s.dir == Dir::ToTarget && s.opcode == 0x01
    }));
    let w = bounded("write", write(&dev, 0, 8, 2)).await;
    if let Err(e) = &w {
        assert_eq!(e.class(), ErrorClass::RetryLater, "{e:?}");
    }
    bounded("write", write(&dev, 0, 8, 3)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    bounded("read", check(&dev, 0, 8, 3)).await;
    eprintln!("held command: {w:?}, {} connections", wire.connections());
}

#[tokio::test]
async fn a_duplicate_data_in_fails_its_read_or_is_dropped_and_nothing_else() {
    let setup = Setup::new().small_data_in();
    for k in [0, 3, 7] {
        let (dev, wire, _stop) = setup.device().await;
        write(&dev, 0, 64, 5).await.unwrap();
        wire.script(at(k, Fault::Twice, |s| s.opcode == 0x25));
        // Taken as the target breaking the protocol: that read fails
        // (typed, the session goes on), or the duplicate is dropped.
        match bounded("read", dev.read(0, 64)).await {
            Ok(back) => verify(&back, 0, 5, 512).unwrap(),
            Err(e) => {
                assert_eq!(e.class(), ErrorClass::OutcomeUnknown, "{e:?}");
                eprintln!("Data-In {k} twice: {e:?}");
            }
        }
        bounded("read", check(&dev, 0, 64, 5)).await;
        assert_eq!(wire.connections(), 1, "Data-In {k} twice");
    }
}
