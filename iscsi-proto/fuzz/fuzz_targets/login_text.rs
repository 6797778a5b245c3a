//! The login state machine fed arbitrary login requests and text: it
//! answers or fails the login, never panics.
#![no_main]

use iscsi_proto::login::{Authenticator, Login, LoginContext, LoginOutcome, NoAuth, SessionKey, TargetInfo};
use iscsi_proto::negotiate::Limits;
use iscsi_proto::pdu::{Bhs, BHS_LEN};
use iscsi_proto::text::TextList;
use libfuzzer_sys::fuzz_target;

struct Ctx;

impl LoginContext for Ctx {
    fn target(&self, name: &str, tpgt: u16) -> Option<TargetInfo> {
        (name == "iqn.2026-01.org.opie:t" && tpgt == 1).then(|| TargetInfo { index: 0, alias: None })
    }
    fn authenticator(&self, _: &str, _: Option<usize>) -> Result<Box<dyn Authenticator>, (u8, u8)> {
        Ok(Box::new(NoAuth))
    }
    fn admit(&self, _: &SessionKey, tsih: u16, _: u16) -> Result<u16, (u8, u8)> {
        if tsih == 0 { Ok(1) } else { Err((2, 0x0a)) }
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = TextList::parse(data);
    let mut login = Login::new(1, Limits::default());
    // A sequence of (48-byte header, length byte, text) records.
    let mut rest = data;
    while rest.len() > BHS_LEN {
        let mut raw = [0u8; BHS_LEN];
        raw.copy_from_slice(&rest[..BHS_LEN]);
        raw[0] = 0x43;
        let n = usize::from(rest[BHS_LEN]).min(rest.len() - BHS_LEN - 1);
        let text = &rest[BHS_LEN + 1..BHS_LEN + 1 + n];
        rest = &rest[BHS_LEN + 1 + n..];
        let Ok(Bhs::LoginRequest(req)) = Bhs::decode(&raw) else { continue };
        let reply = login.handle(&req, text, &Ctx);
        match reply.outcome {
            LoginOutcome::Continue => {}
            LoginOutcome::Failed | LoginOutcome::FullFeature(_) => break,
        }
    }
});
