//! The trading workload simulator: a stand-in for the trading system that
//! commits realistic activity, one event and its effect per transaction.
//!
//! Its writer is deliberately independent of [`crate::effects`] and
//! [`crate::replay`]: it keeps its own model of open orders, positions and
//! balances and writes rows with its own SQL, so "replay equals the original" is
//! a meaningful test. Invariants it keeps at every commit: total = free + locked,
//! no negative balance, the locked balance covers what the open orders hold back
//! (funds are locked before an order is created and released after it ends),
//! orders reference existing positions, and CHECKPOINT events carry the canonical
//! state hash.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::event::Event;

/// How to run [`simulate`].
#[derive(Debug, Clone, PartialEq)]
pub struct SimulateOptions {
    /// Commits per second; 0 means as fast as possible.
    pub rate: f64,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Stop after this many commits.
    pub max_commits: Option<u64>,
    /// Seed of the workload (with the sequence number, so resumed runs differ).
    pub seed: u64,
    /// Write a CHECKPOINT event every N commits; 0 means never.
    pub checkpoint_every: u64,
}

impl Default for SimulateOptions {
    fn default() -> Self {
        SimulateOptions {
            rate: 0.0,
            duration: None,
            max_commits: Some(1000),
            seed: 1,
            checkpoint_every: 0,
        }
    }
}

/// What a simulation did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SimulateReport {
    pub commits: u64,
    pub first_sequence: Option<i64>,
    pub last_sequence: Option<i64>,
    pub last_created_at: Option<String>,
    pub events_by_type: BTreeMap<String, u64>,
    pub elapsed_seconds: f64,
}

/// Runs the workload on the database until `stop` is set, the duration has
/// passed or `max_commits` commits are made. Creates the schema if missing, sets
/// `journal_mode=WAL`, and resumes an existing database.
///
/// # Errors
/// [`Error::Sqlite`] when the database cannot be opened or a commit fails.
pub fn simulate(db: &Path, opts: &SimulateOptions, stop: &AtomicBool) -> Result<SimulateReport> {
    let mut conn =
        Connection::open(db).map_err(Error::sqlite(format!("opening {}", db.display())))?;
    conn.busy_timeout(Duration::from_secs(30))
        .map_err(Error::sqlite("setting busy_timeout"))?;
    let _: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(Error::sqlite("setting journal_mode=WAL"))?;
    let mut sim = Simulator::open(&conn, opts.seed)?;
    sim.checkpoint_every = opts.checkpoint_every;
    let start = Instant::now();
    let mut report = SimulateReport::default();
    loop {
        if stop.load(Ordering::Relaxed)
            || opts.max_commits.is_some_and(|m| report.commits >= m)
            || opts.duration.is_some_and(|d| start.elapsed() >= d)
        {
            break;
        }
        if opts.rate > 0.0 {
            let due = Duration::from_secs_f64(report.commits as f64 / opts.rate);
            let now = start.elapsed();
            if due > now {
                std::thread::sleep((due - now).min(Duration::from_millis(200)));
                continue;
            }
        }
        let ev = sim.commit_one(&mut conn)?;
        report.commits += 1;
        report.first_sequence.get_or_insert(ev.sequence_number);
        report.last_sequence = Some(ev.sequence_number);
        *report.events_by_type.entry(ev.event_type).or_default() += 1;
        report.last_created_at = Some(ev.created_at);
    }
    report.elapsed_seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// SplitMix64: small, fast, deterministic.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    fn uuid(&mut self) -> String {
        let a = self.next();
        let b = self.next();
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | ((b >> 48) & 0x3fff),
            b & 0xffff_ffff_ffff
        )
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

const SYMBOLS: [(&str, &str, &str, f64); 3] = [
    ("BTC/USDT", "BTC", "USDT", 43_000.0),
    ("ETH/USDT", "ETH", "USDT", 2_300.0),
    ("SOL/USDT", "SOL", "USDT", 95.0),
];
const TIERS: [&str; 4] = ["SNIPER", "HUNTER", "STRATEGIST", "ARCHITECT"];

#[derive(Debug, Clone)]
struct OpenOrder {
    symbol: String,
    buy: bool,
    limit: bool,
    quantity: f64,
    price: Option<f64>,
    filled: f64,
}

