//! Key negotiation (RFC 7143 §6, §13): the table of keys with their types,
//! ranges, defaults and rules, and the responder's side of every exchange.
//!
//! The table ([`KEYS`]) is the one source of the rules: how a value is
//! agreed ([`KeyKind`]: its type, range and how two sides' values combine),
//! when a key may be sent, who sends it, which layer owns it and its RFC
//! default. [`KeyKind::respond`] derives a responder's answer from the kind
//! alone, [`Params::default`] comes from the defaults, and each side brings
//! only its own values ([`Limits`] for the target). The originator's side
//! (offering its values, checking and taking the answers) is to be derived
//! from the same table.
//!
//! The target is the responder here: for every key the initiator offers it
//! answers with the negotiated value, `Irrelevant`, `NotUnderstood` or
//! `Reject`, and it declares its own MaxRecvDataSegmentLength.

use crate::digest::Digest;
use crate::text::TextList;

/// How a key's value is agreed (§6.2, §5.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// Declarative text: each side states its own value; no answer is
    /// negotiated (names, aliases, addresses, SessionType).
    Declarative,
    /// Boolean, result is the AND of both values.
    And,
    /// Boolean, result is the OR of both values.
    Or,
    /// Number in `[lo, hi]`, result is the minimum of both.
    Min(u32, u32),
    /// Number in `[lo, hi]`, result is the maximum of both.
    Max(u32, u32),
    /// Number in `[lo, hi]` each side declares about itself; the responder
    /// answers with its own declaration.
    DeclaredNumber(u32, u32),
    /// List of values in the offerer's order of preference; the responder
    /// picks the first it supports.
    List,
    /// RFC 3720's marker intervals (OFMarkInt, IFMarkInt), which RFC 7143
    /// obsoleted: answered `Irrelevant` (markers are never on).
    Obsolete,
}

/// When a key may be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPhase {
    /// Security negotiation stage only.
    Security,
    /// Login (security or operational stage), leading connection.
    Login,
    /// Login or Full Feature Phase (Text requests).
    Any,
}

/// Who may send a key (§13: "Who:").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// The initiator only.
    Initiator,
    /// The target only.
    Target,
    /// Either side.
    Both,
}

/// Which layer sets and reads a key's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// An operational parameter: negotiated here, its outcome in [`Params`].
    Operational,
    /// The login layer: names, session type, AuthMethod, TargetPortalGroupTag.
    Login,
    /// Discovery: SendTargets and the addresses it returns.
    Discovery,
}

/// One row of the key table.
#[derive(Debug, Clone, Copy)]
pub struct KeyDef {
    /// Key name.
    pub name: &'static str,
    /// Value type, range and rule.
    pub kind: KeyKind,
    /// When it may be sent.
    pub phase: KeyPhase,
    /// Who may send it.
    pub sender: Sender,
    /// Which layer owns its value.
    pub layer: Layer,
    /// Whether it is Irrelevant in a discovery session.
    pub normal_only: bool,
    /// Default (RFC) value.
    pub default: &'static str,
}

/// A row: an operational key either side may send in a normal or discovery
/// session, refined by the builders below.
const fn key(name: &'static str, kind: KeyKind, phase: KeyPhase, default: &'static str) -> KeyDef {
    KeyDef {
        name,
        kind,
        phase,
        sender: Sender::Both,
        layer: Layer::Operational,
        normal_only: false,
        default,
    }
}

impl KeyDef {
    const fn normal_only(mut self) -> KeyDef {
        self.normal_only = true;
        self
    }

    const fn sent_by(mut self, sender: Sender) -> KeyDef {
        self.sender = sender;
        self
    }

    const fn owned_by(mut self, layer: Layer) -> KeyDef {
        self.layer = layer;
        self
    }
}

const MAX24: u32 = 16_777_215;

use KeyKind::{And, Declarative, DeclaredNumber, List, Max, Min, Obsolete, Or};
use KeyPhase::{Any, Login as LoginOnly, Security};

