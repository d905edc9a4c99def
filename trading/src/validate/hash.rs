//! Rule 10's canonical hash of the folded tables ([`super::fold`]): each row
//! rendered as SQLite's `quote()` renders it ([`super::render`]), in key
//! order, on every CPU a window of rows at a time.

use super::fold::{Undo, HASHED};
use super::render::{render, render_into};
use super::rows::{key_of, row_of, Rows};
use crate::error::{Error, Result};

/// The canonical hash of the tables, each row rendered straight into BLAKE3
/// in key order (as of the last [`Rows::sort`]), a window of rows at a time
/// on every CPU (memory bounded by the window). With `undo`, the state as it
/// was when the undo began: a row changed since in its first prior version,
/// a row inserted since left out.
///
/// # Errors
/// [`Error::Internal`] if a rendering thread panics.
pub(super) fn hash_rows(tables: &[Rows; 3], undo: Option<&Undo>) -> Result<String> {
    const WINDOW: usize = 1 << 16;
    let mut hasher = blake3::Hasher::new();
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    for (t, (table, rows)) in HASHED.iter().zip(tables).enumerate() {
        hasher.update(table.name().as_bytes());
        hasher.update(b"\n");
        let width = rows.width();
        let (keys, ends, cells) = rows.parts_ref();
        let prior = undo.map(|u| &u[t]);
        let lines = |ids: &[u32]| {
            let mut out = String::with_capacity(ids.len() * 16 * (width + 1));
            for &id in ids {
                let row = match prior.and_then(|p| p.get(&id)) {
                    None => row_of(cells, width, id),
                    Some(Some(before)) => before,
                    Some(None) => continue,
                };
                render_into(key_of(keys, ends, id), row, &mut out);
                out.push('\n');
            }
            out
        };
        for window in rows.sorted_ids().chunks(WINDOW) {
            let per = window.len().div_ceil(threads).max(4096);
            if window.len() <= per {
                hasher.update(lines(window).as_bytes());
                continue;
            }
            std::thread::scope(|s| {
                let parts: Vec<_> = window
                    .chunks(per)
                    .map(|part| s.spawn(move || lines(part)))
                    .collect();
                for part in parts {
                    let text = part.join().map_err(|p| {
                        Error::internal("rendering rows for the state hash", p.as_ref())
                    })?;
                    hasher.update(text.as_bytes());
                }
                Ok::<_, Error>(())
            })?;
        }
    }
    Ok(format!("blake3:{}", hasher.finalize().to_hex()))
}

/// Renders the live rows not rendered since they last changed, on every
/// CPU when there are many (a row's rendering depends on no other row).
///
/// # Errors
/// [`Error::Internal`] if a rendering thread panics.
pub(super) fn render_changed(rows: &mut Rows) -> Result<()> {
    let width = rows.width();
    let (keys, ends, cells, meta) = rows.parts();
    let todo: Vec<u32> = (0..)
        .zip(meta.iter())
        .filter(|(_, m)| m.live && m.line.is_none())
        .map(|(id, _)| id)
        .collect();
    let line = |id: u32| render(key_of(keys, ends, id), row_of(cells, width, id)).into_boxed_str();
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let per = todo.len().div_ceil(threads).max(4096);
    let lines: Vec<Box<str>> = if todo.len() <= per {
        todo.iter().map(|id| line(*id)).collect()
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = todo
                .chunks(per)
                .map(|chunk| s.spawn(move || chunk.iter().map(|id| line(*id)).collect::<Vec<_>>()))
                .collect();
            let mut all = Vec::with_capacity(todo.len());
            for h in handles {
                all.extend(h.join().map_err(|p| {
                    Error::internal("rendering rows for the state hash", p.as_ref())
                })?);
            }
            Ok::<_, Error>(all)
        })?
    };
    for (id, l) in todo.into_iter().zip(lines) {
        meta[id as usize].line = Some(l);
    }
    Ok(())
}
