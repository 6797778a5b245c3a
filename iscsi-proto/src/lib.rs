//! The iSCSI protocol (RFC 7143) as both roles share it, sans-I/O: no
//! sockets, no clock, no runtime. The target (`target-iscsi`) and, later,
//! the head's initiator put their own edges around it.
//!
//! [`pdu`] is the Basic Header Segment codec, symmetric for both directions;
//! [`frame`] splits a byte stream into PDUs (digests, size limit) and lays
//! PDUs out for sending; [`digest`] is CRC32C; [`text`] the key=value lists
//! of Login and Text PDUs; [`negotiate`] the key table and the rules that
//! combine two sides' values; [`login`] the login phase's stages, status
//! classes and exchanges (today the responder's side, with the target's
//! policy behind [`login::LoginContext`] and [`login::Authenticator`]).

pub mod digest;
pub mod frame;
pub mod login;
pub mod negotiate;
pub mod pdu;
pub mod text;
