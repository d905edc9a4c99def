//! A restore that is never silently wrong (issue 12): for each kind of loss
//! (a segment's object only, object and manifest, an event object, a flipped
//! bit, an unreadable manifest at the head, in the middle and at the tail),
//! restores before, inside and after the gap are exact where the event
//! archive allows (exit 0, `fallback` saying what was lost and the point
//! used), and say the truth where it does not (`data_loss`, a true
//! `rpo_gap_seconds`, exit 5), never a silently older state. Every expected
//! state is the one the test read from the live database through SQLite
//! after that event; every restored database passes `integrity_check`.

use genesis_core::repo::ObjectKind;

use crate::common::soak;
use crate::trading_chain::{assert_state, trading_chain, ChainSpec, TradingChain};

const EXIT_DATA_LOSS: i32 = 5;

/// The middle event committed during capture step `step` (1-based index).
fn event_inside(c: &TradingChain, step: usize) -> usize {
    let (_, before) = c.steps[step - 1];
    let (_, after) = c.steps[step];
    before + (after - before) / 2
}

/// A restore that fell back and bridged the gap with the archive: exit 0,
/// the state exact, the fallback named, no data loss.
fn assert_bridged(c: &TradingChain, name: &str, args: &[&str], expected: &str, lost: &str) {
    let (code, v, out) = c.restore(name, args);
    assert_eq!(code, 0, "{name}: {v}");
    assert_state(&out, expected, name, &v);
    let fb = &v["fallback"];
    assert!(
        fb["gap"].as_str().is_some_and(|g| g.contains(lost)),
        "{name}: the fallback does not name {lost}: {v}"
    );
    assert_eq!(fb["archive_reaches_target"], true, "{name}: {v}");
    assert!(fb["point_used"]["txid"].as_u64().is_some(), "{name}: {v}");
    assert_eq!(v["data_loss"], false, "{name}: {v}");
    assert_eq!(v["rpo_gap_seconds"].as_f64(), Some(0.0), "{name}: {v}");
    assert_eq!(fb["events_replayed"], v["events_replayed"], "{name}: {v}");
}

/// A restore that needs no fallback: exit 0, exact, `fallback: null`.
fn assert_plain(c: &TradingChain, name: &str, args: &[&str], expected: &str) {
    let (code, v, out) = c.restore(name, args);
    assert_eq!(code, 0, "{name}: {v}");
    assert_state(&out, expected, name, &v);
    assert!(v["fallback"].is_null(), "{name}: {v}");
}

