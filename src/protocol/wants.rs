//! What a receiver lacks, decided without I/O: the offers it does not hold that its own
//! retention would keep, cut transfers to resume, damaged copies to repair, and (from a sender
//! it does not trust) what it refuses so that nobody can make it delete what it holds.

use super::{Offer, Want};
use crate::manifest::parse_set_id;
use crate::retention::{DeleteReason, Policy, SetInfo, plan, takes_place_of};
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, BTreeSet};

/// What a store holds, as `wants` sees it: each set (damaged when it has a problem or
/// `damaged` says so), and each set directory whose manifest cannot be read, whose id is taken
/// and which nothing replaces.
pub fn held_sets(
    listing: &crate::store::Listing,
    damaged: impl Fn(&crate::store::StoredSet) -> bool,
) -> Vec<HeldSet> {
    let mut held: Vec<HeldSet> = listing
        .sets
        .iter()
        .map(|s| HeldSet {
            info: s.info(),
            manifest_sha256: s.manifest_sha256.clone(),
            damaged: s.problem.is_some() || damaged(s),
        })
        .collect();
    for (dir, _) in &listing.unreadable {
        let id = dir.file_name().unwrap_or_default().to_string_lossy();
        if let Some((created, origin)) = parse_set_id(&id) {
            held.push(HeldSet {
                info: SetInfo {
                    id: id.to_string(),
                    origin: origin.to_string(),
                    created,
                    size: 0,
                    dirty: false,
                    cluster: None,
                },
                manifest_sha256: String::new(),
                damaged: true,
            });
        }
    }
    held
}

/// A set the receiver holds: what `wants` compares offers with.
#[derive(Debug, Clone)]
pub struct HeldSet {
    pub info: SetInfo,
    pub manifest_sha256: String,
    /// Damaged or failed its last verification (or its manifest is unreadable, with an empty
    /// digest): the same set offered again replaces it; another manifest never does.
    pub damaged: bool,
}

/// A cut transfer in the receiver's staging: the manifest digest it was for and bytes per file.
#[derive(Debug, Clone, Default)]
pub struct Partial {
    pub manifest_sha256: String,
    pub held: BTreeMap<String, u64>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct WantPlan {
    /// Newest first; a set that does not fit comes last (see [`WantPlan::refused`]).
    pub wants: Vec<Want>,
    /// Offered sets already held, same manifest.
    pub holds: usize,
    /// Offers with the id of a held set but another manifest: never overwritten.
    pub conflicts: Vec<String>,
    /// Wanted sets that replace a damaged copy of the same manifest.
    pub repairs: Vec<String>,
    /// Offers not wanted, and why.
    pub declined: Vec<(String, Declined)>,
    /// A set asked for last only to be refused when it begins, so that the sender's run fails
    /// and says why (the protocol has no other way to tell it): it does not fit.
    pub refused: Option<(String, String)>,
}

/// Why an offer is not wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Declined {
    /// Not a set id.
    NotASet,
    /// Of the receiver's own origin: only its own backups (and `fetch`) make those.
    OwnOrigin,
    /// Created after the receiver's clock plus the allowed skew.
    FutureDated,
    /// The receiver's retention would delete it at once.
    NotKept,
    /// Older than the newest set held of its origin, it would take this held set's place as
    /// the newest of an hour, day, week, month or year that retention keeps.
    TakesPlaceOf(String),
    /// It does not fit without deleting sets to make room, or above the free-space floor.
    NoRoom(String),
    /// The session already took its bound of sets of this origin: a later one takes it.
    Deferred,
}

impl std::fmt::Display for Declined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Declined::NotASet => f.write_str("not a set id"),
            Declined::OwnOrigin => f.write_str("a set of this node's own origin"),
            Declined::FutureDated => {
                f.write_str("dated after this node's clock plus max_clock_skew")
            }
            Declined::NotKept => f.write_str("retention here would delete it at once"),
            Declined::TakesPlaceOf(id) => write!(
                f,
                "older than the newest set held of its origin, it would take the place of {id} as the newest of its period"
            ),
            Declined::NoRoom(why) => f.write_str(why),
            Declined::Deferred => {
                f.write_str("enough sets of its origin this session: the next spray brings it")
            }
        }
    }
}

