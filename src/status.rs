//! What the store says about this node's backups: the newest verified set and its age, the
//! newest set of each origin, the sets that failed, the targets that are behind. One summary
//! that `status` prints and `metrics` exposes; computing it does no I/O.

use crate::store::TargetState;
use crate::store::{CopyCheck, CopyChecks, StoredSet};
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
    /// Sets dated after now plus `max_clock_skew` (a clock set wrong, or a forged date): they
    /// count for nothing, neither as the newest nor in `origins`.
    pub future: Vec<&'a StoredSet>,
    pub targets: &'a BTreeMap<String, TargetState>,
    /// Targets whose last run failed.
    pub behind: Vec<&'a str>,
    /// Copies on targets that their last verification found damaged: (target id, check).
    pub damaged: Vec<(&'a str, &'a CopyCheck)>,
    /// Where a set's files are off this node (`None` without targets).
    pub coverage: Option<Coverage>,
}

/// Which of a set's files the targets carry between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Coverage {
    /// Some target carries both files: one target alone can give a whole set back.
    pub whole_on_one: bool,
    pub snapshot: bool,
    pub resources: bool,
}

/// What the targets carry between them; `None` when there are none. A target that has never
/// taken a spray holds nothing yet and counts for nothing.
pub fn coverage(targets: &BTreeMap<String, TargetState>) -> Option<Coverage> {
    use crate::config::Carried;
    if targets.is_empty() {
        return None;
    }
    let any = |f: fn(Carried) -> bool| {
        targets
            .values()
            .any(|t| t.last_success.is_some() && f(t.carries))
    };
    Some(Coverage {
        whole_on_one: any(|c| c == Carried::All),
        snapshot: any(|c| c != Carried::Resources),
        resources: any(|c| c != Carried::Snapshot),
    })
}

impl Coverage {
    /// What `status` says when no single target holds whole sets, or a file is on none.
    pub fn note(&self) -> Option<&'static str> {
        match (self.whole_on_one, self.snapshot, self.resources) {
            (true, _, _) => None,
            (false, true, true) => Some(
                "no target holds whole sets alone: the snapshot and the resources archive are on different targets (fetch takes each file from a target that has it; keep both reachable for a restore)",
            ),
            (false, true, false) => {
                Some("WARNING: no target carries the resources archive: losing this node loses it")
            }
            (false, false, _) => {
                Some("WARNING: no target carries the snapshot: losing this node loses it")
            }
        }
    }
}

/// What `status` and `metrics` read from a store: its sets, the spray state, the run
/// records. Reading changes nothing; a missing store reads as empty.
#[derive(Debug, Default)]
pub struct StoreView {
    pub listing: crate::store::Listing,
    pub targets: BTreeMap<String, TargetState>,
    pub runs: crate::store::Runs,
    /// The last verification of each target's copies.
    pub copies: CopyChecks,
}

impl StoreView {
    pub fn read(root: &std::path::Path) -> anyhow::Result<StoreView> {
        Ok(match crate::store::Store::existing(root) {
            Some(store) => StoreView {
                listing: store.list()?,
                targets: store.spray_state(),
                runs: store.runs(),
                copies: store.copy_checks(),
            },
            None => StoreView::default(),
        })
    }

    /// The summary as of now, with the bound `max_age` and the clocks' `max_clock_skew`.
    pub fn summary(&self, max_age: Duration, max_clock_skew: Duration) -> Summary<'_> {
        let mut summary = summarize(
            &self.listing.sets,
            &self.targets,
            Utc::now(),
            max_age,
            max_clock_skew,
        );
        summary.damaged = damaged(&self.copies);
        summary
    }
}

/// The damaged copies among `copies`, by target id.
pub fn damaged(copies: &CopyChecks) -> Vec<(&str, &CopyCheck)> {
    copies
        .iter()
        .flat_map(|(target, checks)| {
            checks
                .values()
                .filter(|c| c.problem.is_some())
                .map(move |c| (target.as_str(), c))
        })
        .collect()
}

/// Whether the next set, as large as the newest (`next` bytes), fits in the `free` bytes of the
/// store's filesystem with `floor` (`retention.min_free_space`) left free; the warning when not.
pub fn room_note(free: u64, next: u64, floor: u64) -> Option<String> {
    let human = crate::units::human_size;
    (free < next.saturating_add(floor)).then(|| {
        format!(
            "WARNING: the next set (about {}, as the newest) would leave {} free in the store's \
             filesystem, under the floor of {} (retention.min_free_space): the next backup prunes \
             by policy first, and is refused if that is not enough",
            human(next),
            human(free.saturating_sub(next)),
            human(floor)
        )
    })
}

