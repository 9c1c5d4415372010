//! Retention policy: a pure function from sets + policy to a keep/delete plan with reasons.
//!
//! The `keep_*` rules follow restic's `forget` semantics and are applied per origin node:
//! walking that node's sets newest first, `keep_last N` keeps the N newest; `keep_hourly N`
//! keeps the newest set of each of the N most recent hours that have a set (likewise daily,
//! weekly (ISO weeks), monthly, yearly); `keep_within D` keeps every set created within D of
//! that node's newest set (relative to the newest set, not to "now", so a node that stopped
//! taking backups does not see its history expire). A set kept by any rule stays. Calendar
//! buckets are in UTC, the clock of RHCOS masters.
//!
//! Two safety rules come before everything else: the newest set of each origin, and the newest
//! clean (not `--force`d) set of each origin, are never deleted.
//!
//! And one across histories: a restore starts a new etcd cluster (a new cluster ID), and the
//! sets taken before it belong to another history. The newest set that names a cluster names
//! the live one; until the live cluster has a clean set of its own (taken while no operator was
//! progressing, which after a restore takes a while), the newest clean set of an earlier
//! cluster is never deleted either: the way back if the restore went wrong. One set, however
//! many clusters the sets name: a sender that forges cluster IDs can pin no more.
//!
//! A set dated after `not_after` (now plus the clocks' allowed skew) counts for nothing: it is
//! kept, takes no place in any rule, is never the newest of its origin, and is the first to go
//! under size pressure. (A clock set wrong, or a forged date, must not push real sets out.)
//!
//! Then store-wide size pressure: while the kept sets exceed `max_total_size`, or the free
//! space would stay below `min_free_space`, the oldest unprotected kept set goes.

use chrono::{DateTime, Datelike, Timelike, Utc};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// What the planner needs to know about one set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetInfo {
    pub id: String,
    pub origin: String,
    pub created: DateTime<Utc>,
    pub size: u64,
    pub dirty: bool,
    /// The etcd cluster ID the set was taken from (its history); `None` when not recorded.
    pub cluster: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub keep_last: u32,
    pub keep_hourly: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    pub keep_yearly: u32,
    pub keep_within: Option<Duration>,
    pub max_total_size: Option<u64>,
    pub min_free_space: Option<u64>,
    /// The floor is at least this share (percent) of the store's filesystem: folded into
    /// `min_free_space` for the filesystem at hand by [`Policy::floor_on`] when settings load.
    pub min_free_percent: u8,
}

impl Policy {
    /// The free-space floor on a filesystem of `fs_size` bytes: the larger of `min_free_space`
    /// and `min_free_percent` of the filesystem (a small master's disk needs its 5 GiB for
    /// etcd, a large one a share); `None` when neither is set.
    pub fn floor_on(&self, fs_size: u64) -> Option<u64> {
        let share = (u128::from(fs_size) * u128::from(self.min_free_percent) / 100) as u64;
        // In whole MiB, as a person would write it (check-config prints it).
        let share = share - share % (1 << 20);
        match (self.min_free_space, self.min_free_percent) {
            (None, 0) => None,
            (bytes, _) => Some(bytes.unwrap_or(0).max(share)),
        }
    }

