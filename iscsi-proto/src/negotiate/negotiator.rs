//! One side's negotiation across a login (or a Text exchange), in either
//! role: answering the peer's offers ([`Negotiator::respond`]), and offering
//! its own values and taking the answers ([`Negotiator::offer`],
//! [`Negotiator::take`]). Every rule comes from the key table.

use super::keys::{key_def, Answer, KeyDef, KeyKind, KeyPhase, Layer, Sender, KEYS};
use super::keys::{parse_number, RESERVED_ANSWERS};
use super::values::{Limits, Params};
use crate::text::TextList;

/// Which end of the session a negotiator speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The initiator.
    Initiator,
    /// The target.
    Target,
}

impl Role {
    fn sender(self) -> Sender {
        match self {
            Role::Initiator => Sender::Initiator,
            Role::Target => Sender::Target,
        }
    }
}

/// A failure that ends the login (§11.13.5 status 0x02xx on a target; a
/// dropped connection on an initiator).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    /// A key outside its stage (e.g. AuthMethod in operational stage).
    #[error("key {0} not allowed in this stage")]
    WrongStage(String),
    /// A key already negotiated was offered again.
    #[error("key {0} negotiated twice")]
    Renegotiated(String),
    /// The peer answered an offer with a value the key's rule does not
    /// allow (§6.2.2): the negotiation cannot be trusted.
    #[error("answer {key}={answer} is not admissible for the offer {key}={offered}")]
    Inadmissible {
        /// The key.
        key: String,
        /// What this side offered.
        offered: String,
        /// What the peer answered.
        answer: String,
    },
}

/// One side's negotiation across a login (or a Text exchange).
#[derive(Debug, Clone)]
pub struct Negotiator {
    limits: Limits,
    role: Role,
    discovery: bool,
    /// Negotiated values so far.
    pub params: Params,
    /// Keys settled: answered by us or answered to us.
    done: Vec<&'static str>,
    /// Declarations already sent.
    declared: Vec<&'static str>,
    /// Our offers awaiting an answer: the key and the value offered.
    pending: Vec<(String, String)>,
}

impl Negotiator {
    /// The target's negotiator for a session; `discovery` makes the
    /// normal-session keys Irrelevant.
    pub fn new(limits: Limits, discovery: bool) -> Negotiator {
        Negotiator::with_role(Role::Target, limits, discovery)
    }

    /// The initiator's negotiator for a session.
    pub fn initiator(limits: Limits, discovery: bool) -> Negotiator {
        Negotiator::with_role(Role::Initiator, limits, discovery)
    }