/// The RFC 7143 key table (plus the RFC 7144 keys we answer).
pub const KEYS: &[KeyDef] = &[
    key("HeaderDigest", List, LoginOnly, "None"),
    key("DataDigest", List, LoginOnly, "None"),
    key("MaxConnections", Min(1, 65535), LoginOnly, "1").normal_only(),
    key("SendTargets", Declarative, Any, "")
        .sent_by(Sender::Initiator)
        .owned_by(Layer::Discovery),
    key("TargetName", Declarative, LoginOnly, "")
        .sent_by(Sender::Initiator)
        .owned_by(Layer::Login),
    key("InitiatorName", Declarative, LoginOnly, "")
        .sent_by(Sender::Initiator)
        .owned_by(Layer::Login),
    key("TargetAlias", Declarative, Any, "")
        .sent_by(Sender::Target)
        .owned_by(Layer::Login),
    key("InitiatorAlias", Declarative, Any, "")
        .sent_by(Sender::Initiator)
        .owned_by(Layer::Login),
    key("TargetAddress", Declarative, Any, "")
        .sent_by(Sender::Target)
        .owned_by(Layer::Discovery),
    key("TargetPortalGroupTag", Declarative, LoginOnly, "")
        .sent_by(Sender::Target)
        .owned_by(Layer::Login),
    key("InitialR2T", Or, LoginOnly, "Yes").normal_only(),
    key("ImmediateData", And, LoginOnly, "Yes").normal_only(),
    key(
        "MaxRecvDataSegmentLength",
        DeclaredNumber(512, MAX24),
        Any,
        "8192",
    ),
    key("MaxBurstLength", Min(512, MAX24), LoginOnly, "262144").normal_only(),
    key("FirstBurstLength", Min(512, MAX24), LoginOnly, "65536").normal_only(),
    key("DefaultTime2Wait", Max(0, 3600), LoginOnly, "2").normal_only(),
    key("DefaultTime2Retain", Min(0, 3600), LoginOnly, "20").normal_only(),
    key("MaxOutstandingR2T", Min(1, 65535), LoginOnly, "1").normal_only(),
    key("DataPDUInOrder", Or, LoginOnly, "Yes").normal_only(),
    key("DataSequenceInOrder", Or, LoginOnly, "Yes").normal_only(),
    key("ErrorRecoveryLevel", Min(0, 2), LoginOnly, "0"),
    key("SessionType", Declarative, LoginOnly, "Normal")
        .sent_by(Sender::Initiator)
        .owned_by(Layer::Login),
    key("AuthMethod", List, Security, "None").owned_by(Layer::Login),
    key("OFMarker", And, LoginOnly, "No"),
    key("IFMarker", And, LoginOnly, "No"),
    key("OFMarkInt", Obsolete, LoginOnly, ""),
    key("IFMarkInt", Obsolete, LoginOnly, ""),
    key("iSCSIProtocolLevel", Min(0, 31), LoginOnly, "0"),
    key("TaskReporting", List, LoginOnly, "RFC3720").normal_only(),
];

/// Looks a key up in the table.
pub fn key_def(name: &str) -> Option<&'static KeyDef> {
    KEYS.iter().find(|k| k.name == name)
}

/// Parses a numerical value: decimal or `0x` hexadecimal (§5.1).
pub fn parse_number(v: &str) -> Option<u64> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if h.is_empty() || h.len() > 16 {
            return None;
        }
        u64::from_str_radix(h, 16).ok()
    } else if !v.is_empty() && v.len() <= 20 && v.bytes().all(|c| c.is_ascii_digit()) {
        v.parse().ok()
    } else {
        None
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "Yes"
    } else {
        "No"
    }
}

/// A number in `[lo, hi]`.
fn in_range(v: &str, lo: u32, hi: u32) -> Option<u32> {
    parse_number(v)
        .filter(|n| (u64::from(lo)..=u64::from(hi)).contains(n))
        .map(|n| n as u32)
}

