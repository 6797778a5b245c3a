//! The key table (RFC 7143 §13) and the rules by which two sides' values of
//! a key combine (§6.2): what a responder answers to an offer
//! ([`KeyKind::respond`]) and what an originator makes of the answer
//! ([`KeyKind::accept`], [`KeyKind::implied`]).

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
    /// An operational parameter: negotiated here, its outcome in
    /// [`Params`](super::Params).
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
    /// Whether RFC 7143 obsoleted it (§13.25 of its list): answered when
    /// an older peer offers it, never offered.
    pub obsolete: bool,
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
        obsolete: false,
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

    const fn obsolete(mut self) -> KeyDef {
        self.obsolete = true;
        self
    }

    /// Whether a side in `role` may originate this key as an operational
    /// offer or declaration in a session of this type.
    pub fn offered_by(&self, role: Sender, discovery: bool) -> bool {
        self.layer == Layer::Operational
            && !self.obsolete
            && (self.sender == Sender::Both || self.sender == role)
            && !(discovery && self.normal_only)
            && !matches!(self.kind, KeyKind::Obsolete | KeyKind::Declarative)
    }
}

/// Largest 24-bit number (the upper bound of the segment and burst lengths).
pub const MAX24: u32 = 16_777_215;

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
    key("OFMarker", And, LoginOnly, "No").obsolete(),
    key("IFMarker", And, LoginOnly, "No").obsolete(),
    key("OFMarkInt", Obsolete, LoginOnly, "").obsolete(),
    key("IFMarkInt", Obsolete, LoginOnly, "").obsolete(),
    key("iSCSIProtocolLevel", Min(0, 31), LoginOnly, "0"),
    key("TaskReporting", List, LoginOnly, "RFC3720").normal_only(),
];

/// Looks a key up in the table.
pub fn key_def(name: &str) -> Option<&'static KeyDef> {
    KEYS.iter().find(|k| k.name == name)
}

/// The values a responder answers with instead of a value of the key
/// (§6.2): the key keeps the value it had.
pub const RESERVED_ANSWERS: [&str; 3] = ["Reject", "Irrelevant", "NotUnderstood"];

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

pub(crate) fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

pub(crate) fn yes_no(b: bool) -> &'static str {
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

