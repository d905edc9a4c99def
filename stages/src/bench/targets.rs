//! Issue 14's restore-time targets, read off one size's results of the same
//! run: restore `--latest` (no validation) against the floor (`zstd -d` of
//! the snapshot, then `cp` and `fsync` of the database) and against
//! `litestream restore`.

use serde::Serialize;

use super::baselines::Baseline;
use super::RestoreMeasurement;

/// Our latest restore against the floor and Litestream.
#[derive(Debug, Clone, Serialize)]
pub struct Targets {
    /// `zstd -d` plus `cp + fsync`, seconds.
    pub floor_seconds: f64,
    /// Restore `--latest` without validation, wall seconds.
    pub ours_seconds: f64,
    /// Target: at most 2.
    pub ratio_to_floor: f64,
    pub litestream_seconds: Option<f64>,
    /// Target: at most 0.25, or the floor where that is slower.
    pub ratio_to_litestream: Option<f64>,
}

/// The bound the issue sets: 2x the floor and 0.25x Litestream's time (or
/// the floor, where a quarter of Litestream's time is below it).
pub const FLOOR_TIMES: f64 = 2.0;
pub const LITESTREAM_TIMES: f64 = 0.25;

/// The targets of one size, when the floor's baselines and our latest
/// restore without validation ran.
pub fn targets(baselines: &[Baseline], restores: &[RestoreMeasurement]) -> Option<Targets> {
    let secs = |name: &str| {
        baselines
            .iter()
            .find(|b| b.name == name)
            .and_then(|b| b.seconds)
    };
    let floor_seconds = secs("zstd -d")? + secs("cp + fsync")?;
    let ours = restores
        .iter()
        .find(|r| r.target == "latest" && !r.validate && r.success)?;
    let litestream_seconds = secs(super::baselines::LITESTREAM);
    Some(Targets {
        floor_seconds,
        ours_seconds: ours.wall_seconds,
        ratio_to_floor: ours.wall_seconds / floor_seconds,
        litestream_seconds,
        ratio_to_litestream: litestream_seconds
            .filter(|s| *s > 0.0)
            .map(|s| ours.wall_seconds / s),
    })
}

impl Targets {
    /// One line for the human table.
    pub fn line(&self) -> String {
        let mut s = format!(
            "floor (zstd -d + cp + fsync) {:.2} s; ours latest, no validation {:.2} s = {:.2}x the floor (target <= {FLOOR_TIMES}x)",
            self.floor_seconds, self.ours_seconds, self.ratio_to_floor
        );
        if let (Some(l), Some(r)) = (self.litestream_seconds, self.ratio_to_litestream) {
            let bound = (l * LITESTREAM_TIMES).max(self.floor_seconds);
            s.push_str(&format!(
                ", {r:.2}x Litestream's {l:.2} s (target <= {LITESTREAM_TIMES}x or the floor: <= {bound:.2} s, {})",
                if self.ours_seconds <= bound { "met" } else { "not met" }
            ));
        }
        s
    }
}