#[derive(Debug, Clone)]
struct OpenPosition {
    symbol: String,
    long: bool,
    entry: f64,
    quantity: f64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Bal {
    free: f64,
    locked: f64,
}

/// One commit's write, as the simulator's own writer applies it.
#[derive(Debug, Clone)]
enum Write {
    Balance {
        asset: String,
        free: f64,
        locked: f64,
    },
    OrderCreate {
        id: String,
        client: String,
        o: OpenOrder,
        position_id: Option<String>,
    },
    OrderFill {
        id: String,
        filled: f64,
        price: f64,
        complete: bool,
    },
    OrderEnd {
        id: String,
        status: &'static str,
    },
    PositionOpen {
        id: String,
        p: OpenPosition,
        strategy: String,
    },
    PositionUpdate {
        id: String,
        price: f64,
        pnl: f64,
    },
    PositionClose {
        id: String,
        price: f64,
        pnl: f64,
    },
    Tier {
        old: Option<String>,
        new: String,
        reason: String,
    },
    Risk {
        limit_type: String,
        value: f64,
        tier: String,
    },
    State {
        key: String,
        value: String,
    },
    Checkpoint {
        id: String,
    },
}

/// Where the simulator's clock comes from.
#[derive(Debug, Clone, Copy)]
enum Clock {
    Wall,
    /// Synthetic: each commit `step` after the previous one.
    Synthetic {
        step: TimeDelta,
    },
}

/// The simulated trading system, driven one commit at a time.
#[derive(Debug)]
pub struct Simulator {
    rng: Rng,
    seq: i64,
    last_time: DateTime<Utc>,
    clock: Clock,
    orders: BTreeMap<String, OpenOrder>,
    positions: BTreeMap<String, OpenPosition>,
    balances: BTreeMap<String, Bal>,
    prices: BTreeMap<String, f64>,
    tier: Option<String>,
    pending: VecDeque<Write>,
    /// Write a CHECKPOINT every N commits (0 = never).
    pub checkpoint_every: u64,
}

impl Simulator {
    fn fresh(seed: u64, clock: Clock, start: DateTime<Utc>) -> Simulator {
        let mut sim = Simulator {
            rng: Rng(seed),
            seq: 0,
            last_time: start,
            clock,
            orders: BTreeMap::new(),
            positions: BTreeMap::new(),
            balances: BTreeMap::new(),
            prices: SYMBOLS.iter().map(|s| (s.0.to_string(), s.3)).collect(),
            tier: None,
            pending: VecDeque::new(),
            checkpoint_every: 0,
        };
        sim.bootstrap();
        sim
    }

    /// Queues what a new trading system does first: deposits, tier, limits.
    fn bootstrap(&mut self) {
        if self.balances.is_empty() {
            for (asset, amount) in [
                ("USDT", 250_000.0),
                ("BTC", 2.0),
                ("ETH", 40.0),
                ("SOL", 600.0),
            ] {
                self.balances.insert(
                    asset.to_string(),
                    Bal {
                        free: amount,
                        locked: 0.0,
                    },
                );
                self.pending.push_back(Write::Balance {
                    asset: asset.into(),
                    free: amount,
                    locked: 0.0,
                });
            }
        }
        if self.tier.is_none() {
            self.tier = Some(TIERS[0].to_string());
            self.pending.push_back(Write::Tier {
                old: None,
                new: TIERS[0].into(),
                reason: "initial".into(),
            });
            for (t, v) in [("max_position_size", 10_000.0), ("daily_loss_limit", 500.0)] {
                self.pending.push_back(Write::Risk {
                    limit_type: t.into(),
                    value: v,
                    tier: TIERS[0].into(),
                });
            }
        }
    }

