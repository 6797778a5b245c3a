//! The target's side of the login phase (RFC 7143 §6.3, §11.12-13): the
//! security and operational stages, the CSG/NSG/T/C bits, the initial
//! declarations, and the hand-over to Full Feature Phase with a TSIH.
//!
//! Sans-I/O: [`Login::handle`] takes one Login Request and returns the Login
//! Response to send. What lies outside one connection (which targets exist,
//! which sessions are open, reinstatement) is asked of a [`LoginContext`].

use bytes::Bytes;

use super::AUTH_METHOD;
use super::{redacted, status, SessionType};
use crate::negotiate::{Limits, NegotiationError, Negotiator, Params};
use crate::pdu::{LoginRequest, LoginResponse, Sns, Stage};
use crate::text::{TextAccumulator, TextList};

/// What the login layer knows about a target it may log into.
#[derive(Debug, Clone)]
pub struct TargetInfo {
    /// Index of the target in the server's configuration.
    pub index: usize,
    /// Its alias, declared in the first response.
    pub alias: Option<String>,
}

/// The initiator-side identity of a session being admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionKey {
    /// InitiatorName.
    pub initiator: String,
    /// ISID.
    pub isid: [u8; 6],
    /// Target index (None for discovery).
    pub target: Option<usize>,
}

/// Steps of the security stage; CHAP plugs in here.
pub trait Authenticator: Send {
    /// Authentication methods offered, in preference order (e.g. `["CHAP"]`
    /// or `["None"]`).
    fn methods(&self) -> Vec<&'static str>;
    /// One exchange of the chosen method: reads the initiator's keys, adds
    /// the target's, and says whether authentication is complete.
    fn step(&mut self, method: &str, keys: &TextList, reply: &mut TextList) -> AuthStep;
}

/// Progress of an authentication exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthStep {
    /// More exchanges needed.
    Continue,
    /// The initiator is authenticated.
    Done,
    /// Authentication failed: the login ends with this status (0201 for a
    /// wrong secret or unknown user, 0200/0207 for a malformed exchange).
    Failed((u8, u8)),
}

/// No authentication (AuthMethod=None).
#[derive(Debug, Default)]
pub struct NoAuth;

impl Authenticator for NoAuth {
    fn methods(&self) -> Vec<&'static str> {
        vec!["None"]
    }
    fn step(&mut self, _: &str, _: &TextList, _: &mut TextList) -> AuthStep {
        AuthStep::Done
    }
}

/// Questions the login asks outside the connection.
pub trait LoginContext {
    /// Looks a target up by name, for a connection arriving on portal group `tpgt`.
    fn target(&self, name: &str, tpgt: u16) -> Option<TargetInfo>;
    /// The authenticator for this initiator and target (None for discovery),
    /// or the status to refuse the login with (0202 when the initiator may
    /// not log in to it).
    fn authenticator(
        &self,
        initiator: &str,
        target: Option<usize>,
    ) -> Result<Box<dyn Authenticator>, (u8, u8)>;
    /// Admits a session: `tsih == 0` opens a new one (reinstating any with the
    /// same key, §6.3.5 at ERL 0) and returns its TSIH; otherwise the
    /// initiator adds a connection to an existing session.
    fn admit(&self, key: &SessionKey, tsih: u16, cid: u16) -> Result<u16, (u8, u8)>;
}

/// A session that reached Full Feature Phase.
#[derive(Debug, Clone)]
pub struct Established {
    /// Discovery or normal.
    pub session_type: SessionType,
    /// Initiator name, ISID and target.
    pub key: SessionKey,
    /// Assigned TSIH.
    pub tsih: u16,
    /// Connection id.
    pub cid: u16,
    /// Negotiated parameters.
    pub params: Params,
    /// The CmdSN the initiator will use next (ExpCmdSN).
    pub exp_cmd_sn: u32,
    /// The StatSN of the next status to send.
    pub stat_sn: u32,
}

