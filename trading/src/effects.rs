//! What each event does to the tables (DOMAIN.md's table), defined once and
//! independently of any writer.
//!
//! [`effect_of`] turns an event into at most two [`RowOp`]s: an insert, update or
//! upsert of one row named by its key, or an append (tier history). Values are
//! copied from the event's JSON as SQLite values ([`SqlVal`]); a field missing from
//! the data is not assigned, a JSON `null` assigns NULL, nested objects and arrays
//! are stored as their JSON text. [`apply`] is the one-event-at-a-time reference
//! writer; the replay folds the same operations in memory and must give the same
//! rows.

use std::borrow::Cow;

use rusqlite::types::{ToSql, ToSqlOutput, ValueRef};
use rusqlite::Connection;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::event::Event;

/// The tables events write to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Positions,
    Orders,
    Balances,
    SystemState,
    TierHistory,
    RiskLimits,
    Checkpoints,
}

/// Non-key columns of `orders`, in table order.
pub const ORDER_COLUMNS: &[&str] = &[
    "client_order_id",
    "symbol",
    "side",
    "order_type",
    "quantity",
    "price",
    "status",
    "created_at",
    "filled_quantity",
    "executed_price",
    "filled_at",
    "cancelled_at",
    "position_id",
];
/// Non-key columns of `positions`, in table order.
pub const POSITION_COLUMNS: &[&str] = &[
    "symbol",
    "side",
    "entry_price",
    "quantity",
    "status",
    "opened_at",
    "strategy_id",
    "unrealized_pnl",
    "realized_pnl",
    "current_price",
    "exit_price",
    "closed_at",
];
const BALANCE_COLUMNS: &[&str] = &[
    "free_balance",
    "locked_balance",
    "total_balance",
    "updated_at",
];
const SYSTEM_STATE_COLUMNS: &[&str] = &["value", "updated_at"];
const TIER_COLUMNS: &[&str] = &["old_tier", "new_tier", "reason", "changed_at"];
const RISK_COLUMNS: &[&str] = &["limit_value", "tier", "updated_at"];
const CHECKPOINT_COLUMNS: &[&str] = &["state_hash", "created_at"];

impl Table {
    /// The table's name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Positions => "positions",
            Table::Orders => "orders",
            Table::Balances => "balances",
            Table::SystemState => "system_state",
            Table::TierHistory => "tier_history",
            Table::RiskLimits => "risk_limits",
            Table::Checkpoints => "checkpoints",
        }
    }

    /// The primary-key column.
    pub fn key_column(self) -> &'static str {
        match self {
            Table::Positions => "position_id",
            Table::Orders => "order_id",
            Table::Balances => "asset",
            Table::SystemState => "key",
            Table::TierHistory => "id",
            Table::RiskLimits => "limit_type",
            Table::Checkpoints => "checkpoint_id",
        }
    }

    /// The other columns, in table order; [`RowOp::set`] indexes into this.
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            Table::Positions => POSITION_COLUMNS,
            Table::Orders => ORDER_COLUMNS,
            Table::Balances => BALANCE_COLUMNS,
            Table::SystemState => SYSTEM_STATE_COLUMNS,
            Table::TierHistory => TIER_COLUMNS,
            Table::RiskLimits => RISK_COLUMNS,
            Table::Checkpoints => CHECKPOINT_COLUMNS,
        }
    }

    /// What a row of this table is called in messages.
    pub fn row_noun(self) -> &'static str {
        match self {
            Table::Positions => "position",
            Table::Orders => "order",
            Table::Balances => "balance",
            Table::SystemState => "system state key",
            Table::TierHistory => "tier change",
            Table::RiskLimits => "risk limit",
            Table::Checkpoints => "checkpoint",
        }
    }
}

/// The event types DOMAIN.md defines.
pub const KNOWN_EVENT_TYPES: [&str; 14] = [
    "BALANCE_UPDATED",
    "ORDER_CREATED",
    "ORDER_PARTIALLY_FILLED",
    "ORDER_FILLED",
    "ORDER_CANCELLED",
    "ORDER_REJECTED",
    "ORDER_EXPIRED",
    "POSITION_OPENED",
    "POSITION_UPDATED",
    "POSITION_CLOSED",
    "TIER_CHANGED",
    "RISK_LIMIT_SET",
    "SYSTEM_STATE_SET",
    "CHECKPOINT",
];

