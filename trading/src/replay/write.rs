//! Writing a segment's folded rows: each projection row once, in the order
//! its first event touched it (so rowids are those of one-by-one inserts),
//! through statements prepared once per (table, operation, columns) and bound
//! without copies; then the appends in event order.

use rusqlite::Transaction;

use crate::effects::{self, OpKind, RowOp, SqlVal, Table};
use crate::error::{Error, Result};
use crate::stmt::StaticStmt;

use super::chunks::Chunks;
use super::fold::{Folded, FxMap, Mode, RowState};

/// Writes the folded projection rows and appends; the error of the event
/// with the lowest index among `rows_result`'s and the fold's, if any.
pub(super) fn write_folded(
    tx: &Transaction<'_>,
    events: &Chunks<'_>,
    rows_result: Result<()>,
    folded: Folded<'_>,
    batched: bool,
) -> Result<()> {
    let t0 = std::time::Instant::now();
    let mut first_error: Option<(usize, Error)> = None;
    let mut note = |i: usize, e: Error| {
        if first_error.as_ref().is_none_or(|(j, _)| i < *j) {
            first_error = Some((i, e));
        }
    };
    if let Err(e) = rows_result {
        let i = e
            .sequence()
            .and_then(|s| events.position_of_sequence(s))
            .unwrap_or(0);
        note(i, e);
    }
    for (i, e) in folded.errors {
        note(i, e);
    }
    write_rows(tx, events, &folded.rows, batched, &mut note)?;
    tracing::debug!(
        "{} projection rows done in {:?}",
        folded.rows.len(),
        t0.elapsed()
    );
    let mut appends = folded.appends;
    write_appends(tx, events, &mut appends, &mut note)?;
    match first_error {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

/// A prepared statement per (table, operation, columns), bound without copies.
type StmtCache<'r> = FxMap<(Table, OpKind, u32), StaticStmt<'r>>;

fn cached_stmt<'s, 'r>(
    cache: &'s mut StmtCache<'r>,
    tx: &'r Transaction<'_>,
    table: Table,
    kind: OpKind,
    mask: u32,
) -> Result<&'s mut StaticStmt<'r>> {
    match cache.entry((table, kind, mask)) {
        std::collections::hash_map::Entry::Occupied(o) => Ok(o.into_mut()),
        std::collections::hash_map::Entry::Vacant(v) => {
            let sql = effects::sql::statement(table, kind, mask);
            let stmt =
                StaticStmt::prepare(tx, &sql).map_err(Error::sqlite(format!("preparing {sql}")))?;
            Ok(v.insert(stmt))
        }
    }
}

/// Created rows per multi-row INSERT of projection rows.
const ROWS_PER_INSERT: usize = 32;

/// Writes the rows in order. With `batched` (no journal, so no statement
/// journal either), the rows a segment creates go in by multi-row
/// statements, table by table in their order (rowids are assigned per
/// table, so only the order within a table matters); any other row of a
/// table first writes the rows of that table before it.
fn write_rows<'r>(
    tx: &'r Transaction<'_>,
    events: &Chunks<'_>,
    rows: &'r [RowState<'_>],
    batched: bool,
    note: &mut impl FnMut(usize, Error),
) -> Result<()> {
    let mut cache = StmtCache::default();
    if !batched {
        for row in rows {
            write_row(tx, &mut cache, events, row, note)?;
        }
        return Ok(());
    }
    let mut multi: FxMap<Table, StaticStmt<'r>> = FxMap::default();
    let mut runs: FxMap<Table, Vec<&'r RowState<'_>>> = FxMap::default();
    for row in rows {
        if matches!(row.mode, Mode::Created(_)) {
            let run = runs.entry(row.table).or_default();
            run.push(row);
            if run.len() == ROWS_PER_INSERT {
                let run = std::mem::take(run);
                insert_run(tx, &mut multi, &mut cache, events, &run, note)?;
            }
            continue;
        }
        if let Some(run) = runs.get_mut(&row.table) {
            for r in std::mem::take(run) {
                write_row(tx, &mut cache, events, r, note)?;
            }
        }
        write_row(tx, &mut cache, events, row, note)?;
    }
    for run in runs.into_values() {
        for r in run {
            write_row(tx, &mut cache, events, r, note)?;
        }
    }
    Ok(())
}

