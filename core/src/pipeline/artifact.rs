//! The artifacts that flow between pipeline stages.
//!
//! Every stage consumes artifacts of some kinds and produces artifacts of some
//! kinds; the pipeline compiler checks that every stage's inputs are produced
//! by an earlier stage. Artifacts carry what a later stage needs and nothing
//! about how an earlier stage worked. The domain reports (validation,
//! reconciliation, replay) are generic here so that `core` knows nothing of
//! the trading schema.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::plan::Target;
use crate::repo::{Manifest, ObjectBytes};

/// The kind of an artifact, used for the compile-time check of a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArtifactKind {
    /// The resolved pipeline parameters; the runner sends one to the first stage.
    Request,
    /// The restore plan (which objects, which restore point).
    Plan,
    /// An object's compressed bytes as read from the repository.
    FetchedObject,
    /// An object's raw content.
    DecompressedObject,
    /// An object whose checksums and place in the chain were verified.
    VerifiedObject,
    /// A database built in the staging directory (after wal-apply), enriched by later stages.
    StagedDatabase,
    /// The archived events after the restore point, decoded and verified
    /// (wal-apply emits them before the staged database; event-replay takes them).
    ArchivedEvents,
}

impl ArtifactKind {
    /// The kebab-case name used in messages and pipeline files.
    pub fn name(self) -> &'static str {
        match self {
            ArtifactKind::Request => "request",
            ArtifactKind::Plan => "plan",
            ArtifactKind::FetchedObject => "fetched-object",
            ArtifactKind::DecompressedObject => "decompressed-object",
            ArtifactKind::VerifiedObject => "verified-object",
            ArtifactKind::StagedDatabase => "staged-database",
            ArtifactKind::ArchivedEvents => "archived-events",
        }
    }
}

/// One artifact in flight.
#[derive(Debug, Clone)]
pub enum Artifact {
    Request(Arc<Params>),
    Plan(Arc<crate::plan::RestorePlan>),
    FetchedObject(FetchedObject),
    DecompressedObject(DecompressedObject),
    VerifiedObject(DecompressedObject),
    StagedDatabase(Box<StagedDatabase>),
    ArchivedEvents(ArchivedEvents),
}

impl Artifact {
    /// The kind of this artifact.
    pub fn kind(&self) -> ArtifactKind {
        match self {
            Artifact::Request(_) => ArtifactKind::Request,
            Artifact::Plan(_) => ArtifactKind::Plan,
            Artifact::FetchedObject(_) => ArtifactKind::FetchedObject,
            Artifact::DecompressedObject(_) => ArtifactKind::DecompressedObject,
            Artifact::VerifiedObject(_) => ArtifactKind::VerifiedObject,
            Artifact::StagedDatabase(_) => ArtifactKind::StagedDatabase,
            Artifact::ArchivedEvents(_) => ArtifactKind::ArchivedEvents,
        }
    }

    /// Bytes this artifact carries, for the per-stage report.
    pub fn byte_len(&self) -> u64 {
        match self {
            Artifact::FetchedObject(o) => o.bytes.len() as u64,
            Artifact::DecompressedObject(o) | Artifact::VerifiedObject(o) => o.raw_len(),
            _ => 0,
        }
    }
}

/// The resolved parameters of a pipeline run (defaults overridden by `--set`).
pub type Params = std::collections::BTreeMap<String, ParamValue>;

/// A parameter value. A pipeline file and `--set` give strings, integers,
/// floats or booleans; a caller that holds a value typed already (a
/// restore's [`Target`]) passes it as it is, never through its text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// A restore target (only ever set by a caller, see
    /// [`crate::pipeline::Overrides::typed`]); shown in its text form.
    #[serde(skip_deserializing, serialize_with = "display")]
    Target(Target),
}

fn display<S: serde::Serializer>(target: &Target, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(target)
}

impl ParamValue {
    /// The value as text (strings verbatim, others formatted).
    pub fn as_text(&self) -> String {
        match self {
            ParamValue::Bool(b) => b.to_string(),
            ParamValue::Int(i) => i.to_string(),
            ParamValue::Float(f) => f.to_string(),
            ParamValue::Str(s) => s.clone(),
            ParamValue::Target(t) => t.to_string(),
        }
    }
}

/// An object's compressed bytes, memory-mapped when the repository is local.
#[derive(Debug, Clone)]
pub struct FetchedObject {
    pub manifest: Arc<Manifest>,
    pub bytes: Arc<ObjectBytes>,
}

