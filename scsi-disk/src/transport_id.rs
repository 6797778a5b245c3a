//! Initiator ports and TransportIDs (SPC-4 7.6.4): how SCSI names the
//! initiator side of an I_T nexus, in the form of the transport protocol
//! that carries it.
//!
//! A transport registers each nexus with its [`InitiatorPort`]; persistent
//! reservations key registrations by it, read it from the TransportIDs of
//! PERSISTENT RESERVE OUT parameter lists, report it in READ FULL STATUS and
//! keep it in the persisted reservation state. iSCSI is the one protocol
//! today. Another transport adds its form here: a variant of the port, its
//! protocol identifier, its TransportID formats and its persisted text.

use std::fmt;

use hex::FromHex as _;

use crate::cdb::{be16, byte};
use crate::sense::Sense;

/// SCSI transport protocol identifiers (SPC-4 7.6.1).
pub mod protocol_id {
    /// iSCSI.
    pub const ISCSI: u8 = 0x5;
}

/// The initiator port of an I_T nexus, as its transport names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InitiatorPort(Port);

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Port {
    /// iSCSI: the initiator's iSCSI name, lower-cased (iSCSI names compare
    /// case-insensitively), and the session's ISID.
    Iscsi { name: String, isid: [u8; 6] },
}

impl InitiatorPort {
    /// An iSCSI initiator port: the InitiatorName and the session's ISID.
    pub fn iscsi(name: &str, isid: [u8; 6]) -> InitiatorPort {
        InitiatorPort(Port::Iscsi {
            name: name.to_ascii_lowercase(),
            isid,
        })
    }

    /// Its transport protocol identifier ([`protocol_id`]).
    pub fn protocol(&self) -> u8 {
        match self.0 {
            Port::Iscsi { .. } => protocol_id::ISCSI,
        }
    }

    /// The name of the initiator device the port belongs to: a TransportID
    /// without a port part names every port of it.
    fn device_name(&self) -> &str {
        match &self.0 {
            Port::Iscsi { name, .. } => name,
        }
    }

    /// The TransportID naming this port (for iSCSI the initiator port
    /// format, `name,i,0x<isid>`, NUL-padded to a multiple of 4 bytes).
    pub(crate) fn transport_id(&self) -> Vec<u8> {
        match &self.0 {
            Port::Iscsi { .. } => iscsi_port_transport_id(&self.to_string()),
        }
    }

    /// The port's words in the persisted reservation state (for iSCSI the
    /// ISID in hex, then the name).
    pub(crate) fn to_state_words(&self) -> String {
        match &self.0 {
            Port::Iscsi { name, isid } => format!("{} {}", hex::encode(isid), name),
        }
    }

    /// Reads the words [`InitiatorPort::to_state_words`] wrote.
    pub(crate) fn from_state_words(
        words: &mut std::str::SplitWhitespace<'_>,
    ) -> Option<InitiatorPort> {
        let isid = <[u8; 6]>::from_hex(words.next()?).ok()?;
        let name = words.next()?.to_string();
        Some(InitiatorPort(Port::Iscsi { name, isid }))
    }
}

/// The initiator port name: for iSCSI `name,i,0x<isid>` (RFC 7143 section
/// 4.2.7.1).
impl fmt::Display for InitiatorPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Port::Iscsi { name, isid } => write!(f, "{name},i,0x{}", hex::encode(isid)),
        }
    }
}

/// A TransportID of a parameter list: one initiator port, or every port of
/// an initiator device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TransportId {
    /// One port.
    Port(InitiatorPort),
    /// Every port of an initiator device.
    Device {
        /// Its transport protocol identifier.
        protocol: u8,
        /// Its name (for iSCSI the iSCSI name, lower-cased).
        name: String,
    },
}

impl TransportId {
    /// Parses the TransportID at `off` of parameter list `p`; returns it and
    /// its length, or the sense data that refuses the list.
    pub(crate) fn parse(p: &[u8], off: usize) -> Result<(TransportId, usize), Sense> {
        match byte(p, off) & 0x0f {
            protocol_id::ISCSI => parse_iscsi(p, off),
            _ => Err(Sense::invalid_param(off as u16, None)),
        }
    }

    /// Whether it names `port`.
    pub(crate) fn names(&self, port: &InitiatorPort) -> bool {
        match self {
            TransportId::Port(p) => p == port,
            TransportId::Device { protocol, name } => {
                port.protocol() == *protocol && port.device_name() == name
            }
        }
    }
}

