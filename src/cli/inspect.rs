//! `list-backups` and `verify-backups`.

use chrono::{Duration as ChronoDuration, Utc};
use genesis_core::repo::Repository;

use super::args::{ListArgs, VerifyArgs};
use super::output::{bytes, print};
use super::{Ctx, EXIT_FAILED, EXIT_OK};

pub fn list_backups(ctx: &Ctx, a: ListArgs) -> anyhow::Result<i32> {
    let repo = Repository::open_path(&ctx.repo, false)?;
    let since = a
        .days
        .and_then(|d| Utc::now().checked_sub_signed(ChronoDuration::days(i64::from(d))));
    let mut rows = genesis_core::retention::list_backups(&repo, since, a.all)?;
    if let Some(n) = a.limit {
        rows.truncate(n);
    }
    print(ctx, &rows, || {
        if rows.is_empty() {
            return "no backups".to_string();
        }
        let mut out = format!(
            "{:<32} {:<14} {:>10} {:>8}  {}\n",
            "timestamp", "type", "size", "points", "backup_id"
        );
        for r in &rows {
            let kind = if r.level > 0 {
                format!("compacted L{}", r.level)
            } else {
                r.backup_type.clone()
            };
            out.push_str(&format!(
                "{:<32} {:<14} {:>10} {:>8}  {}\n",
                r.timestamp,
                kind,
                bytes(r.size_bytes),
                r.transactions,
                r.backup_id
            ));
        }
        out.trim_end().to_string()
    })?;
    Ok(EXIT_OK)
}

pub fn verify_backups(ctx: &Ctx, a: VerifyArgs) -> anyhow::Result<i32> {
    let repo = Repository::open_path(&ctx.repo, false)?;
    let r = genesis_core::verify::verify_repository(&repo, a.backup_id.as_deref())?;
    print(ctx, &r, || {
        if r.ok {
            return format!("ok: {} objects verified", r.checked);
        }
        let mut out = format!(
            "{} problem(s) in {} objects checked:\n",
            r.problems.len(),
            r.checked
        );
        for p in &r.problems {
            out.push_str(&format!(
                "  {}: {}\n    breaks: {}\n",
                p.object,
                p.problem,
                p.breaks.join("; ")
            ));
        }
        out.trim_end().to_string()
    })?;
    Ok(if r.ok { EXIT_OK } else { EXIT_FAILED })
}