impl KeyKind {
    /// The responder's answer to an offered value `offer`, given its own
    /// value `own` (for a list, the values it supports, comma-separated;
    /// for a declaration, what it declares): the agreed value, or `None`
    /// when the offer is not a valid value of the kind (answer `Reject`).
    /// A declarative text key has no negotiated answer (`None` as well).
    pub fn respond(self, offer: &str, own: &str) -> Option<String> {
        match self {
            KeyKind::And => Some(yes_no(parse_bool(offer)? && parse_bool(own)?).into()),
            KeyKind::Or => Some(yes_no(parse_bool(offer)? || parse_bool(own)?).into()),
            KeyKind::Min(lo, hi) => {
                Some(in_range(offer, lo, hi)?.min(own.parse().ok()?).to_string())
            }
            KeyKind::Max(lo, hi) => {
                Some(in_range(offer, lo, hi)?.max(own.parse().ok()?).to_string())
            }
            KeyKind::DeclaredNumber(lo, hi) => {
                in_range(offer, lo, hi)?;
                Some(own.to_string())
            }
            KeyKind::List => offer
                .split(',')
                .find(|c| own.split(',').any(|o| o == *c))
                .map(str::to_string),
            KeyKind::Obsolete => Some("Irrelevant".into()),
            KeyKind::Declarative => None,
        }
    }
}

/// What the target is willing to do: its side of every negotiated key.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The most data the target accepts in one PDU (declared).
    pub max_recv_data_segment_length: u32,
    /// Largest burst the target accepts or sends.
    pub max_burst_length: u32,
    /// Largest unsolicited burst the target accepts.
    pub first_burst_length: u32,
    /// Most R2Ts outstanding per task.
    pub max_outstanding_r2t: u32,
    /// Whether the target wants to solicit all data (InitialR2T).
    pub initial_r2t: bool,
    /// Whether the target accepts immediate data.
    pub immediate_data: bool,
    /// Whether CRC32C digests are offered.
    pub allow_crc32c: bool,
    /// DefaultTime2Wait the target asks for.
    pub default_time2wait: u32,
    /// DefaultTime2Retain the target offers.
    pub default_time2retain: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_recv_data_segment_length: 262_144,
            max_burst_length: 1_048_576,
            first_burst_length: 262_144,
            max_outstanding_r2t: 16,
            initial_r2t: false,
            immediate_data: true,
            allow_crc32c: true,
            default_time2wait: 2,
            default_time2retain: 0,
        }
    }
}

impl Limits {
    /// The target's own value of an operational key, as
    /// [`KeyKind::respond`] combines it with the initiator's offer.
    pub fn own(&self, name: &str) -> Option<String> {
        let fixed = |v: &str| Some(v.to_string());
        match name {
            "HeaderDigest" | "DataDigest" if self.allow_crc32c => fixed("CRC32C,None"),
            "HeaderDigest" | "DataDigest" => fixed("None"),
            // One connection per session.
            "MaxConnections" => fixed("1"),
            "InitialR2T" => fixed(yes_no(self.initial_r2t)),
            "ImmediateData" => fixed(yes_no(self.immediate_data)),
            "MaxRecvDataSegmentLength" => Some(self.max_recv_data_segment_length.to_string()),
            "MaxBurstLength" => Some(self.max_burst_length.to_string()),
            "FirstBurstLength" => Some(self.first_burst_length.to_string()),
            "DefaultTime2Wait" => Some(self.default_time2wait.to_string()),
            "DefaultTime2Retain" => Some(self.default_time2retain.to_string()),
            "MaxOutstandingR2T" => Some(self.max_outstanding_r2t.to_string()),
            // Data is kept in order whatever the initiator says.
            "DataPDUInOrder" | "DataSequenceInOrder" => fixed("Yes"),
            // Error recovery level 0 only.
            "ErrorRecoveryLevel" => fixed("0"),
            // No markers.
            "OFMarker" | "IFMarker" => fixed("No"),
            // RFC 7144 (iSCSIProtocolLevel 1).
            "iSCSIProtocolLevel" => fixed("1"),
            "TaskReporting" => fixed("RFC3720"),
            _ => None,
        }
    }
}

