//! Interop with a real target: the initiator logs in to tgt (`tgtd`,
//! package `tgt`) on loopback with one-way and mutual CHAP
//! ([`chap::Responder`] inside its login), through both stages; then
//! verified I/O at a queue depth above one with CRC32C header and data
//! digests, one-way and mutual.
//!
//! tgt 1.0.85 maps CHAP_A=7 to SHA-1 (a known bug), so only MD5 is offered.
//! The I/O runs through `PipelinedSession` (the engine under `IscsiDevice`):
//! `IscsiDevice` opens opie disks only (their identity designator), and tgt
//! cannot carry one (its T10 designator is 36 bytes, opie's 40).
//!
//! tgt must be installed: the tests fail without it, they never skip.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chap::{Algorithm, AlgorithmList, Credential, ResponderConfig};
use initiator_iscsi::disk_commands as cdb;
use initiator_iscsi::{
    Auth, Error, LoginConfig, LoginError, PipelineConfig, PipelinedSession, Session,
};
use iscsi_proto::digest::Digest;
use tempfile::NamedTempFile;

mod common;
use common::{stamps, verify};

const TARGET: &str = "iqn.2026-11.org.opie:tgt-chap";
const INITIATOR: &str = "iqn.2026-11.org.opie:head";
const USER: &str = "head";
const SECRET: &str = "head-secret-16by";
const TARGET_USER: &str = "tgt-target";
const TARGET_SECRET: &str = "tgt-target-secret";

/// tgt's logical unit (LUN 0 is its controller).
const LUN: u64 = 1;
/// Blocks of 512 bytes in tgt's backing file.
const BLOCKS: u64 = 8192;

/// A tgtd instance on its own loopback port and control socket, serving a
/// file-backed LU, shut down on drop.
struct Tgtd {
    child: Child,
    ctl: String,
    port: u16,
    _backing: NamedTempFile,
}

