//! Integration tests of the `genesis-recovery` binary, compiled as one test
//! binary. Each test gets its own temporary directory (see `common`).
//!
//! Long soak and fault-injection runs are scaled by `GENESIS_SOAK=1`
//! (`GENESIS_SOAK=1 cargo nextest run --run-ignored all`); the default run is
//! the bounded version CI runs.

mod bench_rto;
mod capture_bad_input;
mod capture_crash;
mod capture_crash_exact;
mod capture_damage;
mod capture_full;
mod capture_hostile;
mod capture_issue11;
mod capture_matrix;
mod capture_metrics;
mod capture_spill;
mod common;
mod compaction;
mod exact_event;
mod kv_oracle;
mod pipelines_bad;
mod restore_bad_input;
mod restore_concurrency;
mod restore_crash;
mod restore_full_disk;
mod restore_gaps;
mod restore_generations;
mod restore_live_in_use;
mod restore_point_in_time;
mod restore_regressions;
mod restore_spool;
mod s3_outage;
mod s3_repo;
mod s3_requests;
mod s3_server;
mod trading_chain;
mod trading_cli;
mod user_text;
