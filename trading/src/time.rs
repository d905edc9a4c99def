//! Timestamps as the trading system writes them (DOMAIN.md): Python's
//! `isoformat()` of a UTC time, with or without a fraction, and no offset meaning
//! UTC; `Z` and `+00:00` (or any RFC 3339 offset) are accepted too. Times are
//! compared as instants, never as text.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

use crate::error::{Error, Result};

/// Parses a timestamp; `None` when it is not one of the accepted forms.
pub fn parse_opt(text: &str) -> Option<DateTime<Utc>> {
    let t = text.trim();
    if let Some(fast) = parse_plain(t.as_bytes()) {
        return Some(fast);
    }
    parse_with_chrono(t)
}

/// The dominant form, `YYYY-MM-DDTHH:MM:SS` with an optional `.` and one to
/// nine fraction digits, read digit by digit: a replay reads a million of
/// these, and chrono's format-driven parser costs several times more. `None`
/// hands the text to [`parse_with_chrono`], so anything unusual (another
/// form, a leap second `:60`, an impossible date, ten fraction digits) gets
/// exactly chrono's answer; for every text this accepts, the value is the one
/// chrono gives (see the tests).
fn parse_plain(t: &[u8]) -> Option<DateTime<Utc>> {
    let digit = |b: u8| {
        let d = b.wrapping_sub(b'0');
        (d < 10).then_some(u32::from(d))
    };
    let two = |i: usize| Some(digit(t[i])? * 10 + digit(t[i + 1])?);
    if t.len() < 19
        || t[4] != b'-'
        || t[7] != b'-'
        || t[10] != b'T'
        || t[13] != b':'
        || t[16] != b':'
    {
        return None;
    }
    let year = two(0)? * 100 + two(2)?;
    let (month, day) = (two(5)?, two(8)?);
    let (hour, minute, second) = (two(11)?, two(14)?, two(17)?);
    if second > 59 {
        return None;
    }
    let nano = match &t[19..] {
        [] => 0,
        [b'.', digits @ ..] if (1..=9).contains(&digits.len()) => {
            let mut n = 0;
            for &b in digits {
                n = n * 10 + digit(b)?;
            }
            n * 10u32.pow(9 - digits.len() as u32)
        }
        _ => return None,
    };
    let date = NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)?;
    Some(date.and_hms_nano_opt(hour, minute, second, nano)?.and_utc())
}

/// Every accepted form, through chrono's parsers, in order of preference.
fn parse_with_chrono(t: &str) -> Option<DateTime<Utc>> {
    if let Ok(n) = NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f") {
        return Some(n.and_utc());
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Some(dt.with_timezone(&Utc));
    }
    if let Ok(n) = NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f") {
        return Some(n.and_utc());
    }
    if let Ok(dt) = DateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f%z") {
        return Some(dt.with_timezone(&Utc));
    }
    None
}

/// Parses a timestamp, naming what it belongs to on failure.
///
/// # Errors
/// [`Error::Timestamp`] with the context and the text.
pub fn parse(text: &str, context: impl FnOnce() -> String) -> Result<DateTime<Utc>> {
    parse_opt(text).ok_or_else(|| Error::Timestamp {
        context: context(),
        value: text.to_string(),
    })
}

