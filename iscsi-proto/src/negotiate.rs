//! Key negotiation (RFC 7143 §6, §13): the table of keys with their types,
//! ranges and defaults, and the target's side of every exchange.
//!
//! The target is always the responder here: for every key the initiator
//! offers it answers with the negotiated value, `Irrelevant`, `NotUnderstood`
//! or `Reject`, and it declares its own MaxRecvDataSegmentLength.

use crate::digest::Digest;
use crate::text::TextList;

/// How a key's value is agreed (§6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// Declarative: each side states its own value; no answer is negotiated.
    Declarative,
    /// Boolean, result is the AND of both values.
    And,
    /// Boolean, result is the OR of both values.
    Or,
    /// Number in `[lo, hi]`, result is the minimum of both.
    Min(u32, u32),
    /// Number in `[lo, hi]`, result is the maximum of both.
    Max(u32, u32),
    /// Number in `[lo, hi]` the sender declares about itself.
    DeclaredNumber(u32, u32),
    /// List of values; the responder picks the first it supports.
    List,
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

/// One row of the key table.
#[derive(Debug, Clone, Copy)]
pub struct KeyDef {
    /// Key name.
    pub name: &'static str,
    /// Value type and rule.
    pub kind: KeyKind,
    /// When it may be sent.
    pub phase: KeyPhase,
    /// Whether it is Irrelevant in a discovery session.
    pub normal_only: bool,
    /// Default (RFC) value.
    pub default: &'static str,
}

const MAX24: u32 = 16_777_215;

/// The RFC 7143 key table (plus the RFC 7144 keys we answer).
pub const KEYS: &[KeyDef] = &[
    KeyDef {
        name: "HeaderDigest",
        kind: KeyKind::List,
        phase: KeyPhase::Login,
        normal_only: false,
        default: "None",
    },
    KeyDef {
        name: "DataDigest",
        kind: KeyKind::List,
        phase: KeyPhase::Login,
        normal_only: false,
        default: "None",
    },
    KeyDef {
        name: "MaxConnections",
        kind: KeyKind::Min(1, 65535),
        phase: KeyPhase::Login,
        normal_only: true,
        default: "1",
    },
    KeyDef {
        name: "SendTargets",
        kind: KeyKind::Declarative,
        phase: KeyPhase::Any,
        normal_only: false,
        default: "",
    },
    KeyDef {
        name: "TargetName",
        kind: KeyKind::Declarative,
        phase: KeyPhase::Login,
        normal_only: false,
        default: "",
    },
    KeyDef {
        name: "InitiatorName",
        kind: KeyKind::Declarative,
        phase: KeyPhase::Login,
        normal_only: false,
        default: "",
    },
    KeyDef {
        name: "TargetAlias",
        kind: KeyKind::Declarative,
        phase: KeyPhase::Any,
        normal_only: false,
        default: "",
    },
    KeyDef {
        name: "InitiatorAlias",
        kind: KeyKind::Declarative,
        phase: KeyPhase::Any,
        normal_only: false,
        default: "",
    },
    KeyDef {
        name: "TargetAddress",
        kind: KeyKind::Declarative,
        phase: KeyPhase::Any,
        normal_only: false,
        default: "",
    },
    KeyDef {
        name: "TargetPortalGroupTag",
        kind: KeyKind::Declarative,
        phase: KeyPhase::Login,
        normal_only: false,
        default: "",
    },
    KeyDef {
        name: "InitialR2T",
        kind: KeyKind::Or,
        phase: KeyPhase::Login,
        normal_only: true,
        default: "Yes",
    },
    KeyDef {
        name: "ImmediateData",
        kind: KeyKind::And,
        phase: KeyPhase::Login,
        normal_only: true,
        default: "Yes",
    },
    KeyDef {
        name: "MaxRecvDataSegmentLength",
        kind: KeyKind::DeclaredNumber(512, MAX24),
        phase: KeyPhase::Any,
        normal_only: false,
        default: "8192",
    },
    KeyDef {
        name: "MaxBurstLength",
        kind: KeyKind::Min(512, MAX24),
        phase: KeyPhase::Login,
        normal_only: true,
        default: "262144",
    },
    KeyDef {
        name: "FirstBurstLength",
        kind: KeyKind::Min(512, MAX24),
        phase: KeyPhase::Login,
        normal_only: true,
        default: "65536",
    },
    KeyDef {
        name: "DefaultTime2Wait",
        kind: KeyKind::Max(0, 3600),
        phase: KeyPhase::Login,
        normal_only: true,
        default: "2",
    },
    KeyDef {
        name: "DefaultTime2Retain",
        kind: KeyKind::Min(0, 3600),
        phase: KeyPhase::Login,
        normal_only: true,
        default: "20",
    },
    KeyDef {
        name: "MaxOutstandingR2T",
        kind: KeyKind::Min(1, 65535),
        phase: KeyPhase::Login,
        normal_only: true,
        default: "1",
    },
    KeyDef {
        name: "DataPDUInOrder",
        kind: KeyKind::Or,
        phase: KeyPhase::Login,
        normal_only: true,
        default: "Yes",
    },
    KeyDef {
        name: "DataSequenceInOrder",
        kind: KeyKind::Or,
        phase: KeyPhase::Login,
        normal_only: true,
        default: "Yes",
    },
    KeyDef {
        name: "ErrorRecoveryLevel",
        kind: KeyKind::Min(0, 2),
        phase: KeyPhase::Login,
        normal_only: false,
        default: "0",
    },
    KeyDef {
        name: "SessionType",
        kind: KeyKind::Declarative,
        phase: KeyPhase::Login,
        normal_only: false,
        default: "Normal",
    },
    KeyDef {
        name: "AuthMethod",
        kind: KeyKind::List,
        phase: KeyPhase::Security,
        normal_only: false,
        default: "None",
    },
    KeyDef {
        name: "OFMarker",
        kind: KeyKind::And,
        phase: KeyPhase::Login,
        normal_only: false,
        default: "No",
    },
    KeyDef {
        name: "IFMarker",
        kind: KeyKind::And,
        phase: KeyPhase::Login,
        normal_only: false,
        default: "No",
    },
    KeyDef {
        name: "OFMarkInt",
        kind: KeyKind::Declarative,
        phase: KeyPhase::Login,
        normal_only: false,
        default: "",
    },
    KeyDef {
        name: "IFMarkInt",
        kind: KeyKind::Declarative,
        phase: KeyPhase::Login,
        normal_only: false,
        default: "",
    },
    KeyDef {
        name: "iSCSIProtocolLevel",
        kind: KeyKind::Min(0, 31),
        phase: KeyPhase::Login,
        normal_only: false,
        default: "0",
    },
    KeyDef {
        name: "TaskReporting",
        kind: KeyKind::List,
        phase: KeyPhase::Login,
        normal_only: true,
        default: "RFC3720",
    },
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
    /// The initiator's MaxRecvDataSegmentLength: the most the target may send per PDU.
    pub send_data_segment_length: u32,
    /// The target's MaxRecvDataSegmentLength: the most it accepts per PDU.
    pub recv_data_segment_length: u32,
}

