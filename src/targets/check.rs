//! `verify --target`: a target's copies checked against their manifests, and the outcomes kept
//! in this node's store (per target and manifest), where `status`, `metrics` and the next spray
//! find them: a copy found damaged is sent again from a sound local set.

use super::{Target, Targets};
use crate::config::Settings;
use crate::logging::message_id;
use crate::store::{CopyCheck, Store};
use crate::verify::Checked;
use anyhow::Result;

/// What a verification of targets came to.
#[derive(Debug, Default)]
pub struct Verified {
    /// Copies found damaged.
    pub bad: usize,
    /// Targets that could not be checked at all: (target, why).
    pub failed: Vec<(String, String)>,
    /// Targets not due yet (`verify --targets`).
    pub not_due: Vec<String>,
}

/// Verifies the copies on the targets `name` picks (every configured target when `None`) of
/// the sets named by `ids`, telling `checked` each target and each outcome.
pub fn run(
    settings: &Settings,
    name: Option<&str>,
    ids: &[String],
    (deep, identities): (bool, &[age::x25519::Identity]),
    checked: &mut dyn FnMut(&str, &Checked),
) -> Result<Verified> {
    let targets: Targets = super::named(settings, name)?;
    if targets.is_empty() {
        anyhow::bail!("no target to verify: no [[spray.target]] is configured");
    }
    let store = Store::existing(&settings.store.root);
    let mut verified = Verified::default();
    for target in &targets {
        check_target(
            &**target,
            store.as_ref(),
            ids,
            (deep, identities),
            checked,
            &mut verified,
        );
    }
    Ok(verified)
}

/// `verify --targets` (what the verify timer runs): every target of a spray run (the peers
/// and the configured targets) whose copies are due a check by its `verify_every`, each whole.
pub fn run_due(settings: &Settings, checked: &mut dyn FnMut(&str, &Checked)) -> Result<Verified> {
    let store = Store::existing(&settings.store.root);
    let checks = store.as_ref().map(|s| s.copy_checks()).unwrap_or_default();
    let (targets, warnings) = super::from_settings(settings)?;
    for warning in &warnings {
        tracing::warn!("{warning}");
    }
    let now = chrono::Utc::now();
    let mut verified = Verified::default();
    for target in &targets {
        let last = checks
            .get(&target.id())
            .and_then(|copies| copies.values().map(|c| c.at).max());
        if !due(last, target.verify_every(), now) {
            verified.not_due.push(target.describe());
            continue;
        }
        check_target(
            &**target,
            store.as_ref(),
            &[],
            (false, &[]),
            checked,
            &mut verified,
        );
    }
    Ok(verified)
}

/// Checks one target's copies, says what is damaged, and keeps the outcomes.
fn check_target(
    target: &dyn Target,
    store: Option<&Store>,
    ids: &[String],
    (deep, identities): (bool, &[age::x25519::Identity]),
    checked: &mut dyn FnMut(&str, &Checked),
    verified: &mut Verified,
) {
    let described = target.describe();
    let outcomes =
        match target.verify_copies(ids, deep, identities, &mut |o| checked(&described, o)) {
            Ok(outcomes) => outcomes,
            Err(error) => {
                verified.failed.push((described, format!("{error:#}")));
                return;
            }
        };
    for outcome in outcomes.iter().filter(|o| o.problem.is_some()) {
        verified.bad += 1;
        tracing::warn!(
            message_id = message_id::COPY_DAMAGED,
            target = %described,
            set_id = %outcome.id,
            "damaged copy of {} on {described}: {}",
            outcome.id,
            outcome.problem.as_deref().unwrap_or_default()
        );
    }
    if let Some(store) = store
        && let Err(error) = record(store, &target.id(), &outcomes, ids.is_empty(), deep)
    {
        tracing::warn!("the outcomes on {described} were not recorded: {error:#}");
    }
}

/// Whether a target last checked at `last` is due by `every` (zero: never by schedule).
pub fn due(
    last: Option<chrono::DateTime<chrono::Utc>>,
    every: std::time::Duration,
    now: chrono::DateTime<chrono::Utc>,
) -> bool {
    if every.is_zero() {
        return false;
    }
    last.is_none_or(|last| crate::units::after(last, every) <= now)
}

/// Keeps the outcomes of one target: after a check of every copy, they replace what was known
/// of that target (copies gone since are forgotten); after named sets, they are added.
fn record(
    store: &Store,
    target_id: &str,
    outcomes: &[Checked],
    whole: bool,
    deep: bool,
) -> Result<()> {
    let at = chrono::Utc::now();
    store.update_copy_checks(|checks| {
        let copies = checks.entry(target_id.to_string()).or_default();
        if whole {
            copies.clear();
        }
        for outcome in outcomes {
            if let Some(digest) = &outcome.manifest_sha256 {
                copies.insert(
                    digest.clone(),
                    CopyCheck {
                        set_id: outcome.id.clone(),
                        at,
                        deep,
                        problem: outcome.problem.clone(),
                    },
                );
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_target_is_due_when_never_checked_or_its_interval_has_passed() {
        let at = |h: i64| chrono::DateTime::from_timestamp(h * 3600, 0).unwrap();
        let day = Duration::from_secs(86_400);
        // (last check, every, now, due)
        let cases = [
            (None, day, at(0), true),
            (Some(at(0)), day, at(23), false),
            (Some(at(0)), day, at(24), true),
            (Some(at(0)), day, at(100), true),
            (None, Duration::ZERO, at(100), false),
            (Some(at(0)), Duration::ZERO, at(100), false),
            // A check dated in the future (a clock set back) waits for its interval again.
            (Some(at(50)), day, at(10), false),
        ];
        for (i, (last, every, now, want)) in cases.into_iter().enumerate() {
            assert_eq!(due(last, every, now), want, "case {i}");
        }
    }
}
