//! Objects a restore cannot use, and where they sit in the chain.
//!
//! A restore plan must never skip a missing or damaged piece silently: an
//! unreadable manifest, an object that is missing or has the wrong size, or
//! one whose bytes fail their BLAKE3, is a *gap*. A readable manifest says
//! where its object sits; an unreadable one is placed by its key, since every
//! object id names its kind, generation and range
//! (`full_<gen>_<txid>`, `incr_<gen>_<first>_<last>`,
//! `events_<gen>_<first seq>_<last seq>`, see `docs/decisions.md`).

use std::collections::BTreeMap;

use crate::repo::{BadManifest, Manifest, ObjectKind};

/// What an object id says about its object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdParts {
    pub kind: ObjectKind,
    pub generation: String,
    /// Txid range (snapshot: one txid; segment: first..=last); events: none.
    pub txids: Option<(u64, u64)>,
    /// Sequence range of an event object.
    pub seqs: Option<(i64, i64)>,
}

/// Reads an object id back into its parts; `None` when it is not of the
/// forms the capturer writes.
pub fn parse_object_id(id: &str) -> Option<IdParts> {
    let mut parts = id.split('_');
    let kind = match parts.next()? {
        "full" => ObjectKind::Snapshot,
        "incr" => ObjectKind::Segment,
        // A compacted segment (`l1` to `l9`, core/src/compact).
        l if l.len() == 2 && l.starts_with('l') && l[1..].parse::<u32>().is_ok_and(|k| k >= 1) => {
            ObjectKind::Segment
        }
        "events" => ObjectKind::Events,
        _ => return None,
    };
    let generation = parts.next()?.to_string();
    if generation.is_empty() {
        return None;
    }
    let first = parts.next()?;
    let second = parts.next();
    if parts.next().is_some() {
        return None;
    }
    let (mut txids, mut seqs) = (None, None);
    match (kind, second) {
        (ObjectKind::Snapshot, None) => {
            let t = first.parse().ok()?;
            txids = Some((t, t));
        }
        (ObjectKind::Segment, Some(b)) => {
            let (a, b): (u64, u64) = (first.parse().ok()?, b.parse().ok()?);
            if a > b {
                return None;
            }
            txids = Some((a, b));
        }
        (ObjectKind::Events, Some(b)) => {
            let (a, b): (i64, i64) = (first.parse().ok()?, b.parse().ok()?);
            if a > b {
                return None;
            }
            seqs = Some((a, b));
        }
        _ => return None,
    }
    Some(IdParts {
        kind,
        generation,
        txids,
        seqs,
    })
}

/// One object a restore cannot use.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LostObject {
    /// The object id (or, for an unreadable manifest whose key names no id,
    /// the manifest's key).
    pub id: String,
    /// What is wrong, for the user.
    pub problem: String,
    #[serde(skip)]
    pub parts: Option<IdParts>,
}

/// The objects a restore cannot use, by id.
#[derive(Debug, Clone, Default)]
pub struct LostSet {
    by_id: BTreeMap<String, LostObject>,
}

impl LostSet {
    /// Every unreadable manifest, placed by its key.
    pub fn from_bad_manifests(bad: &[BadManifest]) -> Self {
        let mut set = LostSet::default();
        for b in bad {
            let id = b
                .key
                .strip_prefix("manifests/")
                .and_then(|k| k.strip_suffix(".json"))
                .unwrap_or(&b.key)
                .to_string();
            let parts = parse_object_id(&id);
            set.by_id.insert(
                id.clone(),
                LostObject {
                    id,
                    problem: format!("its manifest {} is unreadable ({})", b.key, b.problem),
                    parts,
                },
            );
        }
        set
    }

    /// Marks an object with a readable manifest as unusable.
    pub fn insert(&mut self, m: &Manifest, problem: impl Into<String>) {
        let parts = IdParts {
            kind: m.kind,
            generation: m.generation.clone(),
            txids: (m.kind != ObjectKind::Events).then_some((m.txid_min, m.txid_max)),
            seqs: m
                .seq_min
                .zip(m.seq_max)
                .filter(|_| m.kind == ObjectKind::Events),
        };
        self.by_id.insert(
            m.id.clone(),
            LostObject {
                id: m.id.clone(),
                problem: problem.into(),
                parts: Some(parts),
            },
        );
    }

    /// Whether the object with this id is unusable.
    pub fn contains(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    /// The lost object of this id.
    pub fn get(&self, id: &str) -> Option<&LostObject> {
        self.by_id.get(id)
    }

    /// Every lost object, by id.
    pub fn iter(&self) -> impl Iterator<Item = &LostObject> {
        self.by_id.values()
    }

    /// Lost objects of a generation and kind.
    pub fn of(&self, generation: &str, kind: ObjectKind) -> impl Iterator<Item = &LostObject> {
        let generation = generation.to_string();
        self.by_id.values().filter(move |l| {
            l.parts
                .as_ref()
                .is_some_and(|p| p.kind == kind && p.generation == generation)
        })
    }

    /// Unreadable manifests whose key says nothing of where they sit.
    pub fn unplaced(&self) -> impl Iterator<Item = &LostObject> {
        self.by_id.values().filter(|l| l.parts.is_none())
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_the_capturer_writes_parse_back() {
        let g = "20250115T090000-ab12cd";
        let p = parse_object_id(&format!("incr_{g}_000000000807_000000001001")).unwrap();
        assert_eq!(p.kind, ObjectKind::Segment);
        assert_eq!(p.generation, g);
        assert_eq!(p.txids, Some((807, 1001)));
        let p = parse_object_id(&format!("l2_{g}_000000000807_000000001001")).unwrap();
        assert_eq!((p.kind, p.txids), (ObjectKind::Segment, Some((807, 1001))));
        let p = parse_object_id(&format!("full_{g}_000000000001")).unwrap();
        assert_eq!(p.txids, Some((1, 1)));
        let p = parse_object_id(&format!("events_{g}_000000000010_000000000020")).unwrap();
        assert_eq!(p.seqs, Some((10, 20)));
        for bad in [
            "x",
            "incr_g_5_4",
            "full_g",
            "incr_g_1",
            "full__1",
            "events_g_a_b",
            "full_g_1_2_3",
            "l0_g_1_2",
            "lx_g_1_2",
        ] {
            assert_eq!(parse_object_id(bad), None, "{bad}");
        }
    }
}