/// Whether DOMAIN.md defines an effect for this event type.
pub fn is_known(event_type: &str) -> bool {
    // A match, not a scan of KNOWN_EVENT_TYPES: it runs for every event.
    matches!(
        event_type,
        "BALANCE_UPDATED"
            | "ORDER_CREATED"
            | "ORDER_PARTIALLY_FILLED"
            | "ORDER_FILLED"
            | "ORDER_CANCELLED"
            | "ORDER_REJECTED"
            | "ORDER_EXPIRED"
            | "POSITION_OPENED"
            | "POSITION_UPDATED"
            | "POSITION_CLOSED"
            | "TIER_CHANGED"
            | "RISK_LIMIT_SET"
            | "SYSTEM_STATE_SET"
            | "CHECKPOINT"
    )
}

/// A value as it is bound to SQLite.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlVal<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(Cow<'a, str>),
}

impl SqlVal<'_> {
    /// An owned copy.
    pub fn into_owned(self) -> SqlVal<'static> {
        match self {
            SqlVal::Null => SqlVal::Null,
            SqlVal::Int(i) => SqlVal::Int(i),
            SqlVal::Real(f) => SqlVal::Real(f),
            SqlVal::Text(t) => SqlVal::Text(Cow::Owned(t.into_owned())),
        }
    }
}

impl ToSql for SqlVal<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            SqlVal::Null => ValueRef::Null,
            SqlVal::Int(i) => ValueRef::Integer(*i),
            SqlVal::Real(f) => ValueRef::Real(*f),
            SqlVal::Text(t) => ValueRef::Text(t.as_bytes()),
        }))
    }
}

/// A field of the event data: missing, or present with a value.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Field<'a> {
    #[default]
    Missing,
    Present(SqlVal<'a>),
}

impl<'de: 'a, 'a> Deserialize<'de> for Field<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Field<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Field::Present(SqlVal::Int(i64::from(v))))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Field::Present(SqlVal::Int(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Field::Present(match i64::try_from(v) {
                    Ok(i) => SqlVal::Int(i),
                    Err(_) => SqlVal::Real(v as f64),
                }))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Field::Present(SqlVal::Real(v)))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Field::Present(SqlVal::Text(Cow::Borrowed(v))))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Field::Present(SqlVal::Text(Cow::Owned(v.to_string()))))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Field::Present(SqlVal::Text(Cow::Owned(v))))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Field::Present(SqlVal::Null))
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(Field::Present(SqlVal::Null))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let v = serde_json::Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Field::Present(SqlVal::Text(Cow::Owned(v.to_string()))))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                let v = serde_json::Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(Field::Present(SqlVal::Text(Cow::Owned(v.to_string()))))
            }
        }
        d.deserialize_any(V)
    }
}

/// The fields of event data that some effect reads; others are ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Data<'a> {
    #[serde(borrow)]
    asset: Field<'a>,
    #[serde(borrow)]
    free_balance: Field<'a>,
    #[serde(borrow)]
    locked_balance: Field<'a>,
    #[serde(borrow)]
    total_balance: Field<'a>,
    #[serde(borrow)]
    client_order_id: Field<'a>,
    #[serde(borrow)]
    symbol: Field<'a>,
    #[serde(borrow)]
    side: Field<'a>,
    #[serde(borrow)]
    order_type: Field<'a>,
    #[serde(borrow)]
    quantity: Field<'a>,
    #[serde(borrow)]
    price: Field<'a>,
    #[serde(borrow)]
    position_id: Field<'a>,
    #[serde(borrow)]
    filled_quantity: Field<'a>,
    #[serde(borrow)]
    executed_price: Field<'a>,
    #[serde(borrow)]
    entry_price: Field<'a>,
    #[serde(borrow)]
    strategy_id: Field<'a>,
    #[serde(borrow)]
    current_price: Field<'a>,
    #[serde(borrow)]
    unrealized_pnl: Field<'a>,
    #[serde(borrow)]
    exit_price: Field<'a>,
    #[serde(borrow)]
    realized_pnl: Field<'a>,
    #[serde(borrow)]
    old_tier: Field<'a>,
    #[serde(borrow)]
    new_tier: Field<'a>,
    #[serde(borrow)]
    reason: Field<'a>,
    #[serde(borrow)]
    limit_type: Field<'a>,
    #[serde(borrow)]
    limit_value: Field<'a>,
    #[serde(borrow)]
    tier: Field<'a>,
    #[serde(borrow)]
    key: Field<'a>,
    #[serde(borrow)]
    value: Field<'a>,
    #[serde(borrow)]
    state_hash: Field<'a>,
}