    /// A policy with no keep rule would delete everything but the newest set: refused.
    pub fn is_empty(&self) -> bool {
        self.keep_last == 0
            && self.keep_hourly == 0
            && self.keep_daily == 0
            && self.keep_weekly == 0
            && self.keep_monthly == 0
            && self.keep_yearly == 0
            && self.keep_within.is_none_or(|d| d.is_zero())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeepReason {
    /// Dated after `not_after`: kept, but counted by no rule.
    FutureDated,
    NewestOfOrigin,
    NewestClean,
    /// The newest clean set of an earlier etcd cluster, while the live one has no clean set.
    LastOfHistory,
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
    Within,
}

impl fmt::Display for KeepReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeepReason::FutureDated => "dated in the future: counted by no rule",
            KeepReason::NewestOfOrigin => "newest set of its origin",
            KeepReason::NewestClean => "newest clean set of its origin",
            KeepReason::LastOfHistory => {
                "newest clean set of an earlier etcd cluster (the live one has no clean set yet)"
            }
            KeepReason::Last => "keep_last",
            KeepReason::Hourly => "keep_hourly",
            KeepReason::Daily => "keep_daily",
            KeepReason::Weekly => "keep_weekly",
            KeepReason::Monthly => "keep_monthly",
            KeepReason::Yearly => "keep_yearly",
            KeepReason::Within => "keep_within",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteReason {
    /// No keep rule matched.
    NoRule,
    /// Kept by a rule, but the store is over `max_total_size`.
    MaxTotalSize,
    /// Kept by a rule, but free space is under `min_free_space`.
    MinFreeSpace,
}

impl fmt::Display for DeleteReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeleteReason::NoRule => "no keep rule matches",
            DeleteReason::MaxTotalSize => "store exceeds max_total_size",
            DeleteReason::MinFreeSpace => "free space below min_free_space",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub set: SetInfo,
    /// Every rule that would keep the set (may be non-empty for a set deleted by size pressure).
    pub keep_reasons: Vec<KeepReason>,
    /// `Some` when the set goes.
    pub delete: Option<DeleteReason>,
}

impl Decision {
    pub fn keep(&self) -> bool {
        self.delete.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// One decision per input set, newest first.
    pub decisions: Vec<Decision>,
    /// A size limit is still not met after deleting every unprotected set.
    pub pressure_unmet: Option<DeleteReason>,
}

impl Plan {
    pub fn to_delete(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().filter(|d| !d.keep())
    }
}

type Bucket = fn(&DateTime<Utc>) -> i64;

const BUCKET_RULES: [(KeepReason, Bucket); 5] = [
    (KeepReason::Hourly, |t| {
        (t.year() as i64) * 1_000_000
            + (t.month() as i64) * 10_000
            + (t.day() as i64) * 100
            + t.hour() as i64
    }),
    (KeepReason::Daily, |t| {
        (t.year() as i64) * 10_000 + (t.month() as i64) * 100 + t.day() as i64
    }),
    (KeepReason::Weekly, |t| {
        let week = t.iso_week();
        (week.year() as i64) * 100 + week.week() as i64
    }),
    (KeepReason::Monthly, |t| {
        (t.year() as i64) * 100 + t.month() as i64
    }),
    (KeepReason::Yearly, |t| t.year() as i64),
];

fn bucket_count(policy: &Policy, reason: KeepReason) -> u32 {
    match reason {
        KeepReason::Hourly => policy.keep_hourly,
        KeepReason::Daily => policy.keep_daily,
        KeepReason::Weekly => policy.keep_weekly,
        KeepReason::Monthly => policy.keep_monthly,
        KeepReason::Yearly => policy.keep_yearly,
        _ => 0,
    }
}

impl Policy {
    /// The same keep rules without `max_total_size` and `min_free_space`: what a receiver
    /// applies after a delivery, so that a sender can never make it delete sets to make room
    /// (whether a set fits is decided before it is received).
    pub fn without_size_pressure(&self) -> Policy {
        Policy {
            max_total_size: None,
            min_free_space: None,
            min_free_percent: 0,
            ..self.clone()
        }
    }

    fn bucket_rules(&self) -> impl Iterator<Item = (KeepReason, Bucket, u32)> + '_ {
        BUCKET_RULES
            .into_iter()
            .map(|(reason, bucket)| (reason, bucket, bucket_count(self, reason)))
            .filter(|(_, _, count)| *count > 0)
    }
}

/// Of `held` (sets of one origin), the one whose place `set` of that origin would take as the
/// newest of an hour, day, week, month or year that the policy keeps: the newest held set of
/// that period, when it is older than `set`. `None` when `set` takes no such place (its periods
/// hold nothing, or something newer).
pub fn takes_place_of<'a>(
    set: &SetInfo,
    held: &'a [SetInfo],
    policy: &Policy,
) -> Option<&'a SetInfo> {
    let order = |s: &SetInfo| (s.created, s.id.clone());
    policy.bucket_rules().find_map(|(_, bucket, _)| {
        let period = bucket(&set.created);
        held.iter()
            .filter(|h| bucket(&h.created) == period)
            .max_by_key(|h| order(h))
            .filter(|newest| order(newest) < order(set))
    })
}

/// Of `sorted` (newest first), the newest clean set of an etcd cluster other than the live one
/// (the cluster of the newest set that names one), when the live one has no clean set.
fn last_of_history(sorted: &[&SetInfo], not_after: DateTime<Utc>) -> Option<usize> {
    let present = |s: &SetInfo| s.created <= not_after;
    let live = sorted
        .iter()
        .filter(|s| present(s))
        .find_map(|s| s.cluster.as_deref())?;
    let clean_in = |cluster: &str| {
        sorted
            .iter()
            .filter(|s| present(s))
            .any(|s| !s.dirty && s.cluster.as_deref() == Some(cluster))
    };
    if clean_in(live) {
        return None;
    }
    sorted
        .iter()
        .position(|s| present(s) && !s.dirty && s.cluster.as_deref().is_some_and(|c| c != live))
}

