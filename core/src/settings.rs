//! The optional settings file `genesis-recovery.toml` (in the working
//! directory, or named with `--config`). Command-line flags override it.
//!
//! ```toml
//! database = ".genesis/data/genesis.db"
//! repository = ".genesis/backups"
//! staging_dir = ".genesis/recovery"
//! [capture]
//! interval = "1s"
//! snapshot_interval = "24h"
//! checkpoint_frames = 1000
//! [retention]
//! keep_days = 7
//! keep_full = 2
//! [compaction]
//! levels = ["30s", "5m", "1h"]   # [] turns compaction off
//! l0_retention = "24h"           # per-transaction points kept this long
//! [s3]                      # for repository = "s3://BUCKET/PREFIX"
//! endpoint = "https://s3.eu-west-1.amazonaws.com"
//! region = "eu-west-1"
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{ConfigIssue, Error, Result};

/// Capture settings.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CaptureSettings {
    pub interval: Option<String>,
    pub snapshot_interval: Option<String>,
    pub checkpoint_frames: Option<u32>,
}

/// Retention settings.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    pub keep_days: Option<u32>,
    pub keep_full: Option<usize>,
}

/// Compaction settings (`core/src/compact`).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CompactionSettings {
    /// Spans of levels 1, 2, ... (default 30s, 5m, 1h; empty: off).
    pub levels: Option<Vec<String>>,
    /// How long level-0 objects (every transaction a restore point) are
    /// kept once compacted objects cover them (default 24h).
    pub l0_retention: Option<String>,
}

impl CompactionSettings {
    /// The level spans, checked.
    ///
    /// # Errors
    /// `Error::Usage` naming a bad span.
    pub fn level_spans(&self) -> Result<Vec<std::time::Duration>> {
        let spans = match &self.levels {
            None => crate::compact::DEFAULT_LEVELS.to_vec(),
            Some(v) => v
                .iter()
                .map(|t| crate::time::parse_duration(t))
                .collect::<Result<Vec<_>>>()?,
        };
        crate::compact::check_levels(&spans)?;
        Ok(spans)
    }

    /// The level-0 retention.
    ///
    /// # Errors
    /// `Error::Usage` for a bad duration.
    pub fn l0_retention(&self) -> Result<std::time::Duration> {
        match &self.l0_retention {
            None => Ok(std::time::Duration::from_secs(24 * 3600)),
            Some(t) => crate::time::parse_duration(t),
        }
    }
}

/// The settings file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub database: Option<PathBuf>,
    pub repository: Option<PathBuf>,
    pub staging_dir: Option<PathBuf>,
    #[serde(default)]
    pub capture: CaptureSettings,
    #[serde(default)]
    pub retention: RetentionSettings,
    #[serde(default)]
    pub compaction: CompactionSettings,
    /// The object store of an `s3://` repository (over the AWS environment).
    #[serde(default)]
    pub s3: crate::repo::s3::S3Settings,
}

/// The default settings file name.
pub const SETTINGS_FILE: &str = "genesis-recovery.toml";

impl Settings {
    /// Loads `explicit` (which must exist) or `./genesis-recovery.toml` when present.
    ///
    /// # Errors
    /// `Error::Usage` for a missing explicit file; `Error::Config` for a malformed one.
    pub fn load(explicit: Option<&Path>) -> Result<Settings> {
        let path = match explicit {
            Some(p) => {
                if !p.exists() {
                    return Err(Error::Usage(format!(
                        "the settings file {} does not exist",
                        p.display()
                    )));
                }
                p.to_path_buf()
            }
            None => {
                let p = PathBuf::from(SETTINGS_FILE);
                if !p.exists() {
                    return Ok(Settings::default());
                }
                p
            }
        };
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io("read", &path, e))?;
        toml::from_str::<Settings>(&text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            Error::Config(vec![ConfigIssue {
                file: path.clone(),
                line,
                key: "settings".into(),
                message: e.message().to_string(),
            }])
        })
    }
}
