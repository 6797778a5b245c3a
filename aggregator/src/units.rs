//! Human-friendly quantities in the configuration file: sizes ("512M", "1G")
//! and durations ("5s", "500ms").

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A size in bytes, written as an integer (bytes) or a string with a binary
/// unit: `K`, `M`, `G`, `T`, `P`, `E` (also `KiB`, `MB`, ...: all mean powers of 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

/// Parses a size such as `"64M"`, `"1G"`, `"1536KiB"`, `"1.5G"` or `"4096"`.
///
/// The number and the unit are read by `bytesize`; a unit written without
/// the `i` (`M`, `MB`) is taken as its binary one (`MiB`), as it always was
/// in opie configs: disks come in powers of two.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let mut unit = unit.to_ascii_uppercase();
    if !matches!(unit.as_str(), "" | "B") && !unit.contains('I') {
        unit.insert(1, 'I');
    }
    let hint = "write bytes or a number with K, M, G, T or P, powers of 1024, e.g. \"512M\"";
    match format!("{number}{unit}").parse::<bytesize::ByteSize>() {
        // bytesize saturates on overflow.
        Ok(b) if b.0 == u64::MAX => Err(format!("{s:?} is too large")),
        Ok(b) => Ok(b.0),
        Err(_) if number.trim().parse::<f64>().is_ok() => {
            Err(format!("{s:?}: unknown unit ({hint})"))
        }
        Err(_) => Err(format!("{s:?} is not a size ({hint})")),
    }
}

/// Parses a rate in bytes per second such as `"100MiB/s"`, `"100M/s"` or
/// `"100M"` (a size as [`parse_size`] reads it, `/s` optional); zero is refused.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let size = t.strip_suffix("/s").unwrap_or(t);
    match parse_size(size) {
        Ok(0) => Err(format!(
            "{s:?}: a rate must be above zero (leave it out for no limit)"
        )),
        Ok(b) => Ok(b),
        Err(e) => Err(format!(
            "{e}; a rate is a size per second, e.g. \"100MiB/s\""
        )),
    }
}

/// Parses a duration such as `"5s"`, `"500ms"`, `"2m"`, `"1h30m"` (by
/// `humantime`) or `"10"` (whole seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| format!("{s:?} is too large"));
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("{s:?} is not a duration ({e}; e.g. \"5s\", \"500ms\", \"2m\")"))
}

struct SizeVisitor;

impl Visitor<'_> for SizeVisitor {
    type Value = Size;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a size in bytes or a string such as \"512M\" or \"1G\"")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
        u64::try_from(v)
            .map(Size)
            .map_err(|_| E::custom(format!("size {v} is negative")))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
        Ok(Size(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
        parse_size(v).map(Size).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SizeVisitor)
    }
}

/// A duration, written as whole seconds or a string with a unit (`ms`, `s`, `m`, `h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval(pub Duration);

struct IntervalVisitor;

impl Visitor<'_> for IntervalVisitor {
    type Value = Interval;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("whole seconds or a string such as \"5s\" or \"500ms\"")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Interval, E> {
        u64::try_from(v)
            .map(|s| Interval(Duration::from_secs(s)))
            .map_err(|_| E::custom(format!("duration {v} is negative")))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Interval, E> {
        Ok(Interval(Duration::from_secs(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Interval, E> {
        parse_duration(v).map(Interval).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(IntervalVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1 GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2t"), Ok(2 << 40));
        assert_eq!(parse_size("3P"), Ok(3 << 50));
        assert_eq!(parse_size("1536KiB"), Ok(1536 << 10));
        assert_eq!(parse_size("64mb"), Ok(64 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size(" 8 K "), Ok(8192));
        assert_eq!(parse_size("10B"), Ok(10));
        assert!(parse_size("1X").unwrap_err().contains("unknown unit"));
        assert!(parse_size("G").is_err());
        assert!(parse_size("-1G").is_err());
        assert!(parse_size("99999999999P")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("100MiB/s"), Ok(100 << 20));
        assert_eq!(parse_rate("100M/s"), Ok(100 << 20));
        assert_eq!(parse_rate(" 1G "), Ok(1 << 30));
        assert!(parse_rate("0/s").unwrap_err().contains("above zero"));
        assert!(parse_rate("fast").unwrap_err().contains("size per second"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2min"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
    }
}