/// Plans retention for one store. `free_bytes` is the free space of the store's filesystem now
/// (only consulted when `min_free_space` is set); sets created after `not_after` are
/// future-dated (see the module's doc).
pub fn plan(sets: &[SetInfo], policy: &Policy, free_bytes: u64, not_after: DateTime<Utc>) -> Plan {
    // Newest first; ties broken by id so the plan never depends on input order.
    let mut sorted: Vec<&SetInfo> = sets.iter().collect();
    sorted.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| b.id.cmp(&a.id)));

    let mut reasons: Vec<Vec<KeepReason>> = vec![Vec::new(); sorted.len()];
    let future = |set: &SetInfo| set.created > not_after;
    let mut by_origin: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, set) in sorted.iter().enumerate() {
        if future(set) {
            reasons[index].push(KeepReason::FutureDated);
            continue;
        }
        by_origin
            .entry(set.origin.as_str())
            .or_default()
            .push(index);
    }

    for indices in by_origin.values() {
        let newest = &sorted[indices[0]];
        reasons[indices[0]].push(KeepReason::NewestOfOrigin);
        if let Some(&clean) = indices.iter().find(|&&i| !sorted[i].dirty) {
            reasons[clean].push(KeepReason::NewestClean);
        }
        for &index in indices.iter().take(policy.keep_last as usize) {
            reasons[index].push(KeepReason::Last);
        }
        for (reason, bucket, count) in policy.bucket_rules() {
            let mut remaining = count;
            let mut last_bucket = None;
            for &index in indices {
                if remaining == 0 {
                    break;
                }
                let value = bucket(&sorted[index].created);
                if last_bucket != Some(value) {
                    reasons[index].push(reason);
                    last_bucket = Some(value);
                    remaining -= 1;
                }
            }
        }
        if let Some(within) = policy.keep_within.filter(|d| !d.is_zero()) {
            let within = chrono::TimeDelta::from_std(within).unwrap_or(chrono::TimeDelta::MAX);
            let cutoff = newest.created.checked_sub_signed(within);
            for &index in indices {
                if cutoff.is_none_or(|cutoff| sorted[index].created > cutoff) {
                    reasons[index].push(KeepReason::Within);
                }
            }
        }
    }

    if let Some(index) = last_of_history(&sorted, not_after) {
        reasons[index].push(KeepReason::LastOfHistory);
    }

    let mut delete: Vec<Option<DeleteReason>> = reasons
        .iter()
        .map(|r| r.is_empty().then_some(DeleteReason::NoRule))
        .collect();

    // Size pressure, store-wide, oldest unprotected kept set first.
    let protected = |r: &[KeepReason]| {
        r.iter().any(|k| {
            matches!(
                k,
                KeepReason::NewestOfOrigin | KeepReason::NewestClean | KeepReason::LastOfHistory
            )
        })
    };
    let mut kept_bytes: u64 = 0;
    let mut freed_bytes: u64 = 0;
    for (index, set) in sorted.iter().enumerate() {
        if delete[index].is_some() {
            freed_bytes = freed_bytes.saturating_add(set.size);
        } else {
            kept_bytes = kept_bytes.saturating_add(set.size);
        }
    }
    let over = |kept: u64, freed: u64| -> Option<DeleteReason> {
        if policy.max_total_size.is_some_and(|max| kept > max) {
            Some(DeleteReason::MaxTotalSize)
        } else if policy
            .min_free_space
            .is_some_and(|min| free_bytes.saturating_add(freed) < min)
        {
            Some(DeleteReason::MinFreeSpace)
        } else {
            None
        }
    };
    let mut pressure_unmet = None;
    // Future-dated sets first (they count for nothing), then the oldest.
    let (dated_ahead, present): (Vec<usize>, Vec<usize>) =
        (0..sorted.len()).partition(|&index| future(sorted[index]));
    for index in dated_ahead.into_iter().chain(present.into_iter().rev()) {
        let Some(reason) = over(kept_bytes, freed_bytes) else {
            break;
        };
        if delete[index].is_some() || protected(&reasons[index]) {
            continue;
        }
        delete[index] = Some(reason);
        kept_bytes -= sorted[index].size;
        freed_bytes = freed_bytes.saturating_add(sorted[index].size);
    }
    if let Some(reason) = over(kept_bytes, freed_bytes) {
        pressure_unmet = Some(reason);
    }

    let decisions = sorted
        .into_iter()
        .zip(reasons)
        .zip(delete)
        .map(|((set, mut keep_reasons), delete)| {
            keep_reasons.sort();
            keep_reasons.dedup();
            Decision {
                set: set.clone(),
                keep_reasons,
                delete,
            }
        })
        .collect();
    Plan {
        decisions,
        pressure_unmet,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// The plan with nothing dated in the future.
    fn plan(sets: &[SetInfo], policy: &Policy, free: u64) -> Plan {
        super::plan(sets, policy, free, DateTime::<Utc>::MAX_UTC)
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn set(origin: &str, created: &str) -> SetInfo {
        SetInfo {
            id: format!("{created}-{origin}"),
            origin: origin.to_string(),
            created: at(created),
            size: 100,
            dirty: false,
            cluster: None,
        }
    }

    fn kept(plan: &Plan) -> Vec<&str> {
        plan.decisions
            .iter()
            .filter(|d| d.keep())
            .map(|d| d.set.created_str())
            .collect()
    }

    impl SetInfo {
        fn created_str(&self) -> &str {
            self.id.split("Z-").next().unwrap()
        }
    }

    /// Sets of one origin at the given times, newest last in the input on purpose.
    fn history(times: &[&str]) -> Vec<SetInfo> {
        times.iter().map(|t| set("m0", t)).collect()
    }

    #[test]
    fn a_restore_keeps_the_old_history_until_the_new_one_has_a_clean_set() {
        // (old cluster's sets, new cluster's sets with dirty flags, max_total_size) → kept.
        let old = |t: &str| SetInfo {
            cluster: Some("00000000000000aa".into()),
            ..set("m0", t)
        };
        let new = |t: &str, dirty: bool| SetInfo {
            cluster: Some("00000000000000bb".into()),
            dirty,
            ..set("m0", t)
        };
        let policy = Policy {
            keep_last: 1,
            max_total_size: Some(100),
            ..Policy::default()
        };
        // After the restore, operators progress: the new cluster's sets are forced (dirty).
        let sets = vec![
            old("2026-01-01T00:00:00Z"),
            old("2026-01-01T01:00:00Z"),
            new("2026-01-01T03:00:00Z", true),
            new("2026-01-01T04:00:00Z", true),
        ];
        let plan = plan(&sets, &policy, 0);
        assert_eq!(kept(&plan), ["2026-01-01T04:00:00", "2026-01-01T01:00:00"]);
        let guard = plan
            .decisions
            .iter()
            .find(|d| d.keep() && d.set.cluster.as_deref() == Some("00000000000000aa"))
            .unwrap();
        assert!(guard.keep_reasons.contains(&KeepReason::LastOfHistory));
        // Once the new cluster has a clean set, the old history goes by the policy.
        let mut settled = sets.clone();
        settled.push(new("2026-01-01T05:00:00Z", false));
        assert_eq!(
            kept(&super::tests::plan(&settled, &policy, 0)),
            ["2026-01-01T05:00:00"]
        );
        // Sets that name many clusters (a sender forging IDs) pin one set, not one each.
        let forged: Vec<SetInfo> = (0..5)
            .map(|n| SetInfo {
                cluster: Some(format!("{n:016x}")),
                ..set("m1", &format!("2026-01-01T0{n}:30:00Z"))
            })
            .chain([new("2026-01-01T06:00:00Z", true)])
            .collect();
        let pinned = super::tests::plan(&forged, &policy, 0)
            .decisions
            .iter()
            .filter(|d| d.keep_reasons.contains(&KeepReason::LastOfHistory))
            .count();
        assert_eq!(pinned, 1);
        // Sets that name no cluster (taken before it was recorded) are no history of their own.
        let unrecorded = vec![
            set("m0", "2026-01-01T00:00:00Z"),
            new("2026-01-01T04:00:00Z", true),
        ];
        assert!(
            super::tests::plan(&unrecorded, &policy, 0)
                .decisions
                .iter()
                .all(|d| !d.keep_reasons.contains(&KeepReason::LastOfHistory))
        );
    }

    #[test]
    fn keep_last_keeps_the_newest_n() {
        let sets = history(&[
            "2026-01-01T00:00:00Z",
            "2026-01-01T01:00:00Z",
            "2026-01-01T02:00:00Z",
            "2026-01-01T03:00:00Z",
        ]);
        let policy = Policy {
            keep_last: 2,
            ..Policy::default()
        };
        let plan = plan(&sets, &policy, 0);
        assert_eq!(kept(&plan), ["2026-01-01T03:00:00", "2026-01-01T02:00:00"]);
        assert!(
            plan.to_delete()
                .all(|d| d.delete == Some(DeleteReason::NoRule))
        );
    }

    #[test]
    fn bucket_rules_keep_newest_per_bucket_like_restic() {
        // Table: (policy, expected kept) over one fixed history.
        let sets = history(&[
            "2026-03-01T10:05:00Z",
            "2026-03-01T10:40:00Z",
            "2026-03-01T11:10:00Z",
            "2026-03-02T09:00:00Z",
            "2026-03-02T23:59:59Z",
            "2026-03-09T12:00:00Z",
            "2026-04-01T00:00:00Z",
        ]);
        let table: &[(Policy, &[&str])] = &[
            (
                Policy {
                    keep_hourly: 3,
                    ..Policy::default()
                },
                &[
                    "2026-04-01T00:00:00",
                    "2026-03-09T12:00:00",
                    "2026-03-02T23:59:59",
                ],
            ),
            (
                Policy {
                    keep_daily: 3,
                    ..Policy::default()
                },
                &[
                    "2026-04-01T00:00:00",
                    "2026-03-09T12:00:00",
                    "2026-03-02T23:59:59",
                ],
            ),
            (
                Policy {
                    keep_daily: 10,
                    ..Policy::default()
                },
                &[
                    "2026-04-01T00:00:00",
                    "2026-03-09T12:00:00",
                    "2026-03-02T23:59:59",
                    "2026-03-01T11:10:00",
                ],
            ),
            (
                // 2026-03-01 is a Sunday (ISO week 9), 03-02 a Monday (week 10).
                Policy {
                    keep_weekly: 4,
                    ..Policy::default()
                },
                &[
                    "2026-04-01T00:00:00",
                    "2026-03-09T12:00:00",
                    "2026-03-02T23:59:59",
                    "2026-03-01T11:10:00",
                ],
            ),
            (
                Policy {
                    keep_monthly: 5,
                    ..Policy::default()
                },
                &["2026-04-01T00:00:00", "2026-03-09T12:00:00"],
            ),
            (
                Policy {
                    keep_yearly: 1,
                    ..Policy::default()
                },
                &["2026-04-01T00:00:00"],
            ),
            (
                Policy {
                    keep_hourly: 100,
                    ..Policy::default()
                },
                &[
                    "2026-04-01T00:00:00",
                    "2026-03-09T12:00:00",
                    "2026-03-02T23:59:59",
                    "2026-03-02T09:00:00",
                    "2026-03-01T11:10:00",
                    "2026-03-01T10:40:00",
                ],
            ),
            (
                // Within is relative to the newest set, strictly after the cutoff.
                Policy {
                    keep_within: Some(Duration::from_secs(23 * 86_400 + 12 * 3600)),
                    ..Policy::default()
                },
                &["2026-04-01T00:00:00", "2026-03-09T12:00:00"],
            ),
            (
                Policy {
                    keep_last: 1,
                    keep_monthly: 2,
                    ..Policy::default()
                },
                &["2026-04-01T00:00:00", "2026-03-09T12:00:00"],
            ),
        ];
        for (policy, expected) in table {
            let plan = plan(&sets, policy, 0);
            assert_eq!(kept(&plan), *expected, "{policy:?}");
        }
    }

    #[test]
    fn reasons_name_every_rule_that_keeps_a_set() {
        let sets = history(&["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"]);
        let policy = Policy {
            keep_last: 1,
            keep_daily: 2,
            ..Policy::default()
        };
        let plan = plan(&sets, &policy, 0);
        assert_eq!(
            plan.decisions[0].keep_reasons,
            [
                KeepReason::NewestOfOrigin,
                KeepReason::NewestClean,
                KeepReason::Last,
                KeepReason::Daily
            ]
        );
        assert_eq!(plan.decisions[1].keep_reasons, [KeepReason::Daily]);
    }

    #[test]
    fn origins_are_planned_independently() {
        let mut sets = history(&["2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z"]);
        sets.push(set("m1", "2025-06-01T00:00:00Z"));
        sets.push(set("m1", "2025-05-01T00:00:00Z"));
        let policy = Policy {
            keep_last: 1,
            ..Policy::default()
        };
        let plan = plan(&sets, &policy, 0);
        let kept: BTreeSet<_> = plan
            .decisions
            .iter()
            .filter(|d| d.keep())
            .map(|d| d.set.id.as_str())
            .collect();
        assert_eq!(
            kept,
            BTreeSet::from(["2026-01-01T01:00:00Z-m0", "2025-06-01T00:00:00Z-m1"])
        );
    }

    #[test]
    fn newest_clean_set_survives_dirty_ones() {
        let mut sets = history(&[
            "2026-01-01T00:00:00Z",
            "2026-01-01T01:00:00Z",
            "2026-01-01T02:00:00Z",
        ]);
        sets[1].dirty = true;
        sets[2].dirty = true;
        let policy = Policy {
            keep_last: 1,
            ..Policy::default()
        };
        let plan = plan(&sets, &policy, 0);
        assert_eq!(kept(&plan), ["2026-01-01T02:00:00", "2026-01-01T00:00:00"]);
        assert_eq!(plan.decisions[2].keep_reasons, [KeepReason::NewestClean]);
    }

    #[test]
    fn max_total_size_drops_oldest_kept_first_but_never_the_newest() {
        let sets = history(&[
            "2026-01-01T00:00:00Z",
            "2026-01-01T01:00:00Z",
            "2026-01-01T02:00:00Z",
            "2026-01-01T03:00:00Z",
        ]);
        let policy = Policy {
            keep_last: 10,
            max_total_size: Some(250),
            ..Policy::default()
        };
        let plan = plan(&sets, &policy, 0);
        assert_eq!(kept(&plan), ["2026-01-01T03:00:00", "2026-01-01T02:00:00"]);
        assert!(plan.pressure_unmet.is_none());
        assert_eq!(plan.decisions[3].delete, Some(DeleteReason::MaxTotalSize));

        let tiny = Policy {
            max_total_size: Some(10),
            ..policy
        };
        let plan = self::plan(&sets, &tiny, 0);
        assert_eq!(kept(&plan), ["2026-01-01T03:00:00"]);
        assert_eq!(plan.pressure_unmet, Some(DeleteReason::MaxTotalSize));
    }

    #[test]
    fn the_floor_is_the_larger_of_its_size_and_its_share() {
        const GIB: u64 = 1 << 30;
        let policy = |bytes, percent| Policy {
            keep_last: 1,
            min_free_space: bytes,
            min_free_percent: percent,
            ..Policy::default()
        };
        let table = [
            // (min_free_space, min_free_percent, filesystem, floor)
            (Some(5 * GIB), 15, 20 * GIB, Some(5 * GIB)),
            (Some(5 * GIB), 15, 120 * GIB, Some(18 * GIB)),
            (Some(5 * GIB), 15, 1000 * GIB, Some(150 * GIB)),
            (Some(5 * GIB), 0, 1000 * GIB, Some(5 * GIB)),
            (None, 10, 100 * GIB, Some(10 * GIB)),
            (Some(0), 0, 100 * GIB, Some(0)),
            (None, 0, 100 * GIB, None),
            (
                Some(5 * GIB),
                50,
                u64::MAX,
                Some(u64::MAX / 2 - (u64::MAX / 2) % (1 << 20)),
            ),
            (None, 15, 128_690_487_296, Some(18_409 << 20)),
        ];
        for (bytes, percent, fs, want) in table {
            assert_eq!(
                policy(bytes, percent).floor_on(fs),
                want,
                "{bytes:?} {percent}% of {fs}"
            );
        }
        // Without size pressure, no floor at all.
        assert_eq!(
            policy(Some(GIB), 15)
                .without_size_pressure()
                .floor_on(100 * GIB),
            None
        );
    }

    #[test]
    fn min_free_space_counts_space_freed_by_rules() {
        let sets = history(&[
            "2026-01-01T00:00:00Z",
            "2026-01-01T01:00:00Z",
            "2026-01-01T02:00:00Z",
            "2026-01-01T03:00:00Z",
        ]);
        let policy = Policy {
            keep_last: 3,
            min_free_space: Some(1_000),
            ..Policy::default()
        };
        // 850 free + 100 freed by keep_last = 950 < 1000: one more (the oldest kept) goes.
        let plan = plan(&sets, &policy, 850);
        assert_eq!(kept(&plan), ["2026-01-01T03:00:00", "2026-01-01T02:00:00"]);
        assert_eq!(plan.decisions[2].delete, Some(DeleteReason::MinFreeSpace));
        assert_eq!(plan.decisions[3].delete, Some(DeleteReason::NoRule));
        // 900 + 100 = 1000: floor met, nothing extra.
        assert_eq!(self::plan(&sets, &policy, 900).to_delete().count(), 1);
    }

    #[test]
    fn future_dated_sets_count_for_nothing_and_go_first_under_pressure() {
        let mut sets = history(&[
            "2026-01-01T00:00:00Z",
            "2026-01-01T01:00:00Z",
            "2026-01-01T02:00:00Z",
        ]);
        // Forged or from a wrong clock: 2099, and one just past the allowed skew.
        sets.extend(history(&["2099-01-01T00:00:00Z", "2026-01-01T03:00:01Z"]));
        let policy = Policy {
            keep_last: 2,
            ..Policy::default()
        };
        let not_after = at("2026-01-01T03:00:00Z");
        let plan = super::plan(&sets, &policy, 0, not_after);
        // The two real newest stay by keep_last; the future ones take no place and are kept.
        assert_eq!(
            kept(&plan),
            [
                "2099-01-01T00:00:00",
                "2026-01-01T03:00:01",
                "2026-01-01T02:00:00",
                "2026-01-01T01:00:00"
            ]
        );
        assert_eq!(plan.decisions[0].keep_reasons, [KeepReason::FutureDated]);
        assert_eq!(
            plan.decisions[2].keep_reasons,
            [
                KeepReason::NewestOfOrigin,
                KeepReason::NewestClean,
                KeepReason::Last
            ]
        );
        // Under pressure the future-dated go before any real set.
        let tight = Policy {
            max_total_size: Some(250),
            ..policy
        };
        let plan = super::plan(&sets, &tight, 0, not_after);
        assert_eq!(
            kept(&plan),
            ["2026-01-01T02:00:00", "2026-01-01T01:00:00"],
            "{plan:#?}"
        );
    }

    #[test]
    fn a_set_takes_the_place_of_the_older_newest_of_its_period() {
        let held = history(&[
            "2026-03-01T10:05:00Z",
            "2026-03-01T10:40:00Z",
            "2026-03-02T09:00:00Z",
        ]);
        let hourly = Policy {
            keep_hourly: 24,
            ..Policy::default()
        };
        let daily = Policy {
            keep_daily: 7,
            ..Policy::default()
        };
        let last_only = Policy {
            keep_last: 3,
            ..Policy::default()
        };
        // (candidate, policy, whose place it takes)
        let table: &[(&str, &Policy, Option<&str>)] = &[
            // Later in the hour of 10:40: takes its place as the newest of hour 10.
            ("2026-03-01T10:50:00Z", &hourly, Some("2026-03-01T10:40:00")),
            // Earlier than 10:40 in the same hour: 10:40 stays the newest.
            ("2026-03-01T10:20:00Z", &hourly, None),
            // An hour nothing is held in.
            ("2026-03-01T12:00:00Z", &hourly, None),
            // Hour 12 of day 1 is after everything that day: the newest of day 1.
            ("2026-03-01T12:00:00Z", &daily, Some("2026-03-01T10:40:00")),
            // Newer than everything: the newest of day 2.
            ("2026-03-02T10:00:00Z", &daily, Some("2026-03-02T09:00:00")),
            // keep_last keeps no periods.
            ("2026-03-01T10:50:00Z", &last_only, None),
        ];
        for (candidate, policy, expected) in table {
            let set = self::set("m0", candidate);
            let found = takes_place_of(&set, &held, policy).map(|s| s.created_str());
            assert_eq!(found, *expected, "{candidate} under {policy:?}");
        }
    }

    #[test]
    fn empty_policy_is_detected() {
        assert!(Policy::default().is_empty());
        assert!(
            Policy {
                keep_within: Some(Duration::ZERO),
                ..Policy::default()
            }
            .is_empty()
        );
        assert!(
            !Policy {
                keep_weekly: 1,
                ..Policy::default()
            }
            .is_empty()
        );
        assert!(
            Policy {
                max_total_size: Some(1),
                ..Policy::default()
            }
            .is_empty()
        );
    }

    fn arb_sets() -> impl Strategy<Value = Vec<SetInfo>> {
        // Histories: none recorded (older sets), or one of three etcd clusters.
        let one = (
            0usize..3,
            0i64..(400 * 86_400),
            1u64..1000,
            any::<bool>(),
            0u8..4,
        );
        prop::collection::vec(one, 0..60).prop_map(|raw| {
            let base = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
            raw.into_iter()
                .enumerate()
                .map(|(n, (origin, offset, size, dirty, cluster))| {
                    let created = base + chrono::TimeDelta::seconds(offset);
                    SetInfo {
                        id: format!("{}-{n}-m{origin}", created.format("%Y%m%dT%H%M%SZ")),
                        origin: format!("m{origin}"),
                        created,
                        size,
                        dirty,
                        cluster: (cluster > 0).then(|| format!("{cluster:016x}")),
                    }
                })
                .collect()
        })
    }

    fn arb_policy() -> impl Strategy<Value = Policy> {
        (
            (0u32..5, 0u32..30, 0u32..10, 0u32..6, 0u32..4, 0u32..2),
            prop::option::of(0u64..(60 * 86_400)),
            prop::option::of(0u64..30_000),
            prop::option::of(0u64..30_000),
        )
            .prop_map(
                |((last, hourly, daily, weekly, monthly, yearly), within, max, min)| Policy {
                    keep_last: last,
                    keep_hourly: hourly,
                    keep_daily: daily,
                    keep_weekly: weekly,
                    keep_monthly: monthly,
                    keep_yearly: yearly,
                    keep_within: within.map(Duration::from_secs),
                    max_total_size: max,
                    min_free_space: min,
                    // Folded into min_free_space before any plan (Policy::floor_on).
                    min_free_percent: 0,
                },
            )
    }

    fn kept_ids(plan: &Plan) -> BTreeSet<String> {
        plan.decisions
            .iter()
            .filter(|d| d.keep())
            .map(|d| d.set.id.clone())
            .collect()
    }

    proptest! {
        #[test]
        fn never_deletes_newest_or_newest_clean_of_any_origin(sets in arb_sets(), policy in arb_policy(), free in 0u64..20_000) {
            let plan = plan(&sets, &policy, free);
            prop_assert_eq!(plan.decisions.len(), sets.len());
            let origins: BTreeSet<_> = sets.iter().map(|s| s.origin.clone()).collect();
            for origin in origins {
                let mut of_origin: Vec<_> = plan.decisions.iter().filter(|d| d.set.origin == origin).collect();
                // plan output is newest first
                prop_assert!(of_origin[0].keep());
                of_origin.retain(|d| !d.set.dirty);
                if let Some(clean) = of_origin.first() {
                    prop_assert!(clean.keep());
                }
            }
        }

        #[test]
        fn an_earlier_history_keeps_a_clean_set_until_the_live_one_has_one(sets in arb_sets(), policy in arb_policy(), free in 0u64..20_000) {
            let plan = plan(&sets, &policy, free);
            // However many clusters the sets name, the rule pins one set at most.
            let pinned = plan.decisions.iter().filter(|d| d.keep_reasons.contains(&KeepReason::LastOfHistory)).count();
            prop_assert!(pinned <= 1);
            // plan output is newest first: the first that names a cluster names the live one.
            let Some(live) = plan.decisions.iter().find_map(|d| d.set.cluster.clone()) else {
                return Ok(());
            };
            let clean = |d: &&Decision| !d.set.dirty && d.set.cluster.is_some();
            let live_has_clean = plan.decisions.iter().filter(clean).any(|d| d.set.cluster.as_deref() == Some(live.as_str()));
            // The newest clean set of any earlier cluster (decisions are newest first).
            if let Some(earlier) = plan.decisions.iter().filter(clean).find(|d| d.set.cluster.as_deref() != Some(live.as_str()))
                && !live_has_clean
            {
                prop_assert!(earlier.keep(), "{}", earlier.set.id);
            }
        }

        #[test]
        fn planning_the_kept_sets_again_deletes_nothing(sets in arb_sets(), policy in arb_policy()) {
            // Without size pressure, the plan is a fixed point.
            let policy = Policy { max_total_size: None, min_free_space: None, ..policy };
            let first = plan(&sets, &policy, 0);
            let kept: Vec<SetInfo> = first.decisions.iter().filter(|d| d.keep()).map(|d| d.set.clone()).collect();
            let second = plan(&kept, &policy, 0);
            prop_assert_eq!(second.to_delete().count(), 0);
        }

        #[test]
        fn a_bigger_policy_keeps_a_superset(sets in arb_sets(), policy in arb_policy(), extra in arb_policy()) {
            let small = Policy { max_total_size: None, min_free_space: None, ..policy };
            let big = Policy {
                keep_last: small.keep_last + extra.keep_last,
                keep_hourly: small.keep_hourly + extra.keep_hourly,
                keep_daily: small.keep_daily + extra.keep_daily,
                keep_weekly: small.keep_weekly + extra.keep_weekly,
                keep_monthly: small.keep_monthly + extra.keep_monthly,
                keep_yearly: small.keep_yearly + extra.keep_yearly,
                keep_within: small.keep_within.max(extra.keep_within),
                ..small.clone()
            };
            let small_kept = kept_ids(&plan(&sets, &small, 0));
            let big_kept = kept_ids(&plan(&sets, &big, 0));
            prop_assert!(small_kept.is_subset(&big_kept));
        }

        #[test]
        fn future_dated_sets_change_nothing_for_the_others(sets in arb_sets(), policy in arb_policy(), cut in 0i64..(400 * 86_400)) {
            // Without size pressure, the sets up to `not_after` get the same decisions as if
            // the later ones were not there.
            let policy = policy.without_size_pressure();
            let not_after = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap() + chrono::TimeDelta::seconds(cut);
            let present: Vec<SetInfo> = sets.iter().filter(|s| s.created <= not_after).cloned().collect();
            let all = super::plan(&sets, &policy, 0, not_after);
            let alone = super::plan(&present, &policy, 0, not_after);
            let of_present: Vec<&Decision> = all.decisions.iter().filter(|d| d.set.created <= not_after).collect();
            prop_assert_eq!(of_present, alone.decisions.iter().collect::<Vec<_>>());
            for decision in all.decisions.iter().filter(|d| d.set.created > not_after) {
                prop_assert_eq!(&decision.keep_reasons, &vec![KeepReason::FutureDated]);
                prop_assert!(decision.keep());
            }
        }

        #[test]
        fn plan_does_not_depend_on_input_order(sets in arb_sets(), policy in arb_policy(), free in 0u64..20_000) {
            let mut reversed = sets.clone();
            reversed.reverse();
            prop_assert_eq!(plan(&sets, &policy, free), plan(&reversed, &policy, free));
        }

        #[test]
        fn size_limits_are_met_unless_reported(sets in arb_sets(), policy in arb_policy(), free in 0u64..20_000) {
            let plan = plan(&sets, &policy, free);
            let kept: u64 = plan.decisions.iter().filter(|d| d.keep()).map(|d| d.set.size).sum();
            let freed: u64 = plan.decisions.iter().filter(|d| !d.keep()).map(|d| d.set.size).sum();
            let unmet = policy.max_total_size.is_some_and(|m| kept > m)
                || policy.min_free_space.is_some_and(|m| free + freed < m);
            prop_assert_eq!(unmet, plan.pressure_unmet.is_some());
        }
    }
}
