//! What the store says about this node's backups: the newest verified set and its age, the
//! newest set of each origin, the sets that failed, the targets that are behind. One summary
//! that `status` prints and `metrics` exposes; computing it does no I/O.

use crate::spray::TargetState;
use crate::store::StoredSet;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::time::Duration;

/// One origin's sets in the store.
#[derive(Debug, Default)]
pub struct Origin<'a> {
    /// The newest set of this origin, verified or not.
    pub newest: Option<&'a StoredSet>,
    /// The newest set of this origin that has no problem.
    pub newest_verified: Option<&'a StoredSet>,
    pub verified: usize,
    pub failed: usize,
    pub bytes: u64,
}

#[derive(Debug)]
pub struct Summary<'a> {
    pub now: DateTime<Utc>,
    pub max_age: Duration,
    /// The newest verified set of any origin, and its age.
    pub newest: Option<&'a StoredSet>,
    pub age: Option<Duration>,
    /// The newest verified set is no older than `max_age`.
    pub fresh: bool,
    pub origins: BTreeMap<&'a str, Origin<'a>>,
    /// The newest set of an origin, when it is damaged or failed its last verification.
    pub failed: Vec<&'a StoredSet>,
    pub targets: &'a BTreeMap<String, TargetState>,
    /// Targets whose last run failed.
    pub behind: Vec<&'a str>,
}

pub fn summarize<'a>(
    sets: &'a [StoredSet],
    targets: &'a BTreeMap<String, TargetState>,
    now: DateTime<Utc>,
    max_age: Duration,
) -> Summary<'a> {
    let mut origins: BTreeMap<&str, Origin> = BTreeMap::new();
    for set in sets {
        let origin = origins.entry(set.manifest.origin.as_str()).or_default();
        let newer = |other: Option<&StoredSet>| {
            other.is_none_or(|o| set.manifest.created > o.manifest.created)
        };
        if newer(origin.newest) {
            origin.newest = Some(set);
        }
        if set.problem.is_none() {
            origin.verified += 1;
            if newer(origin.newest_verified) {
                origin.newest_verified = Some(set);
            }
        } else {
            origin.failed += 1;
        }
        origin.bytes += set.manifest.total_size();
    }
    let failed = origins
        .values()
        .filter_map(|o| o.newest)
        .filter(|s| s.problem.is_some())
        .collect();
    let newest = origins
        .values()
        .filter_map(|o| o.newest_verified)
        .max_by_key(|s| s.manifest.created);
    let age = newest.map(|s| (now - s.manifest.created).to_std().unwrap_or_default());
    let behind = targets
        .iter()
        .filter(|(_, t)| t.last_error.is_some())
        .map(|(id, _)| id.as_str())
        .collect();
    Summary {
        now,
        max_age,
        newest,
        age,
        fresh: age.is_some_and(|age| age <= max_age),
        origins,
        failed,
        targets,
        behind,
    }
}

impl Summary<'_> {
    /// `status`'s exit code: a failed newest set first, then staleness, then a target behind.
    pub fn exit_code(&self) -> u8 {
        use crate::cli::{EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, EXIT_STALE};
        if !self.failed.is_empty() {
            EXIT_FAILED
        } else if !self.fresh {
            EXIT_STALE
        } else if !self.behind.is_empty() {
            EXIT_PARTIAL
        } else {
            EXIT_OK
        }
    }
}
