//! Interop with a real target: the [`chap::Responder`] (the head's initiator
//! side) logs in to tgt (`tgtd`, package `tgt`) on loopback with one-way and
//! mutual CHAP, through a minimal Login Request sender in this test.
//!
//! tgt 1.0.85 maps CHAP_A=7 to SHA-1 (a known bug), so only MD5 is offered.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chap::{
    Algorithm, AlgorithmList, ChapError, Credential, KeyValues, Responder, ResponderConfig, Step,
};

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

/// A Login Response: status and keys.
struct Response {
    transit: bool,
    status: (u8, u8),
    stat_sn: u32,
    keys: Vec<(String, String)>,
}

struct Login {
    s: TcpStream,
    itt: u32,
    exp_stat_sn: u32,
}

impl Login {
    fn connect(port: u16) -> Login {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to tgtd");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Login {
            s,
            itt: 0,
            exp_stat_sn: 0,
        }
    }

    /// Send a security-stage Login Request; `transit` asks to move on to the
    /// operational stage.
    fn send(&mut self, transit: bool, keys: &[u8]) -> Response {
        let mut bhs = [0u8; 48];
        bhs[0] = 0x43;
        bhs[1] = if transit { 0x81 } else { 0x00 };
        let len = keys.len();
        bhs[5] = (len >> 16) as u8;
        bhs[6] = (len >> 8) as u8;
        bhs[7] = len as u8;
        bhs[8..14].copy_from_slice(&[0x80, 0x00, 0x00, 0x00, 0x4f, 0x50]);
        bhs[16..20].copy_from_slice(&self.itt.to_be_bytes());
        bhs[24..28].copy_from_slice(&1u32.to_be_bytes());
        bhs[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
        let mut pdu = bhs.to_vec();
        pdu.extend_from_slice(keys);
        pdu.resize(48 + len.div_ceil(4) * 4, 0);
        self.s.write_all(&pdu).expect("send login request");
        self.itt += 1;

        let mut r = [0u8; 48];
        self.s.read_exact(&mut r).expect("login response");
        assert_eq!(r[0] & 0x3f, 0x23, "expected a Login Response");
        let dlen = (usize::from(r[5]) << 16) | (usize::from(r[6]) << 8) | usize::from(r[7]);
        let mut data = vec![0u8; dlen.div_ceil(4) * 4];
        self.s.read_exact(&mut data).expect("login response data");
        let stat_sn = u32::from_be_bytes(r[24..28].try_into().expect("4 bytes"));
        self.exp_stat_sn = stat_sn.wrapping_add(1);
        let keys = data[..dlen]
            .split(|&b| b == 0)
            .filter(|kv| !kv.is_empty())
            .filter_map(|kv| {
                let kv = String::from_utf8_lossy(kv);
                kv.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
            })
            .collect();
        Response {
            transit: r[1] & 0x80 != 0,
            status: (r[36], r[37]),
            stat_sn,
            keys,
        }
    }
}

#[derive(Debug, PartialEq)]
enum Outcome {
    /// tgt accepted us (status 0, stage transition); `target` is the target's
    /// name as verified by mutual CHAP.
    Accepted { target: Option<String> },
    /// tgt answered with this Login Response status.
    Refused((u8, u8)),
    /// Our responder refused the target.
    WeRefused(String),
}

fn login(tgt: &Tgtd, secret: &str, mutual: Option<&str>) -> Outcome {
    let mut r = Responder::new(ResponderConfig {
        algorithms: AlgorithmList::new([Algorithm::Md5]).expect("list"),
        credential: Credential::new(USER, secret),
        mutual: mutual.map(|m| Credential::new(TARGET_USER, m)),
    })
    .expect("responder");
    let mut l = Login::connect(tgt.port);
    let first = format!(
        "InitiatorName={INITIATOR}\0TargetName={TARGET}\0SessionType=Normal\0AuthMethod=CHAP\0"
    );
    let resp = l.send(false, first.as_bytes());
    assert_eq!(resp.status, (0, 0));
    assert!(
        resp.keys
            .iter()
            .any(|(k, v)| k == "AuthMethod" && v == "CHAP"),
        "tgt wants CHAP"
    );

    let resp = l.send(false, &r.start().expect("start").to_text());
    assert_eq!(resp.status, (0, 0));
    let (keys, done) = match r.step(&resp.keys) {
        Ok(Step::Continue(k)) => (k, false),
        Ok(Step::Done { keys, .. }) => (keys, true),
        Err(e) => panic!("challenge from tgt refused: {e}"),
    };
    assert_eq!(done, mutual.is_none());
    let resp = l.send(true, &keys.to_text());
    if resp.status != (0, 0) {
        return Outcome::Refused(resp.status);
    }
    assert!(resp.transit && resp.stat_sn > 0);
    if done {
        return Outcome::Accepted { target: None };
    }
    match r.step(&resp.keys) {
        Ok(Step::Done { peer, keys }) => {
            assert_eq!(keys, KeyValues::default());
            Outcome::Accepted { target: peer }
        }
        Ok(Step::Continue(_)) => panic!("unexpected continue"),
        Err(e @ ChapError::TargetNotAuthenticated(_)) => Outcome::WeRefused(e.to_string()),
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[test]
fn responder_logs_in_to_tgt_with_one_way_and_mutual_chap() {
    let tgt = Tgtd::start();
    assert_eq!(
        login(&tgt, SECRET, None),
        Outcome::Accepted { target: None }
    );
    assert_eq!(
        login(&tgt, "wrong-secret-123", None),
        Outcome::Refused((0x02, 0x01))
    );
    assert_eq!(
        login(&tgt, SECRET, Some(TARGET_SECRET)),
        Outcome::Accepted {
            target: Some(TARGET_USER.to_owned())
        }
    );
    assert!(matches!(
        login(&tgt, SECRET, Some("not-the-target-secret")),
        Outcome::WeRefused(_)
    ));
}