/// `--strict` refuses, naming what is lost.
fn assert_strict_refuses(c: &TradingChain, name: &str, lost: &str) {
    let (code, v, out) = c.restore(name, &["--latest", "--strict"]);
    assert_eq!(code, 1, "{name}: {v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains(lost) && msg.contains("strict"), "{name}: {v}");
    assert!(!out.exists(), "{name}: --output written under --strict");
}

fn small_chain() -> TradingChain {
    trading_chain(&ChainSpec::default())
}

#[test]
fn regression_1_a_lost_segment_object_whose_manifest_remains_falls_back() {
    let c = small_chain();
    let seg = c.segment_of_step(3);
    std::fs::remove_file(c.env.repo().join(seg.object_key())).unwrap();
    let txid = |s: usize| c.steps[s].0.to_string();
    // Before the gap: untouched by it.
    assert_plain(&c, "before", &["--txid", &txid(2)], c.state_at_step(2));
    let k = event_inside(&c, 2);
    assert_plain(
        &c,
        "before-time",
        &["--timestamp", &c.event_time(k)],
        c.state_after(k),
    );
    // Inside the gap: a time inside the lost segment, its txid itself.
    // A time between the point before the gap and the lost segment's
    // commits needs nothing from it.
    let k = event_inside(&c, 3);
    assert_plain(
        &c,
        "between",
        &["--timestamp", &c.event_time(k)],
        c.state_after(k),
    );
    // Inside the gap: the lost segment's own commit time.
    let at = genesis_core::time::format_exact(seg.time_max);
    assert_bridged(
        &c,
        "inside",
        &["--timestamp", &at],
        c.state_at_step(3),
        &seg.id,
    );
    assert_bridged(
        &c,
        "inside-txid",
        &["--txid", &txid(3)],
        c.state_at_step(3),
        &seg.id,
    );
    // After it.
    let k = event_inside(&c, 6);
    assert_bridged(
        &c,
        "after",
        &["--timestamp", &c.event_time(k)],
        c.state_after(k),
        &seg.id,
    );
    assert_bridged(&c, "latest", &["--latest"], &c.last_state, &seg.id);
    assert_strict_refuses(&c, "strict", &seg.id);
}

#[test]
fn regression_2_a_lost_segment_and_manifest_replay_the_archive_and_report_the_true_rpo() {
    let c = small_chain();
    let seg = c.segment_of_step(3);
    std::fs::remove_file(c.env.repo().join(seg.object_key())).unwrap();
    std::fs::remove_file(c.env.repo().join(format!("manifests/{}.json", seg.id))).unwrap();
    let range = format!("{}..{}", seg.txid_min, seg.txid_max);
    assert_plain(
        &c,
        "before",
        &["--txid", &c.steps[2].0.to_string()],
        c.state_at_step(2),
    );
    let k = event_inside(&c, 3);
    assert_bridged(
        &c,
        "inside",
        &["--timestamp", &c.event_time(k)],
        c.state_after(k),
        &range,
    );
    let k = event_inside(&c, 5);
    assert_bridged(
        &c,
        "after",
        &["--timestamp", &c.event_time(k)],
        c.state_after(k),
        &range,
    );
    let (code, v, out) = c.restore("latest", &["--latest"]);
    assert_eq!(code, 0, "{v}");
    assert_state(&out, &c.last_state, "latest", &v);
    // The premise: it fell back across the gap and replayed events over it.
    let used = v["fallback"]["point_used"]["txid"].as_u64().unwrap();
    assert_eq!(used, seg.txid_min - 1, "{v}");
    let replayed = v["events_replayed"].as_u64().unwrap();
    assert_eq!(
        replayed as usize,
        c.steps.last().unwrap().1 - c.steps[2].1,
        "{v}"
    );
    assert_strict_refuses(&c, "strict", &range);

    // Without the event archive after the gap, the loss is said: the state
    // is the last point reached (never a silently older one), the RPO gap
    // is the target minus that point, and the exit code is 5.
    for e in c.manifests(ObjectKind::Events) {
        if e.txid_max >= seg.txid_min {
            std::fs::remove_file(c.env.repo().join(format!("manifests/{}.json", e.id))).unwrap();
            std::fs::remove_file(c.env.repo().join(e.object_key())).unwrap();
        }
    }
    let k = event_inside(&c, 5);
    let (code, v, out) = c.restore("lossy", &["--timestamp", &c.event_time(k)]);
    assert_eq!(code, EXIT_DATA_LOSS, "{v}");
    assert_eq!(v["data_loss"], true, "{v}");
    assert_state(&out, c.state_at_step(2), "lossy", &v);
    let point = genesis_core::time::parse_timestamp(v["restore_point_timestamp"].as_str().unwrap())
        .unwrap();
    let target = genesis_core::time::parse_timestamp(&c.event_time(k)).unwrap();
    let expected = (target - point).num_microseconds().unwrap() as f64 / 1e6;
    let got = v["rpo_gap_seconds"].as_f64().unwrap();
    assert!(
        (got - expected).abs() < 1e-5 && got > 0.0,
        "rpo {got}, expected {expected}: {v}"
    );
}

#[test]
fn a_lost_event_object_costs_only_the_restores_that_need_it() {
    let c = small_chain();
    let ev = c.events_of_step(3);
    std::fs::remove_file(c.env.repo().join(ev.object_key())).unwrap();
    // Segments intact: points themselves need no event.
    assert_plain(&c, "latest", &["--latest"], &c.last_state);
    assert_plain(
        &c,
        "txid",
        &["--txid", &c.steps[4].0.to_string()],
        c.state_at_step(4),
    );
    // After the next capture point: its events are in the next object.
    let k = event_inside(&c, 5);
    assert_plain(
        &c,
        "after",
        &["--timestamp", &c.event_time(k)],
        c.state_after(k),
    );
    // Inside: the events after step 2's point are lost; the result is that
    // point, with the loss said.
    let k = event_inside(&c, 3);
    let (code, v, out) = c.restore("inside", &["--timestamp", &c.event_time(k)]);
    assert_eq!(code, EXIT_DATA_LOSS, "{v}");
    assert_state(&out, c.state_at_step(2), "inside", &v);
    assert!(v["rpo_gap_seconds"].as_f64().unwrap() > 0.0, "{v}");
    assert!(
        v["fallback"]["gap"]
            .as_str()
            .is_some_and(|g| g.contains(&ev.id)),
        "{v}"
    );
    // The newest event object lost: a time after the last capture but one
    // needs it, and nothing after it says so but its manifest.
    let last = last_step(&c);
    let newest = c.events_of_step(last);
    std::fs::remove_file(c.env.repo().join(newest.object_key())).unwrap();
    let kl = event_inside(&c, last);
    let (code, v, out) = c.restore("newest-events", &["--timestamp", &c.event_time(kl)]);
    assert_eq!(code, EXIT_DATA_LOSS, "{v}");
    assert_state(&out, c.state_at_step(last - 1), "newest-events", &v);
    assert!(
        v["fallback"]["gap"]
            .as_str()
            .is_some_and(|g| g.contains("event objects")),
        "{v}"
    );
    // The same with its manifest gone too: found by the sequence numbers.
    std::fs::remove_file(c.env.repo().join(format!("manifests/{}.json", ev.id))).unwrap();
    let (code, v, out) = c.restore("inside-no-manifest", &["--timestamp", &c.event_time(k)]);
    assert_eq!(code, EXIT_DATA_LOSS, "{v}");
    assert_state(&out, c.state_at_step(2), "inside-no-manifest", &v);
    assert!(
        v["fallback"]["gap"]
            .as_str()
            .is_some_and(|g| g.contains("sequence")),
        "{v}"
    );
}

#[test]
fn a_flipped_bit_is_a_gap_found_before_anything_is_written() {
    let c = small_chain();
    let seg = c.segment_of_step(4);
    let path = c.env.repo().join(seg.object_key());
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x08;
    std::fs::write(&path, &bytes).unwrap();
    assert_plain(
        &c,
        "before",
        &["--txid", &c.steps[3].0.to_string()],
        c.state_at_step(3),
    );
    // A time between the point before the gap and the lost segment's
    // commits needs nothing from it.
    let k = event_inside(&c, 4);
    assert_plain(
        &c,
        "between",
        &["--timestamp", &c.event_time(k)],
        c.state_after(k),
    );
    // Inside the gap: the lost segment's own commit time.
    let at = genesis_core::time::format_exact(seg.time_max);
    assert_bridged(
        &c,
        "inside",
        &["--timestamp", &at],
        c.state_at_step(4),
        &seg.id,
    );
    assert_bridged(&c, "latest", &["--latest"], &c.last_state, &seg.id);
    let (_, v, _) = c.restore("latest-again", &["--latest"]);
    assert!(
        v["fallback"]["gap"].as_str().unwrap().contains("damaged"),
        "{v}"
    );
    assert_strict_refuses(&c, "strict", &seg.id);
    // A flipped bit in an event object the restore needs.
    let ev = c.events_of_step(6);
    let path = c.env.repo().join(ev.object_key());
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let k = event_inside(&c, 6);
    let (code, v, out) = c.restore("event-bit", &["--timestamp", &c.event_time(k)]);
    assert_eq!(code, EXIT_DATA_LOSS, "{v}");
    assert_state(&out, c.state_at_step(5), "event-bit", &v);
}

#[test]
fn regression_3_an_unreadable_manifest_is_a_gap_at_the_head_middle_and_tail() {
    let c = small_chain();
    let last = c.steps.len() - 1;
    for (step, place) in [(1, "head"), (4, "middle"), (last, "tail")] {
        let seg = c.segment_of_step(step);
        let key = c.env.repo().join(format!("manifests/{}.json", seg.id));
        let original = std::fs::read(&key).unwrap();
        let text = String::from_utf8(original.clone()).unwrap();
        let forms: [(&str, Vec<u8>); 3] = [
            ("invalid-json", b"{ not json".to_vec()),
            ("zero-bytes", Vec::new()),
            (
                "dotdot-id",
                text.replacen(&format!("\"{}\"", seg.id), "\"../escape\"", 1)
                    .into_bytes(),
            ),
        ];
        for (form, bytes) in forms {
            std::fs::write(&key, &bytes).unwrap();
            let name = format!("{place}-{form}");
            assert_bridged(&c, &name, &["--latest"], &c.last_state, &seg.id);
            let k = event_inside(&c, step);
            assert_bridged(
                &c,
                &format!("{name}-inside"),
                &["--timestamp", &c.event_time(k)],
                c.state_after(k),
                &seg.id,
            );
            if step > 1 {
                assert_plain(
                    &c,
                    &format!("{name}-before"),
                    &["--txid", &c.steps[step - 1].0.to_string()],
                    c.state_at_step(step - 1),
                );
            }
            assert!(!c.env.repo().join("escape").exists());
        }
        std::fs::write(&key, &original).unwrap();
    }
}

#[test]
fn a_later_snapshot_after_the_gap_is_used_when_it_reaches_further() {
    let c = trading_chain(&ChainSpec {
        snapshots_at: vec![5],
        ..ChainSpec::default()
    });
    let seg = c.segment_of_step(2);
    std::fs::remove_file(c.env.repo().join(seg.object_key())).unwrap();
    // After the later snapshot: it serves the target, nothing is lost.
    let (code, v, out) = c.restore("latest", &["--latest"]);
    assert_eq!(code, 0, "{v}");
    assert_state(&out, &c.last_state, "latest", &v);
    assert!(
        v["full_backup_used"]
            .as_str()
            .unwrap()
            .ends_with(&format!("{:012}", c.steps[5].0)),
        "the later snapshot was not used: {v}"
    );
    // Before it, inside the gap: the first snapshot's chain and the archive.
    let k = event_inside(&c, 3);
    assert_bridged(
        &c,
        "inside",
        &["--timestamp", &c.event_time(k)],
        c.state_after(k),
        &seg.id,
    );
}

#[test]
fn a_re_encoded_object_with_a_valid_blake3_but_one_wrong_page_fails_the_checksum_proof() {
    use genesis_core::repo::formats::{
        compress, decode_segment, decompress, encode_segment, SegmentTxnOwned,
    };
    let c = small_chain();
    let seg = c.segment_of_step(last_step(&c));
    let obj = c.env.repo().join(seg.object_key());
    let raw = decompress(&seg.id, &std::fs::read(&obj).unwrap(), seg.raw_size).unwrap();
    let (page_size, txns) = decode_segment(&seg.id, &raw).unwrap();
    let mut owned: Vec<SegmentTxnOwned> = txns
        .iter()
        .map(|t| SegmentTxnOwned {
            txid: t.txid,
            commit_time: t.commit_time,
            db_pages: t.db_pages,
            checksum: t.checksum,
            pages: t.pages.iter().map(|(n, b)| (*n, b.to_vec())).collect(),
        })
        .collect();
    let page = &mut owned.last_mut().unwrap().pages[0].1;
    let at = page.len() - 1;
    page[at] ^= 0xff;
    let raw = encode_segment(page_size, &owned);
    let compressed = compress(&raw).unwrap();
    std::fs::write(&obj, &compressed).unwrap();
    let key = c.env.repo().join(format!("manifests/{}.json", seg.id));
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&key).unwrap()).unwrap();
    m["blake3_compressed"] = blake3::hash(&compressed).to_hex().to_string().into();
    m["blake3_raw"] = blake3::hash(&raw).to_hex().to_string().into();
    m["compressed_size"] = compressed.len().into();
    m["raw_size"] = raw.len().into();
    std::fs::write(&key, serde_json::to_vec(&m).unwrap()).unwrap();
    // The premise: the object passes every BLAKE3 check.
    let o = c.env.run(&["verify-backups"]);
    let verify = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        !verify.contains("BLAKE3") && !verify.contains("blake3"),
        "{verify}"
    );
    let (code, v, out) = c.restore("proof", &["--latest"]);
    assert_eq!(code, 1, "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("checksum"), "{v}");
    assert!(!out.exists());
}