impl Tgtd {
    fn start() -> Tgtd {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let ctl = (5000 + port % 1000).to_string();
        let child = Command::new("tgtd")
            .args([
                "-f",
                "-C",
                &ctl,
                "--iscsi",
                &format!("portal=127.0.0.1:{port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tgtd (package tgt) must be installed");
        let backing = NamedTempFile::new().expect("backing file");
        backing.as_file().set_len(BLOCKS * 512).expect("sized");
        let t = Tgtd {
            child,
            ctl,
            port,
            _backing: backing,
        };
        for _ in 0..100 {
            if t.adm(&["--mode", "target", "--op", "show"]) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let setup = [
            format!("--mode target --op new --tid 1 --targetname {TARGET}"),
            "--mode target --op bind --tid 1 -I ALL".to_owned(),
            // tgt offers no digests unless told to.
            "--mode target --op update --tid 1 --name HeaderDigest --value CRC32C,None".to_owned(),
            "--mode target --op update --tid 1 --name DataDigest --value CRC32C,None".to_owned(),
            format!(
                "--mode logicalunit --op new --tid 1 --lun {LUN} -b {}",
                t._backing.path().display()
            ),
            format!("--mode account --op new --user {USER} --password {SECRET}"),
            format!("--mode account --op bind --tid 1 --user {USER}"),
            format!("--mode account --op new --user {TARGET_USER} --password {TARGET_SECRET}"),
            format!("--mode account --op bind --tid 1 --user {TARGET_USER} --outgoing"),
        ];
        let ok = setup
            .iter()
            .all(|line| t.adm(&line.split(' ').collect::<Vec<_>>()));
        assert!(ok, "configuring tgtd failed");
        // Wait for the portal to accept connections.
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", t.port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        t
    }

    fn adm(&self, args: &[&str]) -> bool {
        Command::new("tgtadm")
            .args(["-C", &self.ctl, "--lld", "iscsi"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Tgtd {
    fn drop(&mut self) {
        self.adm(&["--mode", "system", "--op", "delete", "--force"]);
        let _ = self.child.kill();
        let _ = self.child.wait();
        for suffix in ["", ".lock"] {
            let _ = std::fs::remove_file(format!("/var/run/tgtd/socket.{}{suffix}", self.ctl));
        }
    }
}

#[derive(Debug, PartialEq)]
enum Outcome {
    /// tgt accepted us (the session is in Full Feature Phase); `target` is
    /// the target's name as verified by mutual CHAP.
    Accepted { target: Option<String> },
    /// tgt answered with this Login Response status.
    Refused((u8, u8)),
    /// Our side refused the target (mutual CHAP).
    WeRefused(String),
}

/// MD5 CHAP with `secret`, mutual with `mutual` as the target's.
fn chap(secret: &str, mutual: Option<&str>) -> LoginConfig {
    let mut cfg = LoginConfig::new(INITIATOR, Some(TARGET));
    cfg.isid = [0x80, 0x00, 0x00, 0x00, 0x4f, 0x50];
    cfg.auth = Auth::Chap(ResponderConfig {
        algorithms: AlgorithmList::new([Algorithm::Md5]).expect("list"),
        credential: Credential::new(USER, secret),
        mutual: mutual.map(|m| Credential::new(TARGET_USER, m)),
    });
    cfg
}

async fn login(tgt: &Tgtd, secret: &str, mutual: Option<&str>) -> Outcome {
    let addr = SocketAddr::from(([127, 0, 0, 1], tgt.port));
    match Session::connect(addr, chap(secret, mutual)).await {
        Ok(s) => {
            let target = s.info().authenticated_target.clone();
            s.logout().await.expect("logout");
            Outcome::Accepted { target }
        }
        Err(Error::Login(e @ LoginError::TargetNotAuthenticated(_))) => {
            Outcome::WeRefused(e.to_string())
        }
        Err(Error::Login(e)) => match e.status() {
            Some(st) => Outcome::Refused(st),
            None => panic!("unexpected login error {e}"),
        },
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[tokio::test]
async fn the_initiator_logs_in_to_tgt_with_one_way_and_mutual_chap() {
    let tgt = Tgtd::start();
    assert_eq!(
        login(&tgt, SECRET, None).await,
        Outcome::Accepted { target: None }
    );
    assert_eq!(
        login(&tgt, "wrong-secret-123", None).await,
        Outcome::Refused((0x02, 0x01))
    );
    assert_eq!(
        login(&tgt, SECRET, Some(TARGET_SECRET)).await,
        Outcome::Accepted {
            target: Some(TARGET_USER.to_owned())
        }
    );
    assert!(matches!(
        login(&tgt, SECRET, Some("not-the-target-secret")).await,
        Outcome::WeRefused(_)
    ));
}

/// Runs `cmd` to GOOD, past the unit attentions a new nexus starts with.
async fn good(s: &PipelinedSession, cmd: initiator_iscsi::Command) -> Vec<u8> {
    for _ in 0..4 {
        let r = s.command(cmd.clone()).await.expect("answered");
        if r.is_unit_attention() {
            continue;
        }
        assert!(r.is_good(), "{:?}: {r:?}", cmd.cdb);
        return r.data;
    }
    panic!("unit attentions without end");
}

/// `writers` callers at once on one session, each on its own 32 blocks:
/// each generation written stamped, read back and checked.
async fn verified_io(s: Arc<PipelinedSession>, writers: u64, generations: u64) {
    use initiator_iscsi::Command as Cmd;
    good(&s, Cmd::new(LUN, &cdb::test_unit_ready())).await;
    let tasks: Vec<_> = (0..writers)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let (lba, n) = (i * 64, 32u32);
                for generation in 1..=generations {
                    let data = stamps(lba, n.into(), generation, 512);
                    let fua = generation % 2 == 0;
                    good(&s, Cmd::write(LUN, &cdb::write16(lba, n, fua), data)).await;
                    let back = good(&s, Cmd::read(LUN, &cdb::read16(lba, n), n * 512)).await;
                    verify(&back, lba, generation, 512).unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn verified_io_with_digests_and_md5_chap_one_way_and_mutual() {
    let tgt = Tgtd::start();
    let addr = SocketAddr::from(([127, 0, 0, 1], tgt.port));
    for mutual in [None, Some(TARGET_SECRET)] {
        let mut cfg = chap(SECRET, mutual);
        cfg.limits.header_digests = vec![Digest::Crc32c];
        cfg.limits.data_digests = vec![Digest::Crc32c];
        let pipe = PipelineConfig {
            queue_depth: 8,
            ..PipelineConfig::default()
        };
        let s = PipelinedSession::connect(addr, cfg, pipe).await.unwrap();
        let info = s.info();
        assert_eq!(
            info.authenticated_target.as_deref(),
            mutual.map(|_| TARGET_USER)
        );
        let p = &info.params;
        assert_eq!(
            (p.header_digest, p.data_digest),
            (Digest::Crc32c, Digest::Crc32c)
        );
        let s = Arc::new(s);
        verified_io(s.clone(), 8, 4).await;
        Arc::into_inner(s)
            .expect("one owner")
            .logout()
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn connections_to_tgt_cut_under_verified_io_are_reinstated_invisibly() {
    use common::wire::{Dir, Fault, Seen, Wire};
    let tgt = Tgtd::start();
    let wire = Wire::start(SocketAddr::from(([127, 0, 0, 1], tgt.port)), true).await;
    // Connections 0 to 2 are each cut at their 12th SCSI command.
    let mut commands = [0usize; 3];
    wire.script(move |s: &Seen| {
        if s.dir != Dir::ToTarget || s.opcode != 0x01 || s.conn >= commands.len() {
            return Fault::Pass;
        }
        commands[s.conn] += 1;
        if commands[s.conn] == 12 {
            Fault::Cut
        } else {
            Fault::Pass
        }
    });
    let mut cfg = chap(SECRET, Some(TARGET_SECRET));
    cfg.limits.header_digests = vec![Digest::Crc32c];
    cfg.limits.data_digests = vec![Digest::Crc32c];
    let pipe = PipelineConfig {
        queue_depth: 8,
        ..PipelineConfig::default()
    };
    let s = PipelinedSession::connect(wire.addr, cfg, pipe)
        .await
        .unwrap();
    let io = verified_io(Arc::new(s), 8, 6);
    tokio::time::timeout(Duration::from_secs(60), io)
        .await
        .expect("no hang");
    assert_eq!(wire.connections(), 4, "three cuts, three reinstatements");
}
