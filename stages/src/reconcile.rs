//! The `reconcile` stage: compares the recovered open orders with the
//! exchange's (DOMAIN.md), and records the report (JSON) and whether it
//! reconciled on the staged database. The proposed actions are never executed.
//!
//! Settings (config key, else pipeline parameter): `exchange_orders`, the
//! exchange's open orders as a JSON file (Binance `openOrders` or CCXT
//! orders; empty means the stage records `skipped`); `tolerance`, the
//! relative tolerance of quantity and price comparisons (default 1e-9);
//! config `symbol_map = { "XBTUSD" = "BTC/USD" }` for symbols the known quote
//! assets do not split.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use genesis_core::pipeline::{
    decode_config, Artifact, ArtifactKind, BuildContext, Emit, Stage, StageContext, StageFactory,
    StagedDatabase,
};
use genesis_core::{Error, Result};

use crate::settings;

/// Default relative tolerance of reconciliation comparisons.
pub const DEFAULT_TOLERANCE: f64 = 1e-9;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReconcileConfig {
    exchange_orders: Option<String>,
    tolerance: Option<f64>,
    #[serde(default)]
    symbol_map: BTreeMap<String, String>,
}

/// The `reconcile` stage type.
pub struct ReconcileFactory;

impl StageFactory for ReconcileFactory {
    fn type_name(&self) -> &str {
        "reconcile"
    }
    fn description(&self) -> &str {
        "compares the recovered open orders with the exchange's (proposes actions, never executes them)"
    }
    fn inputs(&self) -> &[ArtifactKind] {
        &[ArtifactKind::StagedDatabase]
    }
    fn outputs(&self) -> &[ArtifactKind] {
        &[ArtifactKind::StagedDatabase]
    }
    fn build(
        &self,
        config: &toml::Table,
        ctx: &BuildContext<'_>,
    ) -> std::result::Result<Box<dyn Stage>, Vec<(String, String)>> {
        let config: ReconcileConfig = decode_config(config)?;
        let tolerance =
            settings::number(config.tolerance, ctx.params, "tolerance", DEFAULT_TOLERANCE)
                .map_err(|e| vec![("tolerance".to_string(), e.to_string())])?;
        if !(tolerance.is_finite() && tolerance >= 0.0) {
            return Err(vec![(
                "tolerance".to_string(),
                format!("must be a relative tolerance of 0 or more, not {tolerance}"),
            )]);
        }
        let file = settings::text(&config.exchange_orders, ctx.params, "exchange_orders")
            .filter(|s| !s.trim().is_empty())
            .map(PathBuf::from);
        Ok(Box::new(Reconcile {
            file,
            tolerance,
            symbol_map: config.symbol_map,
        }))
    }
}

struct Reconcile {
    file: Option<PathBuf>,
    tolerance: f64,
    symbol_map: BTreeMap<String, String>,
}

impl Reconcile {
    fn reconcile(&self, staged: &mut StagedDatabase, file: &Path) -> Result<()> {
        let report = reconcile_file(&staged.path, file, self.tolerance, &self.symbol_map)?;
        staged.reconciled = report
            .get("is_reconciled")
            .and_then(serde_json::Value::as_bool);
        staged.reconciliation = Some(report);
        Ok(())
    }
}

/// Reconciles the database at `db` with the exchange orders in `file`,
/// returning the report as JSON.
///
/// # Errors
/// `Error::Usage` when the file is missing or not one of the accepted shapes
/// (naming the shape expected and the field missing); `Error::Failed` when
/// the database has no orders table or cannot be read.
pub fn reconcile_file(
    db: &Path,
    file: &Path,
    tolerance: f64,
    symbol_map: &BTreeMap<String, String>,
) -> Result<serde_json::Value> {
    // Read element by element: a large file costs its orders, not its bytes.
    let reader = std::fs::File::open(file).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Usage(format!("no exchange orders file at {}", file.display()))
        } else {
            Error::io("read the exchange orders file", file, e)
        }
    })?;
    let orders = genesis_trading::reconcile::read_exchange_orders(
        std::io::BufReader::with_capacity(1 << 20, reader),
        &file.display().to_string(),
    )
    .map_err(|e| Error::Usage(e.to_string()))?;
    let conn = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::sqlite("open (read-only)", db, e))?;
    let report = genesis_trading::reconcile::reconcile(
        &conn,
        &orders,
        &genesis_trading::reconcile::ReconcileOptions {
            tolerance,
            symbol_map: symbol_map.clone(),
        },
    )
    .map_err(|e| Error::Failed(format!("reconciling {}: {e}", db.display())))?;
    serde_json::to_value(&report)
        .map_err(|e| Error::Failed(format!("encode the reconciliation report: {e}")))
}

impl Stage for Reconcile {
    fn process(&mut self, input: Artifact, _ctx: &StageContext, out: &mut dyn Emit) -> Result<()> {
        match input {
            Artifact::StagedDatabase(mut staged) => {
                match &self.file {
                    Some(file) => self.reconcile(&mut staged, file)?,
                    None => {
                        staged.reconciliation = Some(serde_json::json!({
                            "skipped": "no exchange orders file given (parameter `exchange_orders`)"
                        }));
                    }
                }
                out.emit(Artifact::StagedDatabase(staged))
            }
            other => out.emit(other),
        }
    }
}
