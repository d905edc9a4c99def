//! SQLite's own consistency checks on any database, as a [`ValidationReport`]:
//! `PRAGMA quick_check` (or the slower, complete `integrity_check` when asked)
//! and `PRAGMA foreign_key_check`. These are rule 1 of DOMAIN.md's
//! StateReconstructor and apply to every database, trading schema or not; the
//! validate stage merges the trading rules on top.
//!
//! A problem SQLite reports is a finding (an error of the report), not an
//! [`Error`]: only a database that cannot be opened or read at all is an error.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use crate::error::{Error, Result};
use crate::pipeline::artifact::{Finding, ValidationReport};

/// Most rows of one check copied into the report (the count is always exact).
pub const MAX_FINDINGS_PER_CHECK: usize = 100;

/// Which checks to run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SqliteCheckOptions {
    /// Run `integrity_check` (every index against its table; slow on large
    /// databases) instead of `quick_check`.
    pub integrity_check: bool,
}

/// Opens `path` read-only and runs the checks.
///
/// # Errors
/// `Error::Usage` when the file does not exist; `Error::Sqlite` when it is not
/// a database SQLite can open or read.
pub fn check_path(path: &Path, opts: SqliteCheckOptions) -> Result<ValidationReport> {
    if !path.is_file() {
        return Err(Error::Usage(format!(
            "no database file at {}",
            path.display()
        )));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::sqlite("open (read-only)", path, e))?;
    check_connection(&conn, path, opts)
}

/// Runs the checks on an open connection; `path` is only used in messages.
///
/// # Errors
/// `Error::Sqlite` when a check cannot run (for instance, the file is not a
/// database).
pub fn check_connection(
    conn: &Connection,
    path: &Path,
    opts: SqliteCheckOptions,
) -> Result<ValidationReport> {
    let mut report = ValidationReport {
        is_consistent: true,
        ..ValidationReport::default()
    };
    let pragma = if opts.integrity_check {
        "integrity_check"
    } else {
        "quick_check"
    };
    let messages: Vec<String> = query_strings(conn, &format!("PRAGMA {pragma}"))
        .map_err(|e| Error::sqlite(format!("PRAGMA {pragma}"), path, e))?;
    let ok = messages.len() == 1 && messages[0] == "ok";
    if !ok {
        for m in messages.iter().take(MAX_FINDINGS_PER_CHECK) {
            report.errors.push(Finding {
                code: pragma.to_string(),
                message: format!("{pragma}: {m}"),
            });
        }
        if messages.len() > MAX_FINDINGS_PER_CHECK {
            report.errors.push(Finding {
                code: pragma.to_string(),
                message: format!(
                    "{pragma}: {} more problems not listed",
                    messages.len() - MAX_FINDINGS_PER_CHECK
                ),
            });
        }
    }

    let fk = foreign_key_violations(conn)
        .map_err(|e| Error::sqlite("PRAGMA foreign_key_check", path, e))?;
    for (table, rowid, parent) in fk.iter().take(MAX_FINDINGS_PER_CHECK) {
        let row = rowid.map_or_else(|| "a row".to_string(), |r| format!("row {r}"));
        report.errors.push(Finding {
            code: "foreign_key_check".to_string(),
            message: format!("{row} of table {table} references a missing row of {parent}"),
        });
    }
    if fk.len() > MAX_FINDINGS_PER_CHECK {
        report.errors.push(Finding {
            code: "foreign_key_check".to_string(),
            message: format!(
                "{} more foreign key violations not listed",
                fk.len() - MAX_FINDINGS_PER_CHECK
            ),
        });
    }

    let page_size: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .map_err(|e| Error::sqlite("PRAGMA page_size", path, e))?;
    let page_count: i64 = conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .map_err(|e| Error::sqlite("PRAGMA page_count", path, e))?;
    let m = &mut report.metrics;
    m.insert("sqlite_check".into(), pragma.into());
    m.insert("sqlite_check_ok".into(), ok.into());
    m.insert("foreign_key_violations".into(), fk.len().into());
    m.insert("page_size".into(), page_size.into());
    m.insert("page_count".into(), page_count.into());
    report.is_consistent = report.errors.is_empty();
    Ok(report)
}

fn query_strings(conn: &Connection, sql: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    rows.collect()
}

/// `(table, rowid, parent table)` of every row `foreign_key_check` reports.
fn foreign_key_violations(
    conn: &Connection,
) -> rusqlite::Result<Vec<(String, Option<i64>, String)>> {
    let mut stmt = conn.prepare("PRAGMA foreign_key_check")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sound_database_passes_and_a_dangling_reference_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let c = Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE p(id INTEGER PRIMARY KEY);
             CREATE TABLE c(id INTEGER PRIMARY KEY, p INTEGER REFERENCES p(id));
             INSERT INTO p VALUES (1); INSERT INTO c VALUES (10, 1);",
        )
        .unwrap();
        let r = check_path(&path, SqliteCheckOptions::default()).unwrap();
        assert!(r.is_consistent, "{r:?}");
        assert_eq!(r.metrics["sqlite_check"], "quick_check");

        c.execute_batch("PRAGMA foreign_keys = OFF; INSERT INTO c VALUES (11, 2);")
            .unwrap();
        let r = check_path(
            &path,
            SqliteCheckOptions {
                integrity_check: true,
            },
        )
        .unwrap();
        assert!(!r.is_consistent);
        assert_eq!(r.errors[0].code, "foreign_key_check");
        assert!(r.errors[0].message.contains("row 11 of table c"), "{r:?}");
    }

    #[test]
    fn a_file_that_is_not_a_database_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.db");
        std::fs::write(&path, vec![7u8; 8192]).unwrap();
        assert!(check_path(&path, SqliteCheckOptions::default()).is_err());
        assert!(matches!(
            check_path(&dir.path().join("none.db"), SqliteCheckOptions::default()),
            Err(Error::Usage(_))
        ));
    }
}