/// An iSCSI TransportID (SPC-4 7.6.4.6): format 00b names the initiator
/// device, 01b one port (`name,i,0x<isid>`).
fn parse_iscsi(p: &[u8], off: usize) -> Result<(TransportId, usize), Sense> {
    let b0 = byte(p, off);
    let len = 4 + usize::from(be16(p, off + 2));
    if len < 24 || len % 4 != 0 || off + len > p.len() {
        return Err(Sense::invalid_param((off + 2) as u16, None));
    }
    let raw = &p[off + 4..off + len];
    let text_end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let text = std::str::from_utf8(&raw[..text_end])
        .map_err(|_| Sense::invalid_param((off + 4) as u16, None))?
        .to_ascii_lowercase();
    match b0 >> 6 {
        0 => Ok((
            TransportId::Device {
                protocol: protocol_id::ISCSI,
                name: text,
            },
            len,
        )),
        1 => {
            let (name, isid_hex) = text
                .split_once(",i,0x")
                .ok_or_else(|| Sense::invalid_param((off + 4) as u16, None))?;
            let isid = <[u8; 6]>::from_hex(isid_hex)
                .map_err(|_| Sense::invalid_param((off + 4) as u16, None))?;
            let port = InitiatorPort(Port::Iscsi {
                name: name.to_string(),
                isid,
            });
            Ok((TransportId::Port(port), len))
        }
        _ => Err(Sense::invalid_param(off as u16, Some(6))),
    }
}

/// A port-format iSCSI TransportID carrying `port_name`, NUL-padded.
fn iscsi_port_transport_id(port_name: &str) -> Vec<u8> {
    let mut name = port_name.as_bytes().to_vec();
    name.push(0);
    while name.len() < 20 || !name.len().is_multiple_of(4) {
        name.push(0);
    }
    let mut t = vec![0x40 | protocol_id::ISCSI, 0];
    t.extend_from_slice(&(name.len() as u16).to_be_bytes());
    t.extend_from_slice(&name);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(i: u8) -> InitiatorPort {
        InitiatorPort::iscsi("iqn.2026-01.test:init", [0x80, 0, 0, 0, 0, i])
    }

    #[test]
    fn transport_ids() {
        let t = port(5).transport_id();
        assert_eq!(t.len() % 4, 0);
        let (tid, len) = TransportId::parse(&t, 0).unwrap();
        assert_eq!(len, t.len());
        assert_eq!(tid, TransportId::Port(port(5)));
        assert!(tid.names(&port(5)) && !tid.names(&port(6)));
        let mut bad = t.clone();
        bad[0] = 0x41; // protocol 1
        assert!(TransportId::parse(&bad, 0).is_err());
        // Format 00b names every port of the device.
        let dev = iscsi_port_transport_id("IQN.2026-01.test:INIT");
        let mut dev = dev.clone();
        dev[0] = protocol_id::ISCSI;
        let (tid, _) = TransportId::parse(&dev, 0).unwrap();
        assert!(tid.names(&port(5)) && tid.names(&port(6)));
        assert!(!tid.names(&InitiatorPort::iscsi(
            "iqn.2026-01.test:other",
            [0x80, 0, 0, 0, 0, 5]
        )));
    }

    /// The ISID of a TransportID is decoded as hex, never sliced by byte
    /// index: a multi-byte character across a digit pair used to panic
    /// ("not a char boundary"), and `u8::from_str_radix` took "+f" as 15.
    #[test]
    fn transport_id_isid_is_strict_hex() {
        for isid in [
            "00000\u{e9}00000",
            "\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}",
            "+f0000000000",
            "80000000000g",
            "8000000000",
            "80000000000001",
        ] {
            let t = iscsi_port_transport_id(&format!("iqn.2026-01.test:init,i,0x{isid}"));
            let r = std::panic::catch_unwind(|| TransportId::parse(&t, 0));
            assert!(matches!(r, Ok(Err(_))), "ISID {isid:?}: {r:?}");
        }
        let t = iscsi_port_transport_id("IQN.2026-01.test:init,i,0x80000000ABcd");
        let (tid, _) = TransportId::parse(&t, 0).expect("upper-case hex is hex");
        assert_eq!(
            tid,
            TransportId::Port(InitiatorPort::iscsi(
                "iqn.2026-01.test:init",
                [0x80, 0, 0, 0, 0xab, 0xcd]
            ))
        );
    }

    #[test]
    fn port_names_and_state_words() {
        let p = InitiatorPort::iscsi("IQN.2026-01.Test:Init", [0x80, 0, 0, 0, 0xab, 0x01]);
        assert_eq!(p.to_string(), "iqn.2026-01.test:init,i,0x80000000ab01");
        assert_eq!(p.protocol(), protocol_id::ISCSI);
        let words = p.to_state_words();
        assert_eq!(words, "80000000ab01 iqn.2026-01.test:init");
        assert_eq!(
            InitiatorPort::from_state_words(&mut words.split_whitespace()),
            Some(p)
        );
    }
}
