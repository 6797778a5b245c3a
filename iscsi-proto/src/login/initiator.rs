//! The initiator's side of the login phase (RFC 7143 §6.3, §11.12-13): the
//! leading keys, the security stage (AuthMethod, CHAP one-way or mutual
//! through [`chap::Responder`]), the operational stage (offers from the key
//! table through a [`Negotiator`]), the CSG/NSG/T/C bits, ISID and TSIH, and
//! the Login Response statuses as typed errors.
//!
//! Sans-I/O: [`InitiatorLogin::start`] gives the first Login Request,
//! [`InitiatorLogin::receive`] takes each Login Response and gives the next
//! request or the logged-in session's state ([`LoggedIn`]).

use bytes::Bytes;
use chap::{ChapError, Responder, ResponderConfig, Step};

use super::{status, SessionType, AUTH_METHOD};
use crate::negotiate::{
    key_def, Answer, KeyKind, Layer, Limits, NegotiationError, Negotiator, Params,
};
use crate::pdu::{LoginRequest, LoginResponse, Stage};
use crate::text::{TextAccumulator, TextList};

/// The largest data segment of a Login Request: the RFC default
/// MaxRecvDataSegmentLength, which holds until the login is over (§12.12).
pub const LOGIN_SEGMENT: usize = 8192;

/// Most Login Requests one login may take before the target is taken to
/// be stuck in a loop.
const MAX_EXCHANGES: u32 = 64;

/// How the initiator authenticates itself (and, with mutual CHAP, the
/// target).
#[derive(Debug, Clone)]
pub enum Auth {
    /// No security stage: the first request is in the operational stage
    /// (only for targets that require no authentication, §6.3).
    Skip,
    /// A security stage that offers `AuthMethod=None`.
    None,
    /// CHAP (§12.1.3); mutual when the configuration names the target's
    /// credential.
    Chap(ResponderConfig),
}

/// What to log in with.
#[derive(Debug, Clone)]
pub struct LoginConfig {
    /// InitiatorName.
    pub initiator_name: String,
    /// InitiatorAlias, if any.
    pub initiator_alias: Option<String>,
    /// TargetName of a normal session; `None` opens a discovery session.
    pub target_name: Option<String>,
    /// The initiator part of the session identifier.
    pub isid: [u8; 6],
    /// 0 opens a new session (reinstating one with the same ISID, §6.3.5);
    /// the TSIH of an existing session adds a connection to it.
    pub tsih: u16,
    /// Connection id.
    pub cid: u16,
    /// The CmdSN of the login requests, which the first command then uses.
    pub cmd_sn: u32,
    /// Authentication.
    pub auth: Auth,
    /// This side's values of the operational keys.
    pub limits: Limits,
    /// Operational keys offered with these values instead of, or besides,
    /// what `limits` offers (see [`Negotiator::offer`]): a way for tests to
    /// send what a faulty initiator would.
    pub overrides: TextList,
}

impl LoginConfig {
    /// A login of `initiator_name` to `target_name` (`None`: discovery)
    /// with the initiator's usual values ([`Limits::initiator`]), no
    /// authentication, ISID `80 00 00 00 00 01` (a random-qualifier
    /// format ISID), a new session, CID 0 and CmdSN 1.
    pub fn new(initiator_name: &str, target_name: Option<&str>) -> LoginConfig {
        LoginConfig {
            initiator_name: initiator_name.to_string(),
            initiator_alias: None,
            target_name: target_name.map(str::to_string),
            isid: [0x80, 0, 0, 0, 0, 1],
            tsih: 0,
            cid: 0,
            cmd_sn: 1,
            auth: Auth::None,
            limits: Limits::initiator(),
            overrides: TextList::default(),
        }
    }

    fn session_type(&self) -> SessionType {
        if self.target_name.is_some() {
            SessionType::Normal
        } else {
            SessionType::Discovery
        }
    }
}

