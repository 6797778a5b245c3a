//! CHAP text keys and their value encodings (RFC 7143 sections 6.1 and
//! 12.1.3).
//!
//! Binary values (CHAP_C, CHAP_R) are accepted as hex (`0x`/`0X`, an odd digit
//! count implies a leading zero nibble) or base64 (`0b`/`0B`, RFC 4648 standard
//! alphabet, padding optional) and always sent as `0x` hex. Numbers (CHAP_I,
//! the CHAP_A list elements) are accepted in decimal or `0x` hex and sent in
//! decimal.

use std::fmt;

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;

use crate::error::{ChapError, Result};

/// Algorithm (list) key.
pub const CHAP_A: &str = "CHAP_A";
/// Identifier key.
pub const CHAP_I: &str = "CHAP_I";
/// Challenge key.
pub const CHAP_C: &str = "CHAP_C";
/// Name key.
pub const CHAP_N: &str = "CHAP_N";
/// Response key.
pub const CHAP_R: &str = "CHAP_R";

const ALL_KEYS: [&str; 5] = [CHAP_A, CHAP_I, CHAP_C, CHAP_N, CHAP_R];

/// Longest challenge accepted or sent, in bytes.
pub const MAX_CHALLENGE_LEN: usize = 1024;
/// Shortest challenge accepted from a peer, in bytes.
pub const MIN_CHALLENGE_LEN: usize = 1;
/// Longest CHAP_N accepted, in bytes (the RFC 7143 text-value limit).
pub const MAX_NAME_LEN: usize = 255;
/// Longest encoded value accepted for any CHAP key, in bytes: a maximal
/// challenge in hex.
const MAX_ENCODED_BINARY: usize = 2 + 2 * MAX_CHALLENGE_LEN;
/// Longest encoded value accepted for number and name keys.
const MAX_ENCODED_TEXT: usize = 255;

/// Whether `key` is one of the five CHAP keys this crate consumes. The iSCSI
/// login hands those to the state machine and handles every other key itself.
pub fn is_chap_key(key: &str) -> bool {
    ALL_KEYS.contains(&key)
}

/// Whether the value of `key` must never be logged: responses and challenges
/// (together they allow an offline dictionary attack on the secret).
pub fn is_sensitive_key(key: &str) -> bool {
    key == CHAP_R || key == CHAP_C
}

/// Whether any of `pairs` is a CHAP key.
pub fn has_chap_keys<I>(pairs: I) -> bool
where
    I: IntoIterator,
    I::Item: TextPair,
{
    pairs.into_iter().any(|p| is_chap_key(p.key()))
}

/// Encode binary data as a `0x` hex constant.
pub fn encode_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + 2 * bytes.len());
    s.push_str("0x");
    s.push_str(&hex::encode(bytes));
    s
}

fn base64_engine() -> GeneralPurpose {
    GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    )
}

/// Decode a binary value (`0x` hex or `0b` base64) of `key`. The result is
/// never empty and never longer than `MAX_CHALLENGE_LEN`.
pub fn decode_binary(key: &'static str, value: &str) -> Result<Vec<u8>> {
    if value.len() > MAX_ENCODED_BINARY {
        return Err(ChapError::malformed(key, "value too long"));
    }
    let bytes = if let Some(digits) = value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        if digits.is_empty() {
            return Err(ChapError::malformed(key, "hex constant without digits"));
        }
        let decoded = if digits.len() % 2 == 1 {
            let mut padded = String::with_capacity(digits.len() + 1);
            padded.push('0');
            padded.push_str(digits);
            hex::decode(padded)
        } else {
            hex::decode(digits)
        };
        decoded.map_err(|_| ChapError::malformed(key, "invalid hex digit"))?
    } else if let Some(digits) = value
        .strip_prefix("0b")
        .or_else(|| value.strip_prefix("0B"))
    {
        if digits.is_empty() {
            return Err(ChapError::malformed(key, "base64 constant without digits"));
        }
        base64_engine()
            .decode(digits)
            .map_err(|_| ChapError::malformed(key, "invalid base64"))?
    } else {
        return Err(ChapError::malformed(
            key,
            "binary value must start with 0x (hex) or 0b (base64)",
        ));
    };
    if bytes.is_empty() {
        return Err(ChapError::malformed(key, "empty binary value"));
    }
    if bytes.len() > MAX_CHALLENGE_LEN {
        return Err(ChapError::malformed(
            key,
            format!("longer than {MAX_CHALLENGE_LEN} bytes"),
        ));
    }
    Ok(bytes)
}

/// Decode a number (decimal, or `0x` hex) of `key`.
pub fn decode_number(key: &'static str, value: &str) -> Result<u64> {
    let (digits, radix) = match value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        Some(d) => (d, 16),
        None => (value, 10),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(ChapError::malformed(key, "not a number"));
    }
    u64::from_str_radix(digits, radix).map_err(|_| ChapError::malformed(key, "number too large"))
}