    /// Opens the simulator on a database: creates the schema if missing and loads
    /// the state (sequence, last time, open orders and positions, balances, tier) to
    /// resume from.
    ///
    /// # Errors
    /// [`Error::Sqlite`] when the database cannot be read.
    pub fn open(conn: &Connection, seed: u64) -> Result<Simulator> {
        crate::schema::ensure_schema(conn)?;
        let e = |what: &str| Error::sqlite(format!("loading the simulator's state: {what}"));
        let last: Option<(i64, String)> = conn
            .query_row(
                "SELECT sequence_number, created_at FROM events ORDER BY sequence_number DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(e("last event"))?;
        let (seq, last_time) = match &last {
            Some((s, t)) => (*s, crate::time::parse_opt(t).unwrap_or_else(Utc::now)),
            None => (0, Utc::now()),
        };
        let mut sim = Simulator {
            rng: Rng(seed ^ (seq as u64).wrapping_mul(0x2545_F491_4F6C_DD1D)),
            seq,
            last_time,
            clock: Clock::Wall,
            orders: BTreeMap::new(),
            positions: BTreeMap::new(),
            balances: BTreeMap::new(),
            prices: SYMBOLS.iter().map(|s| (s.0.to_string(), s.3)).collect(),
            tier: None,
            pending: VecDeque::new(),
            checkpoint_every: 0,
        };
        let mut stmt = conn
            .prepare(
                "SELECT order_id, symbol, side, order_type, quantity, price, filled_quantity FROM orders \
                 WHERE status IN ('new', 'partially_filled') ORDER BY order_id",
            )
            .map_err(e("orders"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    OpenOrder {
                        symbol: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                        buy: r.get::<_, Option<String>>(2)?.as_deref() == Some("buy"),
                        limit: r.get::<_, Option<String>>(3)?.as_deref() != Some("market"),
                        quantity: r.get::<_, Option<f64>>(4)?.unwrap_or(0.0),
                        price: r.get(5)?,
                        filled: r.get::<_, Option<f64>>(6)?.unwrap_or(0.0),
                    },
                ))
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(e("orders"))?;
        // Orders of symbols the simulator does not trade are left alone.
        sim.orders = rows
            .into_iter()
            .filter(|(_, o)| sim.prices.contains_key(&o.symbol))
            .collect();
        let mut stmt = conn
            .prepare(
                "SELECT position_id, symbol, side, entry_price, quantity, current_price FROM positions \
                 WHERE status = 'open' ORDER BY position_id",
            )
            .map_err(e("positions"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    OpenPosition {
                        symbol: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                        long: r.get::<_, Option<String>>(2)?.as_deref() != Some("short"),
                        entry: r.get::<_, Option<f64>>(3)?.unwrap_or(0.0),
                        quantity: r.get::<_, Option<f64>>(4)?.unwrap_or(0.0),
                    },
                    r.get::<_, Option<f64>>(5)?,
                ))
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(e("positions"))?;
        for (id, p, price) in rows {
            if let (Some(price), Some(slot)) = (price, sim.prices.get_mut(&p.symbol)) {
                *slot = price;
            }
            if sim.prices.contains_key(&p.symbol) {
                sim.positions.insert(id, p);
            }
        }
        let mut stmt = conn
            .prepare("SELECT asset, free_balance, locked_balance FROM balances ORDER BY asset")
            .map_err(e("balances"))?;
        sim.balances = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Bal {
                        free: r.get::<_, Option<f64>>(1)?.unwrap_or(0.0),
                        locked: r.get::<_, Option<f64>>(2)?.unwrap_or(0.0),
                    },
                ))
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<BTreeMap<_, _>>>())
            .map_err(e("balances"))?;
        sim.tier = conn
            .query_row(
                "SELECT value FROM system_state WHERE key = 'current_tier'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(e("tier"))?;
        sim.bootstrap();
        Ok(sim)
    }

    /// Makes one commit: one event row and its effect, in one transaction.
    ///
    /// # Errors
    /// [`Error::Sqlite`] when the commit fails; the simulator should then be reopened.
    pub fn commit_one(&mut self, conn: &mut Connection) -> Result<Event> {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(Error::sqlite("beginning a simulated commit"))?;
        let checkpoint = self.checkpoint_every > 0
            && (self.seq as u64 + 1).is_multiple_of(self.checkpoint_every);
        let (ev, write) = if checkpoint {
            let hash = crate::statehash::state_hash(&tx)?;
            let id = format!("ckpt-{:010}", self.seq + 1);
            let data = json!({ "state_hash": hash });
            (
                self.event("CHECKPOINT", &id, &data),
                Write::Checkpoint { id },
            )
        } else {
            self.next_event()
        };
        write_commit(&tx, &ev, &write).map_err(Error::sqlite(format!(
            "writing simulated event #{} ({})",
            ev.sequence_number, ev.event_type
        )))?;
        tx.commit()
            .map_err(Error::sqlite("committing a simulated event"))?;
        Ok(ev)
    }

    fn now(&mut self) -> DateTime<Utc> {
        let t = match self.clock {
            Clock::Wall => Utc::now().max(self.last_time),
            Clock::Synthetic { step } => self.last_time + step,
        };
        self.last_time = t;
        t
    }

    fn event(&mut self, ty: &str, aggregate: &str, data: &Value) -> Event {
        self.seq += 1;
        let t = self.now();
        Event {
            event_id: self.rng.uuid(),
            event_type: ty.to_string(),
            aggregate_id: aggregate.to_string(),
            event_data: data.to_string(),
            sequence_number: self.seq,
            created_at: crate::time::format(t),
        }
    }

