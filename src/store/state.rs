//! The store's records beside its sets, one JSON file each, all read and written here:
//! `verify-state.json` (the last verification of each manifest), `target-verify-state.json`
//! (the last verification of each target's copy of each set), `spray-state.json` (each
//! target's last result) and `runs.json` (the last backup, spray and verify runs).

use super::Store;
use crate::files::write_atomic;
use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// How long a writer of a state file waits for the short lock that serialises its
/// read-change-write with another run's.
const STATE_LOCK_WAIT: Duration = Duration::from_secs(10);

impl Store {
    /// The state file `file`; absent, or unreadable (said in a warning), it reads as empty.
    fn read_state<T: DeserializeOwned + Default>(&self, file: &str) -> T {
        crate::files::read_state(&self.root.join(file)).unwrap_or_default()
    }

    /// Replaces the state file `file` atomically.
    fn write_state<T: Serialize + ?Sized>(&self, file: &str, state: &T) -> Result<()> {
        write_atomic(&self.root, file, &serde_json::to_vec_pretty(state)?)
    }

    /// Reads, changes and writes `file` under the lock file `lock`, so that two runs that
    /// change it at once lose neither change.
    fn update_state<T: Serialize + DeserializeOwned + Default>(
        &self,
        lock: &str,
        file: &str,
        change: impl FnOnce(&mut T),
    ) -> Result<()> {
        let _lock = self.lock_named(lock, STATE_LOCK_WAIT)?;
        let mut state: T = self.read_state(file);
        change(&mut state);
        self.write_state(file, &state)
    }
}

/// One `verify` of one set: kept in the store (not in the set's directory, which holds exactly
/// the set's files), keyed by the sha256 of the manifest it checked.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Verification {
    pub at: chrono::DateTime<chrono::Utc>,
    /// `verify --deep`: the bbolt walk too.
    pub deep: bool,
    /// What was wrong; `None`: it verified.
    pub problem: Option<String>,
}

pub const VERIFY_STATE_FILE: &str = "verify-state.json";

impl Store {
    /// The last verification of each manifest (by its sha256).
    pub fn verifications(&self) -> BTreeMap<String, Verification> {
        self.read_state(VERIFY_STATE_FILE)
    }

    /// Records verification results (by manifest sha256); records of manifests no longer in
    /// the store are dropped. The caller holds the store lock.
    pub fn record_verifications(&self, results: &[(String, Verification)]) -> Result<()> {
        let present: std::collections::BTreeSet<String> = self
            .list()?
            .sets
            .into_iter()
            .map(|s| s.manifest_sha256)
            .collect();
        let mut state = self.verifications();
        state.retain(|sha, _| present.contains(sha));
        for (sha, verification) in results {
            state.insert(sha.clone(), verification.clone());
        }
        self.write_state(VERIFY_STATE_FILE, &state)
    }
}

/// One verification of a target's copy of a set (`verify --target`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyCheck {
    pub set_id: String,
    pub at: DateTime<Utc>,
    pub deep: bool,
    /// What was wrong with the copy; `None`: it matched its manifest.
    pub problem: Option<String>,
}

/// By target id, then by the digest of the manifest the copy was checked against.
pub type CopyChecks = BTreeMap<String, BTreeMap<String, CopyCheck>>;

pub const TARGET_VERIFY_STATE_FILE: &str = "target-verify-state.json";
const TARGET_VERIFY_LOCK: &str = "target-verify.lock";

impl Store {
    /// The last verification of each target's copies.
    pub fn copy_checks(&self) -> CopyChecks {
        self.read_state(TARGET_VERIFY_STATE_FILE)
    }

    /// Changes the copy checks under a short lock of their own (a verify and a spray may both
    /// write them).
    pub fn update_copy_checks(&self, change: impl FnOnce(&mut CopyChecks)) -> Result<()> {
        self.update_state(
            TARGET_VERIFY_LOCK,
            TARGET_VERIFY_STATE_FILE,
            |checks: &mut CopyChecks| {
                change(checks);
                checks.retain(|_, copies| !copies.is_empty());
            },
        )
    }
}

