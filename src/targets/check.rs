//! `verify --target`: a target's copies checked against their manifests, and the outcomes kept
//! in this node's store (per target and manifest), where `status`, `metrics` and the next spray
//! find them: a copy found damaged is sent again from a sound local set.

use super::Targets;
use crate::config::Settings;
use crate::logging::message_id;
use crate::store::{CopyCheck, Store};
use crate::verify::Checked;
use anyhow::Result;

/// Verifies the copies on the targets `name` picks (every configured target when `None`) of
/// the sets named by `ids`, telling `checked` each target and each outcome. Returns how many
/// copies are bad, and the targets that could not be checked at all.
pub fn run(
    settings: &Settings,
    name: Option<&str>,
    ids: &[String],
    deep: bool,
    checked: &mut dyn FnMut(&str, &Checked),
) -> Result<(usize, Vec<(String, String)>)> {
    let targets: Targets = super::named(settings, name)?;
    if targets.is_empty() {
        anyhow::bail!("no target to verify: no [[spray.target]] is configured");
    }
    let store = Store::existing(&settings.store.root);
    let (mut bad, mut failed) = (0, Vec::new());
    for target in &targets {
        let described = target.describe();
        let outcomes =
            match target.verify_copies(ids, deep, &mut |outcome| checked(&described, outcome)) {
                Ok(outcomes) => outcomes,
                Err(error) => {
                    failed.push((described, format!("{error:#}")));
                    continue;
                }
            };
        for outcome in outcomes.iter().filter(|o| o.problem.is_some()) {
            bad += 1;
            tracing::warn!(
                message_id = message_id::COPY_DAMAGED,
                target = %described,
                set_id = %outcome.id,
                "damaged copy of {} on {described}: {}",
                outcome.id,
                outcome.problem.as_deref().unwrap_or_default()
            );
        }
        if let Some(store) = &store
            && let Err(error) = record(store, &target.id(), &outcomes, ids.is_empty(), deep)
        {
            tracing::warn!("the outcomes on {described} were not recorded: {error:#}");
        }
    }
    Ok((bad, failed))
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