/// An object's raw content. Snapshots stay split in their independent frames
/// (decompressed in parallel) so that nothing needs one contiguous buffer.
#[derive(Debug, Clone)]
pub struct DecompressedObject {
    pub manifest: Arc<Manifest>,
    /// The raw content, frame by frame, in order (one element for segments and event segments).
    pub frames: Arc<Vec<Vec<u8>>>,
    /// The compressed bytes, kept for verification of the stored checksum.
    pub compressed: Arc<ObjectBytes>,
    /// A snapshot arrives in parts of a few frames each, so that wal-apply
    /// writes each part and drops it (memory flat in the database's size):
    /// the index of this part's first frame and whether it is the last part.
    /// `None`: the whole object.
    pub part: Option<FramePart>,
}

/// Where a part of a snapshot's frames sits (see [`DecompressedObject::part`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramePart {
    pub first_frame: usize,
    pub last: bool,
}

impl DecompressedObject {
    /// Total raw length.
    pub fn raw_len(&self) -> u64 {
        self.frames.iter().map(|f| f.len() as u64).sum()
    }
}

/// The archived events a restore may replay: the content of every event
/// object the plan reads, in plan order, each object verified against
/// its manifest. Its own artifact, not a field of the staged database: it is
/// what event-replay consumes (and never sent to plugin stages, which pass
/// it on unchanged).
#[derive(Debug, Clone, Default)]
pub struct ArchivedEvents {
    /// The event objects, decompressed and verified but not decoded:
    /// event-replay decodes them beside the replay (objects in sequence
    /// order, possibly overlapping).
    pub objects: Vec<EncodedEvents>,
}

/// One event object's content, as the events format stores it
/// (`repo::formats::decode_events` reads it).
#[derive(Debug, Clone)]
pub struct EncodedEvents {
    /// The object's id, to name it in errors.
    pub id: String,
    /// The decompressed frames; the content is the first (an event object
    /// has one).
    pub frames: Arc<Vec<Vec<u8>>>,
}

impl EncodedEvents {
    /// The encoded rows (empty when the object has no frame).
    pub fn content(&self) -> &[u8] {
        self.frames.first().map_or(&[], |f| f.as_slice())
    }
}

/// A finding of a check: a code, a message, and optional details.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// Stable short code, e.g. `sequence_gap` or `quick_check`.
    pub code: String,
    /// Human-readable message naming the row/object concerned.
    pub message: String,
}

/// The validation report (DOMAIN.md's StateReconstructor output shape).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ValidationReport {
    pub is_consistent: bool,
    pub errors: Vec<Finding>,
    pub warnings: Vec<Finding>,
    /// Aggregate metrics (free-form JSON object).
    pub metrics: serde_json::Map<String, serde_json::Value>,
}

impl ValidationReport {
    /// Merges another report into this one (errors, warnings, metrics), keeping consistency.
    pub fn merge(&mut self, other: ValidationReport) {
        self.errors.extend(other.errors);
        self.warnings.extend(other.warnings);
        self.metrics.extend(other.metrics);
        self.is_consistent = self.errors.is_empty();
    }
}

/// The database built in the staging directory, and what later stages found.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StagedDatabase {
    /// Path of the staged database file.
    pub path: PathBuf,
    /// The txid the database was rebuilt at.
    pub txid: u64,
    /// The generation it belongs to.
    pub generation: String,
    /// The database checksum (hex) proven after wal-apply.
    pub checksum: String,
    /// Pages and page size of the rebuilt file.
    pub pages: u64,
    pub page_size: u32,
    /// Set by event-replay.
    pub replay: Option<serde_json::Value>,
    /// Number of events replayed on top of the rebuilt database.
    pub events_replayed: u64,
    /// Set by validate (and plugins that validate).
    pub validation: Option<ValidationReport>,
    /// Set by reconcile: the report as JSON, and whether it reconciled.
    pub reconciliation: Option<serde_json::Value>,
    pub reconciled: Option<bool>,
    /// Reports of plugin stages, by stage id.
    pub plugin_reports: serde_json::Map<String, serde_json::Value>,
    /// Commit time of the restore point the database was rebuilt at (set by wal-apply).
    #[serde(default)]
    pub point_time: Option<DateTime<Utc>>,
    /// The instant events are replayed up to: set by wal-apply only when the
    /// restore target is a time.
    #[serde(default)]
    pub target_time: Option<DateTime<Utc>>,
    /// `created_at` of the last event replayed (set by event-replay).
    #[serde(default)]
    pub replayed_until: Option<DateTime<Utc>>,
    /// The plan the database was built from (set by wal-apply; not serialized).
    #[serde(skip)]
    pub plan: Option<Arc<crate::plan::RestorePlan>>,
}