/// Why a login failed, by what the caller may do about it.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Status class 1: the target is at `address` (a TargetAddress value,
    /// `host:port,tpgt`): log in there instead, for now or for good.
    #[error("redirected {} to {address}", if *.permanent { "permanently" } else { "temporarily" })]
    Redirected {
        /// Where the target is.
        address: String,
        /// Whether the move is for good (detail 2).
        permanent: bool,
    },
    /// 0201: the target did not accept the credentials (or requires
    /// authentication): fix the credentials.
    #[error("authentication failed (status 0201)")]
    AuthenticationFailed,
    /// 0202: this initiator may not log in to this target.
    #[error("not authorized (status 0202)")]
    NotAuthorized,
    /// 0203 (not found) or 0204 (removed): no such target here.
    #[error("no such target (status 02{detail:02x})")]
    TargetNotFound {
        /// 3 or 4.
        detail: u8,
    },
    /// Another class 2 status: the target refused the request as it
    /// stands (missing or bad keys, unsupported version or session type,
    /// no such session): not worth retrying unchanged.
    #[error("login refused (status 02{detail:02x})")]
    Refused {
        /// Status detail.
        detail: u8,
    },
    /// Class 3: the target cannot serve the login now (target error,
    /// service unavailable, out of resources): retry later.
    #[error("target unavailable (status 03{detail:02x})")]
    TargetUnavailable {
        /// Status detail.
        detail: u8,
    },
    /// Mutual CHAP: the target did not prove it knows its secret (or its
    /// name is not the one expected): do not use this target.
    #[error("the target failed mutual authentication: {0}")]
    TargetNotAuthenticated(ChapError),
    /// The CHAP exchange failed on this side (a configuration error, or a
    /// challenge this side refuses): fix the configuration or the target.
    #[error("CHAP: {0}")]
    Chap(ChapError),
    /// The target refused every authentication method offered: configure
    /// one it accepts.
    #[error("no authentication method in common (target answered AuthMethod={0})")]
    AuthMethodRefused(String),
    /// The target's answer to a negotiated key breaks the key's rule: drop
    /// the connection.
    #[error("negotiation failed: {0}")]
    Negotiation(#[from] NegotiationError),
    /// The target broke the login protocol (stages, tags, text, a status
    /// class unknown): drop the connection.
    #[error("the target broke the login protocol: {0}")]
    Protocol(String),
}

impl LoginError {
    /// The error a Login Response status other than success stands for;
    /// `text` is the response's keys (a redirect's TargetAddress).
    pub fn from_status(class: u8, detail: u8, text: &TextList) -> LoginError {
        match (class, detail) {
            (1, d) => LoginError::Redirected {
                address: text.get("TargetAddress").unwrap_or_default().to_string(),
                permanent: d == 2,
            },
            (2, 1) => LoginError::AuthenticationFailed,
            (2, 2) => LoginError::NotAuthorized,
            (2, d @ (3 | 4)) => LoginError::TargetNotFound { detail: d },
            (2, d) => LoginError::Refused { detail: d },
            (3, d) => LoginError::TargetUnavailable { detail: d },
            (c, d) => LoginError::Protocol(format!("status class {c} detail {d}")),
        }
    }

    /// The Login Response status (class, detail) this error came from, if it
    /// came from one.
    pub fn status(&self) -> Option<(u8, u8)> {
        match self {
            LoginError::Redirected { permanent, .. } => Some((1, if *permanent { 2 } else { 1 })),
            LoginError::AuthenticationFailed => Some(status::AUTH_FAILURE),
            LoginError::NotAuthorized => Some(status::AUTHORIZATION_FAILURE),
            LoginError::TargetNotFound { detail } | LoginError::Refused { detail } => {
                Some((2, *detail))
            }
            LoginError::TargetUnavailable { detail } => Some((3, *detail)),
            _ => None,
        }
    }
}

