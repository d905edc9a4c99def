//! A pipeline plugin stage that checks the restored database against its own
//! risk limits before it goes live: a database whose open positions break the
//! limits the trading system was configured with is worth stopping for.
//!
//! Exposure is notional in the quote currency, as in DOMAIN.md's metrics:
//! `|quantity| × entry_price` summed over the open positions (`status =
//! 'open'`), or `current_price` when the config says `price = "current"` and
//! the row has one. The rows of `risk_limits` map to checks by `limit_type`:
//!
//! | limit_type | checked against |
//! |---|---|
//! | `max_total_exposure` | the exposure of all open positions together |
//! | `max_exposure_per_symbol` | each symbol's exposure |
//! | `max_exposure_per_symbol:SYM`, `max_position_size:SYM` | the exposure of symbol `SYM` (e.g. `BTC/USDT`) |
//! | `max_position_size` | each single open position's exposure |
//!
//! Other limit types (leverage, daily loss, ...) are not about exposure: they
//! are listed in the report as ignored. An exposure above its limit is an
//! error (`risk_limit_exceeded`); one at or above `warn_fraction` (default
//! 0.9) of its limit is a warning (`risk_limit_near`); a limit whose value is
//! missing or negative is a warning (`risk_limit_invalid`). A database without
//! the `positions` or `risk_limits` table gets one warning
//! (`risk_limits_unavailable`) and nothing else.
//!
//! Config: `warn_fraction` (0 < f ≤ 1) and `price` (`"entry"` or `"current"`).

use std::collections::BTreeMap;
use std::path::Path;

use genesis_plugin_sdk::serde_json::{self, json, Map, Value};
use genesis_plugin_sdk::wire::{StageOutput, StagedDatabaseDoc, WireFinding};
use genesis_plugin_sdk::{CheckStage, DatabaseCheck};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde::Deserialize;

/// Which price values exposure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Price {
    #[default]
    Entry,
    Current,
}

/// The plugin's `[stages.config]` keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_warn_fraction")]
    warn_fraction: f64,
    #[serde(default)]
    price: Price,
}

fn default_warn_fraction() -> f64 {
    0.9
}

/// One open position, reduced to what exposure needs.
struct OpenPosition {
    id: String,
    symbol: String,
    exposure: f64,
}

/// What a `risk_limits` row applies to.
#[derive(Debug, Clone, PartialEq)]
enum Scope {
    Total,
    EverySymbol,
    Symbol(String),
    EveryPosition,
}

/// The check.
pub struct RiskLimits {
    warn_fraction: f64,
    price: Price,
}

/// Findings and report rows being gathered for one database.
#[derive(Default)]
struct Outcome {
    output: StageOutput,
    rows: Vec<Value>,
}

impl Outcome {
    /// Compares one exposure with one limit and records the result.
    fn compare(&mut self, limit_type: &str, limit: f64, what: &str, exposure: f64, warn: f64) {
        let status = if exposure > limit {
            self.output.errors.push(WireFinding::new(
                "risk_limit_exceeded",
                format!(
                    "{what} has exposure {exposure}, above the limit {limit_type} = {limit}{}",
                    utilization(exposure, limit)
                ),
            ));
            "exceeded"
        } else if exposure > 0.0 && exposure >= warn * limit {
            self.output.warnings.push(WireFinding::new(
                "risk_limit_near",
                format!(
                    "{what} has exposure {exposure}, near the limit {limit_type} = {limit}{}",
                    utilization(exposure, limit)
                ),
            ));
            "near"
        } else {
            "ok"
        };
        self.rows.push(json!({
            "limit_type": limit_type, "limit_value": limit, "subject": what,
            "exposure": exposure, "status": status,
        }));
    }
}

fn utilization(exposure: f64, limit: f64) -> String {
    if limit > 0.0 {
        format!(" ({:.1}% of it)", exposure / limit * 100.0)
    } else {
        String::new()
    }
}

fn scope_of(limit_type: &str) -> Option<Scope> {
    match limit_type.split_once(':') {
        None => match limit_type {
            "max_total_exposure" => Some(Scope::Total),
            "max_exposure_per_symbol" => Some(Scope::EverySymbol),
            "max_position_size" => Some(Scope::EveryPosition),
            _ => None,
        },
        Some(("max_exposure_per_symbol" | "max_position_size", symbol))
            if !symbol.trim().is_empty() =>
        {
            Some(Scope::Symbol(symbol.trim().to_string()))
        }
        Some(_) => None,
    }
}

fn has_table(db: &Connection, name: &str) -> rusqlite::Result<bool> {
    db.query_row(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |_| Ok(()),
    )
    .optional()
    .map(|found| found.is_some())
}

