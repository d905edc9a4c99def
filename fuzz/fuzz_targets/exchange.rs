//! Exchange files: `parse_exchange_orders` (Binance `openOrders` and CCXT
//! orders shapes), then `reconcile` against the open orders of a small
//! simulated trading database and the report serialised as `--json` prints it.
#![no_main]

use genesis_trading::reconcile::{parse_exchange_orders, reconcile, unify_symbol};
use genesis_trading::simulate::Simulator;
use genesis_trading::ReconcileOptions;
use libfuzzer_sys::{fuzz_mutator, fuzz_target};
use rusqlite::Connection;

thread_local! {
    static DB: Connection = {
        let mut conn = Connection::open_in_memory().expect("in-memory database");
        let mut sim = Simulator::open(&conn, 7).expect("simulator");
        for _ in 0..200 {
            sim.commit_one(&mut conn).expect("simulated commit");
        }
        conn
    };
}

fuzz_target!(|data: &[u8]| {
    let Ok(orders) = parse_exchange_orders(data, "fuzz.json") else {
        return;
    };
    let opts = ReconcileOptions::default();
    for o in &orders {
        let _ = unify_symbol(&o.symbol, &opts.symbol_map);
    }
    DB.with(|conn| {
        if let Ok(report) = reconcile(conn, &orders, &opts) {
            let _ = serde_json::to_string(&report);
        }
    });
});

// A quarter of the mutations set one JSON number to an edge value.
fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    if seed & 3 == 0 {
        if let Some(n) = genesis_fuzz::mutate_json_number(data, size, max_size, seed) {
            return n;
        }
    }
    libfuzzer_sys::fuzzer_mutate(data, size, max_size)
});