/// Whether the newest set was taken from the etcd cluster this node runs now (`live`); `None`
/// when either is not known.
pub fn of_live_cluster(
    newest: Option<&crate::manifest::Manifest>,
    live: Option<&str>,
) -> Option<bool> {
    let of_set = newest?.cluster.as_ref()?.cluster_id.as_deref()?;
    Some(of_set == live?)
}

/// When the newest set was taken from another etcd cluster than the one this node runs now
/// (`live`, from its WAL): after a restore the sets before it belong to another history, and
/// the newest of them is no backup of the cluster as it is.
pub fn history_note(
    newest: Option<&crate::manifest::Manifest>,
    live: Option<&str>,
) -> Option<String> {
    let set = newest?;
    let of_set = set.cluster.as_ref()?.cluster_id.as_deref()?;
    let live = live?;
    (of_set != live).then(|| {
        format!(
            "WARNING: the newest set {} is of etcd cluster {of_set}; this node's etcd is cluster {live} now \
             (restored since?): the sets of {of_set} are an earlier history, take a backup of this one",
            set.id
        )
    })
}

pub fn summarize<'a>(
    sets: &'a [StoredSet],
    targets: &'a BTreeMap<String, TargetState>,
    now: DateTime<Utc>,
    max_age: Duration,
    max_clock_skew: Duration,
) -> Summary<'a> {
    let not_after = crate::units::after(now, max_clock_skew);
    let mut origins: BTreeMap<&str, Origin> = BTreeMap::new();
    let mut future = Vec::new();
    for set in sets {
        if set.manifest.created > not_after {
            future.push(set);
            continue;
        }
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
        origin.bytes = origin.bytes.saturating_add(set.manifest.total_size());
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
        future,
        targets,
        behind,
        damaged: Vec::new(),
        coverage: coverage(targets),
    }
}

/// What `status` concludes, worst first: the CLI maps it to an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// The newest set of an origin is damaged or failed its last verification.
    Failed,
    /// No verified set, or the newest is older than `status.max_age`.
    Stale,
    /// Fresh, but a target's last run failed or a copy on it is damaged.
    Behind,
    Ok,
}