/// One Login Request to send.
#[derive(Debug, Clone)]
pub struct LoginPdu {
    /// The header.
    pub bhs: LoginRequest,
    /// Its text.
    pub data: Bytes,
}

/// What to do after a Login Response.
#[derive(Debug)]
pub enum LoginProgress {
    /// Send this request and wait for the next response.
    Send(LoginPdu),
    /// The connection is in Full Feature Phase.
    Done(Box<LoggedIn>),
}

/// A session the login opened (or a connection it added).
#[derive(Debug, Clone)]
pub struct LoggedIn {
    /// Discovery or normal.
    pub session_type: SessionType,
    /// ISID.
    pub isid: [u8; 6],
    /// The TSIH the target gave the session.
    pub tsih: u16,
    /// Connection id.
    pub cid: u16,
    /// Negotiated parameters, seen from the initiator
    /// (`send_data_segment_length` is the target's declaration).
    pub params: Params,
    /// The CmdSN of the first command.
    pub cmd_sn: u32,
    /// The StatSN expected next.
    pub exp_stat_sn: u32,
    /// The target's ExpCmdSN in its last response.
    pub exp_cmd_sn: u32,
    /// The target's MaxCmdSN in its last response.
    pub max_cmd_sn: u32,
    /// Every key the target sent during the login, in order (CHAP keys
    /// aside).
    pub target_keys: TextList,
    /// TargetAlias, if the target declared one.
    pub target_alias: Option<String>,
    /// TargetPortalGroupTag, as the target declared it.
    pub tpgt: Option<u16>,
    /// The target's CHAP name, once mutual CHAP authenticated it.
    pub authenticated_target: Option<String>,
}

/// Where the security stage stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Security {
    /// AuthMethod offered, not answered yet.
    Offered,
    /// CHAP agreed, CHAP_A sent.
    ChapStarted,
    /// CHAP_N/CHAP_R sent; with mutual CHAP, the target's answer to our
    /// challenge is still to come.
    ChapAnswered { mutual: bool },
    /// Authenticated (or nothing to authenticate).
    Done,
}

/// The login state of one connection, on the initiator's side.
pub struct InitiatorLogin {
    cfg: LoginConfig,
    stage: Stage,
    security: Security,
    neg: Negotiator,
    chap: Option<Responder>,
    itt: u32,
    exp_stat_sn: u32,
    text_in: TextAccumulator,
    /// Text still to send after a request with C=1, and the T/NSG of the
    /// request that will carry its end.
    text_out: Option<(Bytes, bool, Stage)>,
    /// T and NSG of the last request.
    asked: (bool, Stage),
    exchanges: u32,
    keys_seen: TextList,
    alias: Option<String>,
    tpgt: Option<u16>,
    authenticated_target: Option<String>,
}

impl std::fmt::Debug for InitiatorLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitiatorLogin")
            .field("stage", &self.stage)
            .field("security", &self.security)
            .field("exchanges", &self.exchanges)
            .finish_non_exhaustive()
    }
}

impl InitiatorLogin {
    /// A login with `cfg`. Fails only for a CHAP configuration the CHAP
    /// responder refuses (an empty secret, one secret both ways).
    pub fn new(cfg: LoginConfig) -> Result<InitiatorLogin, LoginError> {
        let chap = match &cfg.auth {
            Auth::Chap(c) => Some(Responder::new(c.clone()).map_err(LoginError::Chap)?),
            Auth::Skip | Auth::None => None,
        };
        let neg = Negotiator::initiator(
            cfg.limits.clone(),
            cfg.session_type() == SessionType::Discovery,
        );
        Ok(InitiatorLogin {
            stage: Stage::Security,
            security: Security::Offered,
            neg,
            chap,
            itt: 0,
            exp_stat_sn: 0,
            text_in: TextAccumulator::default(),
            text_out: None,
            asked: (false, Stage::Security),
            exchanges: 0,
            keys_seen: TextList::default(),
            alias: None,
            tpgt: None,
            authenticated_target: None,
            cfg,
        })
    }