/// What an originator makes of the responder's answer to one offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The key's value is now this (for a declared number: the peer's
    /// declaration).
    Agreed(String),
    /// `Reject`, `Irrelevant` or `NotUnderstood`: the key keeps the value
    /// it had (its default).
    Unchanged,
    /// An answer the key's rule does not allow for this offer (a number
    /// out of range or on the wrong side of the offer, a value not in the
    /// offered list): the negotiation fails.
    Inadmissible,
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

    /// The originator's outcome of offering `offered` when the responder
    /// answered `answer` (§6.2.2: the answer must be an admissible result
    /// of the key's function applied to the offer and some value of the
    /// responder's).
    pub fn accept(self, offered: &str, answer: &str) -> Answer {
        if RESERVED_ANSWERS.contains(&answer) {
            return Answer::Unchanged;
        }
        let agreed = match self {
            // AND can only lower Yes to No; OR can only raise No to Yes.
            KeyKind::And => parse_bool(offered)
                .zip(parse_bool(answer))
                .filter(|&(o, a)| o || !a)
                .map(|(_, a)| yes_no(a).to_string()),
            KeyKind::Or => parse_bool(offered)
                .zip(parse_bool(answer))
                .filter(|&(o, a)| !o || a)
                .map(|(_, a)| yes_no(a).to_string()),
            KeyKind::Min(lo, hi) => in_range(offered, lo, hi)
                .zip(in_range(answer, lo, hi))
                .filter(|&(o, a)| a <= o)
                .map(|(_, a)| a.to_string()),
            KeyKind::Max(lo, hi) => in_range(offered, lo, hi)
                .zip(in_range(answer, lo, hi))
                .filter(|&(o, a)| a >= o)
                .map(|(_, a)| a.to_string()),
            KeyKind::DeclaredNumber(lo, hi) => in_range(answer, lo, hi).map(|a| a.to_string()),
            KeyKind::List => offered
                .split(',')
                .any(|o| o == answer)
                .then(|| answer.to_string()),
            KeyKind::Obsolete | KeyKind::Declarative => return Answer::Unchanged,
        };
        agreed.map_or(Answer::Inadmissible, Answer::Agreed)
    }

    /// The outcome of an offer the responder left unanswered where §6.2.2
    /// makes the answer optional: AND offered `No` is `No`, OR offered
    /// `Yes` is `Yes`. `None` for every other offer.
    pub fn implied(self, offered: &str) -> Option<String> {
        match (self, parse_bool(offered)) {
            (KeyKind::And, Some(false)) => Some("No".into()),
            (KeyKind::Or, Some(true)) => Some("Yes".into()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn originator_rules_by_kind() {
        use Answer::{Inadmissible as Bad, Unchanged};
        let ok = |s: &str| Answer::Agreed(s.to_string());
        let cases: &[(KeyKind, &str, &str, Answer)] = &[
            (KeyKind::And, "Yes", "No", ok("No")),
            (KeyKind::And, "Yes", "Yes", ok("Yes")),
            (KeyKind::And, "No", "No", ok("No")),
            (KeyKind::And, "No", "Yes", Bad),
            (KeyKind::Or, "No", "Yes", ok("Yes")),
            (KeyKind::Or, "Yes", "No", Bad),
            (KeyKind::Or, "Yes", "Maybe", Bad),
            (KeyKind::Min(512, MAX24), "65536", "4096", ok("4096")),
            (KeyKind::Min(512, MAX24), "65536", "0x1000", ok("4096")),
            (KeyKind::Min(512, MAX24), "4096", "8192", Bad),
            (KeyKind::Min(512, MAX24), "4096", "256", Bad),
            (KeyKind::Max(0, 3600), "2", "20", ok("20")),
            (KeyKind::Max(0, 3600), "20", "2", Bad),
            (
                KeyKind::DeclaredNumber(512, MAX24),
                "8192",
                "262144",
                ok("262144"),
            ),
            (KeyKind::DeclaredNumber(512, MAX24), "8192", "12", Bad),
            (KeyKind::List, "CRC32C,None", "None", ok("None")),
            (KeyKind::List, "None", "CRC32C", Bad),
            (KeyKind::List, "CRC32C", "Reject", Unchanged),
            (KeyKind::Min(512, MAX24), "12x", "Reject", Unchanged),
            (KeyKind::Min(512, MAX24), "4096", "Irrelevant", Unchanged),
            (KeyKind::And, "Yes", "NotUnderstood", Unchanged),
            (KeyKind::Obsolete, "1-2", "Irrelevant", Unchanged),
        ];
        for (kind, offered, answer, want) in cases {
            assert_eq!(
                &kind.accept(offered, answer),
                want,
                "{kind:?} {offered} {answer}"
            );
        }
        assert_eq!(KeyKind::And.implied("No").as_deref(), Some("No"));
        assert_eq!(KeyKind::Or.implied("Yes").as_deref(), Some("Yes"));
        assert_eq!(KeyKind::And.implied("Yes"), None);
        assert_eq!(KeyKind::Or.implied("No"), None);
        assert_eq!(KeyKind::Min(0, 2).implied("0"), None);
    }

    #[test]
    fn what_each_role_offers() {
        let offered = |role, discovery| -> Vec<&str> {
            KEYS.iter()
                .filter(|k| k.offered_by(role, discovery))
                .map(|k| k.name)
                .collect()
        };
        let normal = offered(Sender::Initiator, false);
        assert!(normal.contains(&"MaxBurstLength"));
        assert!(normal.contains(&"MaxRecvDataSegmentLength"));
        for never in ["OFMarker", "IFMarkInt", "InitiatorName", "AuthMethod"] {
            assert!(!normal.contains(&never), "{never}");
        }
        let discovery = offered(Sender::Initiator, true);
        assert!(!discovery.contains(&"MaxBurstLength"));
        assert!(discovery.contains(&"HeaderDigest"));
        assert!(discovery.contains(&"ErrorRecoveryLevel"));
    }
}
