//! Segment content (`GRSEG001`): `decode_segment`, then what a restore reads
//! of each transaction (times, page sizes, page numbers) and the database
//! checksum it keeps while applying the pages.
#![no_main]

use genesis_core::checksum::PageHashes;
use genesis_core::repo::formats::decode_segment;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((page_size, txns)) = decode_segment("fuzz", data) else {
        return;
    };
    let mut hashes = PageHashes::new(page_size as usize);
    for t in &txns {
        let _ = t.commit_time.timestamp_micros();
        for (pgno, bytes) in &t.pages {
            assert_eq!(bytes.len(), page_size as usize);
            // The checksum follows the pages a small database holds; a page
            // number far out is the rebuild's business (it checks db_pages).
            if *pgno <= 4096 {
                hashes.set(*pgno, bytes);
            }
        }
        if t.db_pages <= 4096 {
            hashes.resize(t.db_pages);
        }
    }
    let _ = hashes.checksum();
});
