//! What a receiver asks a sender for (`protocol::wants`), from held sets, offers and a policy
//! made of the input's bytes, judged as a peer's receiver (`m1`) judges another master: never
//! a panic; never a set of its own origin (but a repair), none dated ahead, at most the bound
//! per origin, no set asked for twice, the one refused for room asked for last.
#![no_main]

use etcd_backup::protocol::{Guard, HeldSet, Judge, Offer, wants};
use etcd_backup::retention::{Policy, SetInfo};
use libfuzzer_sys::fuzz_target;
use std::collections::{BTreeMap, BTreeSet};

const ORIGINS: [&str; 4] = ["m0", "m1", "m2", "m3"];

fuzz_target!(|data: &[u8]| {
    let Some((head, records)) = data.split_first_chunk::<6>() else {
        return;
    };
    let policy = Policy {
        keep_last: u32::from(head[0] % 5),
        keep_hourly: u32::from(head[1] % 30),
        keep_daily: u32::from(head[2] % 8),
        keep_within: (head[3] % 4 == 1).then(|| std::time::Duration::from_secs(36_000)),
        max_total_size: (head[4] % 3 == 1).then_some(u64::from(head[4]) * 40),
        min_free_space: (head[5] % 3 == 1).then_some(u64::from(head[5]) * 20),
        ..Policy::default()
    };
    if policy.is_empty() {
        return;
    }
    let base = chrono::DateTime::from_timestamp(1_780_000_000, 0).unwrap();
    let not_after = base + chrono::TimeDelta::minutes(i64::from(head[3]) * 30);
    let mut held = Vec::new();
    let mut offers = Vec::new();
    for record in records.chunks_exact(5) {
        let created = base
            + chrono::TimeDelta::minutes(i64::from(u16::from_le_bytes([record[2], record[3]])));
        let origin = ORIGINS[usize::from(record[1]) % ORIGINS.len()];
        let id = etcd_backup::manifest::make_set_id(created, origin);
        let size = u64::from(record[4]) + 1;
        match record[0] % 4 {
            0 => held.push(HeldSet {
                info: SetInfo {
                    id: id.clone(),
                    origin: origin.into(),
                    created,
                    size,
                    dirty: false,
                },
                manifest_sha256: format!("sha {id}"),
                damaged: record[4] % 7 == 0,
            }),
            1 => offers.push(Offer {
                id: id.clone(),
                manifest_sha256: format!("sha {id}"),
                size,
                dirty: false,
            }),
            _ => offers.push(Offer {
                id: id.clone(),
                manifest_sha256: "other".into(),
                size,
                dirty: record[4] % 2 == 0,
            }),
        }
    }
    let judge = Judge {
        policy: &policy,
        free_bytes: u64::from(head[5]) * 60,
        not_after,
        guard: Some(Guard {
            own_origin: "m1",
            max_sets_per_origin: 3,
            max_sets: 5,
        }),
    };
    let plan = wants(&offers, &held, &BTreeMap::new(), &judge);
    let mut seen = BTreeSet::new();
    let mut per_origin: BTreeMap<&str, usize> = BTreeMap::new();
    for want in &plan.wants {
        assert!(seen.insert(want.id.as_str()), "asked twice: {}", want.id);
        let (created, origin) = etcd_backup::manifest::parse_set_id(&want.id).unwrap();
        if plan.repairs.contains(&want.id) {
            continue;
        }
        if plan.refused.as_ref().is_some_and(|(id, _)| *id == want.id) {
            assert_eq!(plan.wants.last().unwrap().id, want.id, "refused asked last");
            continue;
        }
        assert_ne!(origin, "m1", "own origin: {}", want.id);
        assert!(created <= not_after, "dated ahead: {}", want.id);
        *per_origin.entry(origin).or_default() += 1;
        assert!(!plan.declined.iter().any(|(id, _)| *id == want.id));
    }
    assert!(per_origin.values().all(|n| *n <= 3), "{per_origin:?}");
    assert!(per_origin.values().sum::<usize>() <= 5, "{per_origin:?}");
});
