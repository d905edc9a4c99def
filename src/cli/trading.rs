//! `validate`, `recover-positions` and `reconcile-orders` on the live database.

use genesis_core::time::parse_timestamp;
use genesis_core::Error;
use genesis_stages::ValidateOptions;

use super::args::{PositionsArgs, ReconcileArgs, ValidateArgs};
use super::output::print;
use super::restore::{EXIT_RECONCILE, EXIT_VALIDATION};
use super::{Ctx, EXIT_OK};

fn open_readonly(ctx: &Ctx) -> anyhow::Result<rusqlite::Connection> {
    genesis_core::capture::source::read_db_header(&ctx.db)?;
    rusqlite::Connection::open_with_flags(&ctx.db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| Error::sqlite("open", &ctx.db, e).into())
}

pub fn validate(ctx: &Ctx, a: ValidateArgs) -> anyhow::Result<i32> {
    genesis_core::capture::source::read_db_header(&ctx.db)?;
    let opts = ValidateOptions {
        integrity_check: a.full,
        all_checkpoints: a.full,
        target_time: a.target.as_deref().map(parse_timestamp).transpose()?,
        ..Default::default()
    };
    let r = genesis_stages::validate_database(&ctx.db, &opts)?;
    print(ctx, &r, || {
        let mut s = if r.is_consistent {
            "Recovery validation passed".to_string()
        } else {
            format!("Validation errors: {}", r.errors.len())
        };
        for e in &r.errors {
            s.push_str(&format!("\n  error {}: {}", e.code, e.message));
        }
        if !r.warnings.is_empty() {
            s.push_str(&format!("\nWarnings: {}", r.warnings.len()));
            for w in &r.warnings {
                s.push_str(&format!("\n  warning {}: {}", w.code, w.message));
            }
        }
        s
    })?;
    Ok(if r.is_consistent {
        EXIT_OK
    } else {
        EXIT_VALIDATION
    })
}

pub fn recover_positions(ctx: &Ctx, a: PositionsArgs) -> anyhow::Result<i32> {
    let conn = open_readonly(ctx)?;
    let until = a.timestamp.as_deref().map(parse_timestamp).transpose()?;
    let r = genesis_trading::positions::recover_positions(&conn, until)?;
    print(ctx, &r, || {
        let mut s = format!(
            "Total positions: {}\nOpen positions: {}",
            r.total_positions, r.open_positions
        );
        for (id, p) in &r.positions {
            s.push_str(&format!(
                "\n{id}: {} {} @ {} (qty {}, {}, unrealized {})",
                p.symbol.as_deref().unwrap_or("?"),
                p.side.as_deref().unwrap_or("?"),
                p.entry_price
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "?".into()),
                p.quantity
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "?".into()),
                p.status.as_deref().unwrap_or("?"),
                p.unrealized_pnl
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "?".into())
            ));
        }
        if !r.divergences.is_empty() {
            s.push_str(&format!(
                "\nThe positions table disagrees with the events in {} place(s):",
                r.divergences.len()
            ));
            for d in &r.divergences {
                s.push_str(&format!("\n  {}: {}", d.code, d.message));
            }
        }
        s
    })?;
    Ok(EXIT_OK)
}

pub fn reconcile_orders(ctx: &Ctx, a: ReconcileArgs) -> anyhow::Result<i32> {
    let conn = open_readonly(ctx)?;
    // Read element by element: a large file costs its orders, not its bytes.
    let file = std::fs::File::open(&a.exchange_orders).map_err(|e| {
        Error::Usage(format!(
            "cannot read the exchange orders file {}: {e}",
            a.exchange_orders.display()
        ))
    })?;
    let orders = genesis_trading::reconcile::read_exchange_orders(
        std::io::BufReader::with_capacity(1 << 20, file),
        &a.exchange_orders.display().to_string(),
    )?;
    let opts = genesis_trading::reconcile::ReconcileOptions {
        tolerance: a.tolerance,
        ..Default::default()
    };
    let r = genesis_trading::reconcile::reconcile(&conn, &orders, &opts)?;
    print(ctx, &r, || {
        let mut notes = String::new();
        for w in &r.warnings {
            notes.push_str(&format!("\nwarning: {w}"));
        }
        if r.is_reconciled {
            return format!(
                "Reconciled: {} open orders match the exchange (accuracy {:.4}){notes}",
                r.db_order_count, r.accuracy
            );
        }
        let mut s = format!(
            "Discrepancies found:\nMissing in DB: {}\nMissing on exchange: {}\nStatus mismatches: {}\nQuantity mismatches: {}\nAccuracy: {:.4}",
            r.missing_in_db.len(),
            r.missing_on_exchange.len(),
            r.status_mismatches.len(),
            r.quantity_mismatches.len(),
            r.accuracy
        );
        for act in &r.actions {
            s.push_str(&format!("\n{act}"));
        }
        s.push_str(&notes);
        s
    })?;
    Ok(if r.is_reconciled {
        EXIT_OK
    } else {
        EXIT_RECONCILE
    })
}