    /// The first Login Request: the leading keys, and either the
    /// authentication method offered or (with [`Auth::Skip`]) the
    /// operational offers.
    pub fn start(&mut self) -> LoginPdu {
        let mut t = TextList::default();
        t.push("InitiatorName", self.cfg.initiator_name.clone());
        if let Some(a) = &self.cfg.initiator_alias {
            t.push("InitiatorAlias", a.clone());
        }
        match &self.cfg.target_name {
            Some(name) => {
                t.push("SessionType", "Normal");
                t.push("TargetName", name.clone());
            }
            None => t.push("SessionType", "Discovery"),
        }
        match self.cfg.auth {
            Auth::Skip => {
                self.stage = Stage::Operational;
                self.security = Security::Done;
                self.neg.offer(&self.cfg.overrides, &mut t);
                self.request(t, true, Stage::FullFeature)
            }
            Auth::None => {
                t.push("AuthMethod", "None");
                self.request(t, true, Stage::Operational)
            }
            Auth::Chap(_) => {
                t.push("AuthMethod", "CHAP");
                self.request(t, false, Stage::Security)
            }
        }
    }

    /// Takes one Login Response and its data segment.
    pub fn receive(
        &mut self,
        resp: &LoginResponse,
        data: &[u8],
    ) -> Result<LoginProgress, LoginError> {
        self.exchanges += 1;
        if self.exchanges > MAX_EXCHANGES {
            return Err(protocol("the login does not end"));
        }
        if (resp.status_class, resp.status_detail) != status::SUCCESS {
            // The login is over, whatever else the response says (some
            // targets leave ITT or ISID out of a failure).
            let text = TextList::parse(data).unwrap_or_default();
            return Err(LoginError::from_status(
                resp.status_class,
                resp.status_detail,
                &text,
            ));
        }
        if resp.itt != self.itt || resp.isid != self.cfg.isid {
            return Err(protocol("a Login Response for another login (ITT or ISID)"));
        }
        if resp.version_active != 0 {
            return Err(protocol("version other than 0"));
        }
        self.exp_stat_sn = resp.sns.stat_sn.wrapping_add(1);
        if resp.csg != self.stage {
            return Err(protocol("a response for another stage (CSG)"));
        }
        if let Some((rest, transit, nsg)) = self.text_out.take() {
            // The target acknowledged a part of our text: send the next.
            if resp.transit || !data.is_empty() {
                return Err(protocol("an answer before the end of the request text"));
            }
            return Ok(LoginProgress::Send(self.chunk(rest, transit, nsg)));
        }
        let keys = match self.text_in.push(data, resp.cont) {
            Ok(Some(keys)) => keys,
            Ok(None) => {
                // The target's text continues: ask for the rest (the stage
                // transition asked for before still stands).
                let asked = self.asked;
                let pdu = self.request(TextList::default(), false, Stage::Security);
                self.asked = asked;
                return Ok(LoginProgress::Send(pdu));
            }
            Err(e) => return Err(protocol(&format!("response text: {e}"))),
        };
        if resp.transit {
            let (asked, nsg) = self.asked;
            if !asked || rank(resp.nsg) > rank(nsg) || rank(resp.nsg) <= rank(self.stage) {
                return Err(protocol("a stage transition not asked for (T, NSG)"));
            }
        }
        self.record(&keys)?;
        let mut reply = TextList::default();
        let security = self.stage == Stage::Security;
        if security {
            self.authenticate(&keys, resp.transit, &mut reply)?;
        }
        let operational = TextList(
            keys.0
                .into_iter()
                .filter(|(k, _)| !chap::is_chap_key(k))
                .filter(|(k, _)| key_def(k).is_none_or(|d| d.layer == Layer::Operational))
                .collect(),
        );
        self.neg.take(&operational, security, &mut reply)?;
        if resp.transit {
            if resp.nsg == Stage::FullFeature {
                // Only declarations may be left unanswered at the end.
                if reply.0.iter().any(|(k, _)| !is_declaration(k)) {
                    return Err(protocol("a stage transition with keys still to answer"));
                }
                return self.established(resp).map(LoginProgress::Done);
            }
            self.stage = resp.nsg;
            self.neg.offer(&self.cfg.overrides, &mut reply);
            return Ok(LoginProgress::Send(self.request(
                reply,
                true,
                Stage::FullFeature,
            )));
        }
        // The stage goes on: our answers, and the next step of CHAP.
        if security {
            match self.security {
                Security::Offered => {
                    let Some(chap) = self.chap.as_mut() else {
                        return Err(protocol("a security stage with nothing to do"));
                    };
                    // AuthMethod=CHAP agreed: our algorithms.
                    let offer = chap.start().map_err(LoginError::Chap)?;
                    push_chap(&mut reply, &offer);
                    self.security = Security::ChapStarted;
                    Ok(LoginProgress::Send(self.request(
                        reply,
                        false,
                        Stage::Security,
                    )))
                }
                // Keys sent with a request that asked to move on: ask again.
                _ => Ok(LoginProgress::Send(self.request(
                    reply,
                    true,
                    Stage::Operational,
                ))),
            }
        } else {
            Ok(LoginProgress::Send(self.request(
                reply,
                true,
                Stage::FullFeature,
            )))
        }
    }