fn last_step(c: &TradingChain) -> usize {
    c.steps.len() - 1
}

#[test]
fn a_40k_event_chain_with_a_lost_segment_in_its_first_third_restores_latest_exactly() {
    let (steps, per_step) = if soak() { (100, 2_000) } else { (20, 2_000) };
    let c = trading_chain(&ChainSpec {
        steps,
        per_step,
        record_every_event: false,
        ..ChainSpec::default()
    });
    assert!(c.steps.last().unwrap().1 >= 40_000);
    let seg = c.segment_of_step(steps / 4);
    std::fs::remove_file(c.env.repo().join(seg.object_key())).unwrap();
    std::fs::remove_file(c.env.repo().join(format!("manifests/{}.json", seg.id))).unwrap();
    let (code, v, out) = c.restore("latest", &["--latest"]);
    assert_eq!(code, 0, "{v}");
    assert_state(&out, &c.last_state, "latest", &v);
    assert_eq!(v["data_loss"], false, "{v}");
    let replayed = v["events_replayed"].as_u64().unwrap() as usize;
    let expected = c.steps.last().unwrap().1 - c.steps[steps / 4 - 1].1;
    assert_eq!(replayed, expected, "the large replay across the gap: {v}");
    assert!(replayed >= 30_000, "{replayed}");
}