/// What to do after a login request.
#[derive(Debug)]
pub enum LoginOutcome {
    /// Send the response and wait for the next request.
    Continue,
    /// Send the response (a failure status) and close the connection.
    Failed,
    /// Send the response: the connection is in Full Feature Phase.
    FullFeature(Box<Established>),
}

/// One Login Response to send.
#[derive(Debug)]
pub struct LoginReply {
    /// The header.
    pub bhs: LoginResponse,
    /// Its text.
    pub data: Bytes,
    /// What follows.
    pub outcome: LoginOutcome,
}

/// Command window offered at login (MaxCmdSN - ExpCmdSN + 1).
pub const LOGIN_WINDOW: u32 = 1;

/// The login state of one connection.
pub struct Login {
    tpgt: u16,
    stage: Stage,
    first: Option<LoginRequest>,
    text: TextAccumulator,
    neg: Negotiator,
    auth: Option<Box<dyn Authenticator>>,
    auth_method: Option<&'static str>,
    authenticated: bool,
    initiator: Option<String>,
    session_type: SessionType,
    target: Option<TargetInfo>,
    stat_sn: u32,
    exp_cmd_sn: u32,
    sent_declarations: bool,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("stage", &self.stage)
            .field("initiator", &self.initiator)
            .finish()
    }
}

impl Login {
    /// A new connection on a portal of group `tpgt`.
    pub fn new(tpgt: u16, limits: Limits) -> Login {
        Login {
            tpgt,
            stage: Stage::Security,
            first: None,
            text: TextAccumulator::default(),
            neg: Negotiator::new(limits, false),
            auth: None,
            auth_method: None,
            authenticated: false,
            initiator: None,
            session_type: SessionType::Normal,
            target: None,
            stat_sn: 0,
            exp_cmd_sn: 0,
            sent_declarations: false,
        }
    }

    /// Handles one Login Request with its data segment.
    pub fn handle(
        &mut self,
        req: &LoginRequest,
        data: &[u8],
        ctx: &dyn LoginContext,
    ) -> LoginReply {
        match self.step(req, data, ctx) {
            Ok(r) => r,
            Err(st) => self.reply(
                req,
                st,
                TextList::default(),
                LoginOutcome::Failed,
                false,
                Stage::Security,
            ),
        }
    }

    fn reply(
        &mut self,
        req: &LoginRequest,
        st: (u8, u8),
        text: TextList,
        outcome: LoginOutcome,
        transit: bool,
        nsg: Stage,
    ) -> LoginReply {
        let tsih = match &outcome {
            LoginOutcome::FullFeature(e) => e.tsih,
            _ => 0,
        };
        let bhs = LoginResponse {
            transit,
            cont: false,
            csg: req.csg,
            nsg: if transit { nsg } else { Stage::Security },
            version_max: 0,
            version_active: 0,
            isid: req.isid,
            tsih,
            itt: req.itt,
            sns: Sns {
                stat_sn: self.stat_sn,
                exp_cmd_sn: self.exp_cmd_sn,
                max_cmd_sn: self.exp_cmd_sn.wrapping_add(LOGIN_WINDOW - 1),
            },
            status_class: st.0,
            status_detail: st.1,
        };
        self.stat_sn = self.stat_sn.wrapping_add(1);
        LoginReply {
            bhs,
            data: Bytes::from(text.encode()),
            outcome,
        }
    }

