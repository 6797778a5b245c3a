//! Interop with a real initiator: libiscsi's `iscsi-inq` logs in with CHAP
//! (one-way and mutual) to a minimal login responder in this test that runs
//! the security stage with [`chap::Authenticator`]. The full target lives in
//! `target-iscsi`; this only proves the CHAP side against a real peer.
//!
//! libiscsi 1.19 offers MD5 only (CHAP_A=5) and takes mutual credentials
//! from the `target_user`/`target_password` URL parameters. Whether libiscsi
//! accepted our mutual answer is seen from what it does next: it sends the
//! operational-stage Login Request, or gives up and closes the connection.

mod common;

use std::net::TcpListener;
use std::process::{Command, Stdio};

use chap::{Algorithm, Credential, CredentialSet, ErrorKind};
use common::probe::{serve_one, Outcome};

const TARGET: &str = "iqn.2026-11.org.opie:chap-interop";
const USER: &str = "alice";
const SECRET: &str = "alice-secret-16b";
const TARGET_USER: &str = "opie-target";
const TARGET_SECRET: &str = "target-secret-16";

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
    let (alg, peer, outcome) = serve_one(&listener, creds);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(alg, Some(Algorithm::Md5), "libiscsi 1.19 offers MD5 only");
    if let Outcome::Authenticated { .. } = outcome {
        assert_eq!(peer.as_deref(), Some(USER));
    }
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