/// Decode a CHAP_I identifier (0..=255).
pub(crate) fn decode_identifier(value: &str) -> Result<u8> {
    let n = decode_number(CHAP_I, value)?;
    u8::try_from(n).map_err(|_| ChapError::malformed(CHAP_I, "identifier above 255"))
}

/// Decode a CHAP_A list into its numbers (unknown numbers are kept: the caller
/// decides which it supports). An empty value yields an empty list.
pub(crate) fn decode_algorithm_list(value: &str) -> Result<Vec<u32>> {
    if value.is_empty() {
        return Ok(Vec::new());
    }
    value
        .split(',')
        .map(|item| {
            let n = decode_number(CHAP_A, item)?;
            // Numbers beyond u32 cannot be an algorithm; keep them as "unknown".
            Ok(u32::try_from(n).unwrap_or(u32::MAX))
        })
        .collect()
}

/// Validate a CHAP_N value.
pub(crate) fn decode_name(value: &str) -> Result<String> {
    if value.is_empty() {
        return Err(ChapError::malformed(CHAP_N, "empty name"));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(ChapError::malformed(
            CHAP_N,
            format!("longer than {MAX_NAME_LEN} bytes"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ChapError::malformed(CHAP_N, "control character in name"));
    }
    Ok(value.to_owned())
}

/// One received `key=value` pair: implemented for `(K, V)` and `&(K, V)` with
/// `K, V: AsRef<str>`, so `step` takes `&[(String, String)]`,
/// `Vec<(&str, &str)>`, a [`KeyValues`] and the like.
pub trait TextPair {
    /// The key.
    fn key(&self) -> &str;
    /// The value.
    fn value(&self) -> &str;
}

impl<K: AsRef<str>, V: AsRef<str>> TextPair for (K, V) {
    fn key(&self) -> &str {
        self.0.as_ref()
    }
    fn value(&self) -> &str {
        self.1.as_ref()
    }
}

impl<K: AsRef<str>, V: AsRef<str>> TextPair for &(K, V) {
    fn key(&self) -> &str {
        self.0.as_ref()
    }
    fn value(&self) -> &str {
        self.1.as_ref()
    }
}

/// The CHAP keys of one received step, each at most once.
#[derive(Default)]
pub(crate) struct Received {
    pub a: Option<String>,
    pub i: Option<String>,
    pub c: Option<String>,
    pub n: Option<String>,
    pub r: Option<String>,
}

impl Received {
    /// Pick the CHAP keys out of `pairs` (other keys are ignored), refusing
    /// duplicates and over-long values.
    pub fn collect<I>(pairs: I) -> Result<Received>
    where
        I: IntoIterator,
        I::Item: TextPair,
    {
        let mut r = Received::default();
        for pair in pairs {
            let (k, v) = (pair.key(), pair.value());
            let (slot, key, limit) = match k {
                CHAP_A => (&mut r.a, CHAP_A, MAX_ENCODED_TEXT),
                CHAP_I => (&mut r.i, CHAP_I, MAX_ENCODED_TEXT),
                CHAP_C => (&mut r.c, CHAP_C, MAX_ENCODED_BINARY),
                CHAP_N => (&mut r.n, CHAP_N, MAX_ENCODED_TEXT),
                CHAP_R => (&mut r.r, CHAP_R, MAX_ENCODED_BINARY),
                _ => continue,
            };
            if slot.is_some() {
                return Err(ChapError::DuplicateKey(key));
            }
            if v.len() > limit {
                return Err(ChapError::malformed(key, "value too long"));
            }
            *slot = Some(v.to_owned());
        }
        Ok(r)
    }

    /// Refuse any of `keys` that is present.
    pub fn refuse(&self, keys: &[&'static str]) -> Result<()> {
        for &k in keys {
            let present = match k {
                CHAP_A => self.a.is_some(),
                CHAP_I => self.i.is_some(),
                CHAP_C => self.c.is_some(),
                CHAP_N => self.n.is_some(),
                CHAP_R => self.r.is_some(),
                _ => false,
            };
            if present {
                return Err(ChapError::UnexpectedKey(k));
            }
        }
        Ok(())
    }
}

/// Keys to send to the peer, in order. `Debug` redacts challenges and
/// responses, so the value can be logged.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KeyValues(Vec<(&'static str, String)>);

impl KeyValues {
    pub(crate) fn push(&mut self, key: &'static str, value: String) {
        self.0.push((key, value));
    }

    /// The pairs, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.0.iter().map(|(k, v)| (*k, v.as_str()))
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The pairs in iSCSI text form: `key=value\0` for each.
    pub fn to_text(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in self.iter() {
            out.extend_from_slice(k.as_bytes());
            out.push(b'=');
            out.extend_from_slice(v.as_bytes());
            out.push(0);
        }
        out
    }
}

impl IntoIterator for KeyValues {
    type Item = (&'static str, String);
    type IntoIter = std::vec::IntoIter<(&'static str, String)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a KeyValues {
    type Item = (&'static str, &'a str);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (&'static str, String)>,
        fn(&'a (&'static str, String)) -> (&'static str, &'a str),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (*k, v.as_str()))
    }
}

impl fmt::Debug for KeyValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (k, v) in self.iter() {
            if is_sensitive_key(k) {
                m.entry(&k, &format_args!("<redacted>"));
            } else {
                m.entry(&k, &v);
            }
        }
        m.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_values() {
        assert_eq!(
            decode_binary(CHAP_C, "0xabc").expect("odd"),
            vec![0x0a, 0xbc]
        );
        assert_eq!(
            decode_binary(CHAP_C, "0XAbCd").expect("mixed"),
            vec![0xab, 0xcd]
        );
        assert_eq!(
            decode_binary(CHAP_C, "0bq83v").expect("b64"),
            vec![0xab, 0xcd, 0xef]
        );
        assert_eq!(decode_binary(CHAP_C, "0Bqw==").expect("pad"), vec![0xab]);
        assert_eq!(decode_binary(CHAP_C, "0Bqw").expect("no pad"), vec![0xab]);
        for bad in [
            "", "ab", "0x", "0b", "0x 12", "0x12 ", "0b q83v", "0b-_", "0y12", "0b=",
        ] {
            let e = decode_binary(CHAP_C, bad).expect_err(bad);
            assert!(e.to_string().starts_with("malformed CHAP_C"), "{e}");
        }
        let max = encode_hex(&[0x5a; MAX_CHALLENGE_LEN]);
        assert_eq!(
            decode_binary(CHAP_C, &max).expect("max").len(),
            MAX_CHALLENGE_LEN
        );
        assert!(decode_binary(CHAP_C, &format!("{max}5a")).is_err());
        assert!(decode_binary(CHAP_C, &format!("0x0{}", &max[2..])).is_err());
    }

    #[test]
    fn numbers_and_identifiers() {
        assert_eq!(decode_number(CHAP_I, "0").expect("0"), 0);
        assert_eq!(decode_number(CHAP_I, "007").expect("007"), 7);
        assert_eq!(decode_number(CHAP_I, "0xff").expect("hex"), 255);
        assert_eq!(
            decode_number(CHAP_I, "18446744073709551615").expect("max"),
            u64::MAX
        );
        for bad in [
            "",
            "+1",
            "-1",
            "1 ",
            "0x",
            "1e3",
            "18446744073709551616",
            "٣",
        ] {
            assert!(decode_number(CHAP_I, bad).is_err(), "{bad:?}");
        }
        assert_eq!(decode_identifier("255").expect("255"), 255);
        assert!(decode_identifier("256").is_err());
        assert_eq!(
            decode_algorithm_list("5,0x7,99999999999").expect("list"),
            vec![5, 7, u32::MAX]
        );
        assert_eq!(decode_algorithm_list("").expect("empty"), Vec::<u32>::new());
    }

    #[test]
    fn names() {
        assert_eq!(
            decode_name("iqn.1994-05.com.redhat:x").expect("iqn"),
            "iqn.1994-05.com.redhat:x"
        );
        assert!(decode_name("").is_err());
        assert!(decode_name("a\nb").is_err());
        assert!(decode_name(&"n".repeat(MAX_NAME_LEN + 1)).is_err());
        assert!(decode_name(&"n".repeat(MAX_NAME_LEN)).is_ok());
    }

    #[test]
    fn key_values_redact_challenges_and_responses_in_debug() {
        let mut kv = KeyValues::default();
        kv.push(CHAP_A, "5".into());
        kv.push(CHAP_C, "0xfeedface".into());
        kv.push(CHAP_R, "0xdeadbeef".into());
        let s = format!("{kv:?}");
        assert!(s.contains("\"CHAP_A\": \"5\""), "{s}");
        assert!(!s.contains("feedface") && !s.contains("deadbeef"), "{s}");
        assert_eq!(kv.get(CHAP_R), Some("0xdeadbeef"));
        assert_eq!(
            kv.to_text(),
            b"CHAP_A=5\0CHAP_C=0xfeedface\0CHAP_R=0xdeadbeef\0"
        );
    }

    #[test]
    fn duplicates_and_length_limits_on_collect() {
        assert!(matches!(
            Received::collect([("CHAP_R", "0x1"), ("CHAP_R", "0x1")]),
            Err(ChapError::DuplicateKey(CHAP_R))
        ));
        let long = "n".repeat(MAX_ENCODED_TEXT + 1);
        assert!(Received::collect([(CHAP_N, long.as_str())]).is_err());
        let r = Received::collect([("Other", "x"), ("chap_a", "5")]).expect("ignored");
        assert!(r.a.is_none(), "keys are case-sensitive");
    }
}