impl<'a> Data<'a> {
    /// Reads event data: flat objects by [`crate::json`], anything else by
    /// serde_json (which the fast reading equals where it reads).
    fn read(text: &'a str) -> serde_json::Result<Data<'a>> {
        let mut d = Data::default();
        let read = crate::json::read_flat_object(text, |key, v| match d.slot(key) {
            // A key no effect reads.
            None => true,
            Some(f @ Field::Missing) => {
                *f = Field::Present(v);
                true
            }
            // A duplicate: serde_json's error.
            Some(Field::Present(_)) => false,
        });
        match read {
            Some(()) => Ok(d),
            None => serde_json::from_str(text),
        }
    }

    fn slot(&mut self, key: &str) -> Option<&mut Field<'a>> {
        Some(match key {
            "asset" => &mut self.asset,
            "free_balance" => &mut self.free_balance,
            "locked_balance" => &mut self.locked_balance,
            "total_balance" => &mut self.total_balance,
            "client_order_id" => &mut self.client_order_id,
            "symbol" => &mut self.symbol,
            "side" => &mut self.side,
            "order_type" => &mut self.order_type,
            "quantity" => &mut self.quantity,
            "price" => &mut self.price,
            "position_id" => &mut self.position_id,
            "filled_quantity" => &mut self.filled_quantity,
            "executed_price" => &mut self.executed_price,
            "entry_price" => &mut self.entry_price,
            "strategy_id" => &mut self.strategy_id,
            "current_price" => &mut self.current_price,
            "unrealized_pnl" => &mut self.unrealized_pnl,
            "exit_price" => &mut self.exit_price,
            "realized_pnl" => &mut self.realized_pnl,
            "old_tier" => &mut self.old_tier,
            "new_tier" => &mut self.new_tier,
            "reason" => &mut self.reason,
            "limit_type" => &mut self.limit_type,
            "limit_value" => &mut self.limit_value,
            "tier" => &mut self.tier,
            "key" => &mut self.key,
            "value" => &mut self.value,
            "state_hash" => &mut self.state_hash,
            _ => return None,
        })
    }
}

/// How a [`RowOp`] writes its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// Insert a new row; an existing key is an error.
    Insert,
    /// Update an existing row; a missing key is an error.
    Update,
    /// Insert, or update the assigned columns of an existing row.
    Upsert,
    /// Insert a row with a generated key (tier history).
    Append,
}

/// One row operation of an effect.
#[derive(Debug, Clone, PartialEq)]
pub struct RowOp<'a> {
    pub table: Table,
    pub kind: OpKind,
    /// The primary key (empty for [`OpKind::Append`]).
    pub key: Cow<'a, str>,
    /// Assignments: index into [`Table::columns`], value.
    pub set: Vec<(u8, SqlVal<'a>)>,
}

/// The effect of one event: none (unknown type), one or two row operations.
pub type Effect<'a> = Option<Vec<RowOp<'a>>>;

fn push<'a>(set: &mut Vec<(u8, SqlVal<'a>)>, col: u8, f: Field<'a>) {
    if let Field::Present(v) = f {
        set.push((col, v));
    }
}

fn text(s: &str) -> SqlVal<'_> {
    SqlVal::Text(Cow::Borrowed(s))
}

fn st(s: &'static str) -> SqlVal<'static> {
    SqlVal::Text(Cow::Borrowed(s))
}

fn key_field<'a>(ev: &Event, name: &str, f: Field<'a>) -> Result<Cow<'a, str>> {
    match f {
        Field::Present(SqlVal::Text(t)) => Ok(t),
        Field::Missing => Err(Error::event(ev, format!("event_data has no `{name}`"))),
        Field::Present(_) => Err(Error::event(
            ev,
            format!("event_data's `{name}` is not a string"),
        )),
    }
}

/// The effect of an event per DOMAIN.md; `Ok(None)` for a type it does not define.
///
/// # Errors
/// [`Error::Event`] naming the event when its data is not a JSON object or lacks
/// the field that keys its row (`asset`, `limit_type`, `key`).
pub fn effect_of(ev: &Event) -> Result<Effect<'_>> {
    let mut vals = Vec::with_capacity(10);
    let Some((first, second)) = effect_into(ev, &mut vals)? else {
        return Ok(None);
    };
    let second = second.map(|op| {
        let set = vals.split_off(op.vals.start);
        RowOp {
            table: op.table,
            kind: op.kind,
            key: op.key,
            set,
        }
    });
    vals.truncate(first.vals.end);
    let first = RowOp {
        table: first.table,
        kind: first.kind,
        key: first.key,
        set: vals,
    };
    Ok(Some(match second {
        Some(op) => vec![first, op],
        None => vec![first],
    }))
}