    /// The login layer's keys of a response.
    fn record(&mut self, keys: &TextList) -> Result<(), LoginError> {
        for (k, v) in &keys.0 {
            match k.as_str() {
                "TargetAlias" => self.alias = Some(v.clone()),
                "TargetPortalGroupTag" => {
                    let tag = v
                        .parse()
                        .map_err(|_| protocol("TargetPortalGroupTag not a number"))?;
                    self.tpgt = Some(tag);
                }
                _ => {}
            }
        }
        // CHAP values stay out of what may end up in a log.
        let kept = keys.0.iter().filter(|(k, _)| !chap::is_chap_key(k));
        self.keys_seen.0.extend(kept.cloned());
        Ok(())
    }

    /// The security stage's keys: the AuthMethod answer and CHAP.
    fn authenticate(
        &mut self,
        keys: &TextList,
        transit: bool,
        reply: &mut TextList,
    ) -> Result<(), LoginError> {
        if let Some(method) = keys.get("AuthMethod") {
            let offered = if self.chap.is_some() { "CHAP" } else { "None" };
            if self.security != Security::Offered {
                return Err(protocol("AuthMethod answered twice"));
            }
            // The table's rule for AuthMethod (list selection).
            match AUTH_METHOD.kind.accept(offered, method) {
                Answer::Agreed(_) => {}
                Answer::Unchanged => return Err(LoginError::AuthMethodRefused(method.to_string())),
                Answer::Inadmissible => return Err(protocol("an AuthMethod not offered")),
            }
            if self.chap.is_none() {
                self.security = Security::Done;
            }
        }
        let chap_keys = keys.0.iter().filter(|(k, _)| chap::is_chap_key(k));
        match self.security {
            Security::ChapStarted => {
                let Some(chap) = self.chap.as_mut() else {
                    return Err(protocol("CHAP without CHAP"));
                };
                let (out, mutual) = match chap.step(chap_keys).map_err(LoginError::Chap)? {
                    Step::Continue(out) => (out, true),
                    Step::Done { keys, .. } => (keys, false),
                };
                push_chap(reply, &out);
                self.security = Security::ChapAnswered { mutual };
                // Our answer goes with the request to move on; the target
                // is not expected to move already.
                if transit {
                    return Err(protocol("transit before CHAP_R"));
                }
                return Ok(());
            }
            Security::ChapAnswered { mutual: true } => {
                let Some(chap) = self.chap.as_mut() else {
                    return Err(protocol("CHAP without CHAP"));
                };
                if !keys.0.iter().any(|(k, _)| chap::is_chap_key(k)) {
                    return Err(LoginError::TargetNotAuthenticated(ChapError::MissingKey(
                        chap::CHAP_R,
                    )));
                }
                match chap.step(chap_keys) {
                    Ok(Step::Done { peer, .. }) => self.authenticated_target = peer,
                    Ok(Step::Continue(_)) => return Err(protocol("CHAP does not end")),
                    Err(e) => return Err(LoginError::TargetNotAuthenticated(e)),
                }
                self.security = Security::Done;
            }
            Security::ChapAnswered { mutual: false } => self.security = Security::Done,
            Security::Offered | Security::Done => {
                if keys.0.iter().any(|(k, _)| chap::is_chap_key(k)) {
                    return Err(protocol("CHAP keys out of turn"));
                }
            }
        }
        if transit && self.security != Security::Done {
            return Err(protocol(
                "the target left the security stage before authentication was done",
            ));
        }
        Ok(())
    }

