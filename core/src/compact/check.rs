//! What verify-backups checks of compacted objects: each one's own content
//! against its manifest, and, while the objects it compacted still exist,
//! its pages, sizes and checksums against a merge of them done again.

use std::sync::Arc;

use crate::repo::catalog::Generation;
use crate::repo::formats::decode_segment;
use crate::repo::Manifest;
use crate::verify::{strip, Problem};

/// Checks a compacted segment's raw content against its manifest: one
/// transaction at the span's end, with the recorded size and checksum, and
/// no page beyond that size.
///
/// # Errors
/// What is wrong, for the user.
pub fn check_compacted_content(m: &Manifest, raw: &[u8]) -> std::result::Result<(), String> {
    let (ps, txns) = decode_segment(&m.id, raw).map_err(|e| strip(&m.id, e))?;
    if ps != m.page_size {
        return Err(format!(
            "page size {ps} differs from the manifest's {}",
            m.page_size
        ));
    }
    let (t, e) = match (txns.as_slice(), m.transactions.as_slice()) {
        ([t], [e]) => (t, e),
        _ => {
            return Err(format!(
                "holds {} transactions; a compacted object holds one, its span's end",
                txns.len()
            ))
        }
    };
    if t.txid != m.txid_max
        || format!("{:016x}", t.checksum) != e.checksum
        || t.db_pages != e.db_pages
    {
        return Err(format!(
            "its point (txid {}, {} pages) differs from its manifest (txid {}, {} pages)",
            t.txid, t.db_pages, m.txid_max, e.db_pages
        ));
    }
    if let Some((p, _)) = t.pages.iter().find(|(p, _)| u64::from(*p) > t.db_pages) {
        return Err(format!(
            "holds page {p}, beyond the {} pages of its end",
            t.db_pages
        ));
    }
    Ok(())
}

/// Each compacted object of `gen` whose inputs (the objects of the level
/// below that tile its txid range) all still exist, merged again and
/// compared. Inputs that fail their own checks are reported by those
/// checks; the comparison is then skipped.
pub fn check_levels_against_inputs(
    repo: &crate::repo::Repository,
    gen: &Generation,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    for c in &gen.compacted {
        let Some(inputs) = inputs_of(gen, c) else {
            continue;
        };
        let Ok(merged) = super::merge::merge_run(repo, &inputs) else {
            continue;
        };
        let problem = match super::merge::encode_compacted(&inputs, c.level, &merged) {
            Err(e) => Some(e.to_string()),
            Ok((_, again)) => differs(c, &again),
        };
        if let Some(problem) = problem {
            problems.push(Problem {
                object: c.id.clone(),
                problem: format!(
                    "differs from the {} objects it compacted ({}..{}): {problem}",
                    inputs.len(),
                    inputs[0].id,
                    inputs[inputs.len() - 1].id
                ),
                breaks: Vec::new(),
            });
        }
    }
    problems
}

/// Whether `c`'s stored object is intact and equals a merge, done again, of
/// the objects of the level below that tile its range (`None`: they do not
/// all exist any more, or one of them fails its own checks).
pub fn matches_inputs(
    repo: &crate::repo::Repository,
    gen: &Generation,
    c: &Manifest,
) -> Option<bool> {
    let inputs = inputs_of(gen, c)?;
    let merged = super::merge::merge_run(repo, &inputs).ok()?;
    let (_, again) = super::merge::encode_compacted(&inputs, c.level, &merged).ok()?;
    let stored_ok = repo
        .read_object(c)
        .and_then(|b| {
            crate::objects::verify_compressed(c, &b)?;
            crate::objects::decompress_object(c, &b)
        })
        .is_ok();
    Some(stored_ok && differs(c, &again).is_none())
}

/// The objects of the level below that tile `c`'s range exactly, if all exist.
pub(crate) fn inputs_of(gen: &Generation, c: &Manifest) -> Option<Vec<Arc<Manifest>>> {
    let below: Vec<Arc<Manifest>> = if c.level == 1 {
        gen.segments.clone()
    } else {
        gen.compacted
            .iter()
            .filter(|m| m.level + 1 == c.level)
            .cloned()
            .collect()
    };
    let mut run = Vec::new();
    let mut next = c.txid_min;
    for m in below
        .iter()
        .filter(|m| m.txid_min >= c.txid_min && m.txid_max <= c.txid_max)
    {
        if m.txid_min != next {
            return None;
        }
        next = m.txid_max + 1;
        run.push(m.clone());
    }
    (next == c.txid_max + 1 && !run.is_empty()).then_some(run)
}

/// What differs between a stored compacted manifest and one made again.
fn differs(stored: &Manifest, again: &Manifest) -> Option<String> {
    let pairs = [
        ("raw content", stored.blake3_raw != again.blake3_raw),
        ("smallest size", stored.min_db_pages != again.min_db_pages),
        ("size at its end", stored.db_pages != again.db_pages),
        (
            "checksum before",
            stored.db_checksum_before != again.db_checksum_before,
        ),
        (
            "checksum after",
            stored.db_checksum_after != again.db_checksum_after,
        ),
    ];
    let what: Vec<&str> = pairs.iter().filter(|(_, d)| *d).map(|(w, _)| *w).collect();
    (!what.is_empty()).then(|| what.join(", "))
}