    fn step(
        &mut self,
        req: &LoginRequest,
        data: &[u8],
        ctx: &dyn LoginContext,
    ) -> Result<LoginReply, (u8, u8)> {
        match &self.first {
            None => {
                self.stat_sn = req.exp_stat_sn;
                if req.version_min > 0 {
                    return Err(status::UNSUPPORTED_VERSION);
                }
                self.first = Some(*req);
                // An initiator that needs no authentication may start in the
                // operational stage (§6.3).
                if req.csg == Stage::Operational {
                    self.stage = Stage::Operational;
                }
            }
            Some(first) => {
                if first.isid != req.isid || first.tsih != req.tsih || first.cid != req.cid {
                    return Err(status::INITIATOR_ERROR);
                }
            }
        }
        self.exp_cmd_sn = req.cmd_sn;
        if req.csg != self.stage || req.csg == Stage::FullFeature {
            return Err(status::INITIATOR_ERROR);
        }
        if req.transit && req.cont {
            return Err(status::INITIATOR_ERROR);
        }
        let Some(keys) = self
            .text
            .push(data, req.cont)
            .map_err(|_| status::INITIATOR_ERROR)?
        else {
            // More text to come: acknowledge with an empty response.
            return Ok(self.reply(
                req,
                status::SUCCESS,
                TextList::default(),
                LoginOutcome::Continue,
                false,
                Stage::Security,
            ));
        };
        if tracing::enabled!(tracing::Level::TRACE) {
            tracing::trace!(keys = %redacted(&keys), "login request keys");
        }
        let mut reply = TextList::default();
        if self.initiator.is_none() {
            self.leading_keys(&keys, ctx, &mut reply)?;
        } else if keys.get("InitiatorName").is_some()
            || keys.get("SessionType").is_some()
            || keys.get("TargetName").is_some()
        {
            // Declared once, in the first request.
            return Err(status::INITIATOR_ERROR);
        }
        let security = self.stage == Stage::Security;
        if !security && !self.authenticated {
            // Skipped the security stage: only allowed without authentication.
            if !self.none_allowed() {
                return Err(status::AUTH_FAILURE);
            }
            self.authenticated = true;
        }
        if security {
            self.security(&keys, &mut reply)?;
        } else if keys.get("AuthMethod").is_some()
            || keys.0.iter().any(|(k, _)| k.starts_with("CHAP_"))
        {
            return Err(status::INITIATOR_ERROR);
        }
        // CHAP keys belong to the authenticator, not the negotiation table.
        let keys = if security {
            TextList(
                keys.0
                    .into_iter()
                    .filter(|(k, _)| !chap::is_chap_key(k))
                    .collect(),
            )
        } else {
            keys
        };
        self.neg
            .respond(&keys, security, &mut reply)
            .map_err(|_: NegotiationError| status::INITIATOR_ERROR)?;
        if !security {
            self.neg.declare(&mut reply);
        }
        if !req.transit {
            return Ok(self.reply(
                req,
                status::SUCCESS,
                reply,
                LoginOutcome::Continue,
                false,
                Stage::Security,
            ));
        }
        // The initiator wants to move on.
        match (req.csg, req.nsg) {
            (Stage::Security, Stage::Operational)
            | (Stage::Security, Stage::FullFeature)
            | (Stage::Operational, Stage::FullFeature) => {}
            _ => return Err(status::INITIATOR_ERROR),
        }
        if security && !self.authenticated {
            // Leaving the security stage requires a completed authentication.
            if self.auth_method == Some("None")
                || (self.auth_method.is_none() && self.none_allowed())
            {
                self.authenticated = true;
            } else if self.authenticating() {
                // The exchange is still under way: the target does not
                // transit yet (T=0) and waits for the next keys (§6.3).
                return Ok(self.reply(
                    req,
                    status::SUCCESS,
                    reply,
                    LoginOutcome::Continue,
                    false,
                    Stage::Security,
                ));
            } else {
                return Err(status::AUTH_FAILURE);
            }
        }
        if req.nsg == Stage::Operational {
            self.stage = Stage::Operational;
            return Ok(self.reply(
                req,
                status::SUCCESS,
                reply,
                LoginOutcome::Continue,
                true,
                Stage::Operational,
            ));
        }
        // Full Feature Phase.
        let key = SessionKey {
            initiator: self.initiator.clone().unwrap_or_default(),
            isid: req.isid,
            target: self.target.as_ref().map(|t| t.index),
        };
        let tsih = ctx.admit(&key, req.tsih, req.cid)?;
        self.neg.finish();
        let est = Established {
            session_type: self.session_type,
            key,
            tsih,
            cid: req.cid,
            params: self.neg.params.clone(),
            exp_cmd_sn: req.cmd_sn,
            stat_sn: self.stat_sn.wrapping_add(1),
        };
        Ok(self.reply(
            req,
            status::SUCCESS,
            reply,
            LoginOutcome::FullFeature(Box::new(est)),
            true,
            Stage::FullFeature,
        ))
    }