/// An operation of an effect whose assignments are `vals` of a buffer
/// (see [`effect_into`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OpAt<'a> {
    pub table: Table,
    pub kind: OpKind,
    pub key: Cow<'a, str>,
    pub vals: std::ops::Range<usize>,
}

/// The operations of one effect: one or two.
pub(crate) type OpsAt<'a> = (OpAt<'a>, Option<OpAt<'a>>);

/// As [`effect_of`], with the assignments appended to `vals` (a buffer
/// shared by many events, so that an operation costs no allocation); on an
/// error `vals` is as it was.
///
/// # Errors
/// As [`effect_of`].
pub(crate) fn effect_into<'a>(
    ev: &'a Event,
    vals: &mut Vec<(u8, SqlVal<'a>)>,
) -> Result<Option<OpsAt<'a>>> {
    let start = vals.len();
    let r = effect_at(ev, vals, start);
    if r.is_err() {
        vals.truncate(start);
    }
    r
}

fn effect_at<'a>(
    ev: &'a Event,
    set: &mut Vec<(u8, SqlVal<'a>)>,
    start: usize,
) -> Result<Option<OpsAt<'a>>> {
    use OpKind::*;
    use Table::*;
    let ty = ev.event_type.as_str();
    if !is_known(ty) {
        return Ok(None);
    }
    let d = Data::read(&ev.event_data).map_err(|e| {
        Error::event(
            ev,
            format!("event_data is not a JSON object of the expected shape: {e}"),
        )
    })?;
    let t = || text(&ev.created_at);
    let id = || Cow::Borrowed(ev.aggregate_id.as_str());
    let op = match ty {
        "BALANCE_UPDATED" => {
            let key = key_field(ev, "asset", d.asset)?;
            push(set, 0, d.free_balance);
            push(set, 1, d.locked_balance);
            push(set, 2, d.total_balance);
            set.push((3, t()));
            OpAt {
                table: Balances,
                kind: Upsert,
                key,
                vals: start..set.len(),
            }
        }
        "ORDER_CREATED" => {
            push(set, 0, d.client_order_id);
            push(set, 1, d.symbol);
            push(set, 2, d.side);
            push(set, 3, d.order_type);
            push(set, 4, d.quantity);
            push(set, 5, d.price);
            set.push((6, st("new")));
            set.push((7, t()));
            set.push((8, SqlVal::Int(0)));
            push(set, 12, d.position_id);
            OpAt {
                table: Orders,
                kind: Insert,
                key: id(),
                vals: start..set.len(),
            }
        }
        "ORDER_PARTIALLY_FILLED" | "ORDER_FILLED" => {
            let filled = ty == "ORDER_FILLED";
            set.push((6, st(if filled { "filled" } else { "partially_filled" })));
            push(set, 8, d.filled_quantity);
            push(set, 9, d.executed_price);
            if filled {
                set.push((10, t()));
            }
            OpAt {
                table: Orders,
                kind: Update,
                key: id(),
                vals: start..set.len(),
            }
        }
        "ORDER_CANCELLED" => {
            set.push((6, st("cancelled")));
            set.push((11, t()));
            OpAt {
                table: Orders,
                kind: Update,
                key: id(),
                vals: start..set.len(),
            }
        }
        "ORDER_REJECTED" | "ORDER_EXPIRED" => {
            set.push((
                6,
                st(if ty == "ORDER_REJECTED" {
                    "rejected"
                } else {
                    "expired"
                }),
            ));
            OpAt {
                table: Orders,
                kind: Update,
                key: id(),
                vals: start..set.len(),
            }
        }
        "POSITION_OPENED" => {
            push(set, 0, d.symbol);
            push(set, 1, d.side);
            push(set, 2, d.entry_price);
            push(set, 3, d.quantity);
            set.push((4, st("open")));
            set.push((5, t()));
            push(set, 6, d.strategy_id);
            set.push((7, SqlVal::Int(0)));
            set.push((8, SqlVal::Int(0)));
            OpAt {
                table: Positions,
                kind: Insert,
                key: id(),
                vals: start..set.len(),
            }
        }
        "POSITION_UPDATED" => {
            push(set, 2, d.entry_price);
            push(set, 3, d.quantity);
            push(set, 7, d.unrealized_pnl);
            push(set, 9, d.current_price);
            OpAt {
                table: Positions,
                kind: Update,
                key: id(),
                vals: start..set.len(),
            }
        }
        "POSITION_CLOSED" => {
            set.push((4, st("closed")));
            set.push((7, SqlVal::Int(0)));
            push(set, 8, d.realized_pnl);
            push(set, 10, d.exit_price);
            set.push((11, t()));
            OpAt {
                table: Positions,
                kind: Update,
                key: id(),
                vals: start..set.len(),
            }
        }
        "TIER_CHANGED" => {
            let state_value = match &d.new_tier {
                Field::Present(v) => v.clone(),
                Field::Missing => SqlVal::Null,
            };
            push(set, 0, d.old_tier);
            push(set, 1, d.new_tier);
            push(set, 2, d.reason);
            set.push((3, t()));
            let append = OpAt {
                table: TierHistory,
                kind: Append,
                key: Cow::Borrowed(""),
                vals: start..set.len(),
            };
            let mid = set.len();
            set.push((0, state_value));
            set.push((1, t()));
            let state = OpAt {
                table: SystemState,
                kind: Upsert,
                key: Cow::Borrowed("current_tier"),
                vals: mid..set.len(),
            };
            return Ok(Some((append, Some(state))));
        }
        "RISK_LIMIT_SET" => {
            let key = key_field(ev, "limit_type", d.limit_type)?;
            push(set, 0, d.limit_value);
            push(set, 1, d.tier);
            set.push((2, t()));
            OpAt {
                table: RiskLimits,
                kind: Upsert,
                key,
                vals: start..set.len(),
            }
        }
        "SYSTEM_STATE_SET" => {
            let key = key_field(ev, "key", d.key)?;
            push(set, 0, d.value);
            set.push((1, t()));
            OpAt {
                table: SystemState,
                kind: Upsert,
                key,
                vals: start..set.len(),
            }
        }
        _ => {
            // CHECKPOINT
            push(set, 0, d.state_hash);
            set.push((1, t()));
            OpAt {
                table: Checkpoints,
                kind: Insert,
                key: id(),
                vals: start..set.len(),
            }
        }
    };
    Ok(Some((op, None)))
}