    /// The next event of the workload and the model's write for it.
    fn next_event(&mut self) -> (Event, Write) {
        if self.pending.is_empty() {
            self.plan();
        }
        let w = self.pending.pop_front().unwrap_or(Write::State {
            key: "heartbeat".into(),
            value: "ok".into(),
        });
        let (ty, agg, data) = describe(&w);
        let ev = self.event(ty, &agg, &data);
        (ev, w)
    }

    fn bal(&mut self, asset: &str) -> &mut Bal {
        self.balances.entry(asset.to_string()).or_default()
    }

    fn balance_write(&mut self, asset: &str) -> Write {
        let b = *self.bal(asset);
        Write::Balance {
            asset: asset.to_string(),
            free: b.free,
            locked: b.locked,
        }
    }

    fn assets(symbol: &str) -> (&'static str, &'static str) {
        SYMBOLS
            .iter()
            .find(|s| s.0 == symbol)
            .map(|s| (s.1, s.2))
            .unwrap_or(("BTC", "USDT"))
    }

    /// Chooses the next action and queues its commits, updating the model.
    fn plan(&mut self) {
        // Prices drift.
        for p in self.prices.values_mut() {
            *p = round(*p * (1.0 + (self.rng.unit() - 0.5) * 0.002), 2).max(0.01);
        }
        let r = self.rng.unit();
        let open = self.orders.len();
        let create_p = if open < 40 { 0.30 } else { 0.05 };
        if r < create_p {
            self.plan_create();
        } else if r < create_p + 0.25 && open > 0 {
            self.plan_fill();
        } else if r < create_p + 0.35 && open > 0 {
            let status = if self.rng.chance(0.85) {
                "cancelled"
            } else {
                "expired"
            };
            self.plan_end(status);
        } else if r < 0.70 {
            self.plan_position();
        } else if r < 0.74 {
            let old = self.tier.clone();
            let new = TIERS[self.rng.below(TIERS.len())].to_string();
            self.tier = Some(new.clone());
            self.pending.push_back(Write::Tier {
                old,
                new,
                reason: "capital threshold".into(),
            });
        } else if r < 0.80 {
            let tier = self.tier.clone().unwrap_or_default();
            let (lt, v) = if self.rng.chance(0.5) {
                (
                    "max_position_size",
                    round(5_000.0 + self.rng.unit() * 20_000.0, 0),
                )
            } else {
                (
                    "daily_loss_limit",
                    round(100.0 + self.rng.unit() * 900.0, 0),
                )
            };
            self.pending.push_back(Write::Risk {
                limit_type: lt.into(),
                value: v,
                tier,
            });
        } else {
            let key = ["heartbeat", "market_state", "strategy_mode"][self.rng.below(3)];
            let value = match key {
                "heartbeat" => crate::time::format(self.last_time),
                "market_state" => ["NORMAL", "VOLATILE", "QUIET"][self.rng.below(3)].into(),
                _ => ["momentum", "mean_reversion"][self.rng.below(2)].into(),
            };
            self.pending.push_back(Write::State {
                key: key.into(),
                value,
            });
        }
    }

    fn plan_create(&mut self) {
        let (symbol, base, quote, _) = SYMBOLS[self.rng.below(SYMBOLS.len())];
        let price_now = self.prices.get(symbol).copied().unwrap_or(1.0);
        let buy = self.rng.chance(0.5);
        let limit = self.rng.chance(0.85);
        let price = round(price_now * (1.0 + (self.rng.unit() - 0.5) * 0.01), 2);
        let budget = self.bal(quote).free * 0.02;
        let quantity = if buy {
            round(budget / price * self.rng.unit(), 4)
        } else {
            round(self.bal(base).free * 0.05 * self.rng.unit(), 4)
        };
        if quantity <= 0.0 {
            return;
        }
        let id = self.rng.uuid();
        let client = format!("genesis-{:016x}", self.rng.next());
        let position_id = if self.rng.chance(0.3) && !self.positions.is_empty() {
            let k = self.rng.below(self.positions.len());
            self.positions.keys().nth(k).cloned()
        } else {
            None
        };
        let o = OpenOrder {
            symbol: symbol.into(),
            buy,
            limit,
            quantity,
            price: limit.then_some(price),
            filled: 0.0,
        };
        if limit {
            // Lock first so that the locked balance always covers the open orders.
            let (asset, amount) = if buy {
                (quote, quantity * price)
            } else {
                (base, quantity)
            };
            let b = self.bal(asset);
            b.free = (b.free - amount).max(0.0);
            b.locked += amount;
            let w = self.balance_write(asset);
            self.pending.push_back(w);
        }
        self.pending.push_back(Write::OrderCreate {
            id: id.clone(),
            client,
            o: o.clone(),
            position_id,
        });
        if limit && self.rng.chance(0.04) {
            self.orders.insert(id.clone(), o);
            self.plan_end_of(&id, "rejected");
        } else if !limit {
            self.orders.insert(id.clone(), o);
            self.plan_fill_of(&id, true, price);
        } else {
            self.orders.insert(id, o);
        }
    }