    /// Whether an authentication method other than None was agreed: a
    /// failure from now on is a failed authentication attempt (for backoff).
    pub fn authenticating(&self) -> bool {
        self.auth_method.is_some_and(|m| m != "None")
    }

    fn none_allowed(&self) -> bool {
        self.auth
            .as_ref()
            .is_some_and(|a| a.methods().contains(&"None"))
    }

    fn leading_keys(
        &mut self,
        keys: &TextList,
        ctx: &dyn LoginContext,
        reply: &mut TextList,
    ) -> Result<(), (u8, u8)> {
        let Some(name) = keys.get("InitiatorName") else {
            return Err(status::MISSING_PARAMETER);
        };
        if name.is_empty() {
            return Err(status::MISSING_PARAMETER);
        }
        self.session_type = match keys.get("SessionType").unwrap_or("Normal") {
            "Normal" => SessionType::Normal,
            "Discovery" => SessionType::Discovery,
            _ => return Err(status::SESSION_TYPE_NOT_SUPPORTED),
        };
        if self.session_type == SessionType::Normal {
            let Some(tn) = keys.get("TargetName") else {
                return Err(status::MISSING_PARAMETER);
            };
            let t = ctx.target(tn, self.tpgt).ok_or(status::NOT_FOUND)?;
            if let Some(a) = &t.alias {
                reply.push("TargetAlias", a.clone());
            }
            self.target = Some(t);
        }
        self.neg
            .set_discovery(self.session_type == SessionType::Discovery);
        if !self.sent_declarations {
            self.sent_declarations = true;
            reply.push("TargetPortalGroupTag", self.tpgt.to_string());
        }
        self.auth = Some(ctx.authenticator(name, self.target.as_ref().map(|t| t.index))?);
        self.initiator = Some(name.to_string());
        Ok(())
    }

