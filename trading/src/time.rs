//! Timestamps as the trading system writes them (DOMAIN.md): Python's
//! `isoformat()` of a UTC time, with or without a fraction, and no offset meaning
//! UTC; `Z` and `+00:00` (or any RFC 3339 offset) are accepted too. Times are
//! compared as instants, never as text.

use chrono::{DateTime, NaiveDateTime, Utc};

use crate::error::{Error, Result};

/// Parses a timestamp; `None` when it is not one of the accepted forms.
pub fn parse_opt(text: &str) -> Option<DateTime<Utc>> {
    let t = text.trim();
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
}
