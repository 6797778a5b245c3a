//! Key negotiation (RFC 7143 §6, §13), for both roles.
//!
//! The table ([`KEYS`]) is the one source of the rules: how a
//! value is agreed ([`KeyKind`]: its type, range and how two sides' values
//! combine), when a key may be sent, who sends it, which layer owns it and
//! its RFC default. From the kind alone come a responder's answer
//! ([`KeyKind::respond`]) and an originator's reading of that answer
//! ([`KeyKind::accept`], [`KeyKind::implied`]); [`Params::default`] comes
//! from the defaults, and each side brings only its own values
//! ([`Limits`]).
//!
//! A [`Negotiator`] is one side of one login: the target's answers every
//! key the initiator offers with the negotiated value, `Irrelevant`,
//! `NotUnderstood` or `Reject`, and declares its own
//! MaxRecvDataSegmentLength; the initiator's offers its values, checks the
//! answers against the rules and answers what the target offers itself.

mod keys;
mod negotiator;
mod values;

pub use keys::{
    key_def, parse_number, Answer, KeyDef, KeyKind, KeyPhase, Layer, Sender, KEYS, MAX24,
    RESERVED_ANSWERS,
};
pub use negotiator::{NegotiationError, Negotiator, Role};
pub use values::{Limits, Params};