    fn with_role(role: Role, limits: Limits, discovery: bool) -> Negotiator {
        let mut params = Params::default();
        for def in KEYS {
            if let (KeyKind::DeclaredNumber(..), Some(own)) = (def.kind, limits.own(def.name)) {
                params.set_declared(def.name, &own, false);
            }
        }
        Negotiator {
            limits,
            role,
            discovery,
            params,
            done: Vec::new(),
            declared: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// Switches the session type once SessionType is known.
    pub fn set_discovery(&mut self, discovery: bool) {
        self.discovery = discovery;
    }

    /// Responder: answers the operational keys of `offer` into `reply`.
    /// Keys the peer declares to the login and discovery layers (names,
    /// SessionType, AuthMethod, SendTargets) are theirs and skipped.
    /// `security` tells whether the exchange is in the security stage.
    pub fn respond(
        &mut self,
        offer: &TextList,
        security: bool,
        reply: &mut TextList,
    ) -> Result<(), NegotiationError> {
        for (k, v) in &offer.0 {
            self.respond_one(k, v, security, reply)?;
        }
        Ok(())
    }

    /// Originator: offers this side's value of every operational key it may
    /// originate in this session (and its declarations) into `out`. A key
    /// in `overrides` is offered with that value instead, and an override
    /// the table does not offer (an unknown key, a key irrelevant here) is
    /// sent as it is: tests use them to send what a faulty peer would.
    pub fn offer(&mut self, overrides: &TextList, out: &mut TextList) {
        for def in KEYS {
            if !def.offered_by(self.role.sender(), self.discovery) || self.settled(def.name) {
                continue;
            }
            let value = overrides
                .get(def.name)
                .map(str::to_string)
                .or_else(|| self.limits.own(def.name));
            if let Some(value) = value {
                self.originate(def.name, value, out);
            }
        }
        for (k, v) in &overrides.0 {
            if out.get(k).is_none() && !self.settled(k) {
                self.originate(k, v.clone(), out);
            }
        }
    }

    fn originate(&mut self, key: &str, value: String, out: &mut TextList) {
        if let Some(def) = key_def(key) {
            if let KeyKind::DeclaredNumber(lo, hi) = def.kind {
                self.declared.push(def.name);
                let n = parse_number(&value).unwrap_or(0);
                if (u64::from(lo)..=u64::from(hi)).contains(&n) {
                    self.params.set_declared(def.name, &value, false);
                }
            }
        }
        self.pending.push((key.to_string(), value.clone()));
        out.push(key, value);
    }

    fn settled(&self, key: &str) -> bool {
        self.done.contains(&key)
            || self.declared.contains(&key)
            || self.pending.iter().any(|(p, _)| p == key)
    }

    /// Originator: takes the peer's keys of one response. Answers to our
    /// offers are checked against the key's rule and applied; the peer's
    /// declarations are recorded; keys the peer offers itself are answered
    /// into `reply` as [`Negotiator::respond`] would. Keys of the login and
    /// discovery layers are theirs and skipped.
    pub fn take(
        &mut self,
        keys: &TextList,
        security: bool,
        reply: &mut TextList,
    ) -> Result<(), NegotiationError> {
        for (k, v) in &keys.0 {
            if let Some(i) = self.pending.iter().position(|(p, _)| p == k) {
                let (key, offered) = self.pending.remove(i);
                self.take_answer(key, offered, v)?;
            } else if !RESERVED_ANSWERS.contains(&v.as_str()) {
                self.respond_one(k, v, security, reply)?;
            }
        }
        Ok(())
    }

    fn take_answer(
        &mut self,
        key: String,
        offered: String,
        answer: &str,
    ) -> Result<(), NegotiationError> {
        // An override the table does not know: whatever came back.
        let Some(def) = key_def(&key) else {
            return Ok(());
        };
        self.done.push(def.name);
        match def.kind.accept(&offered, answer) {
            Answer::Agreed(agreed) => self.apply(def, &agreed),
            Answer::Unchanged => {}
            Answer::Inadmissible => {
                return Err(NegotiationError::Inadmissible {
                    key,
                    offered,
                    answer: answer.to_string(),
                })
            }
        }
        Ok(())
    }

    /// The agreed value of a key (the peer's declaration, for a declared
    /// number) into the parameters.
    fn apply(&mut self, def: &KeyDef, agreed: &str) {
        match def.kind {
            KeyKind::DeclaredNumber(..) => self.params.set_declared(def.name, agreed, true),
            KeyKind::Obsolete | KeyKind::Declarative => {}
            _ => self.params.set(def.name, agreed),
        }
    }

    /// Adds this side's declarations not yet sent (its
    /// MaxRecvDataSegmentLength) to an operational-stage reply.
    pub fn declare(&mut self, reply: &mut TextList) {
        for def in KEYS {
            if !matches!(def.kind, KeyKind::DeclaredNumber(..)) || self.declared.contains(&def.name)
            {
                continue;
            }
            if let Some(own) = self.limits.own(def.name) {
                self.declared.push(def.name);
                reply.push(def.name, own);
            }
        }
    }

    /// Final rules once the login is over: offers left unanswered whose
    /// answer is optional take their implied outcome (§6.2.2), any other
    /// keeps its value, and FirstBurstLength is capped at MaxBurstLength.
    pub fn finish(&mut self) {
        for (key, offered) in std::mem::take(&mut self.pending) {
            if let Some(def) = key_def(&key) {
                if let Some(v) = def.kind.implied(&offered) {
                    self.apply(def, &v);
                }
            }
        }
        self.params.settle();
    }

    /// Answers one key the peer offered.
    fn respond_one(
        &mut self,
        k: &str,
        v: &str,
        security: bool,
        reply: &mut TextList,
    ) -> Result<(), NegotiationError> {
        let Some(def) = key_def(k) else {
            reply.push(k, "NotUnderstood");
            return Ok(());
        };
        if def.layer != Layer::Operational && def.sender != self.role.sender() {
            return Ok(());
        }
        if def.phase == KeyPhase::Security && !security {
            return Err(NegotiationError::WrongStage(k.to_string()));
        }
        if self.done.contains(&def.name) {
            return Err(NegotiationError::Renegotiated(k.to_string()));
        }
        self.done.push(def.name);
        let answer = self.answer(def, v);
        reply.push(def.name, answer);
        Ok(())
    }

    /// The answer to one offered key, from the table's rule for it and this
    /// side's own value; the agreed value goes into the parameters.
    fn answer(&mut self, def: &'static KeyDef, v: &str) -> String {
        if self.discovery && def.normal_only {
            return "Irrelevant".into();
        }
        if def.sender == self.role.sender() {
            // A key only this side sends, offered by the peer.
            return "Irrelevant".into();
        }
        let own = match def.kind {
            KeyKind::Obsolete => String::new(),
            _ => match self.limits.own(def.name) {
                Some(own) => own,
                None => return "NotUnderstood".into(),
            },
        };
        let Some(agreed) = def.kind.respond(v, &own) else {
            if let KeyKind::DeclaredNumber(..) = def.kind {
                // The key goes back as Reject: a declaration of ours as
                // well would put it twice in one list.
                self.declared.push(def.name);
            }
            return "Reject".into();
        };
        match def.kind {
            KeyKind::DeclaredNumber(..) => {
                // Declarative: the answer is our own declaration.
                self.params.set_declared(def.name, v, true);
                self.declared.push(def.name);
            }
            _ => self.apply(def, &agreed),
        }
        agreed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    fn list(pairs: &[(&str, &str)]) -> TextList {
        TextList(
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        )
    }

    fn run(offer: &[(&str, &str)], discovery: bool) -> (TextList, Params) {
        let mut n = Negotiator::new(Limits::default(), discovery);
        let mut reply = TextList::default();
        n.respond(&list(offer), false, &mut reply).unwrap();
        n.finish();
        (reply, n.params)
    }

    #[test]
    fn open_iscsi_defaults() {
        let (r, p) = run(
            &[
                ("HeaderDigest", "None"),
                ("DataDigest", "CRC32C,None"),
                ("InitialR2T", "No"),
                ("ImmediateData", "Yes"),
                ("MaxRecvDataSegmentLength", "262144"),
                ("MaxBurstLength", "16776192"),
                ("FirstBurstLength", "262144"),
                ("DefaultTime2Wait", "0"),
                ("DefaultTime2Retain", "0"),
                ("MaxOutstandingR2T", "1"),
                ("ErrorRecoveryLevel", "0"),
                ("MaxConnections", "1"),
            ],
            false,
        );
        assert_eq!(r.get("DataDigest"), Some("CRC32C"));
        assert_eq!(r.get("InitialR2T"), Some("No"));
        assert_eq!(r.get("MaxBurstLength"), Some("1048576"));
        assert_eq!(r.get("DefaultTime2Wait"), Some("2"));
        assert_eq!(p.data_digest, Digest::Crc32c);
        assert_eq!(p.header_digest, Digest::None);
        assert_eq!(p.send_data_segment_length, 262144);
        assert_eq!(p.first_burst_length, 262144);
        assert!(!p.initial_r2t);
    }

    #[test]
    fn boolean_and_or_rules() {
        let (_, p) = run(&[("InitialR2T", "Yes"), ("ImmediateData", "No")], false);
        assert!(p.initial_r2t);
        assert!(!p.immediate_data);
    }

    #[test]
    fn bad_values_are_rejected() {
        let (r, p) = run(
            &[
                ("MaxRecvDataSegmentLength", "100"),
                ("MaxBurstLength", "abc"),
                ("InitialR2T", "Maybe"),
                ("HeaderDigest", "MD5"),
                ("MaxOutstandingR2T", "0"),
                ("ErrorRecoveryLevel", "3"),
            ],
            false,
        );
        for k in [
            "MaxRecvDataSegmentLength",
            "MaxBurstLength",
            "InitialR2T",
            "HeaderDigest",
            "MaxOutstandingR2T",
            "ErrorRecoveryLevel",
        ] {
            assert_eq!(r.get(k), Some("Reject"), "{k}");
        }
        assert_eq!(p.send_data_segment_length, 8192);
    }

    #[test]
    fn unknown_and_discovery_irrelevant() {
        let (r, _) = run(
            &[
                ("X-com.example.foo", "1"),
                ("Bogus", "1"),
                ("MaxBurstLength", "4096"),
                ("OFMarkInt", "1-2"),
            ],
            true,
        );
        assert_eq!(r.get("X-com.example.foo"), Some("NotUnderstood"));
        assert_eq!(r.get("Bogus"), Some("NotUnderstood"));
        assert_eq!(r.get("MaxBurstLength"), Some("Irrelevant"));
        assert_eq!(r.get("OFMarkInt"), Some("Irrelevant"));
    }

    #[test]
    fn hex_numbers_and_renegotiation() {
        let mut n = Negotiator::new(Limits::default(), false);
        let mut reply = TextList::default();
        n.respond(&list(&[("MaxBurstLength", "0x1000")]), false, &mut reply)
            .unwrap();
        assert_eq!(reply.get("MaxBurstLength"), Some("4096"));
        let again = n.respond(&list(&[("MaxBurstLength", "8192")]), false, &mut reply);
        assert!(matches!(again, Err(NegotiationError::Renegotiated(_))));
    }

    #[test]
    fn first_burst_never_exceeds_max_burst() {
        let (_, p) = run(
            &[("MaxBurstLength", "4096"), ("FirstBurstLength", "65536")],
            false,
        );
        assert_eq!(p.first_burst_length, 4096);
    }

    #[test]
    fn auth_method_is_the_login_layers() {
        let mut n = Negotiator::new(Limits::default(), false);
        let mut reply = TextList::default();
        // AuthMethod belongs to the login layer, which enforces its stage.
        n.respond(&list(&[("AuthMethod", "None")]), false, &mut reply)
            .unwrap();
        assert!(reply.is_empty());
    }

    #[test]
    fn the_targets_own_declaration() {
        let n = Negotiator::new(Limits::default(), false);
        assert_eq!(n.params.recv_data_segment_length, 262_144);
    }

    #[test]
    fn keys_only_targets_send_are_irrelevant_from_an_initiator() {
        let (r, _) = run(
            &[
                ("TargetAlias", "x"),
                ("TargetPortalGroupTag", "1"),
                ("InitiatorAlias", "y"),
            ],
            false,
        );
        assert_eq!(r.get("TargetAlias"), Some("Irrelevant"));
        assert_eq!(r.get("TargetPortalGroupTag"), Some("Irrelevant"));
        assert_eq!(r.get("InitiatorAlias"), None);
    }

    #[test]
    fn the_initiator_offers_then_takes_the_answers() {
        let mut i = Negotiator::initiator(Limits::default(), false);
        // The target originates a key before the initiator offers any.
        let mut reply = TextList::default();
        i.take(&list(&[("DefaultTime2Retain", "5")]), true, &mut reply)
            .unwrap();
        assert_eq!(reply, list(&[("DefaultTime2Retain", "0")]));
        let mut offer = TextList::default();
        i.offer(&list(&[("X-test", "1")]), &mut offer);
        assert_eq!(offer.get("MaxBurstLength"), Some("1048576"));
        assert_eq!(offer.get("X-test"), Some("1"));
        assert_eq!(offer.get("DefaultTime2Retain"), None, "settled already");
        assert_eq!(
            offer.get("OFMarker"),
            None,
            "obsolete keys are never offered"
        );
        let answers = list(&[
            ("MaxBurstLength", "65536"),
            ("X-test", "NotUnderstood"),
            ("MaxRecvDataSegmentLength", "8192"),
        ]);
        let mut reply = TextList::default();
        i.take(&answers, false, &mut reply).unwrap();
        assert!(reply.is_empty(), "{reply:?}");
        i.finish();
        assert_eq!(i.params.max_burst_length, 65536);
        assert_eq!(i.params.send_data_segment_length, 8192);
        assert_eq!(i.params.recv_data_segment_length, 262_144);
        assert_eq!(i.params.default_time2retain, 0);
        // An offer left unanswered whose answer was not optional keeps
        // the default: InitialR2T offered No stays Yes.
        assert!(i.params.initial_r2t);
    }

    #[test]
    fn an_inadmissible_answer_fails_the_negotiation() {
        let mut i = Negotiator::initiator(Limits::default(), false);
        i.offer(&TextList::default(), &mut TextList::default());
        let err = i
            .take(
                &list(&[("MaxBurstLength", "2097152")]),
                false,
                &mut TextList::default(),
            )
            .unwrap_err();
        assert!(
            matches!(err, NegotiationError::Inadmissible { .. }),
            "{err}"
        );
    }
}
