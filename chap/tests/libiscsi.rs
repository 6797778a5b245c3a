//! Interop with a real initiator: libiscsi's `iscsi-inq` logs in with CHAP
//! (one-way and mutual) to a minimal login responder in this test that runs
//! the security stage with [`chap::Authenticator`]. The full target lives in
//! `target-iscsi`; this only proves the CHAP side against a real peer.
//!
//! libiscsi 1.19 offers MD5 only (CHAP_A=5) and takes mutual credentials
//! from the `target_user`/`target_password` URL parameters. Whether libiscsi
//! accepted our mutual answer is seen from what it does next: it sends the
//! operational-stage Login Request, or gives up and closes the connection.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use chap::{
    Authenticator, AuthenticatorConfig, Credential, CredentialSet, ErrorKind, KeyValues, Step,
};

const TARGET: &str = "iqn.2026-11.org.opie:chap-interop";
const USER: &str = "alice";
const SECRET: &str = "alice-secret-16b";
const TARGET_USER: &str = "opie-target";
const TARGET_SECRET: &str = "target-secret-16";

/// One Login Request: flags byte, ITT, CmdSN, ISID and the text keys.
struct Request {
    flags: u8,
    isid: [u8; 6],
    itt: [u8; 4],
    cmdsn: u32,
    keys: Vec<(String, String)>,
}

fn read_request(s: &mut TcpStream) -> Option<Request> {
    let mut bhs = [0u8; 48];
    s.read_exact(&mut bhs).ok()?;
    assert_eq!(
        bhs[0] & 0x3f,
        0x03,
        "expected a Login Request, got opcode {:#x}",
        bhs[0]
    );
    let ahs = usize::from(bhs[4]) * 4;
    let dlen = (usize::from(bhs[5]) << 16) | (usize::from(bhs[6]) << 8) | usize::from(bhs[7]);
    let mut data = vec![0u8; ahs + dlen.div_ceil(4) * 4];
    s.read_exact(&mut data).ok()?;
    let text = &data[ahs..ahs + dlen];
    let keys = text
        .split(|&b| b == 0)
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=').expect("key=value");
            (k.to_owned(), v.to_owned())
        })
        .collect();
    Some(Request {
        flags: bhs[1],
        isid: bhs[8..14].try_into().expect("6 bytes"),
        itt: bhs[16..20].try_into().expect("4 bytes"),
        cmdsn: u32::from_be_bytes(bhs[24..28].try_into().expect("4 bytes")),
        keys,
    })
}

/// A Login Response in the security stage; `transit` moves on to the
/// operational stage.
fn send_response(
    s: &mut TcpStream,
    req: &Request,
    stat_sn: u32,
    transit: bool,
    status: (u8, u8),
    keys: &[u8],
) {
    let mut bhs = [0u8; 48];
    bhs[0] = 0x23;
    bhs[1] = if transit { 0x80 | 0x01 } else { 0x00 }; // CSG=0, NSG=1 when transiting
    let len = keys.len();
    bhs[5] = (len >> 16) as u8;
    bhs[6] = (len >> 8) as u8;
    bhs[7] = len as u8;
    bhs[8..14].copy_from_slice(&req.isid);
    bhs[16..20].copy_from_slice(&req.itt);
    bhs[24..28].copy_from_slice(&stat_sn.to_be_bytes());
    bhs[28..32].copy_from_slice(&req.cmdsn.to_be_bytes());
    bhs[32..36].copy_from_slice(&req.cmdsn.to_be_bytes());
    bhs[36] = status.0;
    bhs[37] = status.1;
    let mut pdu = bhs.to_vec();
    pdu.extend_from_slice(keys);
    pdu.resize(48 + len.div_ceil(4) * 4, 0);
    s.write_all(&pdu).expect("send login response");
}

fn text(keys: &KeyValues, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in extra {
        out.extend_from_slice(format!("{k}={v}\0").as_bytes());
    }
    out.extend_from_slice(&keys.to_text());
    out
}

#[derive(Debug, PartialEq)]
enum Outcome {
    /// CHAP failed on our side with this error kind.
    Refused(ErrorKind),
    /// CHAP succeeded; `continued` tells whether the initiator went on to the
    /// operational stage (it accepted us) or hung up.
    Authenticated { mutual: bool, continued: bool },
}