/// By target id, then object key: the SHA-256 checksum (base64; a multipart object's is that of
/// its parts' checksums) the bucket stored with each object this node put there or verified by
/// downloading it. A later verification that finds the same stored checksum knows the object
/// is the one that was checked, without a download.
pub type ObjectChecksums = BTreeMap<String, BTreeMap<String, String>>;

pub const OBJECT_CHECKSUMS_FILE: &str = "object-checksums.json";

impl Store {
    pub fn object_checksums(&self) -> ObjectChecksums {
        self.read_state(OBJECT_CHECKSUMS_FILE)
    }

    /// Adds what `target_id`'s bucket is now known to store, under the same short lock as the
    /// copy checks (every bucket target of a spray writes here from its own thread).
    pub fn remember_object_checksums(
        &self,
        target_id: &str,
        stored: &[(String, String)],
    ) -> Result<()> {
        if stored.is_empty() {
            return Ok(());
        }
        self.update_state(
            TARGET_VERIFY_LOCK,
            OBJECT_CHECKSUMS_FILE,
            |all: &mut ObjectChecksums| {
                let known = all.entry(target_id.to_string()).or_default();
                for (key, checksum) in stored {
                    known.insert(key.clone(), checksum.clone());
                }
            },
        )
    }
}

/// Last results per target (keyed by its stable id), kept in the store for `status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TargetState {
    /// How the target was described at its last run.
    #[serde(default)]
    pub name: String,
    pub last_attempt: Option<DateTime<Utc>>,
    pub last_success: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub sets_sent: usize,
    pub bytes_sent: u64,
    /// Of this node's sets, how many the target holds after its last successful run.
    pub sets_held: usize,
    /// Which of a set's files it carries (state files of older versions: all).
    #[serde(default)]
    pub carries: crate::config::Carried,
    /// Damaged copies there that sprays have sent again, in all.
    #[serde(default)]
    pub copies_healed: u64,
}

pub const SPRAY_STATE_FILE: &str = "spray-state.json";

impl Store {
    /// Each target's last result, by target id.
    pub fn spray_state(&self) -> BTreeMap<String, TargetState> {
        self.read_state(SPRAY_STATE_FILE)
    }

    pub fn write_spray_state(&self, state: &BTreeMap<String, TargetState>) -> Result<()> {
        self.write_state(SPRAY_STATE_FILE, state)
    }

    /// The record of the last runs, by kind.
    pub fn runs(&self) -> Runs {
        self.read_state(RUNS_FILE)
    }

    /// Records one run. Backup, spray and verify hold different locks, so a short lock of its
    /// own keeps two of them from losing each other's count.
    pub fn record_run(
        &self,
        kind: &str,
        start: DateTime<Utc>,
        took: Duration,
        ok: bool,
    ) -> Result<()> {
        self.update_state(RUNS_LOCK, RUNS_FILE, |runs: &mut Runs| {
            add_run(runs, kind, start, took, ok)
        })
    }
}

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
pub fn add_run(runs: &mut Runs, kind: &str, start: DateTime<Utc>, took: Duration, ok: bool) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_keeps_the_last_success_and_counts_apart() {
        let t0 = DateTime::from_timestamp(1_000, 0).unwrap();
        let t1 = DateTime::from_timestamp(2_000, 0).unwrap();
        let mut runs = Runs::new();
        add_run(&mut runs, "backup", t0, Duration::from_millis(1500), true);
        add_run(&mut runs, "backup", t1, Duration::from_secs(3), false);
        add_run(&mut runs, "spray", t1, Duration::from_secs(1), true);
        let backup = &runs["backup"];
        assert_eq!(backup.last_start, Some(t1));
        assert_eq!(backup.last_success, Some(t0));
        assert!(!backup.last_ok);
        assert_eq!((backup.successes, backup.failures), (1, 1));
        assert_eq!(backup.last_duration_seconds, 3.0);
        assert_eq!(runs["spray"].successes, 1);
    }
}
