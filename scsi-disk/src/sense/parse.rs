//! Reading sense data as an initiator receives it, in either format (SPC-4
//! 4.5.2 descriptor, 4.5.3 fixed), current or deferred.

use super::{key, Asc, FieldPointer, Sense};

/// Sense data as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedSense {
    /// The datum.
    pub sense: Sense,
    /// It reports a deferred error: the failure of an earlier command that
    /// was already reported as done (a cached write that could not be
    /// written), not of this one, which was not performed.
    pub deferred: bool,
}

/// A big-endian number of `bytes`.
fn be(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0, |v, b| v << 8 | u64::from(*b))
}

impl Sense {
    /// Reads sense data in fixed (response code 0x70/0x71) or descriptor
    /// (0x72/0x73) format. Fields cut off by a short buffer read as absent;
    /// the sense-key-specific bytes are read as a field pointer under
    /// ILLEGAL REQUEST and as a progress indication under NOT READY and NO
    /// SENSE. None for another response code or fewer bytes than the key.
    pub fn parse(data: &[u8]) -> Option<ParsedSense> {
        let code = data.first()? & 0x7f;
        let deferred = matches!(code, 0x71 | 0x73);
        let at = |i: usize| data.get(i).copied().unwrap_or(0);
        let sense = match code {
            0x70 | 0x71 => {
                let key = data.get(2)? & 0x0f;
                let mut s = Sense::new(key, Asc(at(12), at(13)));
                if data[0] & 0x80 != 0 && data.len() >= 7 {
                    s.info = Some(be(&data[3..7]));
                }
                if data.len() >= 12 {
                    s.command_info = be(&data[8..12]) as u32;
                }
                if data.len() >= 18 {
                    s.set_key_specific([data[15], data[16], data[17]]);
                }
                s
            }
            0x72 | 0x73 => {
                let mut s = Sense::new(data.get(1)? & 0x0f, Asc(at(2), at(3)));
                let end = data.len().min(8 + usize::from(at(7)));
                let mut rest = data.get(8..end).unwrap_or_default();
                while let [kind, len, ..] = *rest {
                    let Some(d) = rest.get(..2 + usize::from(len)) else {
                        break;
                    };
                    match (kind, d.len()) {
                        (0x00, 12) if d[2] & 0x80 != 0 => s.info = Some(be(&d[4..12])),
                        (0x01, 12) => s.command_info = be(&d[4..12]) as u32,
                        (0x02, 8) => s.set_key_specific([d[4], d[5], d[6]]),
                        _ => {}
                    }
                    rest = &rest[d.len()..];
                }
                s
            }
            _ => return None,
        };
        Some(ParsedSense { sense, deferred })
    }

    /// Reads the sense-key-specific bytes (when SKSV is set) as this key
    /// defines them.
    fn set_key_specific(&mut self, sks: [u8; 3]) {
        if sks[0] & 0x80 == 0 {
            return;
        }
        let value = u16::from_be_bytes([sks[1], sks[2]]);
        match self.key {
            key::ILLEGAL_REQUEST => {
                self.field = Some(FieldPointer {
                    in_cdb: sks[0] & 0x40 != 0,
                    byte: value,
                    bit: (sks[0] & 0x08 != 0).then_some(sks[0] & 0x07),
                });
            }
            key::NOT_READY | key::NO_SENSE => self.progress = Some(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Any sense datum these formats can carry: a field pointer under
    /// ILLEGAL REQUEST, progress under NOT READY or NO SENSE.
    fn sense() -> impl Strategy<Value = Sense> {
        let field = (any::<bool>(), any::<u16>(), proptest::option::of(0u8..8))
            .prop_map(|(in_cdb, byte, bit)| FieldPointer { in_cdb, byte, bit });
        (
            0u8..16,
            any::<(u8, u8)>(),
            proptest::option::of(any::<u64>()),
            any::<u32>(),
            proptest::option::of(field),
            proptest::option::of(any::<u16>()),
        )
            .prop_map(
                |(k, (asc, ascq), info, command_info, field, progress)| Sense {
                    key: k,
                    asc: Asc(asc, ascq),
                    info,
                    command_info,
                    field: field.filter(|_| k == key::ILLEGAL_REQUEST),
                    progress: progress.filter(|_| matches!(k, key::NOT_READY | key::NO_SENSE)),
                },
            )
    }

    proptest! {
        #[test]
        fn descriptor_format_reads_back_whole(s in sense()) {
            let parsed = Sense::parse(&s.to_descriptor()).unwrap();
            prop_assert_eq!(parsed, ParsedSense { sense: s, deferred: false });
        }

        #[test]
        fn fixed_format_reads_back_whole_but_a_wide_information_field(s in sense()) {
            let parsed = Sense::parse(&s.to_fixed()).unwrap();
            let mut want = s.clone();
            // The fixed format holds 32 bits of information: saturated.
            want.info = s.info.map(|i| i.min(u64::from(u32::MAX)));
            prop_assert_eq!(parsed, ParsedSense { sense: want, deferred: false });
        }

        #[test]
        fn any_bytes_parse_or_fail_cleanly(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Sense::parse(&b);
        }
    }

    #[test]
    fn deferred_short_and_foreign_sense() {
        let mut d = Sense::new(key::MEDIUM_ERROR, Asc::WRITE_ERROR).to_fixed();
        d[0] = 0x71;
        let p = Sense::parse(&d).unwrap();
        assert!(p.deferred);
        assert_eq!(
            (p.sense.key, p.sense.asc),
            (key::MEDIUM_ERROR, Asc::WRITE_ERROR)
        );
        let mut d = Sense::new(key::NOT_READY, Asc::NOT_READY_UNAVAILABLE).to_descriptor();
        d[0] = 0x73;
        assert!(Sense::parse(&d).unwrap().deferred);
        // Eight bytes of fixed format: the key, no additional sense code.
        let p = Sense::parse(&[0x70, 0, 0x06, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!((p.sense.key, p.sense.asc), (key::UNIT_ATTENTION, Asc::NONE));
        // A descriptor longer than the data is not read.
        let p = Sense::parse(&[0x72, 3, 0x11, 0, 0, 0, 0, 12, 0, 10, 0x80, 0, 1]).unwrap();
        assert_eq!(p.sense.info, None);
        assert_eq!(Sense::parse(&[]), None);
        assert_eq!(Sense::parse(&[0x70, 0]), None);
        assert_eq!(Sense::parse(&[0x7F, 0, 5]), None);
    }
}