/// SQL text for the writers: statements by table, kind and the set of assigned
/// columns (a bit mask over [`Table::columns`]).
pub(crate) mod sql {
    use super::{OpKind, Table};

    fn cols(table: Table, mask: u32) -> Vec<&'static str> {
        table
            .columns()
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, c)| *c)
            .collect()
    }

    /// Parameters: key first (except Append), then the masked columns in table order.
    pub fn statement(table: Table, kind: OpKind, mask: u32) -> String {
        let name = table.name();
        let key = table.key_column();
        let c = cols(table, mask);
        let marks = |n: usize| vec!["?"; n].join(", ");
        match kind {
            OpKind::Insert => {
                let mut all = vec![key];
                all.extend(&c);
                format!(
                    "INSERT INTO {name} ({}) VALUES ({})",
                    all.join(", "),
                    marks(all.len())
                )
            }
            OpKind::Append => {
                format!(
                    "INSERT INTO {name} ({}) VALUES ({})",
                    c.join(", "),
                    marks(c.len())
                )
            }
            OpKind::Update if c.is_empty() => format!("SELECT 1 FROM {name} WHERE {key} = ?1"),
            OpKind::Update => {
                let sets: Vec<String> = c
                    .iter()
                    .enumerate()
                    .map(|(i, c)| format!("{c} = ?{}", i + 2))
                    .collect();
                format!("UPDATE {name} SET {} WHERE {key} = ?1", sets.join(", "))
            }
            OpKind::Upsert => {
                let mut all = vec![key];
                all.extend(&c);
                let action = if c.is_empty() {
                    "NOTHING".to_string()
                } else {
                    let sets: Vec<String> =
                        c.iter().map(|c| format!("{c} = excluded.{c}")).collect();
                    format!("UPDATE SET {}", sets.join(", "))
                };
                format!(
                    "INSERT INTO {name} ({}) VALUES ({}) ON CONFLICT({key}) DO {action}",
                    all.join(", "),
                    marks(all.len())
                )
            }
        }
    }
}

fn sql_err(ev: &Event, op: &RowOp<'_>, e: &rusqlite::Error) -> Error {
    Error::event(
        ev,
        format!("cannot write {} {}: {e}", op.table.row_noun(), op.key),
    )
}

