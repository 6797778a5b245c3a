//! Text key=value lists (RFC 7143 §6.1): `key=value\0key=value\0`, carried
//! by Login and Text PDUs, possibly continued across PDUs (C bit).

use nom::bytes::complete::{take_till, take_till1};
use nom::character::complete::char;
use nom::sequence::separated_pair;
use nom::IResult;

/// Longest key name (§6.1).
pub const MAX_KEY_LEN: usize = 63;
/// Longest value for ordinary keys (§6.1); CHAP values may be longer.
pub const MAX_VALUE_LEN: usize = 255;
/// Longest value of any key (large binary CHAP values, §6.1).
pub const MAX_LONG_VALUE_LEN: usize = 8192;
/// Most text bytes a login or text exchange may accumulate across PDUs.
pub const MAX_TEXT_LEN: usize = 64 * 1024;

/// Errors in a text list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// A pair without `=` or with an empty key.
    #[error("malformed key=value pair")]
    Malformed,
    /// A key longer than 63 bytes or with characters outside the standard set.
    #[error("bad key name")]
    BadKey,
    /// A value that is too long or not UTF-8.
    #[error("bad value for {0}")]
    BadValue(String),
    /// The same key twice in one list.
    #[error("key {0} sent twice")]
    Duplicate(String),
    /// Accumulated text over the limit.
    #[error("text too long")]
    TooLong,
}

/// An ordered list of key/value pairs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TextList(pub Vec<(String, String)>);

fn pair(input: &[u8]) -> IResult<&[u8], (&[u8], &[u8])> {
    separated_pair(take_till1(|c| c == b'='), char('='), take_till(|_| false))(input)
}

fn key_ok(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= MAX_KEY_LEN
        && k.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b".-+@_:#".contains(&c))
}

impl TextList {
    /// Parses a complete data segment (NUL separated; a trailing NUL and
    /// padding NULs are allowed). Duplicate keys are an error.
    pub fn parse(data: &[u8]) -> Result<TextList, TextError> {
        let mut out: Vec<(String, String)> = Vec::new();
        for item in data.split(|&c| c == 0) {
            if item.is_empty() {
                continue;
            }
            let (_, (k, v)) = pair(item).map_err(|_| TextError::Malformed)?;
            let k = std::str::from_utf8(k).map_err(|_| TextError::BadKey)?;
            if !key_ok(k) {
                return Err(TextError::BadKey);
            }
            let v = std::str::from_utf8(v).map_err(|_| TextError::BadValue(k.to_string()))?;
            if v.len() > MAX_LONG_VALUE_LEN || (v.len() > MAX_VALUE_LEN && !k.starts_with("CHAP_"))
            {
                return Err(TextError::BadValue(k.to_string()));
            }
            if out.iter().any(|(ok, _)| ok == k) {
                return Err(TextError::Duplicate(k.to_string()));
            }
            out.push((k.to_string(), v.to_string()));
        }
        Ok(TextList(out))
    }

    /// Appends a pair.
    pub fn push(&mut self, k: impl Into<String>, v: impl Into<String>) {
        self.0.push((k.into(), v.into()));
    }

    /// The value of a key.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str())
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Encodes as `key=value\0...`.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        for (k, val) in &self.0 {
            v.extend_from_slice(k.as_bytes());
            v.push(b'=');
            v.extend_from_slice(val.as_bytes());
            v.push(0);
        }
        v
    }
}

/// Accumulates a text payload spread over PDUs with the C bit.
#[derive(Debug, Default)]
pub struct TextAccumulator {
    buf: Vec<u8>,
}

impl TextAccumulator {
    /// Adds one PDU's data; returns the complete list once `cont` is false.
    pub fn push(&mut self, data: &[u8], cont: bool) -> Result<Option<TextList>, TextError> {
        if self.buf.len() + data.len() > MAX_TEXT_LEN {
            self.buf.clear();
            return Err(TextError::TooLong);
        }
        self.buf.extend_from_slice(data);
        if cont {
            return Ok(None);
        }
        let r = TextList::parse(&self.buf);
        self.buf.clear();
        r.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_login_text() {
        let t = TextList::parse(b"InitiatorName=iqn.x:y\0SessionType=Normal\0\0\0").unwrap();
        assert_eq!(t.get("InitiatorName"), Some("iqn.x:y"));
        assert_eq!(t.get("SessionType"), Some("Normal"));
        assert_eq!(t.0.len(), 2);
        assert_eq!(TextList::parse(b"a=b=c\0").unwrap().get("a"), Some("b=c"));
        assert_eq!(TextList::parse(b"Empty=\0").unwrap().get("Empty"), Some(""));
    }

    #[test]
    fn rejects_bad_lists() {
        assert_eq!(TextList::parse(b"novalue\0"), Err(TextError::Malformed));
        assert_eq!(TextList::parse(b"=x\0"), Err(TextError::Malformed));
        assert_eq!(TextList::parse(b"a b=x\0"), Err(TextError::BadKey));
        assert!(matches!(
            TextList::parse(b"A=1\0A=2\0"),
            Err(TextError::Duplicate(_))
        ));
        let long = format!("K={}\0", "x".repeat(256));
        assert!(matches!(
            TextList::parse(long.as_bytes()),
            Err(TextError::BadValue(_))
        ));
        let key = format!("{}=1\0", "k".repeat(64));
        assert_eq!(TextList::parse(key.as_bytes()), Err(TextError::BadKey));
    }

    #[test]
    fn continuation() {
        let mut acc = TextAccumulator::default();
        assert_eq!(acc.push(b"Initiator", true), Ok(None));
        let t = acc.push(b"Name=iqn.a\0", false).unwrap().unwrap();
        assert_eq!(t.get("InitiatorName"), Some("iqn.a"));
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = TextList::parse(&data);
        }

        #[test]
        fn round_trip(pairs in proptest::collection::btree_map("[A-Za-z][A-Za-z0-9.:-]{0,20}", "[ -~]{0,40}", 0..8)) {
            let list = TextList(pairs.into_iter().collect());
            prop_assert_eq!(TextList::parse(&list.encode()).unwrap(), list);
        }
    }
}
