//! The one place where a restore target is read from what a user writes:
//! the text form of pipelines and `--set target=` (`latest`, `txid:N`,
//! `backup:ID`, or an instant), an instant alone (`--timestamp`, the Python
//! package), and a span back from now (`--ago`). Everything after this
//! holds a typed [`Target`]; its [`Display`](std::fmt::Display) is the text
//! form again, with every digit of an instant (for reports and labels: no
//! stage reads a target back from text).

use std::fmt;

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::plan::Target;
use crate::time::{format_exact, parse_duration, parse_timestamp};

impl Target {
    /// Reads a target as pipelines and `--set target=` write it: `latest`
    /// (or nothing), `txid:N`, `backup:ID`, or an instant (UTC unless an
    /// offset is given).
    ///
    /// # Errors
    /// `Error::Usage` naming the text and the accepted forms; for `backup:`,
    /// an id that is not one (as [`Target::backup`]).
    pub fn parse(text: &str) -> Result<Target> {
        let t = text.trim();
        if t.is_empty() || t.eq_ignore_ascii_case("latest") {
            return Ok(Target::Latest);
        }
        if let Some(n) = t.strip_prefix("txid:") {
            let txid = n.trim().parse::<u64>().map_err(|_| {
                Error::Usage(format!(
                    "bad target {text:?}: `txid:` must be followed by a transaction id, e.g. txid:1234"
                ))
            })?;
            return Ok(Target::Txid { txid });
        }
        if let Some(id) = t.strip_prefix("backup:") {
            let id = id.trim();
            if id.is_empty() {
                return Err(Error::Usage(format!(
                    "bad target {text:?}: `backup:` must be followed by a backup id from `list-backups`"
                )));
            }
            return Target::backup(id);
        }
        match parse_timestamp(t) {
            Ok(at) => Ok(Target::Time { at }),
            Err(_) => Err(Error::Usage(format!(
                "bad target {text:?}: write `latest`, a UTC time such as 2025-01-15T12:00:00, `txid:N`, or `backup:ID`"
            ))),
        }
    }

    /// The target of an instant written alone (`--timestamp`).
    ///
    /// # Errors
    /// `Error::Usage` naming the text and the accepted forms.
    pub fn at_time(text: &str) -> Result<Target> {
        Ok(Target::Time {
            at: parse_timestamp(text)?,
        })
    }

    /// The target `span` (`15m`, `1h30m`, ...) before `now` (`--ago`).
    ///
    /// # Errors
    /// `Error::Usage` when the span cannot be read or reaches before the
    /// first representable instant.
    pub fn ago(span: &str, now: DateTime<Utc>) -> Result<Target> {
        let too_long = || Error::Usage(format!("--ago {span} is too long"));
        let d = chrono::Duration::from_std(parse_duration(span)?).map_err(|_| too_long())?;
        let at = now.checked_sub_signed(d).ok_or_else(too_long)?;
        Ok(Target::Time { at })
    }

    /// A named backup, its id checked as `list-backups` writes ids.
    ///
    /// # Errors
    /// `Error::Usage` naming an id that cannot be one.
    pub fn backup(id: &str) -> Result<Target> {
        crate::repo::ids::validate_id(id)?;
        Ok(Target::BackupId { id: id.to_string() })
    }
}

/// The text form [`Target::parse`] reads, an instant with every digit it
/// has (commit times carry nanoseconds; a target rounded down could fall
/// before the point it names).
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Latest => f.write_str("latest"),
            Target::Time { at } => f.write_str(&format_exact(*at)),
            Target::Txid { txid } => write!(f, "txid:{txid}"),
            Target::BackupId { id } => write!(f, "backup:{id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_in_every_form_and_display_back() {
        assert_eq!(Target::parse("latest").unwrap(), Target::Latest);
        assert_eq!(Target::parse(" LATEST ").unwrap(), Target::Latest);
        assert_eq!(Target::parse("").unwrap(), Target::Latest);
        assert_eq!(Target::parse("txid:42").unwrap(), Target::Txid { txid: 42 });
        assert_eq!(
            Target::parse("backup: snap_x ").unwrap(),
            Target::BackupId {
                id: "snap_x".into()
            }
        );
        let t = Target::parse("2025-01-15T12:00:00.123456789").unwrap();
        assert_eq!(Target::parse(&t.to_string()).unwrap(), t);
        assert_eq!(t.to_string(), "2025-01-15T12:00:00.123456789Z");
        for t in [
            Target::Latest,
            Target::Txid { txid: u64::MAX },
            Target::BackupId { id: "seg_1".into() },
        ] {
            assert_eq!(Target::parse(&t.to_string()).unwrap(), t);
        }
    }

    #[test]
    fn bad_targets_name_the_text_and_the_forms() {
        for (bad, says) in [
            ("txid:x", "`txid:` must be followed by a transaction id"),
            ("backup:", "`backup:` must be followed by a backup id"),
            ("backup:../x", "is not a valid backup id"),
            ("yesterday", "write `latest`, a UTC time"),
        ] {
            match Target::parse(bad) {
                Err(Error::Usage(m)) => assert!(m.contains(says), "{bad}: {m}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(matches!(Target::at_time("latest"), Err(Error::Usage(_))));
    }

    #[test]
    fn ago_counts_back_from_now() {
        let now = parse_timestamp("2025-01-15T12:00:00.5").unwrap();
        assert_eq!(
            Target::ago("1h30m", now).unwrap(),
            Target::Time {
                at: parse_timestamp("2025-01-15T10:30:00.5").unwrap()
            }
        );
        assert!(matches!(Target::ago("soon", now), Err(Error::Usage(_))));
        let err = Target::ago("999999999d", now).unwrap_err().to_string();
        assert!(err.contains("too long"), "{err}");
    }
}
