//! Our initiator's login against our target's, both sans-I/O, wired back
//! to back.
#![allow(dead_code)]

use chap::{Credential, CredentialSet, Step};
use iscsi_proto::login::{
    AuthStep, Authenticator, Established, InitiatorLogin, LoggedIn, Login, LoginConfig,
    LoginContext, LoginError, LoginOutcome, LoginProgress, NoAuth, SessionKey, TargetInfo,
};
use iscsi_proto::negotiate::Limits;
use iscsi_proto::text::TextList;

pub const TARGET: &str = "iqn.2026-01.test:t1";
pub const INITIATOR: &str = "iqn.2026-01.test:i1";

/// The target's CHAP through [`chap::Authenticator`].
pub struct ChapAuth(pub chap::Authenticator<CredentialSet>);

impl Authenticator for ChapAuth {
    fn methods(&self) -> Vec<&'static str> {
        vec!["CHAP"]
    }
    fn step(&mut self, _: &str, keys: &TextList, reply: &mut TextList) -> AuthStep {
        if !chap::has_chap_keys(keys.0.iter()) {
            return AuthStep::Continue;
        }
        match self.0.step(keys.0.iter()) {
            Ok(Step::Continue(k)) => {
                k.iter().for_each(|(a, b)| reply.push(a, b));
                AuthStep::Continue
            }
            Ok(Step::Done { keys: k, .. }) => {
                k.iter().for_each(|(a, b)| reply.push(a, b));
                AuthStep::Done
            }
            Err(e) => AuthStep::Failed(e.login_status()),
        }
    }
}

/// One target (`TARGET`), any initiator; CHAP with `creds` if given.
pub struct Ctx {
    pub creds: Option<CredentialSet>,
}

impl LoginContext for Ctx {
    fn target(&self, name: &str, _tpgt: u16) -> Option<TargetInfo> {
        (name == TARGET).then(|| TargetInfo {
            index: 0,
            alias: Some("disk".into()),
        })
    }
    fn authenticator(&self, _: &str, _: Option<usize>) -> Result<Box<dyn Authenticator>, (u8, u8)> {
        Ok(match &self.creds {
            Some(c) => Box::new(ChapAuth(chap::Authenticator::new(
                chap::AuthenticatorConfig::default(),
                c.clone(),
            ))),
            None => Box::new(NoAuth),
        })
    }
    fn admit(&self, _: &SessionKey, tsih: u16, _: u16) -> Result<u16, (u8, u8)> {
        if tsih == 0 {
            Ok(0x1234)
        } else {
            Err((2, 0x0a))
        }
    }
}

/// CHAP credentials of the target: alice, and its own for mutual CHAP.
pub fn target_creds() -> CredentialSet {
    CredentialSet::new()
        .with_user(Credential::new("alice", "alice-secret-16b"))
        .with_mutual(Credential::new("disk0", "disk0-secret-16b"))
}

/// Runs a login of `cfg` against our target with `limits` and `ctx`:
/// both sides' outcomes, and how many requests it took.
pub fn login(
    cfg: LoginConfig,
    limits: Limits,
    ctx: &Ctx,
) -> (
    Result<Box<LoggedIn>, LoginError>,
    Option<Box<Established>>,
    u32,
) {
    let mut target = Login::new(1, limits);
    let mut init = match InitiatorLogin::new(cfg) {
        Ok(i) => i,
        Err(e) => return (Err(e), None, 0),
    };
    let mut pdu = init.start();
    let mut requests = 1;
    loop {
        let reply = target.handle(&pdu.bhs, &pdu.data, ctx);
        let est = match reply.outcome {
            LoginOutcome::FullFeature(e) => Some(e),
            _ => None,
        };
        match init.receive(&reply.bhs, &reply.data) {
            Ok(LoginProgress::Send(next)) => {
                assert!(est.is_none(), "the target is in Full Feature Phase");
                pdu = next;
                requests += 1;
            }
            Ok(LoginProgress::Done(l)) => return (Ok(l), est, requests),
            Err(e) => return (Err(e), est, requests),
        }
    }
}