impl Summary<'_> {
    /// A failed newest set first, then staleness, then a target behind.
    pub fn health(&self) -> Health {
        if !self.failed.is_empty() {
            Health::Failed
        } else if !self.fresh {
            Health::Stale
        } else if !self.behind.is_empty() || !self.damaged.is_empty() {
            Health::Behind
        } else {
            Health::Ok
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_next_set_fits_above_the_floor_or_is_warned_about() {
        // (free, next, floor) → fits
        for (free, next, floor, fits) in [
            (100, 10, 50, true),
            (60, 10, 50, true),
            (59, 10, 50, false),
            (5, 10, 0, false),
            (u64::MAX, u64::MAX, u64::MAX, true),
        ] {
            let note = room_note(free, next, floor);
            assert_eq!(note.is_none(), fits, "{free} {next} {floor}: {note:?}");
        }
        let note = room_note(59, 10, 50).unwrap();
        assert!(
            note.contains("would leave 49B free") && note.contains("floor of 50B"),
            "{note}"
        );
    }

    #[test]
    fn the_newest_set_is_of_the_live_cluster_or_of_an_earlier_history() {
        let mut m = crate::manifest::tests::sample();
        // (the set's cluster, the live one) → of the live cluster, and the warning
        let cases = [
            (
                Some("00000000000000aa"),
                Some("00000000000000aa"),
                Some(true),
            ),
            (
                Some("00000000000000aa"),
                Some("00000000000000bb"),
                Some(false),
            ),
            (None, Some("00000000000000bb"), None),
            (Some("00000000000000aa"), None, None),
        ];
        for (of_set, live, expected) in cases {
            m.cluster = of_set.map(|c| crate::cluster::ClusterFacts {
                cluster_id: Some(c.to_string()),
                ..Default::default()
            });
            assert_eq!(
                of_live_cluster(Some(&m), live),
                expected,
                "{of_set:?} {live:?}"
            );
            let note = history_note(Some(&m), live);
            assert_eq!(note.is_some(), expected == Some(false), "{note:?}");
            if let Some(note) = note {
                assert!(
                    note.contains(&m.id) && note.contains("00000000000000bb"),
                    "{note}"
                );
            }
        }
        assert_eq!(of_live_cluster(None, Some("00000000000000aa")), None);
    }
    use super::*;
    use crate::manifest::{Checks, FileEntry, Manifest};

    fn at(minute: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + minute * 60, 0).unwrap()
    }

    fn set(origin: &str, minute: i64, problem: Option<&str>) -> StoredSet {
        StoredSet {
            dir: Default::default(),
            manifest: Manifest {
                format: 1,
                id: format!("{minute}-{origin}"),
                origin: origin.to_string(),
                created: at(minute),
                tool_version: String::new(),
                dirty: false,
                files: vec![FileEntry {
                    name: "snapshot_x.db".into(),
                    size: 100,
                    sha256: String::new(),
                }],
                checks: Checks {
                    snapshot_page_size: 4096,
                    snapshot_sha256_trailer: true,
                    static_pod_dirs: vec![],
                    etcd: None,
                },
                cluster: None,
            },
            manifest_json: String::new(),
            manifest_sha256: String::new(),
            problem: problem.map(String::from),
            on_disk_problem: None,
            last_verification: None,
            signature: None,
            sealed: None,
        }
    }

    fn state(error: Option<&str>) -> TargetState {
        TargetState {
            last_error: error.map(String::from),
            ..Default::default()
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);
    const SKEW: Duration = Duration::from_secs(300);

    #[test]
    fn coverage_says_whether_one_target_holds_whole_sets_and_what_is_on_none() {
        use crate::config::Carried::{self, All, Resources, Snapshot};
        let targets = |carried: &[Carried]| -> BTreeMap<String, TargetState> {
            carried
                .iter()
                .enumerate()
                .map(|(i, &carries)| {
                    let state = TargetState {
                        carries,
                        last_success: Some(at(0)),
                        ..Default::default()
                    };
                    (format!("s3:t{i}"), state)
                })
                .collect()
        };
        // (what the targets carry, (whole on one, snapshot somewhere, resources somewhere), note)
        type Case<'a> = (&'a [Carried], (bool, bool, bool), Option<&'a str>);
        let cases: [Case; 7] = [
            (&[All], (true, true, true), None),
            (&[Snapshot, All], (true, true, true), None),
            (
                &[Snapshot, Resources],
                (false, true, true),
                Some("no target holds whole sets"),
            ),
            (
                &[Resources, Snapshot, Snapshot],
                (false, true, true),
                Some("no target holds"),
            ),
            (
                &[Snapshot],
                (false, true, false),
                Some("no target carries the resources"),
            ),
            (
                &[Snapshot, Snapshot],
                (false, true, false),
                Some("resources archive"),
            ),
            (
                &[Resources],
                (false, false, true),
                Some("no target carries the snapshot"),
            ),
        ];
        for (carried, (whole, snapshot, resources), note) in cases {
            let got = coverage(&targets(carried)).unwrap();
            assert_eq!(
                (got.whole_on_one, got.snapshot, got.resources),
                (whole, snapshot, resources),
                "{carried:?}"
            );
            match (got.note(), note) {
                (None, None) => {}
                (Some(got), Some(want)) => assert!(got.contains(want), "{carried:?}: {got}"),
                (got, want) => panic!("{carried:?}: {got:?}, want {want:?}"),
            }
        }
        assert_eq!(coverage(&BTreeMap::new()), None);
        // A target that never took a spray holds nothing yet.
        let mut never = targets(&[All, Snapshot]);
        never.get_mut("s3:t0").unwrap().last_success = None;
        let got = coverage(&never).unwrap();
        assert_eq!(
            (got.whole_on_one, got.snapshot, got.resources),
            (false, true, false)
        );
        // A state file written before `carries` existed reads as whole.
        let old: TargetState = serde_json::from_str(r#"{"last_attempt":null,"last_success":null,"last_error":null,"sets_sent":0,"bytes_sent":0,"sets_held":1}"#).unwrap();
        assert_eq!(old.carries, All);
    }

    #[test]
    fn summaries_and_health() {
        use Health::{Behind, Failed, Ok as Fine, Stale};
        let ok_target: BTreeMap<String, TargetState> = [("ssh:m1".into(), state(None))].into();
        let behind: BTreeMap<String, TargetState> = [
            ("ssh:m1".into(), state(None)),
            ("ssh:m2".into(), state(Some("refused"))),
        ]
        .into();
        // (sets, targets, now in minutes, expected newest id, failed ids, health)
        type Case = (
            Vec<StoredSet>,
            BTreeMap<String, TargetState>,
            i64,
            Option<&'static str>,
            Vec<&'static str>,
            Health,
        );
        let cases: Vec<Case> = vec![
            (vec![], ok_target.clone(), 0, None, vec![], Stale),
            (
                vec![set("m0", 0, None)],
                ok_target.clone(),
                60,
                Some("0-m0"),
                vec![],
                Fine,
            ),
            // Exactly at the bound is still fresh; a minute over is stale.
            (
                vec![set("m0", 0, None)],
                ok_target.clone(),
                61,
                Some("0-m0"),
                vec![],
                Stale,
            ),
            (
                vec![set("m0", 0, None)],
                behind.clone(),
                10,
                Some("0-m0"),
                vec![],
                Behind,
            ),
            // The newest of an origin failed: exit 1 even though an older one is fresh.
            (
                vec![set("m0", 0, None), set("m0", 5, Some("bad"))],
                ok_target.clone(),
                10,
                Some("0-m0"),
                vec!["5-m0"],
                Failed,
            ),
            // An older failed set is not the newest: no failure.
            (
                vec![set("m0", 0, Some("bad")), set("m0", 5, None)],
                ok_target.clone(),
                10,
                Some("5-m0"),
                vec![],
                Fine,
            ),
            // The newest verified set of any origin counts (failover: m1 took over).
            (
                vec![set("m0", 0, None), set("m1", 90, None)],
                ok_target.clone(),
                120,
                Some("90-m1"),
                vec![],
                Fine,
            ),
            // A set dated past the skew (2099, or a forged date) counts for nothing: stale.
            (
                vec![set("m0", 0, None), set("m0", 40_000_000, None)],
                ok_target.clone(),
                120,
                Some("0-m0"),
                vec![],
                Stale,
            ),
            // Within the skew: fresh.
            (
                vec![set("m0", 124, None)],
                ok_target.clone(),
                120,
                Some("124-m0"),
                vec![],
                Fine,
            ),
            // Input order does not matter.
            (
                vec![set("m1", 90, None), set("m0", 0, None)],
                ok_target.clone(),
                120,
                Some("90-m1"),
                vec![],
                Fine,
            ),
        ];
        for (i, (sets, targets, now, newest, failed, code)) in cases.iter().enumerate() {
            let summary = summarize(sets, targets, at(*now), HOUR, SKEW);
            assert_eq!(summary.newest.map(|s| s.id()), *newest, "case {i}");
            let failed_ids: Vec<&str> = summary.failed.iter().map(|s| s.id()).collect();
            assert_eq!(&failed_ids, failed, "case {i}");
            assert_eq!(summary.health(), *code, "case {i}");
        }
    }

    #[test]
    fn origins_count_and_size_their_sets() {
        let sets = vec![
            set("m0", 0, None),
            set("m0", 5, Some("bad")),
            set("m1", 3, None),
        ];
        let targets = BTreeMap::new();
        let summary = summarize(&sets, &targets, at(10), HOUR, SKEW);
        let m0 = &summary.origins["m0"];
        assert_eq!((m0.verified, m0.failed, m0.bytes), (1, 1, 200));
        assert_eq!(m0.newest.unwrap().id(), "5-m0");
        assert_eq!(m0.newest_verified.unwrap().id(), "0-m0");
        assert_eq!(summary.origins["m1"].verified, 1);
        assert_eq!(summary.age, Some(Duration::from_secs(7 * 60)));
    }

    #[test]
    fn future_dated_sets_are_listed_apart() {
        let sets = vec![set("m0", 0, None), set("m0", 100, None)];
        let targets = BTreeMap::new();
        let summary = summarize(&sets, &targets, at(10), HOUR, SKEW);
        let future: Vec<&str> = summary.future.iter().map(|s| s.id()).collect();
        assert_eq!(future, ["100-m0"]);
        assert_eq!(summary.origins["m0"].verified, 1);
        assert_eq!(summary.newest.unwrap().id(), "0-m0");
    }
}