    /// The final response: the session's state.
    fn established(&mut self, resp: &LoginResponse) -> Result<Box<LoggedIn>, LoginError> {
        if resp.tsih == 0 || (self.cfg.tsih != 0 && resp.tsih != self.cfg.tsih) {
            return Err(protocol("a TSIH other than the session's"));
        }
        self.stage = Stage::FullFeature;
        self.neg.finish();
        Ok(Box::new(LoggedIn {
            session_type: self.cfg.session_type(),
            isid: self.cfg.isid,
            tsih: resp.tsih,
            cid: self.cfg.cid,
            params: self.neg.params.clone(),
            cmd_sn: self.cfg.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            exp_cmd_sn: resp.sns.exp_cmd_sn,
            max_cmd_sn: resp.sns.max_cmd_sn,
            target_keys: std::mem::take(&mut self.keys_seen),
            target_alias: self.alias.clone(),
            tpgt: self.tpgt,
            authenticated_target: self.authenticated_target.clone(),
        }))
    }

    /// A request in the current stage carrying `text`, split into several
    /// (C=1) where it exceeds [`LOGIN_SEGMENT`].
    fn request(&mut self, text: TextList, transit: bool, nsg: Stage) -> LoginPdu {
        self.chunk(Bytes::from(text.encode()), transit, nsg)
    }

    fn chunk(&mut self, mut text: Bytes, transit: bool, nsg: Stage) -> LoginPdu {
        let cont = text.len() > LOGIN_SEGMENT;
        let data = if cont {
            let first = text.split_to(LOGIN_SEGMENT);
            self.text_out = Some((text, transit, nsg));
            first
        } else {
            text
        };
        let (transit, nsg) = if cont || !transit {
            (false, Stage::Security)
        } else {
            (true, nsg)
        };
        self.asked = (transit, nsg);
        LoginPdu {
            bhs: LoginRequest {
                transit,
                cont,
                csg: self.stage,
                nsg,
                version_max: 0,
                version_min: 0,
                isid: self.cfg.isid,
                tsih: self.cfg.tsih,
                itt: self.itt,
                cid: self.cfg.cid,
                cmd_sn: self.cfg.cmd_sn,
                exp_stat_sn: self.exp_stat_sn,
            },
            data,
        }
    }
}

/// Whether a key is a declaration, which needs no answer.
fn is_declaration(key: &str) -> bool {
    key_def(key).is_some_and(|d| matches!(d.kind, KeyKind::DeclaredNumber(..)))
}

/// Stages in their order (Security < Operational < Full Feature).
fn rank(s: Stage) -> u8 {
    match s {
        Stage::Security => 0,
        Stage::Operational => 1,
        Stage::FullFeature => 3,
    }
}

fn protocol(what: &str) -> LoginError {
    LoginError::Protocol(what.to_string())
}

fn push_chap(out: &mut TextList, keys: &chap::KeyValues) {
    for (k, v) in keys.iter() {
        out.push(k, v);
    }
}
