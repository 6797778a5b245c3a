//! One side's own values of the operational keys ([`Limits`]) and the
//! outcome of a negotiation ([`Params`]).

use super::keys::{parse_number, yes_no, KeyKind, Layer, KEYS};
use crate::digest::Digest;

/// What one side (target or initiator) is willing to do: its own value of
/// every operational key it negotiates. The responder answers with them,
/// the originator offers them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The most data this side accepts in one PDU (declared).
    pub max_recv_data_segment_length: u32,
    /// Largest burst this side accepts or sends.
    pub max_burst_length: u32,
    /// Largest unsolicited burst.
    pub first_burst_length: u32,
    /// Most R2Ts outstanding per task.
    pub max_outstanding_r2t: u32,
    /// Whether this side wants all data solicited (InitialR2T).
    pub initial_r2t: bool,
    /// Whether immediate data is accepted or sent.
    pub immediate_data: bool,
    /// Header digests, in order of preference (an originator's offer; a
    /// responder picks the first of the offer that is in here).
    pub header_digests: Vec<Digest>,
    /// Data digests, the same way.
    pub data_digests: Vec<Digest>,
    /// DefaultTime2Wait asked for.
    pub default_time2wait: u32,
    /// DefaultTime2Retain offered.
    pub default_time2retain: u32,
    /// Connections per session.
    pub max_connections: u32,
    /// ErrorRecoveryLevel supported.
    pub error_recovery_level: u32,
    /// Whether Data PDUs must come in order (DataPDUInOrder).
    pub data_pdu_in_order: bool,
    /// Whether data sequences must come in order (DataSequenceInOrder).
    pub data_sequence_in_order: bool,
}

impl Default for Limits {
    /// The target's values: large bursts, immediate and unsolicited data,
    /// CRC32C or no digests, one connection, error recovery level 0, data
    /// in order.
    fn default() -> Self {
        Limits {
            max_recv_data_segment_length: 262_144,
            max_burst_length: 1_048_576,
            first_burst_length: 262_144,
            max_outstanding_r2t: 16,
            initial_r2t: false,
            immediate_data: true,
            header_digests: vec![Digest::Crc32c, Digest::None],
            data_digests: vec![Digest::Crc32c, Digest::None],
            default_time2wait: 2,
            default_time2retain: 0,
            max_connections: 1,
            error_recovery_level: 0,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
        }
    }
}

impl Limits {
    /// The initiator's usual values (those of open-iscsi): 256 KiB
    /// segments, bursts as large as the target takes (16 MiB less 1 KiB),
    /// immediate and unsolicited data, no digests, one R2T at a time.
    pub fn initiator() -> Limits {
        Limits {
            max_recv_data_segment_length: 262_144,
            max_burst_length: 16_776_192,
            first_burst_length: 262_144,
            max_outstanding_r2t: 1,
            initial_r2t: false,
            immediate_data: true,
            header_digests: vec![Digest::None],
            data_digests: vec![Digest::None],
            default_time2wait: 0,
            default_time2retain: 0,
            ..Limits::default()
        }
    }

    /// This side's own value of an operational key, as
    /// [`KeyKind::respond`] combines it with an offer and as an originator
    /// offers it. `None` for keys it does not negotiate.
    pub fn own(&self, name: &str) -> Option<String> {
        let fixed = |v: &str| Some(v.to_string());
        match name {
            "HeaderDigest" => Some(digest_list(&self.header_digests)),
            "DataDigest" => Some(digest_list(&self.data_digests)),
            "MaxConnections" => Some(self.max_connections.to_string()),
            "InitialR2T" => fixed(yes_no(self.initial_r2t)),
            "ImmediateData" => fixed(yes_no(self.immediate_data)),
            "MaxRecvDataSegmentLength" => Some(self.max_recv_data_segment_length.to_string()),
            "MaxBurstLength" => Some(self.max_burst_length.to_string()),
            "FirstBurstLength" => Some(self.first_burst_length.to_string()),
            "DefaultTime2Wait" => Some(self.default_time2wait.to_string()),
            "DefaultTime2Retain" => Some(self.default_time2retain.to_string()),
            "MaxOutstandingR2T" => Some(self.max_outstanding_r2t.to_string()),
            "DataPDUInOrder" => fixed(yes_no(self.data_pdu_in_order)),
            "DataSequenceInOrder" => fixed(yes_no(self.data_sequence_in_order)),
            "ErrorRecoveryLevel" => Some(self.error_recovery_level.to_string()),
            // No markers (obsolete keys, answered only).
            "OFMarker" | "IFMarker" => fixed("No"),
            // RFC 7144 (iSCSIProtocolLevel 1).
            "iSCSIProtocolLevel" => fixed("1"),
            "TaskReporting" => fixed("RFC3720"),
            _ => None,
        }
    }
}

/// A digest preference list as a key value (`CRC32C,None`).
fn digest_list(list: &[Digest]) -> String {
    if list.is_empty() {
        return "None".into();
    }
    list.iter()
        .map(|d| match d {
            Digest::None => "None",
            Digest::Crc32c => "CRC32C",
        })
        .collect::<Vec<_>>()
        .join(",")
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
    pub(crate) fn set(&mut self, name: &str, value: &str) {
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
    pub(crate) fn set_declared(&mut self, name: &str, value: &str, by_peer: bool) {
        let n = parse_number(value).map_or(0, |n| n as u32);
        if name == "MaxRecvDataSegmentLength" {
            if by_peer {
                self.send_data_segment_length = n;
            } else {
                self.recv_data_segment_length = n;
            }
        }
    }

    /// The rules across keys once a login is over: FirstBurstLength never
    /// exceeds MaxBurstLength (§13.14).
    pub(crate) fn settle(&mut self) {
        if self.first_burst_length > self.max_burst_length {
            self.first_burst_length = self.max_burst_length;
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

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[test]
    fn every_operational_key_has_a_value() {
        let l = Limits::default();
        for def in KEYS {
            let answered = def.layer == Layer::Operational && def.kind != KeyKind::Obsolete;
            assert_eq!(l.own(def.name).is_some(), answered, "{}", def.name);
        }
    }

    #[test]
    fn digest_preferences_are_lists() {
        let mut l = Limits::default();
        assert_eq!(l.own("HeaderDigest").as_deref(), Some("CRC32C,None"));
        l.data_digests = vec![Digest::None, Digest::Crc32c];
        assert_eq!(l.own("DataDigest").as_deref(), Some("None,CRC32C"));
        l.data_digests.clear();
        assert_eq!(l.own("DataDigest").as_deref(), Some("None"));
    }
}