impl RiskLimits {
    fn open_positions(&self, db: &Connection) -> rusqlite::Result<Vec<OpenPosition>> {
        let mut statement = db.prepare(
            "SELECT position_id, symbol, quantity, entry_price, current_price \
             FROM positions WHERE status = 'open' ORDER BY position_id",
        )?;
        let rows = statement.query_map([], |row| {
            let quantity: Option<f64> = row.get(2)?;
            let entry: Option<f64> = row.get(3)?;
            let current: Option<f64> = row.get(4)?;
            let price = match self.price {
                Price::Current => current.or(entry),
                Price::Entry => entry,
            };
            Ok(OpenPosition {
                id: row.get::<_, Option<String>>(0)?.unwrap_or_default(),
                symbol: row.get::<_, Option<String>>(1)?.unwrap_or_default(),
                exposure: (quantity.unwrap_or(0.0) * price.unwrap_or(0.0)).abs(),
            })
        })?;
        rows.collect()
    }

    fn limits(db: &Connection) -> rusqlite::Result<Vec<(String, Option<f64>)>> {
        let mut statement =
            db.prepare("SELECT limit_type, limit_value FROM risk_limits ORDER BY limit_type")?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        rows.collect()
    }

    fn check_database(&self, path: &Path) -> rusqlite::Result<StageOutput> {
        let db = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let mut outcome = Outcome::default();
        if !has_table(&db, "positions")? || !has_table(&db, "risk_limits")? {
            outcome.output.warnings.push(WireFinding::new(
                "risk_limits_unavailable",
                format!(
                    "{} has no positions or no risk_limits table: no risk limit was checked",
                    path.display()
                ),
            ));
            return Ok(outcome.output);
        }
        let positions = self.open_positions(&db)?;
        let mut per_symbol: BTreeMap<&str, f64> = BTreeMap::new();
        for p in &positions {
            *per_symbol.entry(p.symbol.as_str()).or_default() += p.exposure;
        }
        let total: f64 = per_symbol.values().sum();
        let limits = Self::limits(&db)?;
        let specific: Vec<String> = limits
            .iter()
            .filter_map(|(t, _)| match scope_of(t) {
                Some(Scope::Symbol(s)) => Some(s),
                _ => None,
            })
            .collect();

        let mut ignored = Vec::new();
        let warn = self.warn_fraction;
        for (limit_type, value) in &limits {
            let Some(scope) = scope_of(limit_type) else {
                ignored.push(limit_type.clone());
                continue;
            };
            let limit = match value {
                Some(v) if v.is_finite() && *v >= 0.0 => *v,
                _ => {
                    outcome.output.warnings.push(WireFinding::new(
                        "risk_limit_invalid",
                        format!(
                            "risk limit {limit_type} has no usable value ({value:?}): not checked"
                        ),
                    ));
                    continue;
                }
            };
            match scope {
                Scope::Total => outcome.compare(limit_type, limit, "the total", total, warn),
                Scope::Symbol(symbol) => {
                    let exposure = per_symbol.get(symbol.as_str()).copied().unwrap_or(0.0);
                    outcome.compare(limit_type, limit, &symbol, exposure, warn);
                }
                Scope::EverySymbol => {
                    // A symbol with its own limit is judged by that one.
                    for (symbol, exposure) in &per_symbol {
                        if !specific.iter().any(|s| s == symbol) {
                            outcome.compare(limit_type, limit, symbol, *exposure, warn);
                        }
                    }
                }
                Scope::EveryPosition => {
                    for p in &positions {
                        let what = format!("position {} ({})", p.id, p.symbol);
                        outcome.compare(limit_type, limit, &what, p.exposure, warn);
                    }
                }
            }
        }

        let mut metrics = Map::new();
        metrics.insert("total_exposure".into(), json!(total));
        metrics.insert("open_positions".into(), json!(positions.len()));
        metrics.insert("limits_checked".into(), json!(outcome.rows.len()));
        metrics.insert("limits_exceeded".into(), json!(outcome.output.errors.len()));
        outcome.output.metrics = metrics;
        outcome.output.report = Some(json!({
            "price": if self.price == Price::Current { "current" } else { "entry" },
            "warn_fraction": warn,
            "total_exposure": total,
            "exposure_per_symbol": per_symbol,
            "checks": outcome.rows,
            "ignored_limits": ignored,
        }));
        Ok(outcome.output)
    }
}

impl DatabaseCheck for RiskLimits {
    fn new(config: Value) -> Result<Self, String> {
        let config: Config =
            serde_json::from_value(config).map_err(|e| format!("risk-limits config: {e}"))?;
        if !(config.warn_fraction > 0.0 && config.warn_fraction <= 1.0) {
            return Err(format!(
                "risk-limits config: warn_fraction must be above 0 and at most 1, got {}",
                config.warn_fraction
            ));
        }
        Ok(RiskLimits {
            warn_fraction: config.warn_fraction,
            price: config.price,
        })
    }

