//! Prepared statements for the replay's hot paths: text bound without a copy.

use rusqlite::{ffi, Connection};

use crate::effects::SqlVal;

/// A statement whose text parameters are bound without a copy
/// (`SQLITE_STATIC`): the strings bound must outlive every step of the
/// statement, which `'a` guarantees, as it does that the connection outlives
/// the statement (finalized on drop).
pub(crate) struct StaticStmt<'a> {
    db: *mut ffi::sqlite3,
    stmt: *mut ffi::sqlite3_stmt,
    bound: std::marker::PhantomData<&'a str>,
}

impl<'a> StaticStmt<'a> {
    pub(crate) fn prepare(conn: &'a Connection, sql: &str) -> rusqlite::Result<Self> {
        let len =
            std::os::raw::c_int::try_from(sql.len()).map_err(|_| rusqlite::Error::InvalidQuery)?;
        let mut stmt = std::ptr::null_mut();
        // SAFETY: the handle is the open connection's, used on this thread
        // only while `conn` is borrowed; SQLite copies nothing it does not own.
        let (db, rc) = unsafe {
            let db = conn.handle();
            let rc = ffi::sqlite3_prepare_v3(
                db,
                sql.as_ptr().cast(),
                len,
                ffi::SQLITE_PREPARE_PERSISTENT as std::os::raw::c_uint,
                &mut stmt,
                std::ptr::null_mut(),
            );
            (db, rc)
        };
        if rc != ffi::SQLITE_OK || stmt.is_null() {
            return Err(last_error(db, rc));
        }
        Ok(StaticStmt {
            db,
            stmt,
            bound: std::marker::PhantomData,
        })
    }

    /// Binds text without a copy.
    pub(crate) fn bind_text(&mut self, index: usize, text: &'a str) -> rusqlite::Result<()> {
        // SAFETY: `text` outlives the statement (lifetime 'a), so SQLite may
        // keep the pointer (SQLITE_STATIC) until the next bind or finalize.
        let rc = unsafe {
            ffi::sqlite3_bind_text64(
                self.stmt,
                index as std::os::raw::c_int,
                text.as_ptr().cast(),
                text.len() as u64,
                ffi::SQLITE_STATIC(),
                ffi::SQLITE_UTF8 as u8,
            )
        };
        self.check(rc)
    }

    pub(crate) fn bind_int(&mut self, index: usize, value: i64) -> rusqlite::Result<()> {
        // SAFETY: a valid statement; an integer is copied.
        let rc = unsafe { ffi::sqlite3_bind_int64(self.stmt, index as std::os::raw::c_int, value) };
        self.check(rc)
    }

    pub(crate) fn bind_real(&mut self, index: usize, value: f64) -> rusqlite::Result<()> {
        // SAFETY: a valid statement; a float is copied.
        let rc =
            unsafe { ffi::sqlite3_bind_double(self.stmt, index as std::os::raw::c_int, value) };
        self.check(rc)
    }

    pub(crate) fn bind_null(&mut self, index: usize) -> rusqlite::Result<()> {
        // SAFETY: a valid statement.
        let rc = unsafe { ffi::sqlite3_bind_null(self.stmt, index as std::os::raw::c_int) };
        self.check(rc)
    }

    /// Binds a value; text without a copy.
    pub(crate) fn bind_val(&mut self, index: usize, value: &'a SqlVal<'_>) -> rusqlite::Result<()> {
        match value {
            SqlVal::Null => self.bind_null(index),
            SqlVal::Int(i) => self.bind_int(index, *i),
            SqlVal::Real(f) => self.bind_real(index, *f),
            SqlVal::Text(t) => self.bind_text(index, t.as_ref()),
        }
    }

    fn check(&self, rc: std::os::raw::c_int) -> rusqlite::Result<()> {
        if rc == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(last_error(self.db, rc))
        }
    }

    /// Runs the statement to completion and resets it.
    pub(crate) fn execute(&mut self) -> rusqlite::Result<()> {
        // SAFETY: a valid statement of this thread's connection.
        let rc = unsafe { ffi::sqlite3_step(self.stmt) };
        let err = (rc != ffi::SQLITE_DONE).then(|| last_error(self.db, rc));
        // SAFETY: as above; reset returns the step's error again, already taken.
        unsafe { ffi::sqlite3_reset(self.stmt) };
        err.map_or(Ok(()), Err)
    }

    /// Runs a statement that writes and returns how many rows it changed.
    pub(crate) fn execute_changes(&mut self) -> rusqlite::Result<u64> {
        self.execute()?;
        // SAFETY: the connection is open; the count is of its last statement.
        let n = unsafe { ffi::sqlite3_changes64(self.db) };
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Runs a query and returns whether it gave a row.
    pub(crate) fn exists(&mut self) -> rusqlite::Result<bool> {
        // SAFETY: a valid statement of this thread's connection.
        let rc = unsafe { ffi::sqlite3_step(self.stmt) };
        let out = match rc {
            ffi::SQLITE_ROW => Ok(true),
            ffi::SQLITE_DONE => Ok(false),
            _ => Err(last_error(self.db, rc)),
        };
        // SAFETY: as above.
        unsafe { ffi::sqlite3_reset(self.stmt) };
        out
    }
}

impl Drop for StaticStmt<'_> {
    fn drop(&mut self) {
        // SAFETY: finalized once, here.
        unsafe { ffi::sqlite3_finalize(self.stmt) };
    }
}

pub(crate) fn last_error(db: *mut ffi::sqlite3, rc: std::os::raw::c_int) -> rusqlite::Error {
    // SAFETY: `db` is an open connection; the message is copied at once.
    let (code, msg) = unsafe {
        let code = ffi::sqlite3_extended_errcode(db);
        let msg = ffi::sqlite3_errmsg(db);
        let msg =
            (!msg.is_null()).then(|| std::ffi::CStr::from_ptr(msg).to_string_lossy().into_owned());
        (if code == 0 { rc } else { code }, msg)
    };
    rusqlite::Error::SqliteFailure(ffi::Error::new(code), msg)
}
