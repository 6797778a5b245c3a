//! UTC calendar arithmetic for backup ids and retention periods (no time zones, no leap seconds).

/// Civil date (year, month 1-12, day 1-31) of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Howard Hinnant's days-to-civil algorithm over 400-year eras.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `YYYYMMDDTHHMMSSZ` for a Unix time in seconds.
pub fn compact_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Day number since the epoch.
pub fn day(secs: u64) -> i64 {
    (secs / 86_400) as i64
}

/// Week number since the epoch; weeks start on Monday (1970-01-05 was one).
pub fn week(secs: u64) -> i64 {
    (day(secs) + 3).div_euclid(7)
}

/// Month number: `year * 12 + month - 1`.
pub fn month(secs: u64) -> i64 {
    let (y, m, _) = civil_from_days(day(secs));
    y * 12 + i64::from(m) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(compact_utc(951_782_400), "20000229T000000Z");
        assert_eq!(compact_utc(1_796_390_000), "20261204T131320Z");
        // 1970-01-04 (Sunday) and 1970-01-05 (Monday) are in different weeks.
        assert_ne!(week(3 * 86_400), week(4 * 86_400));
        assert_eq!(week(4 * 86_400), week(10 * 86_400));
        assert_eq!(month(31 * 86_400), 1970 * 12 + 1);
    }
}
