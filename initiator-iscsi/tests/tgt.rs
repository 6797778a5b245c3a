//! Interop with a real target: the initiator logs in to tgt (`tgtd`,
//! package `tgt`) on loopback with one-way and mutual CHAP
//! ([`chap::Responder`] inside its login), through both stages.
//!
//! tgt 1.0.85 maps CHAP_A=7 to SHA-1 (a known bug), so only MD5 is offered.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chap::{Algorithm, AlgorithmList, Credential, ResponderConfig};
use initiator_iscsi::{Auth, Error, LoginConfig, LoginError, Session};

const TARGET: &str = "iqn.2026-11.org.opie:tgt-chap";
const INITIATOR: &str = "iqn.2026-11.org.opie:head";
const USER: &str = "head";
const SECRET: &str = "head-secret-16by";
const TARGET_USER: &str = "tgt-target";
const TARGET_SECRET: &str = "tgt-target-secret";

/// A tgtd instance on its own loopback port and control socket, shut down on
/// drop.
struct Tgtd {
    child: Child,
    ctl: String,
    port: u16,
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
        let t = Tgtd { child, ctl, port };
        for _ in 0..100 {
            if t.adm(&["--mode", "target", "--op", "show"]) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let setup = [
            format!("--mode target --op new --tid 1 --targetname {TARGET}"),
            "--mode target --op bind --tid 1 -I ALL".to_owned(),
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

async fn login(tgt: &Tgtd, secret: &str, mutual: Option<&str>) -> Outcome {
    let mut cfg = LoginConfig::new(INITIATOR, Some(TARGET));
    cfg.isid = [0x80, 0x00, 0x00, 0x00, 0x4f, 0x50];
    cfg.auth = Auth::Chap(ResponderConfig {
        algorithms: AlgorithmList::new([Algorithm::Md5]).expect("list"),
        credential: Credential::new(USER, secret),
        mutual: mutual.map(|m| Credential::new(TARGET_USER, m)),
    });
    let addr = SocketAddr::from(([127, 0, 0, 1], tgt.port));
    match Session::connect(addr, cfg).await {
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