    fn pick_order(&mut self) -> Option<String> {
        let k = self.rng.below(self.orders.len());
        self.orders.keys().nth(k).cloned()
    }

    fn plan_fill(&mut self) {
        if let Some(id) = self.pick_order() {
            let complete = self.rng.chance(0.5);
            let px = self.orders.get(&id).and_then(|o| o.price).unwrap_or(1.0);
            self.plan_fill_of(&id, complete, px);
        }
    }

    fn plan_fill_of(&mut self, id: &str, complete: bool, market_price: f64) {
        let Some(o) = self.orders.get(id).cloned() else {
            return;
        };
        let remaining = o.quantity - o.filled;
        let dq = if complete {
            remaining
        } else {
            round(remaining * (0.1 + 0.5 * self.rng.unit()), 4)
        };
        if dq <= 0.0 {
            return;
        }
        let filled = if complete { o.quantity } else { o.filled + dq };
        let exec = o.price.unwrap_or(market_price);
        self.pending.push_back(Write::OrderFill {
            id: id.to_string(),
            filled,
            price: exec,
            complete,
        });
        let (base, quote) = Self::assets(&o.symbol);
        if o.buy {
            let cost = dq * exec;
            let q = self.bal(quote);
            if o.limit {
                q.locked = (q.locked - cost).max(0.0);
            } else {
                q.free = (q.free - cost).max(0.0);
            }
            self.bal(base).free += dq;
        } else {
            let b = self.bal(base);
            if o.limit {
                b.locked = (b.locked - dq).max(0.0);
            } else {
                b.free = (b.free - dq).max(0.0);
            }
            self.bal(quote).free += dq * exec;
        }
        let wq = self.balance_write(quote);
        let wb = self.balance_write(base);
        self.pending.push_back(wq);
        self.pending.push_back(wb);
        if complete {
            self.orders.remove(id);
        } else if let Some(m) = self.orders.get_mut(id) {
            m.filled = filled;
        }
    }

    fn plan_end(&mut self, status: &'static str) {
        if let Some(id) = self.pick_order() {
            self.plan_end_of(&id, status);
        }
    }

    fn plan_end_of(&mut self, id: &str, status: &'static str) {
        let Some(o) = self.orders.remove(id) else {
            return;
        };
        self.pending.push_back(Write::OrderEnd {
            id: id.to_string(),
            status,
        });
        if let (true, Some(price)) = (o.limit, o.price) {
            let (base, quote) = Self::assets(&o.symbol);
            let (asset, amount) = if o.buy {
                (quote, (o.quantity - o.filled) * price)
            } else {
                (base, o.quantity - o.filled)
            };
            let b = self.bal(asset);
            let release = amount.min(b.locked);
            b.locked -= release;
            b.free += release;
            let w = self.balance_write(asset);
            self.pending.push_back(w);
        }
    }

    fn plan_position(&mut self) {
        let r = self.rng.unit();
        if self.positions.len() < 3 || (r < 0.3 && self.positions.len() < 20) {
            let (symbol, ..) = SYMBOLS[self.rng.below(SYMBOLS.len())];
            let entry = self.prices.get(symbol).copied().unwrap_or(1.0);
            let p = OpenPosition {
                symbol: symbol.into(),
                long: self.rng.chance(0.6),
                entry,
                quantity: round(0.01 + self.rng.unit() * 2.0, 4),
            };
            let id = self.rng.uuid();
            let strategy =
                ["momentum_v2", "mean_reversion", "breakout"][self.rng.below(3)].to_string();
            self.positions.insert(id.clone(), p.clone());
            self.pending
                .push_back(Write::PositionOpen { id, p, strategy });
            return;
        }
        let k = self.rng.below(self.positions.len());
        let Some(id) = self.positions.keys().nth(k).cloned() else {
            return;
        };
        let Some(p) = self.positions.get(&id).cloned() else {
            return;
        };
        let price = self.prices.get(&p.symbol).copied().unwrap_or(p.entry);
        let pnl = round(
            (price - p.entry) * p.quantity * if p.long { 1.0 } else { -1.0 },
            6,
        );
        if r < 0.85 {
            self.pending
                .push_back(Write::PositionUpdate { id, price, pnl });
        } else {
            self.positions.remove(&id);
            self.pending
                .push_back(Write::PositionClose { id, price, pnl });
        }
    }
}

