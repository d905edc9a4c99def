//! Parsing of the instants and durations users and the trading system write.
//!
//! Timestamps follow DOMAIN.md: Python's `isoformat()` of a UTC time (no offset
//! means UTC), optionally with `Z` or an RFC 3339 offset, with or without a
//! fractional part. Durations are `500ms`, `30s`, `5m`, `1h`, `7d` or sums such
//! as `1h30m`.

use chrono::{DateTime, NaiveDateTime, Utc};
use std::time::Duration;

use crate::error::{Error, Result};

/// Parses a timestamp as DOMAIN.md defines it; no offset means UTC.
///
/// # Errors
/// `Error::Usage` naming the text and the accepted forms.
pub fn parse_timestamp(text: &str) -> Result<DateTime<Utc>> {
    parse_timestamp_opt(text).ok_or_else(|| {
        Error::Usage(format!(
            "cannot read the timestamp {text:?}: write it as 2025-01-15T12:00:00 (UTC), \
             2025-01-15T12:00:00.123456, or with an offset such as 2025-01-15T12:00:00Z or +02:00"
        ))
    })
}

/// Like [`parse_timestamp`] but returns `None` instead of an error (for data, not user input).
pub fn parse_timestamp_opt(text: &str) -> Option<DateTime<Utc>> {
    let t = text.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Some(dt.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(n) = NaiveDateTime::parse_from_str(t, fmt) {
            return Some(n.and_utc());
        }
    }
    // Offsets without a colon or with a space separator.
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f%z",
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M:%S%.f%z",
    ] {
        if let Ok(dt) = DateTime::parse_from_str(t, fmt) {
            return Some(dt.with_timezone(&Utc));
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return d.and_hms_opt(0, 0, 0).map(|n| n.and_utc());
    }
    None
}

/// Formats an instant the way the trading system writes them (UTC, microseconds, no offset).
pub fn format_trading(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
}

/// Formats an instant as RFC 3339 UTC with microseconds and `Z`, for reports.
pub fn format_rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Formats an instant as RFC 3339 UTC with every digit it has (up to
/// nanoseconds; commit times are kept in nanoseconds), for instants a user
/// may give back as a target: the text parses to the same instant.
pub fn format_exact(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// Parses a duration such as `500ms`, `30s`, `5m`, `1h`, `7d`, `1h30m`; a bare number is seconds.
///
/// # Errors
/// `Error::Usage` naming the text and the accepted units.
pub fn parse_duration(text: &str) -> Result<Duration> {
    let bad = || {
        Error::Usage(format!(
            "cannot read the duration {text:?}: write a number with a unit, such as 500ms, 30s, 5m, 1h, 7d or 1h30m"
        ))
    };
    let t = text.trim();
    if t.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = t.parse::<f64>() {
        // try_: a value beyond what a Duration holds is bad input, not a panic.
        return Duration::try_from_secs_f64(secs).map_err(|_| bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let secs = match unit {
            "ms" => value / 1000.0,
            "s" | "sec" | "secs" => value,
            "m" | "min" | "mins" => value * 60.0,
            "h" | "hr" | "hrs" => value * 3600.0,
            "d" | "day" | "days" => value * 86400.0,
            "w" => value * 7.0 * 86400.0,
            _ => return Err(bad()),
        };
        total = Duration::try_from_secs_f64(secs)
            .ok()
            .and_then(|d| total.checked_add(d))
            .ok_or_else(bad)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_in_every_documented_form_agree() {
        let a = parse_timestamp("2025-01-15T14:30:00").unwrap();
        for t in [
            "2025-01-15T14:30:00Z",
            "2025-01-15T14:30:00+00:00",
            "2025-01-15T16:30:00+02:00",
            "2025-01-15T14:30:00.000000",
        ] {
            assert_eq!(parse_timestamp(t).unwrap(), a, "{t}");
        }
        let b = parse_timestamp("2025-01-15T14:30:00.123456").unwrap();
        assert_eq!((b - a).num_microseconds(), Some(123_456));
        assert!(parse_timestamp("yesterday").is_err());
        assert_eq!(format_trading(b), "2025-01-15T14:30:00.123456");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }
}