    fn security(&mut self, keys: &TextList, reply: &mut TextList) -> Result<(), (u8, u8)> {
        let Some(auth) = self.auth.as_mut() else {
            return Err(status::TARGET_ERROR);
        };
        if let Some(offer) = keys.get("AuthMethod") {
            if self.auth_method.is_some() {
                return Err(status::INITIATOR_ERROR);
            }
            // The table's rule for AuthMethod (list selection).
            let ours = auth.methods();
            let agreed = AUTH_METHOD.kind.respond(offer, &ours.join(","));
            match agreed.and_then(|a| ours.iter().find(|o| **o == a).copied()) {
                Some(m) => {
                    self.auth_method = Some(m);
                    reply.push("AuthMethod", m);
                    if m == "None" {
                        self.authenticated = true;
                    }
                }
                None => {
                    // Nothing acceptable: answer Reject and fail the login (§6.2).
                    return Err(status::AUTH_FAILURE);
                }
            }
        }
        let method = self.auth_method;
        if let Some(m) = method.filter(|m| *m != "None") {
            if keys.0.iter().any(|(k, _)| k.starts_with("CHAP_"))
                || keys.get("AuthMethod").is_some()
            {
                match auth.step(m, keys, reply) {
                    AuthStep::Continue => {}
                    AuthStep::Done => self.authenticated = true,
                    AuthStep::Failed(st) => return Err(st),
                }
            }
        } else if keys.0.iter().any(|(k, _)| k.starts_with("CHAP_")) {
            return Err(status::INITIATOR_ERROR);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use std::sync::Mutex;

    /// A context with one target and an in-memory session table.
    pub struct Ctx {
        pub sessions: Mutex<Vec<(SessionKey, u16)>>,
        pub next: Mutex<u16>,
        pub reinstated: Mutex<Vec<u16>>,
    }

    impl Ctx {
        pub fn new() -> Ctx {
            Ctx {
                sessions: Mutex::new(vec![]),
                next: Mutex::new(1),
                reinstated: Mutex::new(vec![]),
            }
        }
    }

    impl LoginContext for Ctx {
        fn target(&self, name: &str, tpgt: u16) -> Option<TargetInfo> {
            (name == "iqn.2026-01.test:t1" && tpgt == 1).then(|| TargetInfo {
                index: 0,
                alias: Some("disk".into()),
            })
        }
        fn authenticator(
            &self,
            _: &str,
            _: Option<usize>,
        ) -> Result<Box<dyn Authenticator>, (u8, u8)> {
            Ok(Box::new(NoAuth))
        }
        fn admit(&self, key: &SessionKey, tsih: u16, _cid: u16) -> Result<u16, (u8, u8)> {
            let mut s = self.sessions.lock().unwrap();
            if tsih != 0 {
                return if s.iter().any(|(_, t)| *t == tsih) {
                    Err(status::TOO_MANY_CONNECTIONS)
                } else {
                    Err(status::SESSION_DOES_NOT_EXIST)
                };
            }
            if key.target.is_some() {
                if let Some(pos) = s.iter().position(|(k, _)| k == key) {
                    let (_, old) = s.remove(pos);
                    self.reinstated.lock().unwrap().push(old);
                }
            }
            let mut n = self.next.lock().unwrap();
            let t = *n;
            *n += 1;
            s.push((key.clone(), t));
            Ok(t)
        }
    }

    pub fn req(csg: Stage, nsg: Stage, transit: bool) -> LoginRequest {
        LoginRequest {
            transit,
            cont: false,
            csg,
            nsg,
            version_max: 0,
            version_min: 0,
            isid: [0x80, 0, 0, 0, 0, 1],
            tsih: 0,
            itt: 7,
            cid: 0,
            cmd_sn: 10,
            exp_stat_sn: 0,
        }
    }

    fn text(pairs: &[(&str, &str)]) -> Vec<u8> {
        TextList(
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        )
        .encode()
    }

    #[test]
    fn security_then_operational_then_full_feature() {
        let ctx = Ctx::new();
        let mut l = Login::new(1, Limits::default());
        let r = l.handle(
            &req(Stage::Security, Stage::Operational, true),
            &text(&[
                ("InitiatorName", "iqn.i"),
                ("TargetName", "iqn.2026-01.test:t1"),
                ("SessionType", "Normal"),
                ("AuthMethod", "None"),
            ]),
            &ctx,
        );
        assert!(matches!(r.outcome, LoginOutcome::Continue));
        assert_eq!((r.bhs.status_class, r.bhs.status_detail), (0, 0));
        assert!(r.bhs.transit);
        assert_eq!(r.bhs.nsg, Stage::Operational);
        let t = TextList::parse(&r.data).unwrap();
        assert_eq!(t.get("TargetPortalGroupTag"), Some("1"));
        assert_eq!(t.get("AuthMethod"), Some("None"));
        assert_eq!(t.get("TargetAlias"), Some("disk"));

        let r = l.handle(
            &req(Stage::Operational, Stage::FullFeature, true),
            &text(&[
                ("HeaderDigest", "CRC32C,None"),
                ("MaxRecvDataSegmentLength", "65536"),
            ]),
            &ctx,
        );
        let LoginOutcome::FullFeature(e) = r.outcome else {
            panic!("not established")
        };
        assert_eq!(e.tsih, 1);
        assert_eq!(r.bhs.tsih, 1);
        assert_eq!(e.params.header_digest, Digest::Crc32c);
        assert_eq!(e.params.send_data_segment_length, 65536);
        assert_eq!(e.exp_cmd_sn, 10);
        assert_eq!(e.stat_sn, r.bhs.sns.stat_sn.wrapping_add(1));
        let t = TextList::parse(&r.data).unwrap();
        assert_eq!(t.get("MaxRecvDataSegmentLength"), Some("262144"));
    }

    #[test]
    fn operational_first_without_authentication() {
        let ctx = Ctx::new();
        let mut l = Login::new(1, Limits::default());
        let r = l.handle(
            &req(Stage::Operational, Stage::FullFeature, true),
            &text(&[
                ("InitiatorName", "iqn.i"),
                ("TargetName", "iqn.2026-01.test:t1"),
                ("ImmediateData", "Yes"),
            ]),
            &ctx,
        );
        let LoginOutcome::FullFeature(e) = r.outcome else {
            panic!("not established")
        };
        assert!(e.params.immediate_data);
        assert_eq!(
            TextList::parse(&r.data)
                .unwrap()
                .get("TargetPortalGroupTag"),
            Some("1")
        );
    }

    #[test]
    fn straight_to_full_feature_from_security() {
        let ctx = Ctx::new();
        let mut l = Login::new(1, Limits::default());
        let r = l.handle(
            &req(Stage::Security, Stage::FullFeature, true),
            &text(&[("InitiatorName", "iqn.i"), ("SessionType", "Discovery")]),
            &ctx,
        );
        let LoginOutcome::FullFeature(e) = r.outcome else {
            panic!("not established")
        };
        assert_eq!(e.session_type, SessionType::Discovery);
    }

    #[test]
    fn failures() {
        let ctx = Ctx::new();
        let cases: Vec<(LoginRequest, Vec<u8>, (u8, u8))> = vec![
            (
                req(Stage::Security, Stage::Operational, true),
                text(&[("TargetName", "iqn.2026-01.test:t1")]),
                status::MISSING_PARAMETER,
            ),
            (
                req(Stage::Security, Stage::Operational, true),
                text(&[("InitiatorName", "iqn.i")]),
                status::MISSING_PARAMETER,
            ),
            (
                req(Stage::Security, Stage::Operational, true),
                text(&[("InitiatorName", "iqn.i"), ("TargetName", "iqn.nope")]),
                status::NOT_FOUND,
            ),
            (
                req(Stage::Security, Stage::Operational, true),
                text(&[("InitiatorName", "iqn.i"), ("SessionType", "Weird")]),
                status::SESSION_TYPE_NOT_SUPPORTED,
            ),
            (
                req(Stage::Security, Stage::Operational, true),
                text(&[
                    ("InitiatorName", "iqn.i"),
                    ("SessionType", "Discovery"),
                    ("AuthMethod", "CHAP"),
                ]),
                status::AUTH_FAILURE,
            ),
            (
                req(Stage::Operational, Stage::Operational, true),
                text(&[("InitiatorName", "iqn.i"), ("SessionType", "Discovery")]),
                status::INITIATOR_ERROR,
            ),
            (
                req(Stage::Security, Stage::Operational, true),
                b"garbage\0".to_vec(),
                status::INITIATOR_ERROR,
            ),
            (
                LoginRequest {
                    version_min: 3,
                    ..req(Stage::Security, Stage::Operational, true)
                },
                text(&[("InitiatorName", "iqn.i"), ("SessionType", "Discovery")]),
                status::UNSUPPORTED_VERSION,
            ),
            (
                LoginRequest {
                    tsih: 9,
                    ..req(Stage::Security, Stage::FullFeature, true)
                },
                text(&[
                    ("InitiatorName", "iqn.i"),
                    ("TargetName", "iqn.2026-01.test:t1"),
                ]),
                status::SESSION_DOES_NOT_EXIST,
            ),
        ];
        for (r, d, st) in cases {
            let mut l = Login::new(1, Limits::default());
            let out = l.handle(&r, &d, &ctx);
            assert!(matches!(out.outcome, LoginOutcome::Failed), "{st:?}");
            assert_eq!((out.bhs.status_class, out.bhs.status_detail), st);
        }
    }

    #[test]
    fn a_login_with_too_many_keys_is_refused() {
        let ctx = Ctx::new();
        let mut l = Login::new(1, Limits::default());
        let mut keys = vec![("InitiatorName".to_string(), "iqn.i".to_string())];
        keys.extend((0..crate::text::MAX_KEYS).map(|i| (format!("X-k{i}"), "v".to_string())));
        let out = l.handle(
            &req(Stage::Security, Stage::Operational, true),
            &TextList(keys).encode(),
            &ctx,
        );
        assert!(matches!(out.outcome, LoginOutcome::Failed));
        assert_eq!(
            (out.bhs.status_class, out.bhs.status_detail),
            status::INITIATOR_ERROR
        );
    }

    #[test]
    fn target_on_wrong_portal_group_is_not_found() {
        let ctx = Ctx::new();
        let mut l = Login::new(2, Limits::default());
        let out = l.handle(
            &req(Stage::Security, Stage::Operational, true),
            &text(&[
                ("InitiatorName", "iqn.i"),
                ("TargetName", "iqn.2026-01.test:t1"),
            ]),
            &ctx,
        );
        assert_eq!(
            (out.bhs.status_class, out.bhs.status_detail),
            status::NOT_FOUND
        );
    }

    #[test]
    fn a_refused_declaration_is_answered_once() {
        // MaxRecvDataSegmentLength below 512 is answered Reject; the
        // target's own declaration must not follow it into the same list.
        let ctx = Ctx::new();
        let mut l = Login::new(1, Limits::default());
        let r = l.handle(
            &req(Stage::Operational, Stage::FullFeature, true),
            &text(&[
                ("InitiatorName", "iqn.i"),
                ("TargetName", "iqn.2026-01.test:t1"),
                ("MaxRecvDataSegmentLength", "100"),
            ]),
            &ctx,
        );
        let t = TextList::parse(&r.data).expect("one key once");
        assert_eq!(t.get("MaxRecvDataSegmentLength"), Some("Reject"));
        let LoginOutcome::FullFeature(e) = r.outcome else {
            panic!("not established")
        };
        assert_eq!(e.params.send_data_segment_length, 8192);
    }

    #[test]
    fn continued_text_is_accumulated() {
        let ctx = Ctx::new();
        let mut l = Login::new(1, Limits::default());
        let all = text(&[("InitiatorName", "iqn.i"), ("SessionType", "Discovery")]);
        let mut r1 = req(Stage::Security, Stage::FullFeature, false);
        r1.cont = true;
        let out = l.handle(&r1, &all[..5], &ctx);
        assert!(matches!(out.outcome, LoginOutcome::Continue));
        assert!(out.data.is_empty());
        let out = l.handle(
            &req(Stage::Security, Stage::FullFeature, true),
            &all[5..],
            &ctx,
        );
        assert!(matches!(out.outcome, LoginOutcome::FullFeature(_)));
    }

    #[test]
    fn session_reinstatement_replaces_old_session() {
        let ctx = Ctx::new();
        let keys = text(&[
            ("InitiatorName", "iqn.i"),
            ("TargetName", "iqn.2026-01.test:t1"),
        ]);
        let mut tsihs = vec![];
        for _ in 0..2 {
            let mut l = Login::new(1, Limits::default());
            let out = l.handle(&req(Stage::Security, Stage::FullFeature, true), &keys, &ctx);
            let LoginOutcome::FullFeature(e) = out.outcome else {
                panic!()
            };
            tsihs.push(e.tsih);
        }
        assert_ne!(tsihs[0], tsihs[1]);
        assert_eq!(*ctx.reinstated.lock().unwrap(), vec![tsihs[0]]);
        assert_eq!(ctx.sessions.lock().unwrap().len(), 1);
        // A different ISID is a second session of the same initiator.
        let mut l = Login::new(1, Limits::default());
        let r = LoginRequest {
            isid: [0x80, 0, 0, 0, 0, 2],
            ..req(Stage::Security, Stage::FullFeature, true)
        };
        assert!(matches!(
            l.handle(&r, &keys, &ctx).outcome,
            LoginOutcome::FullFeature(_)
        ));
        assert_eq!(ctx.sessions.lock().unwrap().len(), 2);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_login_text_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), csg in 0u8..2, t in proptest::prelude::any::<bool>()) {
            let ctx = Ctx::new();
            let mut l = Login::new(1, Limits::default());
            let stage = if csg == 0 { Stage::Security } else { Stage::Operational };
            let _ = l.handle(&req(stage, Stage::FullFeature, t), &data, &ctx);
        }
    }
}