/// What a receiver judges offers by.
#[derive(Debug, Clone)]
pub struct Judge<'a> {
    pub policy: &'a Policy,
    /// Free bytes of the receiving store's filesystem (`u64::MAX` for a bucket).
    pub free_bytes: u64,
    /// Sets created after this are refused: the receiver's now plus `max_clock_skew`.
    pub not_after: DateTime<Utc>,
    /// The limits on a sender the receiver does not trust (a peer); `None` when this node
    /// sends to a store of its own (a directory, a bucket).
    pub guard: Option<Guard<'a>>,
}

/// What a sender holding the spray key (or a node certificate) may not do.
#[derive(Debug, Clone)]
pub struct Guard<'a> {
    /// The receiver's node name: sets of this origin are never received.
    pub own_origin: &'a str,
    /// At most this many sets of one origin in one session.
    pub max_sets_per_origin: usize,
    /// At most this many sets in one session, of all origins.
    pub max_sets: usize,
}

/// Offers planned one at a time in one call (each costs a retention plan): the rest wait for
/// the next session. A store's own sprays offer far fewer that its rules keep.
pub const MAX_PLANNED: usize = 256;

/// What a receiver lacks: offers it does not hold, that its own retention policy would keep
/// (otherwise every spray would send them again), resuming cut transfers of the same manifest.
///
/// From a sender it does not trust ([`Judge::guard`]), it also refuses what would make it
/// delete what it holds: no set of its own origin or dated in the future; no set that does not
/// fit above the free-space floor and within `max_total_size` without deleting a held set;
/// no set older than the newest held of its origin that would take a held set's place as the
/// newest of a period retention keeps (a set newer than all of its origin is a new backup);
/// and at most `max_sets_per_origin` sets of one origin (`max_sets` in all). So a sender can
/// push no held set out but through the ordinary turn of retention at the newest end.
pub fn wants(
    offers: &[Offer],
    held: &[HeldSet],
    partials: &BTreeMap<String, Partial>,
    judge: &Judge,
) -> WantPlan {
    let mut result = WantPlan::default();
    let held_by_id: BTreeMap<&str, &HeldSet> =
        held.iter().map(|h| (h.info.id.as_str(), h)).collect();
    // (offer, what retention knows of it, whether it repairs a damaged copy)
    let mut candidates: Vec<(&Offer, SetInfo, bool)> = Vec::new();
    let mut offered = BTreeSet::new();
    // An id offered twice is judged once (a receiver refuses such a hello anyway).
    for offer in offers.iter().filter(|o| offered.insert(o.id.as_str())) {
        let same = |h: &HeldSet| h.manifest_sha256 == offer.manifest_sha256;
        let repair = match held_by_id.get(offer.id.as_str()) {
            Some(h) if same(h) && !h.damaged => {
                result.holds += 1;
                continue;
            }
            Some(h) if !same(h) || h.manifest_sha256.is_empty() => {
                result.conflicts.push(offer.id.clone());
                continue;
            }
            repair => repair.is_some(),
        };
        let Some((created, origin)) = parse_set_id(&offer.id) else {
            result.declined.push((offer.id.clone(), Declined::NotASet));
            continue;
        };
        // A repair brings back the very manifest held: it adds nothing retention counts.
        if !repair {
            if judge
                .guard
                .as_ref()
                .is_some_and(|g| origin.eq_ignore_ascii_case(g.own_origin))
            {
                result
                    .declined
                    .push((offer.id.clone(), Declined::OwnOrigin));
                continue;
            }
            if created > judge.not_after {
                result
                    .declined
                    .push((offer.id.clone(), Declined::FutureDated));
                continue;
            }
        }
        let info = SetInfo {
            id: offer.id.clone(),
            origin: origin.to_string(),
            created,
            size: offer.size,
            dirty: offer.dirty,
            cluster: None,
        };
        candidates.push((offer, info, repair));
    }
    candidates.sort_by(|(_, a, _), (_, b, _)| (&b.created, &b.id).cmp(&(&a.created, &a.id)));
    // Damaged sets count for nothing in retention (as in prune).
    let present: Vec<SetInfo> = held
        .iter()
        .filter(|h| !h.damaged)
        .map(|h| h.info.clone())
        .collect();
    // What no rule would keep even with every offer arrived is declined at once; the rest are
    // planned one at a time, newest first, as they would arrive.
    let rules_only = judge.policy.without_size_pressure();
    let mut all = present.clone();
    all.extend(candidates.iter().map(|(_, info, _)| info.clone()));
    let kept_by_rules: BTreeSet<String> = plan(&all, &rules_only, u64::MAX, judge.not_after)
        .decisions
        .into_iter()
        .filter(|d| d.keep())
        .map(|d| d.set.id)
        .collect();
    let mut accepted: Vec<SetInfo> = Vec::new();
    let mut incoming: u64 = 0;
    let mut taken: BTreeMap<String, usize> = BTreeMap::new();
    let mut planned_count = 0usize;
    for (offer, info, repair) in candidates {
        let id = info.id.clone();
        if !kept_by_rules.contains(&id) {
            result.declined.push((id, Declined::NotKept));
            continue;
        }
        let full = judge
            .guard
            .as_ref()
            .is_some_and(|g| accepted.len() >= g.max_sets);
        if planned_count >= MAX_PLANNED || full {
            result.declined.push((id, Declined::Deferred));
            continue;
        }
        if let (Some(guard), false) = (&judge.guard, repair) {
            if taken.get(&info.origin).copied().unwrap_or(0) >= guard.max_sets_per_origin {
                result.declined.push((id, Declined::Deferred));
                continue;
            }
            let of_origin: Vec<SetInfo> = present
                .iter()
                .chain(&accepted)
                .filter(|s| s.origin == info.origin)
                .cloned()
                .collect();
            let newest = of_origin.iter().map(|s| (&s.created, &s.id)).max();
            if newest.is_some_and(|newest| (&info.created, &info.id) < newest)
                && let Some(place) = takes_place_of(&info, &of_origin, judge.policy)
            {
                result
                    .declined
                    .push((id, Declined::TakesPlaceOf(place.id.clone())));
                continue;
            }
        }
        planned_count += 1;
        let arriving = incoming.saturating_add(info.size);
        let free_after = judge.free_bytes.saturating_sub(arriving);
        let mut planned = present.clone();
        planned.extend(accepted.iter().cloned());
        planned.push(info.clone());
        let plan = plan(&planned, judge.policy, free_after, judge.not_after);
        if judge.guard.is_some() {
            let floor = judge.policy.min_free_space.unwrap_or(0);
            let pressed = plan.decisions.iter().find(|d| {
                matches!(
                    d.delete,
                    Some(DeleteReason::MaxTotalSize | DeleteReason::MinFreeSpace)
                )
            });
            let no_room = if judge.free_bytes < arriving.saturating_add(floor) {
                Some(format!(
                    "it needs {} bytes, {} are free with {} arriving before it, and {floor} must stay free (min_free_space)",
                    info.size, judge.free_bytes, incoming
                ))
            } else {
                pressed.map(|d| {
                    format!(
                        "it fits only if {} went ({}): a delivery never makes room",
                        d.set.id,
                        d.delete.expect("a deletion")
                    )
                })
            };
            if let Some(why) = no_room {
                if result.refused.is_none() {
                    result.refused = Some((id.clone(), why.clone()));
                }
                result.declined.push((id, Declined::NoRoom(why)));
                continue;
            }
        }
        if !plan.decisions.iter().any(|d| d.set.id == id && d.keep()) {
            result.declined.push((id, Declined::NotKept));
            continue;
        }
        let held = partials
            .get(&id)
            .filter(|p| p.manifest_sha256 == offer.manifest_sha256)
            .map(|p| p.held.clone())
            .unwrap_or_default();
        if repair {
            result.repairs.push(id.clone());
        } else {
            *taken.entry(info.origin.clone()).or_default() += 1;
        }
        incoming = arriving;
        accepted.push(info);
        result.wants.push(Want { id, held });
    }
    if let Some((id, _)) = &result.refused {
        result.wants.push(Want {
            id: id.clone(),
            held: BTreeMap::new(),
        });
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    /// How a store of this node's own judges offers (a directory, a bucket).
    fn own(policy: &Policy, free_bytes: u64) -> Judge<'_> {
        Judge {
            policy,
            free_bytes,
            not_after: DateTime::<Utc>::MAX_UTC,
            guard: None,
        }
    }

    fn declined_ids(plan: &WantPlan) -> Vec<&str> {
        plan.declined.iter().map(|(id, _)| id.as_str()).collect()
    }

    fn info(id: &str, size: u64) -> SetInfo {
        let (created, origin) = parse_set_id(id).unwrap();
        SetInfo {
            id: id.into(),
            origin: origin.into(),
            created,
            size,
            dirty: false,
            cluster: None,
        }
    }

    fn offer(id: &str, digest: &str) -> Offer {
        Offer {
            id: id.into(),
            manifest_sha256: digest.into(),
            size: 100,
            dirty: false,
        }
    }

    const A: &str = "20260101T000000.000Z-m0";
    const B: &str = "20260101T010000.000Z-m0";
    const C: &str = "20260101T020000.000Z-m0";

    #[test]
    fn wants_what_is_missing_newest_first_and_resumes_partials() {
        let policy = Policy {
            keep_last: 10,
            ..Policy::default()
        };
        let held = vec![HeldSet {
            info: info(A, 100),
            manifest_sha256: "a".into(),
            damaged: false,
        }];
        let partials = BTreeMap::from([
            (
                C.to_string(),
                Partial {
                    manifest_sha256: "c".into(),
                    held: BTreeMap::from([("f".into(), 42)]),
                },
            ),
            (
                B.to_string(),
                Partial {
                    manifest_sha256: "stale".into(),
                    held: BTreeMap::from([("f".into(), 7)]),
                },
            ),
        ]);
        let offers = vec![offer(A, "a"), offer(B, "b"), offer(C, "c")];
        let plan = wants(&offers, &held, &partials, &own(&policy, 0));
        assert_eq!(
            plan.wants,
            [
                Want {
                    id: C.into(),
                    held: BTreeMap::from([("f".into(), 42)])
                },
                Want {
                    id: B.into(),
                    held: BTreeMap::new()
                },
            ]
        );
        assert!(plan.conflicts.is_empty() && plan.declined.is_empty());
    }

    #[test]
    fn nothing_is_wanted_twice_or_overwritten() {
        let policy = Policy {
            keep_last: 10,
            ..Policy::default()
        };
        let held = vec![
            HeldSet {
                info: info(A, 100),
                manifest_sha256: "a".into(),
                damaged: false,
            },
            HeldSet {
                info: info(B, 100),
                manifest_sha256: "b".into(),
                damaged: false,
            },
        ];
        let plan = wants(
            &[offer(A, "a"), offer(B, "other")],
            &held,
            &BTreeMap::new(),
            &own(&policy, 0),
        );
        assert!(plan.wants.is_empty());
        assert_eq!(plan.conflicts, [B]);
        let plan = wants(
            &[offer("../../etc", "x")],
            &held,
            &BTreeMap::new(),
            &own(&policy, 0),
        );
        assert_eq!(declined_ids(&plan), ["../../etc"]);
    }

    #[test]
    fn a_damaged_copy_is_replaced_by_the_same_set_only() {
        let policy = Policy {
            keep_last: 10,
            ..Policy::default()
        };
        let damaged = |id: &str, sha: &str| HeldSet {
            info: info(id, 100),
            manifest_sha256: sha.into(),
            damaged: true,
        };
        // A: same manifest, damaged here: wanted again as a repair. B: another manifest under
        // a damaged set's id: kept, never overwritten. C: unreadable manifest here: left alone.
        let held = vec![damaged(A, "a"), damaged(B, "b"), damaged(C, "")];
        let plan = wants(
            &[offer(A, "a"), offer(B, "other"), offer(C, "c")],
            &held,
            &BTreeMap::new(),
            &own(&policy, 0),
        );
        let wanted: Vec<&str> = plan.wants.iter().map(|w| w.id.as_str()).collect();
        assert_eq!(wanted, [A]);
        assert_eq!(plan.repairs, [A]);
        assert_eq!(plan.conflicts, [B, C]);
        assert_eq!(plan.holds, 0);
    }

    #[test]
    fn sets_the_receiver_would_prune_at_once_are_declined() {
        // The receiver keeps the 2 newest per origin: offering three older sets of m0 while it
        // holds two newer ones means none is wanted — or each spray would resend them.
        let policy = Policy {
            keep_last: 2,
            ..Policy::default()
        };
        let held = vec![
            HeldSet {
                info: info("20260201T000000.000Z-m0", 100),
                manifest_sha256: "x".into(),
                damaged: false,
            },
            HeldSet {
                info: info("20260202T000000.000Z-m0", 100),
                manifest_sha256: "y".into(),
                damaged: false,
            },
        ];
        let plan = wants(
            &[offer(A, "a"), offer(B, "b"), offer(C, "c")],
            &held,
            &BTreeMap::new(),
            &own(&policy, 0),
        );
        assert!(plan.wants.is_empty(), "{plan:?}");
        assert_eq!(plan.declined.len(), 3);
        // Sets of another origin are planned on their own.
        let plan = wants(
            &[offer("20260101T000000.000Z-m1", "z")],
            &held,
            &BTreeMap::new(),
            &own(&policy, 0),
        );
        assert_eq!(plan.wants.len(), 1);
        // A free-space floor the receiver cannot meet declines what would not fit.
        let tight = Policy {
            keep_within: Some(Duration::from_secs(86_400 * 365)),
            min_free_space: Some(1000),
            ..Policy::default()
        };
        let plan = wants(&[offer(C, "c")], &held, &BTreeMap::new(), &own(&tight, 950));
        assert!(plan.wants.is_empty(), "{plan:?}");
    }

    /// How a peer's receiver, `m1`, judges what another master offers.
    fn peer(policy: &Policy, free_bytes: u64, not_after: DateTime<Utc>) -> Judge<'_> {
        Judge {
            policy,
            free_bytes,
            not_after,
            guard: Some(Guard {
                own_origin: "m1",
                max_sets_per_origin: 3,
                max_sets: 7,
            }),
        }
    }

    fn held_sets(ids: &[&str]) -> Vec<HeldSet> {
        ids.iter()
            .map(|id| HeldSet {
                info: info(id, 100),
                manifest_sha256: format!("sha of {id}"),
                damaged: false,
            })
            .collect()
    }

    fn why<'a>(plan: &'a WantPlan, id: &str) -> Option<&'a Declined> {
        plan.declined.iter().find(|(d, _)| d == id).map(|(_, w)| w)
    }

    #[test]
    fn a_peer_cannot_plant_own_future_or_displacing_sets() {
        let policy = Policy {
            keep_last: 2,
            keep_hourly: 24,
            ..Policy::default()
        };
        let now = parse_set_id("20260301T120000.000Z-x").unwrap().0;
        // m1 holds its own set, and m0's sets of 08:10, 09:10 and 10:10.
        let held = held_sets(&[
            "20260301T110000.000Z-m1",
            "20260301T081000.000Z-m0",
            "20260301T091000.000Z-m0",
            "20260301T101000.000Z-m0",
        ]);
        let table: &[(&str, Option<Declined>)] = &[
            // Its own origin, newer than anything: only its backups make those.
            ("20260301T115900.000Z-m1", Some(Declined::OwnOrigin)),
            // Dated after now (+ no skew here).
            ("20990101T000000.000Z-m0", Some(Declined::FutureDated)),
            ("20260301T120000.001Z-m0", Some(Declined::FutureDated)),
            // Later in the hour of 09:10: would take its place.
            (
                "20260301T095900.000Z-m0",
                Some(Declined::TakesPlaceOf("20260301T091000.000Z-m0".into())),
            ),
            // Earlier in that hour: no place to take, and no rule keeps it.
            ("20260301T090500.000Z-m0", Some(Declined::NotKept)),
            // An hour m1 holds nothing of: a gap filled.
            ("20260301T073000.000Z-m0", None),
            // Newer than every m0 set held: the next backup.
            ("20260301T111000.000Z-m0", None),
            // A new origin.
            ("20260301T100000.000Z-m2", None),
        ];
        for (id, expected) in table {
            let plan = wants(
                &[offer(id, "x")],
                &held,
                &BTreeMap::new(),
                &peer(&policy, u64::MAX, now),
            );
            assert_eq!(why(&plan, id), expected.as_ref(), "{id}: {plan:?}");
            assert_eq!(plan.wants.len(), usize::from(expected.is_none()), "{id}");
        }
        // Trusted (its own directory store): only the date is judged.
        let plan = wants(
            &[offer("20260301T095900.000Z-m0", "x")],
            &held,
            &BTreeMap::new(),
            &own(&policy, u64::MAX),
        );
        assert_eq!(plan.wants.len(), 1);
    }

    #[test]
    fn a_peer_adds_at_most_its_bound_per_origin_and_in_all_newest_first() {
        let policy = Policy {
            keep_last: 20,
            ..Policy::default()
        };
        let now = parse_set_id("20260302T000000.000Z-x").unwrap().0;
        let offers: Vec<Offer> = (0..6)
            .flat_map(|h| {
                ["m0", "m2", "m3"].map(|o| offer(&format!("20260301T0{h}0000.000Z-{o}"), "x"))
            })
            .collect();
        let plan = wants(
            &offers,
            &[],
            &BTreeMap::new(),
            &peer(&policy, u64::MAX, now),
        );
        let wanted: Vec<&str> = plan.wants.iter().map(|w| w.id.as_str()).collect();
        assert_eq!(
            wanted,
            [
                "20260301T050000.000Z-m3",
                "20260301T050000.000Z-m2",
                "20260301T050000.000Z-m0",
                "20260301T040000.000Z-m3",
                "20260301T040000.000Z-m2",
                "20260301T040000.000Z-m0",
                "20260301T030000.000Z-m3",
            ]
        );
        assert_eq!(
            plan.declined
                .iter()
                .filter(|(_, w)| *w == Declined::Deferred)
                .count(),
            11
        );
    }

    #[test]
    fn a_peer_is_never_given_room_by_deleting_and_is_told_why() {
        let now = parse_set_id("20260302T000000.000Z-x").unwrap().0;
        let held = held_sets(&["20260301T000000.000Z-m0", "20260301T010000.000Z-m0"]);
        let new = offer("20260301T020000.000Z-m0", "x");
        // max_total_size: the new set fits only if an old one went.
        let capped = Policy {
            keep_last: 10,
            max_total_size: Some(250),
            ..Policy::default()
        };
        let plan = wants(
            std::slice::from_ref(&new),
            &held,
            &BTreeMap::new(),
            &peer(&capped, u64::MAX, now),
        );
        let Some(Declined::NoRoom(why)) = self::why(&plan, &new.id) else {
            panic!("{plan:?}");
        };
        assert!(why.contains("20260301T000000.000Z-m0"), "{why}");
        // Asked for last, only to be refused with the reason: the sender's run fails.
        assert_eq!(plan.refused.as_ref().map(|r| r.0.as_str()), Some(&*new.id));
        assert_eq!(plan.wants.last().map(|w| w.id.as_str()), Some(&*new.id));
        // The free-space floor: 100 bytes arriving must leave 1000 free.
        let floored = Policy {
            keep_last: 10,
            min_free_space: Some(1000),
            ..Policy::default()
        };
        for (free, fits) in [(1099, false), (1100, true)] {
            let plan = wants(
                std::slice::from_ref(&new),
                &held,
                &BTreeMap::new(),
                &peer(&floored, free, now),
            );
            assert_eq!(plan.refused.is_none(), fits, "{free}: {plan:?}");
        }
        // Its own store (a directory target) rotates under max_total_size as before.
        let plan = wants(&[new], &held, &BTreeMap::new(), &own(&capped, u64::MAX));
        assert!(plan.refused.is_none() && plan.wants.len() == 1, "{plan:?}");
    }

    #[test]
    fn a_damaged_set_of_its_own_origin_is_repaired_from_a_peer() {
        let policy = Policy {
            keep_last: 10,
            ..Policy::default()
        };
        let mut held = held_sets(&["20260301T000000.000Z-m1"]);
        held[0].damaged = true;
        let now = parse_set_id("20260302T000000.000Z-x").unwrap().0;
        let plan = wants(
            &[offer(
                "20260301T000000.000Z-m1",
                "sha of 20260301T000000.000Z-m1",
            )],
            &held,
            &BTreeMap::new(),
            &peer(&policy, u64::MAX, now),
        );
        assert_eq!(plan.repairs, ["20260301T000000.000Z-m1"]);
    }

    fn arb_ids(origins: &'static [&'static str]) -> impl Strategy<Value = Vec<String>> {
        proptest::collection::btree_set((0usize..origins.len(), 0u32..72 * 60), 0..40).prop_map(
            move |picks| {
                picks
                    .into_iter()
                    .map(|(o, minute)| {
                        let at = parse_set_id("20260301T000000.000Z-x").unwrap().0
                            + chrono::TimeDelta::minutes(i64::from(minute));
                        crate::manifest::make_set_id(at, origins[o])
                    })
                    .collect()
            },
        )
    }

    proptest! {
        #[test]
        fn what_a_peer_is_given_pushes_out_no_held_set_but_at_the_newest_end(
            held in arb_ids(&["m0", "m1", "m2"]),
            offered in arb_ids(&["m0", "m1", "m2", "m3"]),
            keep_last in 0u32..5,
            keep_hourly in 1u32..30,
            cut in 0i64..72,
        ) {
            let policy = Policy { keep_last, keep_hourly, ..Policy::default() };
            let not_after = parse_set_id("20260301T000000.000Z-x").unwrap().0 + chrono::TimeDelta::hours(cut);
            // What m1 holds is what its retention kept.
            let infos: Vec<SetInfo> = held.iter().map(|id| info(id, 100)).collect();
            let kept: Vec<&str> = plan(&infos, &policy, u64::MAX, DateTime::<Utc>::MAX_UTC)
                .decisions
                .iter()
                .filter(|d| d.keep())
                .map(|d| d.set.id.as_str())
                .map(|id| held.iter().find(|h| *h == id).unwrap().as_str())
                .collect();
            let held_sets = held_sets(&kept);
            let offers: Vec<Offer> = offered.iter().map(|id| offer(id, "x")).collect();
            let plan = wants(&offers, &held_sets, &BTreeMap::new(), &peer(&policy, u64::MAX, not_after));
            let hour = |s: &SetInfo| s.created.format("%Y%m%d%H").to_string();
            let mut per_origin: BTreeMap<String, usize> = BTreeMap::new();
            for want in &plan.wants {
                let w = info(&want.id, 100);
                prop_assert!(w.origin != "m1", "own origin {}", w.id);
                prop_assert!(w.created <= not_after, "future {}", w.id);
                *per_origin.entry(w.origin.clone()).or_default() += 1;
                let of_origin: Vec<SetInfo> = held_sets.iter().map(|h| h.info.clone()).filter(|h| h.origin == w.origin).collect();
                let newest = of_origin.iter().map(|h| h.created).max();
                // Older than the newest held of its origin: it takes no hour from a held set.
                if newest.is_some_and(|n| w.created < n) {
                    let newest_of_hour = of_origin.iter().filter(|h| hour(h) == hour(&w)).map(|h| h.created).max();
                    prop_assert!(newest_of_hour.is_none_or(|n| n > w.created), "{} takes an hour", w.id);
                }
            }
            prop_assert!(per_origin.values().all(|n| *n <= 3), "{per_origin:?}");
            prop_assert!(per_origin.values().sum::<usize>() <= 7, "{per_origin:?}");
        }
    }
}
