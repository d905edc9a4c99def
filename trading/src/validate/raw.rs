//! The event reader's query over SQLite's C API: a million rows of six
//! columns each, where rusqlite's row accessors (three C calls per text
//! column, each taking the connection's mutex, plus its own checks) cost
//! about as much as SQLite's reading of the rows. Here a column costs one
//! call for its value and cheap ones on that value; the errors are
//! rusqlite's own.

use std::marker::PhantomData;
use std::os::raw::c_int;

use rusqlite::types::ValueRef;
use rusqlite::{ffi, Connection};

/// A prepared read-only query whose rows are read in place; finalized on
/// drop. Not `Send` (it holds raw pointers): it stays on the thread that
/// borrows the connection.
pub(super) struct Query<'c> {
    db: *mut ffi::sqlite3,
    stmt: *mut ffi::sqlite3_stmt,
    columns: c_int,
    /// Whether the last step gave a row (columns may be read).
    on_row: bool,
    conn: PhantomData<&'c Connection>,
}

impl<'c> Query<'c> {
    /// Prepares `sql` on `conn`.
    ///
    /// # Errors
    /// SQLite's, as rusqlite reports them.
    pub(super) fn prepare(conn: &'c Connection, sql: &str) -> rusqlite::Result<Self> {
        let len = c_int::try_from(sql.len()).map_err(|_| rusqlite::Error::InvalidQuery)?;
        let mut stmt = std::ptr::null_mut();
        // SAFETY: the handle is `conn`'s, open for 'c, which the query
        // borrows; SQLite reads `len` bytes of `sql` and keeps nothing of it.
        let (db, rc) = unsafe {
            let db = conn.handle();
            let rc = ffi::sqlite3_prepare_v2(
                db,
                sql.as_ptr().cast(),
                len,
                &mut stmt,
                std::ptr::null_mut(),
            );
            (db, rc)
        };
        if rc != ffi::SQLITE_OK || stmt.is_null() {
            return Err(crate::stmt::last_error(db, rc));
        }
        // SAFETY: a prepared statement.
        let columns = unsafe { ffi::sqlite3_column_count(stmt) };
        Ok(Query {
            db,
            stmt,
            columns,
            on_row: false,
            conn: PhantomData,
        })
    }

    /// The number of columns of a row.
    pub(super) fn column_count(&self) -> usize {
        usize::try_from(self.columns).unwrap_or(0)
    }

    /// The next row: `true` when there is one.
    ///
    /// # Errors
    /// SQLite's, as rusqlite reports them.
    pub(super) fn step(&mut self) -> rusqlite::Result<bool> {
        // SAFETY: a prepared statement of this thread's connection.
        let rc = unsafe { ffi::sqlite3_step(self.stmt) };
        self.on_row = rc == ffi::SQLITE_ROW;
        match rc {
            ffi::SQLITE_ROW => Ok(true),
            ffi::SQLITE_DONE => Ok(false),
            _ => Err(crate::stmt::last_error(self.db, rc)),
        }
    }

    /// Column `i`'s value, when the last step gave a row and it has one.
    fn value(&self, i: usize) -> rusqlite::Result<*mut ffi::sqlite3_value> {
        let col = c_int::try_from(i)
            .ok()
            .filter(|c| self.on_row && *c < self.columns)
            .ok_or(rusqlite::Error::InvalidColumnIndex(i))?;
        // SAFETY: the statement is on a row and `col` is one of its
        // columns. The value is "unprotected" (SQLite's word): safe to read
        // on the one thread using the connection, which the borrow of
        // `conn` and `Query` not being `Send` make this one, until the next
        // step, which needs `&mut self` while the value's reads borrow
        // `&self`.
        Ok(unsafe { ffi::sqlite3_column_value(self.stmt, col) })
    }

