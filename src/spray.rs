//! `spray`: a run of the sending side. Every target (`crate::targets`) gets the store's sets,
//! one thread each with retries (`spray_all`), and the store's spray state keeps each target's
//! last result for `status`.

use crate::protocol::send::{OpenSet, PushStats, open_sets};
use anyhow::Result;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The whole `spray` run: under the spray lock, lists and opens the sets (holding the store
/// lock only for that), pushes them to every target and records each target's result. No
/// target configured is a warning and an empty result.
pub fn run(settings: &crate::config::Settings) -> Result<Vec<TargetResult>> {
    let store = crate::store::Store::open(&settings.store.root)?;
    let _spraying = store.lock_named(crate::store::SPRAY_LOCK_FILE, settings.store.lock_wait)?;
    let (targets, warnings) = crate::targets::from_settings(settings)?;
    for warning in &warnings {
        tracing::warn!("{warning}");
    }
    if targets.is_empty() {
        tracing::warn!(
            "no spray targets: no peers in etcd.env or spray.peers, no [[spray.target]]"
        );
        return Ok(Vec::new());
    }
    // An empty local history still runs: it sends nothing and deletes nothing remotely.
    // The lock is held only to list and open the sets: open files survive a prune, and a
    // receiver on this node (a peer spraying at the same time) needs the lock to commit.
    let sets = {
        let _lock = store.lock(settings.store.lock_wait)?;
        open_sets(store.list()?.sets)
    };
    let retries = Retries {
        attempts: settings.spray.attempts,
        first_backoff: BACKOFF_FIRST,
    };
    let damaged = damaged_copies(&store.copy_checks());
    let results = spray_all(&targets, &sets, retries, &damaged);
    let digest_of: BTreeMap<&str, &str> = sets
        .iter()
        .map(|s| (s.set.id(), s.set.manifest_sha256.as_str()))
        .collect();
    let healed = healed(&results, &digest_of, &damaged);
    write_state(&store, &results, &healed)?;
    record_healed(&store, &results, &healed)?;
    Ok(results)
}

/// By target id, the manifest digests of the copies its last verification found damaged.
fn damaged_copies(checks: &crate::store::CopyChecks) -> BTreeMap<String, BTreeSet<String>> {
    checks
        .iter()
        .map(|(target, copies)| {
            let bad = copies
                .iter()
                .filter(|(_, check)| check.problem.is_some())
                .map(|(digest, _)| digest.clone())
                .collect();
            (target.clone(), bad)
        })
        .collect()
}

/// The damaged copies a run sent again, by target id: (set id, manifest digest).
/// `digest_of` gives the manifest digest of each set offered.
fn healed(
    results: &[TargetResult],
    digest_of: &BTreeMap<&str, &str>,
    damaged: &BTreeMap<String, BTreeSet<String>>,
) -> BTreeMap<String, Vec<(String, String)>> {
    results
        .iter()
        .filter_map(|r| {
            let bad = damaged.get(&r.id)?;
            let stats = r.result.as_ref().ok()?;
            let sent: Vec<(String, String)> = stats
                .sent
                .iter()
                .filter_map(|id| {
                    let digest = digest_of.get(id.as_str())?;
                    bad.contains(*digest)
                        .then(|| (id.clone(), digest.to_string()))
                })
                .collect();
            (!sent.is_empty()).then(|| (r.id.clone(), sent))
        })
        .collect()
}

/// Forgets the damage of the copies a run sent again, and says so.
fn record_healed(
    store: &crate::store::Store,
    results: &[TargetResult],
    healed: &BTreeMap<String, Vec<(String, String)>>,
) -> Result<()> {
    if healed.is_empty() {
        return Ok(());
    }
    for result in results {
        for (id, _) in healed.get(&result.id).into_iter().flatten() {
            tracing::info!(
                message_id = crate::logging::message_id::COPY_HEALED,
                set_id = %id,
                target = %result.name,
                "damaged copy of {id} on {} replaced from the sound local set",
                result.name
            );
        }
    }
    store.update_copy_checks(|checks| {
        for (target, copies) in healed {
            if let Some(known) = checks.get_mut(target) {
                for (_, digest) in copies {
                    known.remove(digest);
                }
            }
        }
    })
}

/// What one target's part of a run came to.
#[derive(Debug, Clone)]
pub struct TargetResult {
    /// `Target::id`: what the state is keyed by.
    pub id: String,
    /// `Target::describe`: what an operator reads.
    pub name: String,
    pub result: std::result::Result<PushStats, String>,
    pub attempts: u32,
    /// `Target::carries`.
    pub carries: crate::config::Carried,
}

/// How often a target is tried within a run, and how long the first wait between attempts is
/// (doubling up to 30 s).
#[derive(Debug, Clone, Copy)]
pub struct Retries {
    pub attempts: u32,
    pub first_backoff: Duration,
}

const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Pushes `sets` to every target at once, one thread each, retrying with backoff what another
/// attempt could mend (not what is [`crate::failure::Final`]); one target's failure never stops
/// another. Results come in the order of `targets`.
pub fn spray_all(
    targets: &[Box<dyn crate::targets::Target>],
    sets: &[OpenSet],
    retries: Retries,
    damaged: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<TargetResult> {
    let none = &BTreeSet::new();
    use crate::logging::message_id;
    std::thread::scope(|scope| {
        let handles: Vec<_> = targets
            .iter()
            .map(|target| {
                scope.spawn(move || {
                    let (id, name, carries) = (target.id(), target.describe(), target.carries());
                    let damaged = damaged.get(&id).unwrap_or(none);
                    let started = std::time::Instant::now();
                    let mut backoff = retries.first_backoff;
                    // The first failure is often the cause (a link cut mid-set); later
                    // attempts may only meet its consequences (a server down since).
                    let mut first: Option<String> = None;
                    let mut attempt = 0;
                    loop {
                        attempt += 1;
                        match target.push(sets, damaged) {
                            Ok(stats) => {
                                for id in &stats.sent {
                                    tracing::info!(message_id = message_id::SET_SENT, set_id = %id, target = %name, "set sent: {id} to {name}");
                                }
                                tracing::info!(
                                    target = %name,
                                    sets_sent = stats.sent.len(),
                                    bytes = stats.data_bytes,
                                    wire_bytes = stats.wire_bytes,
                                    seconds = started.elapsed().as_secs_f64(),
                                    "target current: {name}"
                                );
                                return TargetResult { id, name, result: Ok(stats), attempts: attempt, carries };
                            }
                            Err(error) if attempt < retries.attempts && !crate::failure::is_final(&error) => {
                                tracing::warn!(target = %name, attempt, "spray attempt failed, retrying in {}s: {error:#}", backoff.as_secs());
                                first.get_or_insert_with(|| format!("{error:#}"));
                                std::thread::sleep(backoff);
                                backoff = (backoff * 2).min(BACKOFF_MAX);
                            }
                            Err(error) => {
                                let last = format!("{error:#}");
                                let error = match first {
                                    Some(first) if first != last => format!("{last} (the first attempt failed with: {first})"),
                                    _ => last,
                                };
                                tracing::error!(message_id = message_id::TARGET_FAILED, target = %name, attempts = attempt, "target failed: {name}: {error}");
                                return TargetResult { id, name, result: Err(error), attempts: attempt, carries };
                            }
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(targets)
            .map(|(h, t)| {
                h.join().unwrap_or_else(|_| TargetResult {
                    id: t.id(),
                    name: t.describe(),
                    result: Err("panicked".into()),
                    attempts: 0,
                    carries: t.carries(),
                })
            })
            .collect()
    })
}

/// Records a run's results (targets no longer configured are dropped) and the damaged copies
/// it sent again.
pub fn write_state(
    store: &crate::store::Store,
    results: &[TargetResult],
    healed: &BTreeMap<String, Vec<(String, String)>>,
) -> Result<()> {
    let old = store.spray_state();
    let now = chrono::Utc::now();
    let mut state = BTreeMap::new();
    for result in results {
        let mut entry = old.get(&result.id).cloned().unwrap_or_default();
        entry.name = result.name.clone();
        entry.carries = result.carries;
        entry.last_attempt = Some(now);
        entry.copies_healed += healed.get(&result.id).map_or(0, |h| h.len() as u64);
        match &result.result {
            Ok(stats) => {
                entry.last_success = Some(now);
                entry.last_error = None;
                entry.sets_sent = stats.sent.len();
                entry.sets_held = stats.held;
                entry.bytes_sent = stats.data_bytes;
            }
            Err(error) => entry.last_error = Some(error.clone()),
        }
        state.insert(result.id.clone(), entry);
    }
    store.write_spray_state(&state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::targets::Target;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A target that fails its first `failures` pushes (finally when `final_error`), then
    /// succeeds; or panics.
    #[derive(Debug)]
    struct Fake {
        name: &'static str,
        failures: u32,
        final_error: bool,
        panics: bool,
        pushes: AtomicU32,
    }

    impl Fake {
        fn new(name: &'static str, failures: u32, final_error: bool) -> Fake {
            Fake {
                name,
                failures,
                final_error,
                panics: false,
                pushes: AtomicU32::new(0),
            }
        }
    }

    impl Target for Fake {
        fn id(&self) -> String {
            format!("fake:{}", self.name)
        }

        fn describe(&self) -> String {
            self.name.to_string()
        }

        fn push(&self, _sets: &[OpenSet], _damaged: &BTreeSet<String>) -> Result<PushStats> {
            let push = self.pushes.fetch_add(1, Ordering::SeqCst) + 1;
            assert!(!self.panics, "a target's bug");
            if push > self.failures {
                return Ok(PushStats {
                    sent: vec![format!("set-{push}")],
                    ..PushStats::default()
                });
            }
            let error = anyhow::anyhow!("failure {push}").context(self.name);
            Err(if self.final_error {
                crate::failure::mark_final(error)
            } else {
                error
            })
        }
    }

    const NOW: Retries = Retries {
        attempts: 3,
        first_backoff: Duration::ZERO,
    };

    #[test]
    fn transient_failures_are_retried_and_final_ones_are_not() {
        let mut panicking = Fake::new("broken", 0, false);
        panicking.panics = true;
        let targets: Vec<Box<dyn Target>> = vec![
            Box::new(Fake::new("flaky", 2, false)),
            Box::new(Fake::new("refusing", 9, true)),
            Box::new(Fake::new("down", 9, false)),
            Box::new(Fake::new("fine", 0, false)),
            Box::new(panicking),
        ];
        let results = spray_all(&targets, &[], NOW, &BTreeMap::new());
        type Outcome<'a> = (&'a str, u32, std::result::Result<Vec<String>, String>);
        let outcome: Vec<Outcome> = results
            .iter()
            .map(|r| {
                let result = r.result.clone().map(|stats| stats.sent);
                (r.name.as_str(), r.attempts, result)
            })
            .collect();
        assert_eq!(
            outcome,
            [
                ("flaky", 3, Ok(vec!["set-3".to_string()])),
                ("refusing", 1, Err("refusing: failure 1".to_string())),
                (
                    "down",
                    3,
                    Err(
                        "down: failure 3 (the first attempt failed with: down: failure 1)"
                            .to_string()
                    ),
                ),
                ("fine", 1, Ok(vec!["set-1".to_string()])),
                ("broken", 0, Err("panicked".to_string())),
            ]
        );
        assert_eq!(results[1].id, "fake:refusing");
    }

    #[test]
    fn a_damaged_copy_is_healed_only_by_a_successful_send_of_the_same_manifest() {
        let result = |id: &str, sent: Option<&[&str]>| TargetResult {
            id: id.to_string(),
            name: id.to_string(),
            result: sent
                .map(|ids| PushStats {
                    sent: ids.iter().map(|s| s.to_string()).collect(),
                    ..PushStats::default()
                })
                .ok_or_else(|| "cut".to_string()),
            attempts: 1,
            carries: crate::config::Carried::All,
        };
        let digest_of: BTreeMap<&str, &str> = [("A", "a"), ("B", "b"), ("C", "c")].into();
        let damaged: BTreeMap<String, BTreeSet<String>> = [
            (
                "s3:x".to_string(),
                ["a".to_string(), "b".to_string()].into(),
            ),
            ("s3:cut".to_string(), ["a".to_string()].into()),
            ("dir:/d".to_string(), ["z".to_string()].into()),
        ]
        .into();
        let results = [
            // Sent A (damaged there) and C (new there): A is healed, C was never damaged.
            result("s3:x", Some(&["A", "C"])),
            // Failed: nothing is healed, whatever it sent before failing.
            result("s3:cut", None),
            // Sent B, but its damaged copy there was of another manifest.
            result("dir:/d", Some(&["B"])),
            // No damage known there.
            result("ssh:m1", Some(&["A"])),
        ];
        let got = healed(&results, &digest_of, &damaged);
        let want: BTreeMap<String, Vec<(String, String)>> =
            [("s3:x".to_string(), vec![("A".to_string(), "a".to_string())])].into();
        assert_eq!(got, want);
        assert_eq!(
            damaged_copies(&Default::default()),
            BTreeMap::<String, BTreeSet<String>>::new()
        );
    }

    #[test]
    fn one_attempt_means_no_retry() {
        let targets: Vec<Box<dyn Target>> = vec![Box::new(Fake::new("flaky", 1, false))];
        let once = Retries { attempts: 1, ..NOW };
        let results = spray_all(&targets, &[], once, &BTreeMap::new());
        assert_eq!(results[0].attempts, 1);
        assert!(results[0].result.is_err());
    }
}
