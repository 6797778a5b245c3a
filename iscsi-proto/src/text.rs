//! Text key=value lists (RFC 7143 §6.1): `key=value\0key=value\0`, carried
//! by Login and Text PDUs, possibly continued across PDUs (C bit).

use std::collections::HashSet;

/// Longest key name (§6.1).
pub const MAX_KEY_LEN: usize = 63;
/// Longest value for ordinary keys (§6.1); CHAP values may be longer.
pub const MAX_VALUE_LEN: usize = 255;
/// Longest value of any key (large binary CHAP values, §6.1).
pub const MAX_LONG_VALUE_LEN: usize = 8192;
/// Most text bytes a login or text exchange may accumulate across PDUs.
pub const MAX_TEXT_LEN: usize = 64 * 1024;
/// Most keys one list may hold. A login sends a few dozen at most; without a
/// cap, 64 KiB of text holds over 20,000 of them.
pub const MAX_KEYS: usize = 256;

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
    /// More than [`MAX_KEYS`] keys in one list.
    #[error("more than {MAX_KEYS} keys")]
    TooManyKeys,
}

/// An ordered list of key/value pairs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TextList(pub Vec<(String, String)>);

/// Splits `key=value` at the first `=`; the key must not be empty.
fn pair(item: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = item.iter().position(|&c| c == b'=').filter(|&i| i > 0)?;
    Some((&item[..eq], &item[eq + 1..]))
}

/// The key and value as text, if both are valid (name rules, lengths).
fn checked<'a>(k: &'a [u8], v: &'a [u8]) -> Result<(&'a str, &'a str), TextError> {
    let k = std::str::from_utf8(k).map_err(|_| TextError::BadKey)?;
    if !key_ok(k) {
        return Err(TextError::BadKey);
    }
    let v = std::str::from_utf8(v).map_err(|_| TextError::BadValue(k.to_string()))?;
    if v.len() > MAX_LONG_VALUE_LEN || (v.len() > MAX_VALUE_LEN && !k.starts_with("CHAP_")) {
        return Err(TextError::BadValue(k.to_string()));
    }
    Ok((k, v))
}

fn key_ok(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= MAX_KEY_LEN
        && k.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b".-+@_:#".contains(&c))
}

impl TextList {
    /// Parses a complete data segment (NUL separated; a trailing NUL and
    /// padding NULs are allowed). Duplicate keys and more than [`MAX_KEYS`]
    /// keys are errors; the first error in the list is the one returned.
    /// Linear in the length of `data`.
    pub fn parse(data: &[u8]) -> Result<TextList, TextError> {
        TextList::parse_checked(data, true)
    }

    /// Parses a list in which a key may come more than once: the answer to
    /// SendTargets, a TargetName and its TargetAddresses per target
    /// (§12.3). Otherwise as [`TextList::parse`].
    pub fn parse_repeating(data: &[u8]) -> Result<TextList, TextError> {
        TextList::parse_checked(data, false)
    }

