//! The WAL reader: `parse_header` on the bytes, and `read_wal` (from the start
//! and from a saved capture position) and `read_wal_upto` on a `-wal` file
//! holding them. The reader works on a file (positioned reads), so the bytes
//! are written to one temporary file, reused by every run of the process.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use genesis_core::wal::{parse_header, read_wal, read_wal_upto, WalState};
use genesis_fuzz::WalInput;
use libfuzzer_sys::fuzz_target;

fn wal_file() -> &'static PathBuf {
    static FILE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = FILE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory for the fuzzed WAL");
        let path = dir.path().join("fuzz.db-wal");
        (dir, path)
    });
    path
}

fn check(state: &WalState, page_size_ok: impl Fn(u32) -> bool) {
    let read = match state {
        WalState::Empty => return,
        WalState::Continues(r) | WalState::Restarted(r) => r,
    };
    assert!(page_size_ok(read.header.page_size));
    for t in &read.txns {
        assert!(!t.pages.is_empty(), "a commit frame carries a page");
        assert!(
            t.pages.windows(2).all(|w| w[0].0 < w[1].0),
            "pages sorted, distinct"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let input = WalInput::parse(data);
    let header = parse_header(input.wal);
    let path = wal_file();
    std::fs::write(path, input.wal).expect("write the fuzzed WAL");
    let ok = |ps: u32| ps.is_power_of_two() && (512..=65536).contains(&ps);
    if let Ok(s) = read_wal(path, None) {
        assert_eq!(matches!(s, WalState::Empty), header.is_none());
        check(&s, ok);
    }
    if let Ok(s) = read_wal(path, Some(&input.from)) {
        check(&s, ok);
    }
    if let Ok(s) = read_wal_upto(path, input.upto) {
        check(&s, ok);
    }
});
