//! Tests of [`super::StreamingBuild`]: the image and its checksum, what an
//! unfinished build leaves, and that every page is written once with its
//! newest version, at every page size.

use std::collections::HashMap;
use std::sync::Mutex;

use super::*;
use crate::repo::formats::{encode_segment, SegmentTxnOwned};
use crate::repo::{FrameEntry, ObjectKind};

/// A snapshot manifest of `pages` pages in frames of two pages.
fn snapshot(pages: u64, ps: u32) -> Manifest {
    Manifest {
        page_size: ps,
        raw_size: pages * u64::from(ps),
        db_pages: pages,
        frames: (0..pages / 2)
            .map(|i| FrameEntry {
                raw_offset: i * 2 * u64::from(ps),
                raw_len: 2 * u64::from(ps),
                comp_offset: 0,
                comp_len: 0,
            })
            .collect(),
        ..Manifest::for_test("full_g_1", ObjectKind::Snapshot)
    }
}

fn frame(first_page: u8, ps: usize) -> Vec<u8> {
    (0..2 * ps)
        .map(|i| first_page.wrapping_add((i / ps) as u8))
        .collect()
}

#[test]
fn frames_written_as_they_come_give_the_image_and_its_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s.db");
    let m = snapshot(4, 512);
    let mut b = StreamingBuild::new(&m, &[], 1, &out).unwrap();
    b.frames(0, &[frame(1, 512)]).unwrap();
    // Out of order: refused.
    assert!(b.frames(0, &[frame(1, 512)]).is_err());
    b.frames(1, &[frame(3, 512)]).unwrap();
    let image: Vec<u8> = [frame(1, 512), frame(3, 512)].concat();
    let want = crate::checksum::image_checksum(&image, 512);
    let r = b.finish(&checksum_hex(want)).unwrap();
    assert_eq!(r.pages, 4);
    assert_eq!(r.bytes_written, 4 * 512);
    assert_eq!(std::fs::read(&out).unwrap(), image);
}

#[test]
fn an_unfinished_or_unproven_build_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s.db");
    let m = snapshot(4, 512);
    let mut b = StreamingBuild::new(&m, &[], 1, &out).unwrap();
    b.frames(0, &[frame(1, 512)]).unwrap();
    assert!(out.exists());
    drop(b);
    assert!(!out.exists(), "a build dropped before finish left its file");
    let mut b = StreamingBuild::new(&m, &[], 1, &out).unwrap();
    b.frames(0, &[frame(1, 512), frame(3, 512)]).unwrap();
    let err = b.finish(&checksum_hex(1)).unwrap_err().to_string();
    assert!(err.contains("does not reproduce the source"), "{err}");
    assert!(!out.exists(), "a build whose checksum failed left its file");
    // A frame missing: refused at finish.
    let mut b = StreamingBuild::new(&m, &[], 1, &out).unwrap();
    b.frames(0, &[frame(1, 512)]).unwrap();
    assert!(b.finish(&checksum_hex(0)).is_err());
    assert!(!out.exists());
    // A chain that does not reach the target: refused before any page.
    assert!(StreamingBuild::new(&m, &[], 2, &out).is_err());
    assert!(!out.exists(), "a build refused at its start left its file");
}

#[test]
fn a_snapshot_whose_pages_do_not_make_its_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s.db");
    let m = Manifest {
        db_pages: 1 << 40,
        ..snapshot(4, 512)
    };
    let err = StreamingBuild::new(&m, &[], 1, &out)
        .err()
        .expect("a forged page count was accepted")
        .to_string();
    assert!(err.contains("do not make its raw size"), "{err}");
    assert!(!out.exists());
}

/// The staged file, recording the pages of every write made to it.
struct Recorder {
    file: File,
    page_size: u64,
    writes: Mutex<Vec<u64>>,
}