    fn parse_checked(data: &[u8], unique: bool) -> Result<TextList, TextError> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut seen: HashSet<&str> = HashSet::new();
        for item in data.split(|&c| c == 0) {
            if item.is_empty() {
                continue;
            }
            if out.len() == MAX_KEYS {
                return Err(TextError::TooManyKeys);
            }
            let (k, v) = pair(item).ok_or(TextError::Malformed)?;
            let (k, v) = checked(k, v)?;
            if !seen.insert(k) && unique {
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
    repeating: bool,
}

impl TextAccumulator {
    /// An accumulator of a list whose keys may repeat
    /// ([`TextList::parse_repeating`]).
    pub fn repeating() -> TextAccumulator {
        TextAccumulator {
            buf: Vec::new(),
            repeating: true,
        }
    }

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
        let r = TextList::parse_checked(&self.buf, !self.repeating);
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
    fn send_targets_answers_repeat_keys() {
        let text = b"TargetName=a\0TargetAddress=x,1\0TargetAddress=y,1\0TargetName=b\0";
        assert!(matches!(
            TextList::parse(text),
            Err(TextError::Duplicate(_))
        ));
        let list = TextList::parse_repeating(text).unwrap();
        assert_eq!(list.0.len(), 4);
        let mut acc = TextAccumulator::repeating();
        assert_eq!(acc.push(&text[..20], true), Ok(None));
        assert_eq!(acc.push(&text[20..], false), Ok(Some(list)));
        assert!(matches!(
            TextList::parse_repeating(b"bad\0"),
            Err(TextError::Malformed)
        ));
    }

    #[test]
    fn continuation() {
        let mut acc = TextAccumulator::default();
        assert_eq!(acc.push(b"Initiator", true), Ok(None));
        let t = acc.push(b"Name=iqn.a\0", false).unwrap().unwrap();
        assert_eq!(t.get("InitiatorName"), Some("iqn.a"));
    }

    #[test]
    fn key_count_is_capped() {
        let list = |n: usize| -> Vec<u8> {
            (0..n)
                .flat_map(|i| format!("X-k{i}=v\0").into_bytes())
                .collect()
        };
        assert_eq!(TextList::parse(&list(MAX_KEYS)).unwrap().0.len(), MAX_KEYS);
        assert_eq!(
            TextList::parse(&list(MAX_KEYS + 1)),
            Err(TextError::TooManyKeys)
        );
        // 64 KiB of the shortest pairs: refused, not parsed to the end.
        let flood: Vec<u8> = (0..9984)
            .flat_map(|i| format!("k{i}=\0").into_bytes())
            .take(MAX_TEXT_LEN)
            .collect();
        assert_eq!(TextList::parse(&flood), Err(TextError::TooManyKeys));
        // Padding NULs are not keys.
        let mut padded = list(MAX_KEYS);
        padded.extend_from_slice(&[0; 1000]);
        assert!(TextList::parse(&padded).is_ok());
    }

    #[test]
    fn duplicates_are_found_anywhere_in_the_list() {
        let mut text: Vec<u8> = (0..200)
            .flat_map(|i| format!("X-k{i}=v\0").into_bytes())
            .collect();
        text.extend_from_slice(b"X-k3=again\0");
        assert_eq!(
            TextList::parse(&text),
            Err(TextError::Duplicate("X-k3".into()))
        );
        // Keys are case-sensitive (RFC 7143 section 6.1).
        assert_eq!(TextList::parse(b"A=1\0a=2\0").unwrap().0.len(), 2);
        // The first error of the list wins: a bad pair before a duplicate.
        assert_eq!(
            TextList::parse(b"A=1\0bad\0A=2\0"),
            Err(TextError::Malformed)
        );
    }

    #[test]
    fn too_many_keys_fail_the_accumulated_text() {
        let mut acc = TextAccumulator::default();
        let half: Vec<u8> = (0..MAX_KEYS)
            .flat_map(|i| format!("X-a{i}=v\0").into_bytes())
            .collect();
        assert_eq!(acc.push(&half, true), Ok(None));
        let rest: Vec<u8> = b"X-b=v\0".to_vec();
        assert_eq!(acc.push(&rest, false), Err(TextError::TooManyKeys));
    }

    /// The parser as it was before the key cap and the linear duplicate
    /// check (a nom `key=value` split at the first `=` with a non-empty key,
    /// then a scan of every earlier key): the reference the new one must
    /// agree with.
    fn old_parse(data: &[u8]) -> Result<TextList, TextError> {
        let mut out: Vec<(String, String)> = Vec::new();
        for item in data.split(|&c| c == 0) {
            if item.is_empty() {
                continue;
            }
            let eq = match item.iter().position(|&c| c == b'=') {
                Some(i) if i > 0 => i,
                _ => return Err(TextError::Malformed),
            };
            let (k, v) = checked(&item[..eq], &item[eq + 1..])?;
            if out.iter().any(|(ok, _)| ok == k) {
                return Err(TextError::Duplicate(k.to_string()));
            }
            out.push((k.to_string(), v.to_string()));
        }
        Ok(TextList(out))
    }

    /// Text items that hit every rule: good pairs from a small key set (so
    /// duplicates happen), empty keys, missing `=`, bad key bytes, long
    /// values, CHAP values, invalid UTF-8, and empty items (padding).
    fn item() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            4 => ("[A-Da-d]{1,2}", "[ -~]{0,8}").prop_map(|(k, v)| format!("{k}={v}").into_bytes()),
            1 => Just(Vec::new()),
            1 => "[ -~]{0,6}".prop_map(String::into_bytes),
            1 => "=[ -~]{0,4}".prop_map(String::into_bytes),
            1 => (1usize..70).prop_map(|n| format!("{}=1", "k".repeat(n)).into_bytes()),
            1 => (200usize..9000).prop_map(|n| format!("K=={}", "v".repeat(n)).into_bytes()),
            1 => (200usize..9000).prop_map(|n| format!("CHAP_C={}", "0".repeat(n)).into_bytes()),
            1 => proptest::collection::vec(any::<u8>(), 0..12),
            1 => Just(b"k=\xff".to_vec()),
            1 => Just(b"\xc3=v".to_vec()),
        ]
    }

    proptest! {
        #[test]
        fn parse_agrees_with_the_old_parser(
            items in proptest::collection::vec(item(), 0..24),
            many in proptest::collection::vec("[A-Za-z]{1,6}", 0..300),
            spread in any::<bool>(),
        ) {
            let mut data: Vec<u8> = Vec::new();
            for i in &items {
                data.extend_from_slice(i);
                data.push(0);
            }
            if spread {
                // Long lists too, across the key cap.
                for (n, k) in many.iter().enumerate() {
                    data.extend_from_slice(format!("X-{k}{n}=v\0").as_bytes());
                }
            }
            let pairs = data.split(|&c| c == 0).filter(|i| !i.is_empty()).count();
            match (old_parse(&data), TextList::parse(&data)) {
                (Ok(old), new) if old.0.len() <= MAX_KEYS => prop_assert_eq!(new, Ok(old)),
                (Ok(_), new) => prop_assert_eq!(new, Err(TextError::TooManyKeys)),
                (Err(e), Err(TextError::TooManyKeys)) => prop_assert!(pairs > MAX_KEYS, "{:?}", e),
                (Err(e), new) => prop_assert_eq!(new, Err(e)),
            }
        }

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
