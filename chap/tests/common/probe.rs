//! A minimal iSCSI login responder that runs only the security stage with
//! [`chap::Authenticator`], for interop tests against real initiators
//! (libiscsi on the host, open-iscsi in the test VM). It is test scaffolding,
//! not a target: after CHAP it reads one more Login Request to see whether the
//! initiator accepted us, then hangs up.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use chap::{
    Algorithm, Authenticator, AuthenticatorConfig, CredentialSet, ErrorKind, KeyValues, Step,
};

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
                let transit = req.flags & 0x80 != 0;
                send_response(&mut s, &req, stat_sn, transit, (0, 0), &text(&keys, &[]));
                // Accepted: the initiator sends its operational-stage keys.
                let continued = match read_request(&mut s) {
                    Some(next) => next.flags & 0x0c == 0x04,
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