/// Formats an instant the way the trading system writes it (UTC, microseconds, no offset).
pub fn format(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_forms_and_compares_as_times() {
        let a = parse_opt("2025-01-15T14:30:00.123456").unwrap();
        let b = parse_opt("2025-01-15T14:30:00.123456Z").unwrap();
        let c = parse_opt("2025-01-15T14:30:00.123456+00:00").unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        let whole = parse_opt("2025-01-15T14:30:00").unwrap();
        let plus1 = parse_opt("2025-01-15T15:30:00+01:00").unwrap();
        assert_eq!(whole, plus1);
        assert!(whole < a);
        assert!(parse_opt("yesterday").is_none());
        assert_eq!(format(a), "2025-01-15T14:30:00.123456");
    }

    /// `parse_opt` (the digit-by-digit path first) gives chrono's answer.
    fn same_as_chrono(text: &str) {
        assert_eq!(
            parse_opt(text),
            parse_with_chrono(text.trim()),
            "{text:?} (digit by digit: {:?})",
            parse_plain(text.trim().as_bytes())
        );
    }

    #[test]
    fn the_fast_path_agrees_with_chrono_on_edge_cases() {
        for text in [
            "2025-01-15T14:30:00",
            "2025-01-15T14:30:00.1",
            "2025-01-15T14:30:00.123456",
            "2025-01-15T14:30:00.123456789",
            "2024-02-29T23:59:59.1234567891",
            "2024-02-29T23:59:59",
            "2025-02-29T00:00:00",
            "2100-02-29T00:00:00",
            "2000-02-29T00:00:00",
            "2025-04-31T00:00:00",
            "2025-12-31T23:59:59.999999999",
            "2025-13-01T00:00:00",
            "2025-00-01T00:00:00",
            "2025-01-00T00:00:00",
            "2025-01-32T00:00:00",
            "2025-01-15T24:00:00",
            "2025-01-15T23:60:00",
            "2016-12-31T23:59:60",
            "2016-12-31T23:59:60.5",
            "2025-01-15T14:30:61",
            "0000-01-01T00:00:00",
            "9999-12-31T23:59:59.999999",
            "2025-01-15T14:30:00.",
            "2025-01-15T14:30:00.123456 ",
            "  2025-01-15T14:30:00.123456\n",
            "2025-01-15T14:30:00Z",
            "2025-01-15T14:30:00.5Z",
            "2025-01-15T14:30:00+00:00",
            "2025-01-15T14:30:00.123+01:00",
            "2025-01-15T14:30:00+0100",
            "2025-01-15T14:30",
            "2025-01-15T14:30:0",
            "2025-01-15 14:30:00.25",
            "2025-01-15t14:30:00",
            "2025-1-15T14:30:00",
            "2025-01-15T4:30:00.000",
            "+2025-01-15T14:30:00",
            "-001-01-15T14:30:00",
            "20250-01-15T14:30:00",
            "2025-01-15T14:30:00,5",
            "2025-01-15T14:30:00.12a",
            "2025-01-15T14:30:00.\u{661}",
            "\u{661}025-01-15T14:30:00",
            "",
            "yesterday",
        ] {
            same_as_chrono(text);
        }
        assert!(parse_plain(b"2025-01-15T14:30:00.123456").is_some());
        assert!(parse_opt("2024-02-29T23:59:59.1234567891").is_some());
        assert!(parse_opt("2025-02-29T00:00:00").is_none());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]

        /// Random digits in the dominant shape: mostly impossible dates and
        /// times, fractions of none to eleven digits, trailing offsets.
        #[test]
        fn the_fast_path_agrees_on_random_digits(
            text in "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,11})?( |Z|\\+00:00|-05:30)?"
        ) {
            same_as_chrono(&text);
        }

        /// Digits near the valid ranges (month 13, day 32, hour 24, second 60, ...).
        #[test]
        fn the_fast_path_agrees_near_the_valid_ranges(
            text in "[0-9]{2}(0[0-9]|[12][0-9]|[0-9]{2})-(0[0-9]|1[0-3])-([0-2][0-9]|3[0-2])T([01][0-9]|2[0-4]):[0-6][0-9]:[0-6][0-9](\\.[0-9]{1,10})?"
        ) {
            same_as_chrono(&text);
        }

        /// Arbitrary short texts made of the characters of a timestamp.
        #[test]
        fn the_fast_path_agrees_on_arbitrary_texts(text in "[0-9T:. Z+-]{0,32}") {
            same_as_chrono(&text);
        }

        /// Real instants written with every fraction length.
        #[test]
        fn the_fast_path_reads_written_instants(
            secs in -62_135_596_800i64..253_402_300_799,
            nanos in 0u32..1_000_000_000,
            digits in 0usize..=9,
        ) {
            let t = DateTime::from_timestamp(secs, nanos).unwrap();
            let text = match digits {
                0 => t.format("%Y-%m-%dT%H:%M:%S").to_string(),
                d => {
                    let fraction = format!("{:09}", t.timestamp_subsec_nanos());
                    format!("{}.{}", t.format("%Y-%m-%dT%H:%M:%S"), &fraction[..d])
                }
            };
            same_as_chrono(&text);
            proptest::prop_assert!(parse_plain(text.as_bytes()).is_some(), "{}", text);
        }
    }
}