/// The operational parameters of a session and its connection once
/// negotiated (RFC defaults until then).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// Header digest.
    pub header_digest: Digest,
    /// Data digest.
    pub data_digest: Digest,
    /// MaxConnections.
    pub max_connections: u32,
    /// InitialR2T.
    pub initial_r2t: bool,
    /// ImmediateData.
    pub immediate_data: bool,
    /// MaxBurstLength.
    pub max_burst_length: u32,
    /// FirstBurstLength.
    pub first_burst_length: u32,
    /// DefaultTime2Wait.
    pub default_time2wait: u32,
    /// DefaultTime2Retain.
    pub default_time2retain: u32,
    /// MaxOutstandingR2T.
    pub max_outstanding_r2t: u32,
    /// DataPDUInOrder.
    pub data_pdu_in_order: bool,
    /// DataSequenceInOrder.
    pub data_sequence_in_order: bool,
    /// ErrorRecoveryLevel.
    pub error_recovery_level: u32,
    /// The peer's MaxRecvDataSegmentLength: the most this side may send per PDU.
    pub send_data_segment_length: u32,
    /// This side's MaxRecvDataSegmentLength: the most it accepts per PDU.
    pub recv_data_segment_length: u32,
}

impl Default for Params {
    /// The RFC defaults of every operational key, from [`KEYS`].
    fn default() -> Self {
        let mut p = Params {
            header_digest: Digest::None,
            data_digest: Digest::None,
            max_connections: 0,
            initial_r2t: false,
            immediate_data: false,
            max_burst_length: 0,
            first_burst_length: 0,
            default_time2wait: 0,
            default_time2retain: 0,
            max_outstanding_r2t: 0,
            data_pdu_in_order: false,
            data_sequence_in_order: false,
            error_recovery_level: 0,
            send_data_segment_length: 0,
            recv_data_segment_length: 0,
        };
        for def in KEYS.iter().filter(|k| k.layer == Layer::Operational) {
            if let KeyKind::DeclaredNumber(..) = def.kind {
                p.set_declared(def.name, def.default, true);
                p.set_declared(def.name, def.default, false);
            } else {
                p.set(def.name, def.default);
            }
        }
        p
    }
}

impl Params {
    /// Takes the agreed `value` of a negotiated key (keys without a
    /// parameter here, such as the markers, change nothing).
    fn set(&mut self, name: &str, value: &str) {
        let yes = value == "Yes";
        let num = || parse_number(value).map_or(0, |n| n as u32);
        match name {
            "HeaderDigest" => self.header_digest = digest(value),
            "DataDigest" => self.data_digest = digest(value),
            "MaxConnections" => self.max_connections = num(),
            "InitialR2T" => self.initial_r2t = yes,
            "ImmediateData" => self.immediate_data = yes,
            "MaxBurstLength" => self.max_burst_length = num(),
            "FirstBurstLength" => self.first_burst_length = num(),
            "DefaultTime2Wait" => self.default_time2wait = num(),
            "DefaultTime2Retain" => self.default_time2retain = num(),
            "MaxOutstandingR2T" => self.max_outstanding_r2t = num(),
            "DataPDUInOrder" => self.data_pdu_in_order = yes,
            "DataSequenceInOrder" => self.data_sequence_in_order = yes,
            "ErrorRecoveryLevel" => self.error_recovery_level = num(),
            _ => {}
        }
    }

    /// Takes a declared `value`, the peer's (`by_peer`) or this side's own.
    fn set_declared(&mut self, name: &str, value: &str, by_peer: bool) {
        let n = parse_number(value).map_or(0, |n| n as u32);
        if name == "MaxRecvDataSegmentLength" {
            if by_peer {
                self.send_data_segment_length = n;
            } else {
                self.recv_data_segment_length = n;
            }
        }
    }
}