    /// Column `i`'s value, borrowed until the next step (what rusqlite's
    /// `get_ref` gives).
    ///
    /// # Errors
    /// `InvalidColumnIndex` without a row or such a column; `SQLITE_NOMEM`
    /// when SQLite cannot give the bytes of a text or blob.
    pub(super) fn value_ref(&self, i: usize) -> rusqlite::Result<ValueRef<'_>> {
        let v = self.value(i)?;
        let nomem = || rusqlite::Error::SqliteFailure(ffi::Error::new(ffi::SQLITE_NOMEM), None);
        // SAFETY: a value of the current row (see `value`). The pointer is
        // taken before the length, as SQLite asks; both stay valid until
        // the next step or conversion, and the slice borrows `self`, so no
        // step can come first.
        unsafe {
            Ok(match ffi::sqlite3_value_type(v) {
                ffi::SQLITE_INTEGER => ValueRef::Integer(ffi::sqlite3_value_int64(v)),
                ffi::SQLITE_FLOAT => ValueRef::Real(ffi::sqlite3_value_double(v)),
                ffi::SQLITE_TEXT => {
                    let p = ffi::sqlite3_value_text(v);
                    let n = usize::try_from(ffi::sqlite3_value_bytes(v)).unwrap_or(0);
                    if p.is_null() {
                        return Err(nomem());
                    }
                    ValueRef::Text(std::slice::from_raw_parts(p, n))
                }
                ffi::SQLITE_BLOB => {
                    let p = ffi::sqlite3_value_blob(v);
                    let n = usize::try_from(ffi::sqlite3_value_bytes(v)).unwrap_or(0);
                    match (n, p.is_null()) {
                        (0, _) => ValueRef::Blob(&[]),
                        (_, true) => return Err(nomem()),
                        (n, false) => ValueRef::Blob(std::slice::from_raw_parts(p.cast(), n)),
                    }
                }
                _ => ValueRef::Null,
            })
        }
    }

    /// Column `i`'s text (UTF-8, as SQLite gives it), borrowed until the
    /// next step; `name` names the column in the error when it holds
    /// another type (rusqlite's `InvalidColumnType`, as its `get` gives).
    ///
    /// # Errors
    /// As said, and as [`Query::value_ref`].
    pub(super) fn text(&self, i: usize, name: &str) -> rusqlite::Result<&[u8]> {
        match self.value_ref(i)? {
            ValueRef::Text(t) => Ok(t),
            other => Err(rusqlite::Error::InvalidColumnType(
                i,
                name.to_string(),
                other.data_type(),
            )),
        }
    }

    /// Column `i`'s integer; other types are rusqlite's
    /// `InvalidColumnType` naming `name`.
    ///
    /// # Errors
    /// As said.
    pub(super) fn int(&self, i: usize, name: &str) -> rusqlite::Result<i64> {
        match self.value_ref(i)? {
            ValueRef::Integer(v) => Ok(v),
            other => Err(rusqlite::Error::InvalidColumnType(
                i,
                name.to_string(),
                other.data_type(),
            )),
        }
    }
}

impl Drop for Query<'_> {
    fn drop(&mut self) {
        // SAFETY: finalized once, here; the connection outlives the query.
        unsafe { ffi::sqlite3_finalize(self.stmt) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rows_in_place_and_refuses_other_types_as_rusqlite() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t (a TEXT, b INTEGER);
             INSERT INTO t VALUES ('é1', 1), ('', 2), (x'00ff', 3.5), (NULL, 'x');",
        )
        .unwrap();
        let sql = "SELECT a, b FROM t ORDER BY rowid";
        let mut q = Query::prepare(&conn, sql).unwrap();
        let mut theirs = conn.prepare(sql).unwrap();
        let mut rows = theirs.query([]).unwrap();
        let mut n = 0;
        while q.step().unwrap() {
            let r = rows.next().unwrap().unwrap();
            let text = q
                .text(0, "a")
                .map(<[u8]>::to_vec)
                .map_err(|e| e.to_string());
            let want = r.get::<_, String>(0).map(String::into_bytes);
            assert_eq!(text, want.map_err(|e| e.to_string()));
            let int = q.int(1, "b").map_err(|e| e.to_string());
            assert_eq!(int, r.get::<_, i64>(1).map_err(|e| e.to_string()));
            for i in 0..2 {
                assert_eq!(q.value_ref(i).unwrap(), r.get_ref(i).unwrap());
            }
            assert!(matches!(
                q.int(2, "c"),
                Err(rusqlite::Error::InvalidColumnIndex(2))
            ));
            n += 1;
        }
        assert_eq!(n, 4);
        assert!(rows.next().unwrap().is_none());
        assert!(q.text(0, "a").is_err(), "no row after the last");
        let err = Query::prepare(&conn, "SELECT nope FROM t").err().unwrap();
        assert!(err.to_string().contains("no such column"), "{err}");
    }

    /// `each_row` (on this query) gives what rusqlite's `get` gives, errors
    /// included.
    #[test]
    fn each_row_gives_rusqlites_values_and_errors() {
        use rusqlite::types::Value;
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t (a);
             INSERT INTO t VALUES ('x'), (NULL), (2), (2.5), (x'01'), ('y'), (CAST(x'ff' AS TEXT));",
        )
        .unwrap();
        let sql = "SELECT a FROM t ORDER BY rowid";
        let mut ours = Vec::new();
        let err = super::super::each_row(&conn, sql, |r| {
            ours.push(r[0].clone());
            Ok(())
        })
        .unwrap_err()
        .to_string();
        let mut stmt = conn.prepare(sql).unwrap();
        let theirs: Vec<rusqlite::Result<Value>> =
            stmt.query_map([], |r| r.get(0)).unwrap().collect();
        let n = ours.len();
        assert_eq!(n, 6);
        for (a, b) in ours.iter().zip(&theirs) {
            assert_eq!(Some(a), b.as_ref().ok());
        }
        let want = theirs[n].as_ref().unwrap_err().to_string();
        assert!(err.ends_with(&want), "{err} / {want}");
    }
}