/// Inserts [`ROWS_PER_INSERT`] created rows of one table by one statement.
/// When it fails, the rows it did not insert (a failing statement may
/// leave some of its rows) are written one by one, so that each error is
/// the one a row-by-row write gives.
fn insert_run<'r>(
    tx: &'r Transaction<'_>,
    multi: &mut FxMap<Table, StaticStmt<'r>>,
    cache: &mut StmtCache<'r>,
    events: &Chunks<'_>,
    run: &[&'r RowState<'_>],
    note: &mut impl FnMut(usize, Error),
) -> Result<()> {
    const NULL: SqlVal<'static> = SqlVal::Null;
    let Some(table) = run.first().map(|r| r.table) else {
        return Ok(());
    };
    let stmt = match multi.entry(table) {
        std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
        std::collections::hash_map::Entry::Vacant(v) => {
            let one =
                effects::sql::statement(table, OpKind::Insert, (1u32 << table.columns().len()) - 1);
            let sql = multi_row_sql(&one, run.len());
            let stmt =
                StaticStmt::prepare(tx, &sql).map_err(Error::sqlite(format!("preparing {sql}")))?;
            v.insert(stmt)
        }
    };
    let last_rowid = format!("SELECT coalesce(max(rowid), 0) FROM {}", table.name());
    let before: i64 = tx
        .prepare_cached(&last_rowid)
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(Error::sqlite(format!(
            "reading the last rowid of {}",
            table.name()
        )))?;
    let width = 1 + table.columns().len();
    let bound = run.iter().enumerate().try_for_each(|(k, row)| {
        let p = k * width;
        stmt.bind_text(p + 1, row.key.as_ref())?;
        for (j, v) in row.cols.iter().enumerate() {
            stmt.bind_val(p + 2 + j, v.as_ref().unwrap_or(&NULL))?;
        }
        Ok(())
    });
    if bound.and_then(|()| stmt.execute()).is_ok() {
        return Ok(());
    }
    let rowid_of = format!(
        "SELECT rowid FROM {} WHERE {} = ?1",
        table.name(),
        table.key_column()
    );
    for row in run {
        let inserted = tx
            .prepare_cached(&rowid_of)
            .and_then(|mut s| s.query_row([row.key.as_ref()], |r| r.get::<_, i64>(0)))
            .is_ok_and(|rowid| rowid > before);
        if !inserted {
            write_row(tx, cache, events, row, note)?;
        }
    }
    Ok(())
}

/// `INSERT INTO t (...) VALUES (?, ...)` with `rows` value lists.
fn multi_row_sql(one: &str, rows: usize) -> String {
    let at = one
        .rfind(" VALUES ")
        .map_or(one.len(), |i| i + " VALUES ".len());
    let (head, tuple) = one.split_at(at);
    let mut sql = String::from(head);
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(tuple);
    }
    sql
}

/// Writes one row by a single-row statement, noting its error.
fn write_row<'r>(
    tx: &'r Transaction<'_>,
    cache: &mut StmtCache<'r>,
    events: &Chunks<'_>,
    row: &'r RowState<'_>,
    note: &mut impl FnMut(usize, Error),
) -> Result<()> {
    const NULL: SqlVal<'static> = SqlVal::Null;
    let (kind, mask) = match row.mode {
        Mode::Created(_) => (OpKind::Insert, (1u32 << row.cols.len()) - 1),
        Mode::MustExist(_) => (OpKind::Update, row.mask()),
        Mode::Upsert => (OpKind::Upsert, row.mask()),
    };
    let stmt = cached_stmt(cache, tx, row.table, kind, mask)?;
    let bind = |stmt: &mut StaticStmt<'r>| -> rusqlite::Result<()> {
        stmt.bind_text(1, row.key.as_ref())?;
        if kind == OpKind::Insert {
            for (p, v) in (2..).zip(&row.cols) {
                stmt.bind_val(p, v.as_ref().unwrap_or(&NULL))?;
            }
        } else {
            for (p, v) in (2..).zip(row.cols.iter().flatten()) {
                stmt.bind_val(p, v)?;
            }
        }
        Ok(())
    };
    let outcome = bind(stmt).and_then(|()| {
        if kind == OpKind::Update && mask == 0 {
            stmt.exists().map(u64::from)
        } else {
            stmt.execute_changes()
        }
    });
    let noun = row.table.row_noun();
    match (outcome, row.mode) {
        (Err(e), Mode::Created(i)) => {
            let exists = tx
                .prepare_cached(&effects::sql::statement(row.table, OpKind::Update, 0))
                .and_then(|mut s| s.exists([&row.key]))
                .unwrap_or(false);
            let reason = if exists {
                format!("{noun} {} already exists", row.key)
            } else {
                format!("cannot write {noun} {}: {e}", row.key)
            };
            note(i, Error::event(&events[i], reason));
        }
        (Err(e), _) => note(
            row.first,
            Error::event(
                &events[row.first],
                format!("cannot write {noun} {}: {e}", row.key),
            ),
        ),
        (Ok(0), Mode::MustExist(i)) => note(
            i,
            Error::event(&events[i], format!("no {noun} {} to update", row.key)),
        ),
        (Ok(_), Mode::MustExist(_)) => {
            if let Some(j) = row.late_insert {
                note(
                    j,
                    Error::event(&events[j], format!("{noun} {} already exists", row.key)),
                );
            }
        }
        (Ok(_), _) => {}
    }
    Ok(())
}

/// Appends (tier history) in event order.
fn write_appends<'r>(
    tx: &'r Transaction<'_>,
    events: &Chunks<'_>,
    appends: &'r mut [(usize, RowOp<'_>)],
    note: &mut impl FnMut(usize, Error),
) -> Result<()> {
    for (_, op) in appends.iter_mut() {
        op.set.sort_by_key(|(c, _)| *c);
    }
    let appends: &'r [(usize, RowOp<'_>)] = appends;
    let mut cache = StmtCache::default();
    for (i, op) in appends {
        let mask = op.set.iter().fold(0u32, |m, (c, _)| m | (1 << c));
        let stmt = cached_stmt(&mut cache, tx, op.table, OpKind::Append, mask)?;
        let bound = (1..)
            .zip(&op.set)
            .try_for_each(|(p, (_, v))| stmt.bind_val(p, v));
        if let Err(e) = bound.and_then(|()| stmt.execute()) {
            note(
                *i,
                Error::event(
                    &events[*i],
                    format!("cannot write {}: {e}", op.table.row_noun()),
                ),
            );
        }
    }
    Ok(())
}
