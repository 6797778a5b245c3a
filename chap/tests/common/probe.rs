//! A minimal iSCSI login responder that runs only the security stage with
//! [`chap::Authenticator`], for interop tests against real initiators
//! (libiscsi on the host, open-iscsi in the test VM). It is test scaffolding,
//! not a target: after CHAP it reads one more Login Request to see whether the
//! initiator accepted us, then hangs up.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use bytes::Bytes;
use chap::{
    Algorithm, Authenticator, AuthenticatorConfig, CredentialSet, ErrorKind, KeyValues, Step,
};
use iscsi_proto::digest::Digest;
use iscsi_proto::frame::OutPdu;
use iscsi_proto::pdu::{pad_len, Bhs, Framing, LoginRequest, LoginResponse, Sns, Stage, BHS_LEN};
use iscsi_proto::text::TextList;

/// One Login Request and its text keys.
struct Request {
    bhs: LoginRequest,
    keys: Vec<(String, String)>,
}

fn read_request(s: &mut TcpStream) -> Option<Request> {
    let mut raw = [0u8; BHS_LEN];
    s.read_exact(&mut raw).ok()?;
    let f = Framing::of(&raw);
    let mut data = vec![0u8; f.ahs_len + f.data_len + pad_len(f.data_len)];
    s.read_exact(&mut data).ok()?;
    let Ok(Bhs::LoginRequest(bhs)) = Bhs::decode(&raw) else {
        panic!("expected a Login Request, got opcode {:#x}", raw[0]);
    };
    let text = &data[f.ahs_len..f.ahs_len + f.data_len];
    let keys = TextList::parse(text).expect("key=value").0;
    Some(Request { bhs, keys })
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
    let bhs = LoginResponse {
        transit,
        cont: false,
        csg: Stage::Security,
        nsg: if transit {
            Stage::Operational
        } else {
            Stage::Security
        },
        version_max: 0,
        version_active: 0,
        isid: req.bhs.isid,
        tsih: 0,
        itt: req.bhs.itt,
        sns: Sns {
            stat_sn,
            exp_cmd_sn: req.bhs.cmd_sn,
            max_cmd_sn: req.bhs.cmd_sn,
        },
        status_class: status.0,
        status_detail: status.1,
    };
    let pdu = OutPdu::new(
        &Bhs::LoginResponse(bhs),
        Bytes::copy_from_slice(keys),
        Digest::None,
        Digest::None,
    );
    s.write_all(&pdu.to_vec()).expect("send login response");
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
pub enum Outcome {
    /// CHAP failed on our side with this error kind.
    Refused(ErrorKind),
    /// CHAP succeeded; `continued` tells whether the initiator went on to the
    /// operational stage (it accepted us) or hung up.
    Authenticated { mutual: bool, continued: bool },
}

/// Serve one connection's security stage with `creds`.
/// Returns the algorithm chosen (if CHAP got that far), the CHAP_N user
/// authenticated, and the outcome.
pub fn serve_one(
    listener: &TcpListener,
    creds: CredentialSet,
) -> (Option<Algorithm>, Option<String>, Outcome) {
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
                let mutual = !keys.is_empty();
                let transit = req.bhs.transit;
                send_response(&mut s, &req, stat_sn, transit, (0, 0), &text(&keys, &[]));
                // Accepted: the initiator sends its operational-stage keys.
                let continued = match read_request(&mut s) {
                    Some(next) => next.bhs.csg == Stage::Operational,
                    None => false,
                };
                return (
                    auth.algorithm(),
                    peer,
                    Outcome::Authenticated { mutual, continued },
                );
            }
            Err(e) => {
                let status = e.login_status();
                send_response(&mut s, &req, stat_sn, false, status, b"");
                return (auth.algorithm(), None, Outcome::Refused(e.kind()));
            }
        }
    }
}