#[test]
fn a_real_restore_with_data_loss_applies_the_best_point_keeps_the_old_database_and_exits_5() {
    let c = small_chain();
    let seg = c.segment_of_step(4);
    std::fs::remove_file(c.env.repo().join(seg.object_key())).unwrap();
    for e in c.manifests(ObjectKind::Events) {
        if e.txid_max >= seg.txid_min {
            std::fs::remove_file(c.env.repo().join(e.object_key())).unwrap();
        }
    }
    // A stray manifest whose name says nothing: reported, not a gap.
    std::fs::write(c.env.repo().join("manifests/stray.json"), b"{}").unwrap();
    let (code, v) = c.env.json(&["restore", "--latest"]);
    assert_eq!(code, EXIT_DATA_LOSS, "{v}");
    assert_eq!(v["applied"], true, "{v}");
    assert_eq!(v["data_loss"], true, "{v}");
    assert!(v["rpo_gap_seconds"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(v["unplaced_manifests"][0]["id"], "stray", "{v}");
    assert_state(&c.env.db(), c.state_at_step(3), "applied", &v);
    let pre = v["pre_recovery_backup"]
        .as_str()
        .expect("a pre-recovery backup");
    assert_eq!(
        crate::exact_event::full_state(std::path::Path::new(pre)),
        c.last_state,
        "the pre-recovery backup is not the old live database"
    );
}

/// The snapshot reaches wal-apply in parts that are written as they come
/// (issue 14, bounded memory); its raw BLAKE3 is checked as the last part
/// leaves decompress. A snapshot whose raw content differs from its
/// manifest's BLAKE3 (stored bytes intact) fails the restore, leaving no
/// staged file and the live database untouched (the removal of a partly
/// written staged file is `StreamingBuild`'s unit test).
#[test]
fn a_snapshot_whose_raw_content_differs_from_its_manifest_leaves_no_staged_file() {
    let c = small_chain();
    let repo = genesis_core::repo::Repository::open_local(&c.env.repo(), false).unwrap();
    let catalog = repo.catalog().unwrap();
    let snap = catalog.generations[0].snapshots[0].clone();
    let key = c.env.repo().join(format!("manifests/{}.json", snap.id));
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&key).unwrap()).unwrap();
    m["blake3_raw"] = blake3::hash(b"other content").to_hex().to_string().into();
    std::fs::write(&key, serde_json::to_vec(&m).unwrap()).unwrap();
    let live_before = crate::common::file_hash(&c.env.db());
    let (code, v, out) = c.restore("raw", &["--latest"]);
    assert_ne!(code, 0, "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("BLAKE3 of the raw content"), "{v}");
    assert!(!out.exists());
    let staging = c.env.path().join(".genesis/recovery");
    let left = crate::common::files_starting(&staging, "restore-");
    assert!(left.is_empty(), "staged files left behind: {left:?}");
    assert_eq!(crate::common::file_hash(&c.env.db()), live_before);
}
