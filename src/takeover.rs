//! Which node takes the backup: every master gets the same config and timer; the first node of
//! `backup.snapshot_nodes` takes backups, and the next one takes over when the newest set it
//! holds from every node before it (received by spray) is too old. No API server and no
//! coordination service: the sets themselves are the heartbeat.
//!
//! "Too old" grows with the distance in the list: the node at position p waits
//! (p - q) x `takeover_after` for the node at position q. When the first node stops, the second
//! takes over after one bound and its sprayed sets keep the third out; only if both stop does
//! the third step in, after two bounds. (With one bound for all, the second and third would
//! both take over at the same moment.)

use crate::retention::SetInfo;
use chrono::{DateTime, Utc};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Turn {
    /// This node takes a backup now; why.
    Take(String),
    /// This node does not; why.
    Skip(String),
}

/// Decides whether `node` backs up now, from the sets in its own store (its own and those
/// sprayed to it). A set a little ahead of `now` (clock skew) counts as fresh; one dated after
/// `not_after` counts for nothing: a forged or wrong date must not keep a node from taking
/// over.
pub fn whose_turn(
    node: &str,
    snapshot_nodes: &[String],
    sets: &[SetInfo],
    now: DateTime<Utc>,
    not_after: DateTime<Utc>,
    takeover_after: Duration,
) -> Turn {
    if snapshot_nodes.is_empty() {
        return Turn::Take("backup.snapshot_nodes is empty: every node takes backups".into());
    }
    let Some(position) = snapshot_nodes
        .iter()
        .position(|n| n.eq_ignore_ascii_case(node))
    else {
        return Turn::Skip(format!("{node} is not in backup.snapshot_nodes"));
    };
    let bound = chrono::TimeDelta::from_std(takeover_after).unwrap_or(chrono::TimeDelta::MAX);
    for (q, higher) in snapshot_nodes[..position].iter().enumerate() {
        let waits = bound
            .checked_mul((position - q) as i32)
            .unwrap_or(chrono::TimeDelta::MAX);
        let newest = sets
            .iter()
            .filter(|s| s.origin.eq_ignore_ascii_case(higher) && s.created <= not_after)
            .max_by_key(|s| s.created);
        if let Some(set) = newest {
            let age = now.signed_duration_since(set.created);
            if age <= waits {
                return Turn::Skip(format!(
                    "{higher} comes first and is taking backups: its newest set {} is {}s old (takeover after {}s)",
                    set.id,
                    age.num_seconds().max(0),
                    waits.num_seconds()
                ));
            }
        }
    }
    if position == 0 {
        Turn::Take(format!("{node} is the first snapshot node"))
    } else {
        Turn::Take(format!(
            "no recent set from the nodes before {node} ({}; bound {}s per place): taking over",
            snapshot_nodes[..position].join(", "),
            takeover_after.as_secs()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(hours_ago: i64, origin: &str) -> SetInfo {
        let created = now() - chrono::TimeDelta::hours(hours_ago);
        SetInfo {
            id: format!("{}-{origin}", created.format("%Y%m%dT%H%M%S%.3fZ")),
            origin: origin.into(),
            created,
            size: 1,
            dirty: false,
            cluster: None,
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-06-01T12:00:00Z")
            .unwrap()
            .to_utc()
    }

    fn nodes() -> Vec<String> {
        vec!["m0".into(), "m1".into(), "m2".into()]
    }

    const BOUND: Duration = Duration::from_secs(2 * 3600);

    /// Five minutes of skew allowed.
    fn not_after() -> DateTime<Utc> {
        now() + chrono::TimeDelta::minutes(5)
    }

    fn takes(node: &str, sets: &[SetInfo]) -> bool {
        matches!(
            whose_turn(node, &nodes(), sets, now(), not_after(), BOUND),
            Turn::Take(_)
        )
    }

    #[test]
    fn failover_table() {
        // (sets in the node's store, who takes a backup among m0 m1 m2, given each one's store)
        let fresh_m0 = vec![at(1, "m0")];
        let stale_m0 = vec![at(3, "m0")];
        let stale_m0_fresh_m1 = vec![at(3, "m0"), at(1, "m1")];
        let stale_both = vec![at(5, "m0"), at(3, "m1")];
        let table: [(&str, &[SetInfo], [bool; 3]); 5] = [
            ("m0 healthy", &fresh_m0, [true, false, false]),
            ("m0 silent: m1 takes over", &stale_m0, [true, true, false]),
            (
                "m1 took over: m2 stays out",
                &stale_m0_fresh_m1,
                [true, true, false],
            ),
            (
                "m0 and m1 silent: m2 takes over",
                &stale_both,
                [true, true, true],
            ),
            (
                "no set anywhere yet (first hour after install): every node takes one",
                &[],
                [true, true, true],
            ),
        ];
        for (case, sets, expected) in table {
            let got = [takes("m0", sets), takes("m1", sets), takes("m2", sets)];
            assert_eq!(got, expected, "{case}");
        }
    }

    #[test]
    fn reasons_are_explicit() {
        let Turn::Skip(why) = whose_turn("m1", &nodes(), &[at(1, "m0")], now(), not_after(), BOUND)
        else {
            panic!()
        };
        assert!(
            why.contains("m0 comes first") && why.contains("3600s old"),
            "{why}"
        );
        let Turn::Skip(why) = whose_turn("m9", &nodes(), &[], now(), not_after(), BOUND) else {
            panic!()
        };
        assert!(why.contains("not in backup.snapshot_nodes"), "{why}");
        assert!(matches!(
            whose_turn("any", &[], &[], now(), not_after(), BOUND),
            Turn::Take(_)
        ));
        // A set a little ahead (clock skew) counts as fresh.
        let ahead = SetInfo {
            created: now() + chrono::TimeDelta::minutes(4),
            ..at(0, "m0")
        };
        assert!(!takes("m1", &[ahead]));
        // One dated after the skew allows (forged, or a clock set wrong) counts for nothing:
        // m1 takes over from a silent m0.
        let forged = at(-1, "m0");
        assert!(takes("m1", std::slice::from_ref(&forged)));
        assert!(takes("m1", &[forged, at(3, "m0")]));
    }

    proptest! {
        #[test]
        fn the_first_node_always_takes_and_the_freshest_earlier_node_blocks(
            ages in prop::collection::vec((0usize..3, 0i64..10), 0..12)
        ) {
            let sets: Vec<SetInfo> = ages.iter().map(|(n, h)| at(*h, &format!("m{n}"))).collect();
            prop_assert!(takes("m0", &sets));
            // A node takes a backup iff no node before it has a set within the bound times
            // their distance in the list.
            for (position, node) in [(1usize, "m1"), (2, "m2")] {
                let blocked = sets.iter().any(|s| {
                    let index = s.origin[1..].parse::<usize>().unwrap();
                    let waits = chrono::TimeDelta::from_std(BOUND).unwrap() * (position as i32 - index as i32);
                    index < position && now() - s.created <= waits
                });
                prop_assert_eq!(takes(node, &sets), !blocked);
            }
        }
    }
}