    fn check(&mut self, database: &StagedDatabaseDoc) -> Result<StageOutput, String> {
        self.check_database(&database.path)
            .map_err(|e| format!("reading {}: {e}", database.path.display()))
    }
}

genesis_plugin_sdk::export_stage!(CheckStage<RiskLimits>, "risk-limits");

#[cfg(test)]
mod tests {
    use super::*;

    fn database(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("staged.db");
        let db = Connection::open(&path).unwrap();
        db.execute_batch(
            "CREATE TABLE positions (position_id TEXT PRIMARY KEY, symbol TEXT, side TEXT,
               entry_price REAL, quantity REAL, status TEXT, opened_at TEXT, strategy_id TEXT,
               unrealized_pnl REAL, realized_pnl REAL, current_price REAL, exit_price REAL,
               closed_at TEXT);
             CREATE TABLE risk_limits (limit_type TEXT PRIMARY KEY, limit_value REAL, tier TEXT,
               updated_at TEXT);
             INSERT INTO positions (position_id, symbol, side, entry_price, quantity, status, current_price)
               VALUES ('p1', 'BTC/USDT', 'long', 50000, 1.2, 'open', 40000),
                      ('p2', 'ETH/USDT', 'short', 3000, 3, 'open', NULL),
                      ('p3', 'SOL/USDT', 'long', 100, 5, 'open', NULL),
                      ('p4', 'BTC/USDT', 'long', 50000, 100, 'closed', NULL);
             INSERT INTO risk_limits VALUES
               ('max_position_size:BTC/USDT', 50000, 'hunter', 't'),
               ('max_exposure_per_symbol', 10000, 'hunter', 't'),
               ('max_total_exposure', 75000, 'hunter', 't'),
               ('max_daily_loss', 500, 'hunter', 't'),
               ('max_exposure_per_symbol:SOL/USDT', NULL, 'hunter', 't');",
        )
        .unwrap();
        path
    }

    fn run(config: Value, path: &Path) -> StageOutput {
        let mut check = RiskLimits::new(config).unwrap();
        check
            .check(&StagedDatabaseDoc {
                path: path.to_path_buf(),
                ..Default::default()
            })
            .unwrap()
    }

    #[test]
    fn exposures_above_and_near_limits_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let out = run(json!({}), &database(dir.path()));
        // BTC 60000 > 50000 (its own limit, not the per-symbol 10000); total
        // 60000 + 9000 + 500 = 69500 >= 0.9 * 75000; ETH 9000 >= 0.9 * 10000.
        let codes: Vec<_> = out.errors.iter().map(|f| f.message.as_str()).collect();
        assert_eq!(out.errors.len(), 1, "{codes:?}");
        assert!(out.errors[0].message.contains("BTC/USDT"));
        assert!(out.errors[0].message.contains("120.0%"));
        let warnings: Vec<_> = out
            .warnings
            .iter()
            .map(|f| (f.code.as_str(), f.message.as_str()))
            .collect();
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings
            .iter()
            .any(|(c, m)| *c == "risk_limit_near" && m.contains("ETH/USDT")));
        assert!(warnings
            .iter()
            .any(|(c, m)| *c == "risk_limit_near" && m.contains("the total")));
        assert!(warnings
            .iter()
            .any(|(c, m)| *c == "risk_limit_invalid" && m.contains("SOL/USDT")));
        let report = out.report.unwrap();
        assert_eq!(report["ignored_limits"], json!(["max_daily_loss"]));
        assert_eq!(report["total_exposure"], json!(69500.0));
        assert_eq!(out.metrics["limits_exceeded"], json!(1));
    }

    #[test]
    fn current_prices_and_fraction_are_configurable() {
        let dir = tempfile::tempdir().unwrap();
        let out = run(
            json!({"price": "current", "warn_fraction": 1.0}),
            &database(dir.path()),
        );
        // BTC at 40000: 48000 <= 50000, and below 100% it is no warning.
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert!(out.warnings.iter().all(|f| f.code == "risk_limit_invalid"));
    }

    #[test]
    fn a_database_without_the_tables_gets_one_warning() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE t (x);")
            .unwrap();
        let out = run(json!({}), &path);
        assert!(out.errors.is_empty());
        assert_eq!(out.warnings[0].code, "risk_limits_unavailable");
    }

    #[test]
    fn bad_config_is_refused() {
        assert!(RiskLimits::new(json!({"warn_fraction": 0})).is_err());
        assert!(RiskLimits::new(json!({"warn_fraction": 1.5})).is_err());
        assert!(RiskLimits::new(json!({"price": "mid"})).is_err());
        assert!(RiskLimits::new(json!({"typo": 1})).is_err());
    }
}