/// The digest a HeaderDigest or DataDigest value names.
fn digest(value: &str) -> Digest {
    if value == "CRC32C" {
        Digest::Crc32c
    } else {
        Digest::None
    }
}

/// A failure that ends the login (§11.13.5 status 0x02xx).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    /// A key outside its stage (e.g. AuthMethod in operational stage).
    #[error("key {0} not allowed in this stage")]
    WrongStage(String),
    /// A key already negotiated was offered again.
    #[error("key {0} negotiated twice")]
    Renegotiated(String),
}

/// The target's side of a negotiation across a login (or a Text exchange).
#[derive(Debug, Clone)]
pub struct Negotiator {
    limits: Limits,
    discovery: bool,
    /// Negotiated values so far.
    pub params: Params,
    done: Vec<&'static str>,
    /// Declarations already sent.
    declared: Vec<&'static str>,
}

impl Negotiator {
    /// A negotiator for a session; `discovery` makes the normal-session keys Irrelevant.
    pub fn new(limits: Limits, discovery: bool) -> Negotiator {
        let mut params = Params::default();
        for def in KEYS {
            if let (KeyKind::DeclaredNumber(..), Some(own)) = (def.kind, limits.own(def.name)) {
                params.set_declared(def.name, &own, false);
            }
        }
        Negotiator {
            limits,
            discovery,
            params,
            done: Vec::new(),
            declared: Vec::new(),
        }
    }

    /// Switches the session type once SessionType is known.
    pub fn set_discovery(&mut self, discovery: bool) {
        self.discovery = discovery;
    }

    /// Answers the operational keys of `offer` into `reply`. Keys the
    /// initiator declares to the login and discovery layers (names,
    /// SessionType, AuthMethod, SendTargets) are theirs and skipped.
    /// `security` tells whether the exchange is in the security stage.
    pub fn respond(
        &mut self,
        offer: &TextList,
        security: bool,
        reply: &mut TextList,
    ) -> Result<(), NegotiationError> {
        for (k, v) in &offer.0 {
            let Some(def) = key_def(k) else {
                reply.push(k.clone(), "NotUnderstood");
                continue;
            };
            if def.layer != Layer::Operational && def.sender != Sender::Target {
                continue;
            }
            if def.phase == KeyPhase::Security && !security {
                return Err(NegotiationError::WrongStage(k.clone()));
            }
            if self.done.contains(&def.name) {
                return Err(NegotiationError::Renegotiated(k.clone()));
            }
            self.done.push(def.name);
            reply.push(def.name, self.answer(def, v));
        }
        Ok(())
    }

    /// Adds the target's declarations not yet sent (its
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

    /// Final consistency rules once the login is over.
    pub fn finish(&mut self) {
        let p = &mut self.params;
        if p.first_burst_length > p.max_burst_length {
            p.first_burst_length = p.max_burst_length;
        }
    }