impl PageFile for Recorder {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        assert_eq!(offset % self.page_size, 0, "a write off a page boundary");
        assert_eq!(buf.len() as u64 % self.page_size, 0, "a partial page");
        let first = offset / self.page_size + 1;
        let n = buf.len() as u64 / self.page_size;
        self.writes.lock().unwrap().extend(first..first + n);
        self.file.write_all_at(buf, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
    fn sync_all(&self) -> io::Result<()> {
        self.file.sync_all()
    }
}

/// A page of `ps` bytes that says which page and which version it is.
fn page(ps: usize, pgno: u32, version: u8) -> Vec<u8> {
    let mut p = vec![version; ps];
    p[..4].copy_from_slice(&pgno.to_le_bytes());
    p
}

/// One transaction of the test chain: its txid, the size after it and the
/// pages it wrote (page number, version).
type Txn = (u64, u64, Vec<(u32, u8)>);

fn encode(ps: u32, txns: &[Txn]) -> Vec<u8> {
    let owned: Vec<SegmentTxnOwned> = txns
        .iter()
        .map(|(txid, db_pages, pages)| SegmentTxnOwned {
            txid: *txid,
            commit_time: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            db_pages: *db_pages,
            checksum: 0,
            pages: pages
                .iter()
                .map(|(p, v)| (*p, page(ps as usize, *p, *v)))
                .collect(),
        })
        .collect();
    encode_segment(ps, &owned)
}

/// The database the chain leaves, computed the plain way: every
/// transaction's pages written over the image, then its size applied
/// (pages cut off are gone, pages grown are zeros).
fn model(ps: usize, snapshot: &[u8], steps: &[(Option<u64>, &[Txn])]) -> Vec<u8> {
    let mut image = snapshot.to_vec();
    for (cut, txns) in steps {
        if let Some(cut) = cut {
            image.resize(*cut as usize * ps, 0);
        }
        for (_, db_pages, pages) in *txns {
            for (p, v) in pages {
                let at = (*p as usize - 1) * ps;
                if image.len() < at + ps {
                    image.resize(at + ps, 0);
                }
                image[at..at + ps].copy_from_slice(&page(ps, *p, *v));
            }
            image.resize(*db_pages as usize * ps, 0);
        }
    }
    image
}

/// Snapshot (8 pages, txid 1), then two level-0 segments and a compacted
/// one: page 3 is written by the snapshot, an older segment and a newer one
/// (the newest wins); the size shrinks to 7 pages and grows to 10 (page 8,
/// cut off and never written again, reads as zeros; the snapshot's version
/// must not come back); the compacted object writes page 2 after a cut to 9
/// pages inside its span.
#[test]
fn each_page_is_written_once_and_the_newest_version_wins_at_every_page_size() {
    // (Two of the three segments are read back from a spool.)
    let dir = tempfile::tempdir().unwrap();
    for shift in 9..=16 {
        let ps = 1u32 << shift;
        let psz = ps as usize;
        let snap = snapshot(8, ps);
        let snap_image: Vec<u8> = (1..=8).flat_map(|p| page(psz, p, 1)).collect();
        let a: Vec<Txn> = vec![(2, 8, vec![(3, 2), (5, 2)])];
        let b: Vec<Txn> = vec![
            (3, 9, vec![(3, 3), (9, 3)]),
            (4, 7, vec![(6, 4)]),
            (5, 10, vec![(9, 5), (10, 5)]),
        ];
        let c: Vec<Txn> = vec![(7, 10, vec![(2, 7), (10, 7)])];
        let seg = |id: &str, lo: u64, hi: u64| Manifest {
            page_size: ps,
            txid_min: lo,
            txid_max: hi,
            ..Manifest::for_test(id, ObjectKind::Segment)
        };
        let ma = seg("a", 2, 2);
        let mb = seg("b", 3, 5);
        let mc = Manifest {
            level: 1,
            db_pages: 10,
            min_db_pages: Some(9),
            ..seg("c", 6, 7)
        };
        let (ra, rb, rc) = (encode(ps, &a), encode(ps, &b), encode(ps, &c));
        // The compacted object and one level-0 segment through a spool.
        let mut spool = crate::rebuild::spool::Spool::create(&dir.path().join("s.spool")).unwrap();
        let (sb, sc) = (spool.add(&mb, &rb).unwrap(), spool.add(&mc, &rc).unwrap());
        let segments = [
            Segment::Memory(&ma, &ra),
            Segment::Spooled(&mb, &sb),
            Segment::Spooled(&mc, &sc),
        ];
        let want = model(psz, &snap_image, &[(None, &a), (None, &b), (Some(9), &c)]);
        assert_eq!(want.len(), 10 * psz);
        assert!(
            want[7 * psz..8 * psz].iter().all(|b| *b == 0),
            "page 8 is zero"
        );

        let out = dir.path().join(format!("s{ps}.db"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&out)
            .unwrap();
        let rec = Recorder {
            file,
            page_size: u64::from(ps),
            writes: Mutex::new(Vec::new()),
        };
        let mut build =
            StreamingBuild::over_spool(rec, &snap, &segments, Some(&spool), 7, &out).unwrap();
        let frames: Vec<Vec<u8>> = snap_image.chunks(2 * psz).map(<[u8]>::to_vec).collect();
        build.frames(0, &frames[..2]).unwrap();
        build.frames(2, &frames[2..]).unwrap();
        let expected = crate::checksum::image_checksum(&want, psz);
        let writes = build.file.writes.lock().unwrap().clone();
        let r = build.finish(&checksum_hex(expected)).unwrap();

        let mut times: HashMap<u64, usize> = HashMap::new();
        for p in &writes {
            *times.entry(*p).or_default() += 1;
        }
        let twice: Vec<_> = times.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "page size {ps}: pages written twice: {twice:?}"
        );
        assert!(
            !times.contains_key(&8),
            "page size {ps}: the cut-off page 8 was written"
        );
        let mut written: Vec<u64> = times.keys().copied().collect();
        written.sort_unstable();
        assert_eq!(written, vec![1, 2, 3, 4, 5, 6, 7, 9, 10], "page size {ps}");
        assert_eq!(std::fs::read(&out).unwrap(), want, "page size {ps}");
        assert_eq!(r.pages, 10);
        assert_eq!(r.pages_from_segments, 6, "pages 2, 3, 5, 6, 9, 10");
        assert_eq!(r.pages_from_snapshot, 3, "pages 1, 4, 7");
        assert_eq!(r.bytes_written, 9 * u64::from(ps));
        assert_eq!(r.checksum, checksum_hex(expected));
    }
}

/// Random level-0 chains (growth, shrinks, rewrites, pages written past the
/// commit's size) built page-exactly as the plain model leaves them, with a
/// random part of the segments in a spool (none in a third of the rounds,
/// all in another third).
#[test]
fn random_level0_chains_equal_the_plain_model() {
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut rnd = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let dir = tempfile::tempdir().unwrap();
    let ps = 512u32;
    let psz = 512usize;
    for round in 0..300 {
        let snap_pages = 2 * (1 + rnd(200));
        let snap = snapshot(snap_pages, ps);
        let snap_image: Vec<u8> = (1..=snap_pages as u32)
            .flat_map(|p| page(psz, p, 1))
            .collect();
        let mut size = snap_pages;
        let mut txid = 1u64;
        let nseg = 1 + rnd(4);
        let mut owned: Vec<(Manifest, Vec<u8>)> = Vec::new();
        let mut steps: Vec<(Option<u64>, Vec<Txn>)> = Vec::new();
        for s in 0..nseg {
            let ntx = 1 + rnd(4);
            let mut txns: Vec<Txn> = Vec::new();
            for _ in 0..ntx {
                txid += 1;
                let new_size = if rnd(3) == 0 {
                    1 + rnd(size + 50)
                } else {
                    size
                };
                let mut pages = Vec::new();
                let mut seen = std::collections::HashSet::new();
                for _ in 0..rnd(20) {
                    // Some pages past the commit's size: a transaction that
                    // spilled frames of pages it then cut off (auto_vacuum
                    // truncating at the commit) leaves them in the WAL.
                    let p = 1 + rnd(new_size + 6) as u32;
                    if seen.insert(p) {
                        pages.push((p, (txid % 250) as u8 + 2));
                    }
                }
                txns.push((txid, new_size, pages));
                size = new_size;
            }
            let m = Manifest {
                page_size: ps,
                txid_min: txns[0].0,
                txid_max: txid,
                ..Manifest::for_test(&format!("s{s}"), ObjectKind::Segment)
            };
            owned.push((m, encode(ps, &txns)));
            steps.push((None, txns));
        }
        let target = txid;
        let mut spool = crate::rebuild::spool::Spool::create(&dir.path().join("r.spool")).unwrap();
        let spooled: Vec<Option<crate::rebuild::spool::SpooledSegment>> = owned
            .iter()
            .map(|(m, r)| match round % 3 {
                0 => None,
                1 => Some(spool.add(m, r).unwrap()),
                _ => (rnd(2) == 0).then(|| spool.add(m, r).unwrap()),
            })
            .collect();
        let segments: Vec<Segment<'_>> = owned
            .iter()
            .zip(&spooled)
            .map(|((m, r), sp)| match sp {
                Some(sp) => Segment::Spooled(m, sp),
                None => Segment::Memory(m, r.as_slice()),
            })
            .collect();
        let refs: Vec<(Option<u64>, &[Txn])> =
            steps.iter().map(|(c, t)| (*c, t.as_slice())).collect();
        let want = model(psz, &snap_image, &refs);
        let expected = crate::checksum::image_checksum(&want, psz);
        let out = dir.path().join("r.db");
        let mut b =
            StreamingBuild::with_spool(&snap, &segments, Some(&spool), target, &out).unwrap();
        let frames: Vec<Vec<u8>> = snap_image.chunks(2 * psz).map(<[u8]>::to_vec).collect();
        b.frames(0, &frames).unwrap();
        let r = b.finish(&checksum_hex(expected));
        assert!(r.is_ok(), "round {round}: {:?}", r.err());
        assert_eq!(std::fs::read(&out).unwrap(), want, "round {round}");
    }
}

#[test]
fn a_spooled_segment_without_its_spool_or_past_its_end_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let ps = 512u32;
    let snap = snapshot(4, ps);
    let m = Manifest {
        page_size: ps,
        txid_min: 2,
        txid_max: 2,
        ..Manifest::for_test("a", ObjectKind::Segment)
    };
    let raw = encode(ps, &[(2, 4, vec![(1, 9)])]);
    let mut spool = crate::rebuild::spool::Spool::create(&dir.path().join("a.spool")).unwrap();
    let sp = spool.add(&m, &raw).unwrap();
    assert_eq!(sp.raw_len(), raw.len() as u64);
    let out = dir.path().join("a.db");
    let segments = [Segment::Spooled(&m, &sp)];
    let e = StreamingBuild::with_spool(&snap, &segments, None, 2, &out)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("without its spool"), "{e}");
    assert!(!out.exists(), "a failed build leaves its file");
    let mut buf = vec![0u8; 512];
    assert!(spool.read_page(raw.len() as u64 - 100, &mut buf).is_err());
    let path = spool.path().to_path_buf();
    drop(spool);
    assert!(!path.exists(), "the spool is removed when dropped");
}
