//! The capturer's saved state (`state/capture.json` and `state/pages.bin`):
//! `SavedState::load` from a repository holding the bytes, the page table
//! and checksum the capturer derives from it, and a save/load round trip.
#![no_main]

use std::sync::Arc;

use genesis_core::capture::SavedState;
use genesis_core::repo::{Backend, Repository};
use genesis_fuzz::{split_at_nul, MemBackend};
use libfuzzer_sys::{fuzz_mutator, fuzz_target};

fuzz_target!(|data: &[u8]| {
    let (json, pages) = split_at_nul(data);
    let backend = MemBackend::default();
    backend
        .put_state("state/capture.json", json)
        .expect("in-memory put");
    if let Some(pages) = pages {
        backend
            .put_state("state/pages.bin", pages)
            .expect("in-memory put");
    }
    let repo = Repository::new(Arc::new(backend));
    let Ok(Some(state)) = SavedState::load(&repo) else {
        return;
    };
    let table = state.hashes();
    assert_eq!(table.checksum(), state.checksum());
    assert_eq!(table.pages(), state.hashes.len() as u64);
    // What is saved loads back the same.
    let again = Repository::new(Arc::new(MemBackend::default()));
    state.save(&again).expect("save to memory");
    let back = SavedState::load(&again)
        .expect("load from memory")
        .expect("a saved state loads");
    assert_eq!(back.hashes, state.hashes);
    assert_eq!(back.last_txid, state.last_txid);
    assert_eq!(back.wal, state.wal);
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