/// The event type, aggregate id and data of a write.
fn describe(w: &Write) -> (&'static str, String, Value) {
    match w {
        Write::Balance {
            asset,
            free,
            locked,
        } => (
            "BALANCE_UPDATED",
            format!("balance-{asset}"),
            json!({"asset": asset, "free_balance": free, "locked_balance": locked, "total_balance": free + locked}),
        ),
        Write::OrderCreate {
            id,
            client,
            o,
            position_id,
        } => {
            let mut d = json!({
                "client_order_id": client, "symbol": o.symbol,
                "side": if o.buy { "buy" } else { "sell" },
                "order_type": if o.limit { "limit" } else { "market" },
                "quantity": o.quantity, "price": o.price,
            });
            if let (Some(p), Some(m)) = (position_id, d.as_object_mut()) {
                m.insert("position_id".into(), json!(p));
            }
            ("ORDER_CREATED", id.clone(), d)
        }
        Write::OrderFill {
            id,
            filled,
            price,
            complete,
        } => (
            if *complete {
                "ORDER_FILLED"
            } else {
                "ORDER_PARTIALLY_FILLED"
            },
            id.clone(),
            json!({"filled_quantity": filled, "executed_price": price}),
        ),
        Write::OrderEnd { id, status } => (
            match *status {
                "cancelled" => "ORDER_CANCELLED",
                "rejected" => "ORDER_REJECTED",
                _ => "ORDER_EXPIRED",
            },
            id.clone(),
            json!({"reason": status}),
        ),
        Write::PositionOpen { id, p, strategy } => (
            "POSITION_OPENED",
            id.clone(),
            json!({"symbol": p.symbol, "side": if p.long { "long" } else { "short" },
                   "entry_price": p.entry, "quantity": p.quantity, "strategy_id": strategy}),
        ),
        Write::PositionUpdate { id, price, pnl } => (
            "POSITION_UPDATED",
            id.clone(),
            json!({"current_price": price, "unrealized_pnl": pnl}),
        ),
        Write::PositionClose { id, price, pnl } => (
            "POSITION_CLOSED",
            id.clone(),
            json!({"exit_price": price, "realized_pnl": pnl}),
        ),
        Write::Tier { old, new, reason } => (
            "TIER_CHANGED",
            "tier".into(),
            json!({"old_tier": old, "new_tier": new, "reason": reason}),
        ),
        Write::Risk {
            limit_type,
            value,
            tier,
        } => (
            "RISK_LIMIT_SET",
            format!("risk-{limit_type}"),
            json!({"limit_type": limit_type, "limit_value": value, "tier": tier}),
        ),
        Write::State { key, value } => (
            "SYSTEM_STATE_SET",
            format!("state-{key}"),
            json!({"key": key, "value": value}),
        ),
        Write::Checkpoint { id } => ("CHECKPOINT", id.clone(), json!({})),
    }
}

