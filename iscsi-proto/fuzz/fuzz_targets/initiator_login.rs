//! The initiator's login fed arbitrary Login Responses (half of them
//! addressed to its request): it goes on, ends or fails, never panics.
#![no_main]

use chap::{AlgorithmList, Credential, ResponderConfig};
use iscsi_proto::login::{Auth, InitiatorLogin, LoginConfig, LoginProgress};
use iscsi_proto::pdu::{Bhs, BHS_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let target = (mode & 1 == 0).then_some("iqn.2026-01.org.opie:t");
    let mut cfg = LoginConfig::new("iqn.2026-01.org.opie:i", target);
    cfg.auth = match (mode >> 1) & 3 {
        0 => Auth::Skip,
        1 => Auth::None,
        _ => Auth::Chap(ResponderConfig {
            algorithms: AlgorithmList::default(),
            credential: Credential::new("u", "user-secret-16by"),
            mutual: (mode & 8 != 0).then(|| Credential::new("t", "target-secret-16")),
        }),
    };
    let Ok(mut login) = InitiatorLogin::new(cfg) else {
        return;
    };
    let mut req = login.start();
    // A sequence of (48-byte header, length byte, text) records.
    while rest.len() > BHS_LEN {
        let mut raw = [0u8; BHS_LEN];
        raw.copy_from_slice(&rest[..BHS_LEN]);
        raw[0] = 0x23;
        let n = usize::from(rest[BHS_LEN]).min(rest.len() - BHS_LEN - 1);
        let text = &rest[BHS_LEN + 1..BHS_LEN + 1 + n];
        rest = &rest[BHS_LEN + 1 + n..];
        let Ok(Bhs::LoginResponse(mut r)) = Bhs::decode(&raw) else {
            continue;
        };
        if raw[2] & 1 == 0 {
            r.itt = req.bhs.itt;
            r.isid = req.bhs.isid;
            r.csg = req.bhs.csg;
            (r.status_class, r.status_detail, r.version_active) = (0, 0, 0);
        }
        match login.receive(&r, text) {
            Ok(LoginProgress::Send(next)) => req = next,
            Ok(LoginProgress::Done(_)) | Err(_) => break,
        }
    }
});