impl Default for Params {
    fn default() -> Self {
        Params {
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
        }
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
    declared_mrdsl: bool,
}

impl Negotiator {
    /// A negotiator for a session; `discovery` makes the normal-session keys Irrelevant.
    pub fn new(limits: Limits, discovery: bool) -> Negotiator {
        let params = Params {
            recv_data_segment_length: limits.max_recv_data_segment_length,
            ..Params::default()
        };
        Negotiator {
            limits,
            discovery,
            params,
            done: Vec::new(),
            declared_mrdsl: false,
        }
    }

    /// Switches the session type once SessionType is known.
    pub fn set_discovery(&mut self, discovery: bool) {
        self.discovery = discovery;
    }

    /// Answers the operational keys of `offer` (keys the login layer owns,
    /// such as names, SessionType and AuthMethod, are skipped) into `reply`.
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
            match def.name {
                // Owned by the login/discovery layers.
                "InitiatorName" | "TargetName" | "SessionType" | "AuthMethod"
                | "InitiatorAlias" | "SendTargets" => continue,
                _ => {}
            }
            if def.phase == KeyPhase::Security && !security {
                return Err(NegotiationError::WrongStage(k.clone()));
            }
            if self.done.contains(&def.name) {
                return Err(NegotiationError::Renegotiated(k.clone()));
            }
            self.done.push(def.name);
            if let Some(answer) = self.answer(def, v) {
                reply.push(def.name, answer);
            }
        }
        Ok(())
    }

    /// Adds the target's declarations not yet sent (its
    /// MaxRecvDataSegmentLength) to an operational-stage reply.
    pub fn declare(&mut self, reply: &mut TextList) {
        if !self.declared_mrdsl {
            self.declared_mrdsl = true;
            reply.push(
                "MaxRecvDataSegmentLength",
                self.limits.max_recv_data_segment_length.to_string(),
            );
        }
    }

    /// Final consistency rules once the login is over.
    pub fn finish(&mut self) {
        let p = &mut self.params;
        if p.first_burst_length > p.max_burst_length {
            p.first_burst_length = p.max_burst_length;
        }
    }

    fn answer(&mut self, def: &KeyDef, v: &str) -> Option<String> {
        if self.discovery && def.normal_only {
            return Some("Irrelevant".into());
        }
        let l = &self.limits;
        let p = &mut self.params;
        let num = |lo: u32, hi: u32| {
            parse_number(v)
                .filter(|n| (u64::from(lo)..=u64::from(hi)).contains(n))
                .map(|n| n as u32)
        };
        Some(match def.name {
            "HeaderDigest" | "DataDigest" => {
                let pick = v
                    .split(',')
                    .find(|c| *c == "None" || (*c == "CRC32C" && l.allow_crc32c));
                let Some(pick) = pick else {
                    return Some("Reject".into());
                };
                let d = if pick == "CRC32C" {
                    Digest::Crc32c
                } else {
                    Digest::None
                };
                if def.name == "HeaderDigest" {
                    p.header_digest = d;
                } else {
                    p.data_digest = d;
                }
                pick.to_string()
            }
            "MaxConnections" => {
                let Some(n) = num(1, 65535) else {
                    return Some("Reject".into());
                };
                p.max_connections = n.min(1);
                p.max_connections.to_string()
            }
            "InitialR2T" => {
                let Some(b) = parse_bool(v) else {
                    return Some("Reject".into());
                };
                p.initial_r2t = b || l.initial_r2t;
                yes_no(p.initial_r2t).into()
            }
            "ImmediateData" => {
                let Some(b) = parse_bool(v) else {
                    return Some("Reject".into());
                };
                p.immediate_data = b && l.immediate_data;
                yes_no(p.immediate_data).into()
            }
            "MaxRecvDataSegmentLength" => {
                let Some(n) = num(512, MAX24) else {
                    return Some("Reject".into());
                };
                p.send_data_segment_length = n;
                // Declarative: the answer is our own declaration.
                self.declared_mrdsl = true;
                l.max_recv_data_segment_length.to_string()
            }
            "MaxBurstLength" => {
                let Some(n) = num(512, MAX24) else {
                    return Some("Reject".into());
                };
                p.max_burst_length = n.min(l.max_burst_length);
                p.max_burst_length.to_string()
            }
            "FirstBurstLength" => {
                let Some(n) = num(512, MAX24) else {
                    return Some("Reject".into());
                };
                p.first_burst_length = n.min(l.first_burst_length);
                p.first_burst_length.to_string()
            }
            "DefaultTime2Wait" => {
                let Some(n) = num(0, 3600) else {
                    return Some("Reject".into());
                };
                p.default_time2wait = n.max(l.default_time2wait);
                p.default_time2wait.to_string()
            }
            "DefaultTime2Retain" => {
                let Some(n) = num(0, 3600) else {
                    return Some("Reject".into());
                };
                p.default_time2retain = n.min(l.default_time2retain);
                p.default_time2retain.to_string()
            }
            "MaxOutstandingR2T" => {
                let Some(n) = num(1, 65535) else {
                    return Some("Reject".into());
                };
                p.max_outstanding_r2t = n.min(l.max_outstanding_r2t);
                p.max_outstanding_r2t.to_string()
            }
            "DataPDUInOrder" | "DataSequenceInOrder" => {
                // We keep data in order whatever the initiator says.
                if parse_bool(v).is_none() {
                    return Some("Reject".into());
                }
                "Yes".into()
            }
            "ErrorRecoveryLevel" => {
                let Some(_) = num(0, 2) else {
                    return Some("Reject".into());
                };
                p.error_recovery_level = 0;
                "0".into()
            }
            "OFMarker" | "IFMarker" => {
                if parse_bool(v).is_none() {
                    return Some("Reject".into());
                }
                "No".into()
            }
            "OFMarkInt" | "IFMarkInt" => "Irrelevant".into(),
            "iSCSIProtocolLevel" => {
                let Some(n) = num(0, 31) else {
                    return Some("Reject".into());
                };
                n.min(1).to_string()
            }
            "TaskReporting" => {
                if v.split(',').any(|c| c == "RFC3720") {
                    "RFC3720".into()
                } else {
                    "Reject".into()
                }
            }
            // Keys only the target may send.
            "TargetAlias" | "TargetAddress" | "TargetPortalGroupTag" => "Irrelevant".into(),
            _ => "NotUnderstood".into(),
        })
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
}