/// The simulator's own writer: the event row, then the effect, with its own SQL.
fn write_commit(tx: &Connection, ev: &Event, w: &Write) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO events (event_id, event_type, aggregate_id, event_data, sequence_number, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![ev.event_id, ev.event_type, ev.aggregate_id, ev.event_data, ev.sequence_number, ev.created_at])?;
    let t = ev.created_at.as_str();
    let n = match w {
        Write::Balance { asset, free, locked } => tx
            .prepare_cached(
                "INSERT INTO balances VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(asset) DO UPDATE SET \
                 free_balance = ?2, locked_balance = ?3, total_balance = ?4, updated_at = ?5",
            )?
            .execute(params![asset, free, locked, free + locked, t])?,
        Write::OrderCreate { id, client, o, position_id } => tx
            .prepare_cached(
                "INSERT INTO orders VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'new', ?8, 0.0, NULL, NULL, NULL, ?9)",
            )?
            .execute(params![
                id,
                client,
                o.symbol,
                if o.buy { "buy" } else { "sell" },
                if o.limit { "limit" } else { "market" },
                o.quantity,
                o.price,
                t,
                position_id
            ])?,
        Write::OrderFill { id, filled, price, complete: true } => tx
            .prepare_cached(
                "UPDATE orders SET status = 'filled', filled_quantity = ?2, executed_price = ?3, filled_at = ?4 \
                 WHERE order_id = ?1",
            )?
            .execute(params![id, filled, price, t])?,
        Write::OrderFill { id, filled, price, complete: false } => tx
            .prepare_cached(
                "UPDATE orders SET status = 'partially_filled', filled_quantity = ?2, executed_price = ?3 \
                 WHERE order_id = ?1",
            )?
            .execute(params![id, filled, price])?,
        Write::OrderEnd { id, status: "cancelled" } => tx
            .prepare_cached("UPDATE orders SET status = 'cancelled', cancelled_at = ?2 WHERE order_id = ?1")?
            .execute(params![id, t])?,
        Write::OrderEnd { id, status } => tx
            .prepare_cached("UPDATE orders SET status = ?2 WHERE order_id = ?1")?
            .execute(params![id, status])?,
        Write::PositionOpen { id, p, strategy } => tx
            .prepare_cached(
                "INSERT INTO positions (position_id, symbol, side, entry_price, quantity, status, opened_at, \
                 strategy_id, unrealized_pnl, realized_pnl) VALUES (?1, ?2, ?3, ?4, ?5, 'open', ?6, ?7, 0.0, 0.0)",
            )?
            .execute(params![id, p.symbol, if p.long { "long" } else { "short" }, p.entry, p.quantity, t, strategy])?,
        Write::PositionUpdate { id, price, pnl } => tx
            .prepare_cached("UPDATE positions SET current_price = ?2, unrealized_pnl = ?3 WHERE position_id = ?1")?
            .execute(params![id, price, pnl])?,
        Write::PositionClose { id, price, pnl } => tx
            .prepare_cached(
                "UPDATE positions SET status = 'closed', exit_price = ?2, realized_pnl = ?3, unrealized_pnl = 0.0, \
                 closed_at = ?4 WHERE position_id = ?1",
            )?
            .execute(params![id, price, pnl, t])?,
        Write::Tier { old, new, reason } => {
            tx.prepare_cached("INSERT INTO tier_history (old_tier, new_tier, reason, changed_at) VALUES (?1, ?2, ?3, ?4)")?
                .execute(params![old, new, reason, t])?;
            tx.prepare_cached(
                "INSERT INTO system_state VALUES ('current_tier', ?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?1, updated_at = ?2",
            )?
            .execute(params![new, t])?
        }
        Write::Risk { limit_type, value, tier } => tx
            .prepare_cached(
                "INSERT INTO risk_limits VALUES (?1, ?2, ?3, ?4) ON CONFLICT(limit_type) DO UPDATE SET \
                 limit_value = ?2, tier = ?3, updated_at = ?4",
            )?
            .execute(params![limit_type, value, tier, t])?,
        Write::State { key, value } => tx
            .prepare_cached(
                "INSERT INTO system_state VALUES (?1, ?2, ?3) ON CONFLICT(key) DO UPDATE SET value = ?2, updated_at = ?3",
            )?
            .execute(params![key, value, t])?,
        Write::Checkpoint { id } => {
            let data: Value = serde_json::from_str(&ev.event_data).unwrap_or(Value::Null);
            tx.prepare_cached("INSERT INTO checkpoints VALUES (?1, ?2, ?3)")?
                .execute(params![id, data.get("state_hash").and_then(Value::as_str), t])?
        }
    };
    if n == 0 {
        return Err(rusqlite::Error::QueryReturnedNoRows);
    }
    Ok(())
}

/// A valid random event sequence (sequence numbers 1..=n, synthetic times one
/// millisecond apart from 2025-01-15T00:00:00), without CHECKPOINT events.
pub fn random_events(seed: u64, n: usize) -> Vec<Event> {
    synthetic_events(seed).take(n).collect()
}

/// The endless stream of [`random_events`], one event at a time (a large
/// database is generated from it without holding its events in memory).
pub fn synthetic_events(seed: u64) -> impl Iterator<Item = Event> {
    let mut sim = synthetic(seed);
    std::iter::from_fn(move || Some(sim.next_event().0))
}

/// Like [`Simulator::open`] on a fresh in-memory model with the synthetic clock of
/// [`random_events`]: for tests that want the writer path on the same stream.
pub fn synthetic(seed: u64) -> Simulator {
    let start = DateTime::parse_from_rfc3339("2025-01-15T00:00:00Z")
        .map(|d| d.with_timezone(&Utc))
        .unwrap_or_else(|_| Utc::now());
    Simulator::fresh(
        seed,
        Clock::Synthetic {
            step: TimeDelta::milliseconds(1),
        },
        start,
    )
}