/// Applies one event's effect with one statement per row operation: the
/// reference writer that replay's result must equal. Returns whether the event
/// type has an effect. It does not insert the event row.
///
/// # Errors
/// [`Error::Event`] naming the event when its data cannot be read or its effect
/// cannot apply (an update of a missing row, an insert of an existing key).
pub fn apply(conn: &Connection, ev: &Event) -> Result<bool> {
    let Some(ops) = effect_of(ev)? else {
        return Ok(false);
    };
    for op in &ops {
        let mut sorted = op.set.clone();
        sorted.sort_by_key(|(c, _)| *c);
        // A column assigned twice keeps its last value.
        sorted.dedup_by(|later, earlier| {
            if later.0 == earlier.0 {
                std::mem::swap(later, earlier);
                true
            } else {
                false
            }
        });
        let mask = sorted.iter().fold(0u32, |m, (c, _)| m | (1 << c));
        let sql = sql::statement(op.table, op.kind, mask);
        let mut stmt = conn.prepare_cached(&sql).map_err(|e| sql_err(ev, op, &e))?;
        let mut params: Vec<&dyn ToSql> = Vec::with_capacity(sorted.len() + 1);
        if op.kind != OpKind::Append {
            params.push(&op.key);
        }
        params.extend(sorted.iter().map(|(_, v)| v as &dyn ToSql));
        if op.kind == OpKind::Insert {
            let exists = conn
                .prepare_cached(&sql::statement(op.table, OpKind::Update, 0))
                .and_then(|mut s| s.exists([&op.key]))
                .map_err(|e| sql_err(ev, op, &e))?;
            if exists {
                return Err(Error::event(
                    ev,
                    format!("{} {} already exists", op.table.row_noun(), op.key),
                ));
            }
        }
        let changed = if op.kind == OpKind::Update && mask == 0 {
            stmt.exists(params.as_slice()).map(usize::from)
        } else {
            stmt.execute(params.as_slice())
        }
        .map_err(|e| sql_err(ev, op, &e))?;
        if op.kind == OpKind::Update && changed == 0 {
            return Err(Error::event(
                ev,
                format!("no {} {} to update", op.table.row_noun(), op.key),
            ));
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_known_is_exactly_the_list() {
        for t in KNOWN_EVENT_TYPES {
            assert!(is_known(t), "{t}");
        }
        for t in ["", "CHECKPOINTS", "order_created", "MARGIN_CALL"] {
            assert!(!is_known(t), "{t}");
        }
    }

    fn ev(ty: &str, id: &str, data: &str) -> Event {
        Event {
            event_id: format!("e-{id}-{ty}"),
            event_type: ty.into(),
            aggregate_id: id.into(),
            event_data: data.into(),
            sequence_number: 1,
            created_at: "2025-01-15T14:30:00.000001".into(),
        }
    }

    #[test]
    fn missing_fields_are_not_assigned_and_null_is() {
        let e = ev(
            "POSITION_UPDATED",
            "p1",
            r#"{"current_price": 101.5, "quantity": null}"#,
        );
        let ops = effect_of(&e).unwrap().unwrap();
        assert_eq!(
            ops[0].set,
            vec![(3, SqlVal::Null), (9, SqlVal::Real(101.5))]
        );
    }

    #[test]
    fn unknown_types_have_no_effect_and_bad_data_names_the_event() {
        assert!(effect_of(&ev("SOMETHING_NEW", "x", "not json"))
            .unwrap()
            .is_none());
        let err = effect_of(&ev("ORDER_FILLED", "o1", "[1,2"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("event #1") && err.contains("ORDER_FILLED"),
            "{err}"
        );
        let err = effect_of(&ev("BALANCE_UPDATED", "b", "{}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`asset`"), "{err}");
    }

    #[test]
    fn reference_writer_applies_and_refuses() {
        let conn = Connection::open_in_memory().unwrap();
        crate::schema::ensure_schema(&conn).unwrap();
        let err = apply(&conn, &ev("ORDER_FILLED", "o1", "{}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no order o1"), "{err}");
        apply(
            &conn,
            &ev("ORDER_CREATED", "o1", r#"{"quantity": 2, "price": "3.5"}"#),
        )
        .unwrap();
        let err = apply(&conn, &ev("ORDER_CREATED", "o1", "{}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("already exists"), "{err}");
        let (q, p, f): (f64, f64, f64) = conn
            .query_row(
                "SELECT quantity, price, filled_quantity FROM orders",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!((q, p, f), (2.0, 3.5, 0.0));
    }
}