    /// The answer to one offered key, from the table's rule for it and the
    /// target's own value; the agreed value goes into the parameters.
    fn answer(&mut self, def: &'static KeyDef, v: &str) -> String {
        if self.discovery && def.normal_only {
            return "Irrelevant".into();
        }
        if def.sender == Sender::Target {
            // A key only targets send, offered by the initiator.
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
            return "Reject".into();
        };
        match def.kind {
            KeyKind::DeclaredNumber(..) => {
                // Declarative: the answer is our own declaration.
                self.params.set_declared(def.name, v, true);
                self.declared.push(def.name);
            }
            KeyKind::Obsolete => {}
            _ => self.params.set(def.name, &agreed),
        }
        agreed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(offer: &[(&str, &str)], discovery: bool) -> (TextList, Params) {
        let mut n = Negotiator::new(Limits::default(), discovery);
        let offer = TextList(
            offer
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        );
        let mut reply = TextList::default();
        n.respond(&offer, false, &mut reply).unwrap();
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
        n.respond(
            &TextList(vec![("MaxBurstLength".into(), "0x1000".into())]),
            false,
            &mut reply,
        )
        .unwrap();
        assert_eq!(reply.get("MaxBurstLength"), Some("4096"));
        let again = n.respond(
            &TextList(vec![("MaxBurstLength".into(), "8192".into())]),
            false,
            &mut reply,
        );
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
    fn auth_method_outside_security_stage_fails() {
        let mut n = Negotiator::new(Limits::default(), false);
        let mut reply = TextList::default();
        let offer = TextList(vec![("AuthMethod".into(), "None".into())]);
        // AuthMethod belongs to the login layer, which enforces its stage.
        n.respond(&offer, false, &mut reply).unwrap();
        assert!(reply.is_empty());
    }

    #[test]
    fn defaults_come_from_the_table() {
        // RFC 7143 section 13, by hand.
        let rfc = Params {
            header_digest: Digest::None,
            data_digest: Digest::None,
            max_connections: 1,
            initial_r2t: true,
            immediate_data: true,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            default_time2wait: 2,
            default_time2retain: 20,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
            send_data_segment_length: 8192,
            recv_data_segment_length: 8192,
        };
        assert_eq!(Params::default(), rfc);
        let n = Negotiator::new(Limits::default(), false);
        assert_eq!(n.params.recv_data_segment_length, 262_144);
    }

    #[test]
    fn every_operational_key_has_a_target_value() {
        let l = Limits::default();
        for def in KEYS {
            let answered = def.layer == Layer::Operational && def.kind != KeyKind::Obsolete;
            assert_eq!(l.own(def.name).is_some(), answered, "{}", def.name);
        }
    }

    #[test]
    fn responder_rules_by_kind() {
        let cases: &[(KeyKind, &str, &str, Option<&str>)] = &[
            (KeyKind::And, "Yes", "Yes", Some("Yes")),
            (KeyKind::And, "Yes", "No", Some("No")),
            (KeyKind::And, "No", "Yes", Some("No")),
            (KeyKind::And, "yes", "Yes", None),
            (KeyKind::Or, "No", "No", Some("No")),
            (KeyKind::Or, "No", "Yes", Some("Yes")),
            (KeyKind::Or, "Yes", "No", Some("Yes")),
            (KeyKind::Or, "", "No", None),
            (KeyKind::Min(512, MAX24), "4096", "8192", Some("4096")),
            (KeyKind::Min(512, MAX24), "0x4000", "8192", Some("8192")),
            (KeyKind::Min(512, MAX24), "511", "8192", None),
            (KeyKind::Min(512, MAX24), "16777216", "8192", None),
            (KeyKind::Max(0, 3600), "0", "2", Some("2")),
            (KeyKind::Max(0, 3600), "3600", "2", Some("3600")),
            (KeyKind::Max(0, 3600), "3601", "2", None),
            (
                KeyKind::DeclaredNumber(512, MAX24),
                "1024",
                "262144",
                Some("262144"),
            ),
            (KeyKind::DeclaredNumber(512, MAX24), "100", "262144", None),
            (KeyKind::List, "CRC32C,None", "CRC32C,None", Some("CRC32C")),
            (KeyKind::List, "None,CRC32C", "CRC32C,None", Some("None")),
            (KeyKind::List, "CRC32C,None", "None", Some("None")),
            (KeyKind::List, "MD5", "CRC32C,None", None),
            (KeyKind::Obsolete, "1-2", "", Some("Irrelevant")),
            (KeyKind::Declarative, "x", "y", None),
        ];
        for &(kind, offer, own, want) in cases {
            assert_eq!(
                kind.respond(offer, own).as_deref(),
                want,
                "{kind:?} {offer} {own}"
            );
        }
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
}