/// The exchange-side integer id of an order (Binance `orderId`), derived from its id.
pub fn exchange_order_id(order_id: &str) -> u64 {
    let h = blake3::hash(order_id.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(b) & ((1 << 53) - 1)
}

/// The simulated exchange's open orders (the database's `new` and
/// `partially_filled` orders) as a Binance `GET /api/v3/openOrders` array. With a
/// seed, plants three discrepancies when there are at least two orders: one
/// order missing, one extra order, one quantity off.
///
/// # Errors
/// [`Error::Sqlite`] when the orders cannot be read.
pub fn exchange_open_orders_binance(
    conn: &Connection,
    plant_discrepancies: Option<u64>,
) -> Result<Value> {
    let mut stmt = conn
        .prepare(
            "SELECT order_id, client_order_id, symbol, side, order_type, quantity, price, status, created_at, \
             filled_quantity FROM orders WHERE status IN ('new', 'partially_filled') ORDER BY order_id",
        )
        .map_err(Error::sqlite("reading open orders"))?;
    let mut out: Vec<Value> = stmt
        .query_map([], |r| {
            let id: String = r.get(0)?;
            let created: Option<String> = r.get(8)?;
            let ms = created
                .as_deref()
                .and_then(crate::time::parse_opt)
                .map(|t| t.timestamp_millis())
                .unwrap_or(0);
            Ok(json!({
                "symbol": r.get::<_, Option<String>>(2)?.unwrap_or_default().replace('/', ""),
                "orderId": exchange_order_id(&id),
                "orderListId": -1,
                "clientOrderId": r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                "price": format!("{:.8}", r.get::<_, Option<f64>>(6)?.unwrap_or(0.0)),
                "origQty": format!("{:.8}", r.get::<_, Option<f64>>(5)?.unwrap_or(0.0)),
                "executedQty": format!("{:.8}", r.get::<_, Option<f64>>(9)?.unwrap_or(0.0)),
                "status": if r.get::<_, Option<String>>(7)?.as_deref() == Some("partially_filled") { "PARTIALLY_FILLED" } else { "NEW" },
                "timeInForce": "GTC",
                "type": r.get::<_, Option<String>>(4)?.unwrap_or_default().to_uppercase(),
                "side": r.get::<_, Option<String>>(3)?.unwrap_or_default().to_uppercase(),
                "time": ms,
                "updateTime": ms,
                "isWorking": true,
            }))
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(Error::sqlite("reading open orders"))?;
    if let Some(seed) = plant_discrepancies {
        if out.len() >= 2 {
            let mut rng = Rng(seed);
            let missing = rng.below(out.len());
            out.remove(missing);
            let off = rng.below(out.len());
            if let Some(o) = out.get_mut(off) {
                let q: f64 = o["origQty"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0.0);
                o["origQty"] = json!(format!("{:.8}", q * 1.5 + 0.001));
            }
            let extra = format!("planted-{:x}", rng.next());
            out.push(json!({
                "symbol": "BTCUSDT", "orderId": exchange_order_id(&extra), "orderListId": -1,
                "clientOrderId": extra, "price": "42000.00000000", "origQty": "0.01000000",
                "executedQty": "0.00000000", "status": "NEW", "timeInForce": "GTC", "type": "LIMIT",
                "side": "BUY", "time": 0, "updateTime": 0, "isWorking": true,
            }));
        }
    }
    Ok(Value::Array(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulate_commits_resumes_and_keeps_sequences() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("genesis.db");
        let stop = AtomicBool::new(false);
        let opts = SimulateOptions {
            max_commits: Some(300),
            checkpoint_every: 50,
            ..Default::default()
        };
        let r = simulate(&db, &opts, &stop).unwrap();
        assert_eq!((r.first_sequence, r.last_sequence), (Some(1), Some(300)));
        let r2 = simulate(&db, &SimulateOptions { seed: 2, ..opts }, &stop).unwrap();
        assert_eq!(
            (r2.first_sequence, r2.last_sequence),
            (Some(301), Some(600))
        );
        let conn = Connection::open(&db).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let ck: i64 = conn
            .query_row("SELECT count(*) FROM checkpoints", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ck, 12);
    }

    #[test]
    fn random_events_are_deterministic_and_numbered() {
        let a = random_events(7, 500);
        assert_eq!(a, random_events(7, 500));
        assert!(a
            .iter()
            .enumerate()
            .all(|(i, e)| e.sequence_number == i as i64 + 1));
        let types: std::collections::BTreeSet<_> =
            a.iter().map(|e| e.event_type.as_str()).collect();
        for t in [
            "ORDER_CREATED",
            "ORDER_FILLED",
            "ORDER_PARTIALLY_FILLED",
            "ORDER_CANCELLED",
            "POSITION_OPENED",
            "POSITION_UPDATED",
            "BALANCE_UPDATED",
        ] {
            assert!(types.contains(t), "{t} missing from {types:?}");
        }
    }
}
