//! The iSCSI protocol (RFC 7143) as both roles share it, sans-I/O: no
//! sockets, no clock, no runtime. The target (`target-iscsi`) and, later,
//! the head's initiator put their own edges around it.
//!
//! [`pdu`] is the Basic Header Segment codec, symmetric for both directions;
//! [`frame`] splits a byte stream into PDUs (digests, size limit) and lays
//! PDUs out for sending; [`digest`] is CRC32C; [`text`] the key=value lists
//! of Login and Text PDUs; [`negotiate`] the key table, the rules that
//! combine two sides' values and a negotiator for either role; [`login`]
//! the login phase's stages, status classes and exchanges for both roles:
//! the target's ([`login::Login`], its policy behind
//! [`login::LoginContext`] and [`login::Authenticator`]) and the
//! initiator's ([`login::InitiatorLogin`], CHAP through `chap`'s
//! responder).

pub mod digest;
pub mod frame;
pub mod login;
pub mod name;
pub mod negotiate;
pub mod pdu;
pub mod text;