/// Serve one connection's security stage with `creds`.
fn serve_one(listener: &TcpListener, creds: CredentialSet) -> Outcome {
    let (mut s, _) = listener.accept().expect("accept");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut auth = Authenticator::new(AuthenticatorConfig::default(), creds);
    let mut stat_sn = 1;
    let first = read_request(&mut s).expect("first login request");
    let methods = first
        .keys
        .iter()
        .find(|(k, _)| k == "AuthMethod")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    assert!(
        methods.split(',').any(|m| m == "CHAP"),
        "initiator offers {methods:?}"
    );
    assert!(!chap::has_chap_keys(&first.keys));
    send_response(
        &mut s,
        &first,
        stat_sn,
        false,
        (0, 0),
        b"AuthMethod=CHAP\0TargetPortalGroupTag=1\0",
    );
    loop {
        stat_sn += 1;
        let Some(req) = read_request(&mut s) else {
            panic!("initiator hung up during CHAP");
        };
        match auth.step(&req.keys) {
            Ok(Step::Continue(keys)) => {
                send_response(&mut s, &req, stat_sn, false, (0, 0), &text(&keys, &[]))
            }
            Ok(Step::Done { keys, peer }) => {
                assert_eq!(peer.as_deref(), Some(USER));
                let mutual = !keys.is_empty();
                let transit = req.flags & 0x80 != 0;
                send_response(&mut s, &req, stat_sn, transit, (0, 0), &text(&keys, &[]));
                // Accepted: the initiator sends its operational-stage keys.
                let continued = match read_request(&mut s) {
                    Some(next) => next.flags & 0x0c == 0x04,
                    None => false,
                };
                return Outcome::Authenticated { mutual, continued };
            }
            Err(e) => {
                let status = e.login_status();
                send_response(&mut s, &req, stat_sn, false, status, b"");
                return Outcome::Refused(e.kind());
            }
        }
    }
}

fn run(
    url_user: &str,
    url_secret: &str,
    mutual: Option<(&str, &str)>,
    creds: CredentialSet,
) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let port = listener.local_addr().expect("addr").port();
    let mut url = format!("iscsi://{url_user}%{url_secret}@127.0.0.1:{port}/{TARGET}/0");
    if let Some((u, p)) = mutual {
        url.push_str(&format!("?target_user={u}&target_password={p}"));
    }
    let mut child = Command::new("iscsi-inq")
        .args(["-i", "iqn.2026-11.org.opie:test-initiator", &url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iscsi-inq (package libiscsi-bin) must be installed");
    let outcome = serve_one(&listener, creds);
    let _ = child.kill();
    let _ = child.wait();
    outcome
}

fn creds(mutual: Option<&str>) -> CredentialSet {
    let set = CredentialSet::new().with_user(Credential::new(USER, SECRET));
    match mutual {
        Some(secret) => set.with_mutual(Credential::new(TARGET_USER, secret)),
        None => set,
    }
}

#[test]
fn libiscsi_one_way_chap() {
    assert_eq!(
        run(USER, SECRET, None, creds(None)),
        Outcome::Authenticated {
            mutual: false,
            continued: true
        }
    );
    assert_eq!(
        run(USER, "wrong-secret-123", None, creds(None)),
        Outcome::Refused(ErrorKind::Authentication)
    );
    assert_eq!(
        run("mallory", SECRET, None, creds(None)),
        Outcome::Refused(ErrorKind::Authentication)
    );
}

#[test]
fn libiscsi_mutual_chap() {
    // libiscsi checks our answer to its challenge and continues.
    assert_eq!(
        run(
            USER,
            SECRET,
            Some((TARGET_USER, TARGET_SECRET)),
            creds(Some(TARGET_SECRET))
        ),
        Outcome::Authenticated {
            mutual: true,
            continued: true
        }
    );
    // We answer with a secret libiscsi does not expect: it refuses to go on.
    assert_eq!(
        run(
            USER,
            SECRET,
            Some((TARGET_USER, TARGET_SECRET)),
            creds(Some("another-target-secret"))
        ),
        Outcome::Authenticated {
            mutual: true,
            continued: false
        }
    );
    // Mutual requested but no target credential here: refused.
    assert_eq!(
        run(
            USER,
            SECRET,
            Some((TARGET_USER, TARGET_SECRET)),
            creds(None)
        ),
        Outcome::Refused(ErrorKind::Authentication)
    );
}
