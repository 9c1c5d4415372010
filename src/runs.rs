//! The record of the last backup, spray and verify runs in the store (`runs.json`), for
//! `metrics`: when each last ran, how long it took, its outcome, and counts of both outcomes.

use crate::store::Store;
use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

pub const RUNS_FILE: &str = "runs.json";
const RUNS_LOCK: &str = "runs.lock";

/// The kinds of run that are recorded.
pub const KINDS: [&str; 3] = ["backup", "spray", "verify"];

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub last_start: Option<DateTime<Utc>>,
    pub last_duration_seconds: f64,
    pub last_ok: bool,
    pub last_success: Option<DateTime<Utc>>,
    pub successes: u64,
    pub failures: u64,
}

/// By kind ("backup", "spray", "verify").
pub type Runs = BTreeMap<String, Run>;

/// Adds one run's outcome to its kind's record (pure).
pub fn add(runs: &mut Runs, kind: &str, start: DateTime<Utc>, took: Duration, ok: bool) {
    let run = runs.entry(kind.to_string()).or_default();
    run.last_start = Some(start);
    run.last_duration_seconds = took.as_secs_f64();
    run.last_ok = ok;
    if ok {
        run.last_success = Some(start);
        run.successes += 1;
    } else {
        run.failures += 1;
    }
}

pub fn read(store: &Store) -> Runs {
    crate::files::read_state(&store.root().join(RUNS_FILE)).unwrap_or_default()
}

/// Records one run. Backup, spray and verify hold different locks, so a short lock of its
/// own keeps two of them from losing each other's count.
pub fn record(
    store: &Store,
    kind: &str,
    start: DateTime<Utc>,
    took: Duration,
    ok: bool,
) -> Result<()> {
    let _lock = store.lock_named(RUNS_LOCK, Duration::from_secs(10))?;
    let mut runs = read(store);
    add(&mut runs, kind, start, took, ok);
    crate::store::write_atomic(store.root(), RUNS_FILE, &serde_json::to_vec_pretty(&runs)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_keeps_the_last_success_and_counts_apart() {
        let t0 = DateTime::from_timestamp(1_000, 0).unwrap();
        let t1 = DateTime::from_timestamp(2_000, 0).unwrap();
        let mut runs = Runs::new();
        add(&mut runs, "backup", t0, Duration::from_millis(1500), true);
        add(&mut runs, "backup", t1, Duration::from_secs(3), false);
        add(&mut runs, "spray", t1, Duration::from_secs(1), true);
        let backup = &runs["backup"];
        assert_eq!(backup.last_start, Some(t1));
        assert_eq!(backup.last_success, Some(t0));
        assert!(!backup.last_ok);
        assert_eq!((backup.successes, backup.failures), (1, 1));
        assert_eq!(backup.last_duration_seconds, 3.0);
        assert_eq!(runs["spray"].successes, 1);
    }
}
