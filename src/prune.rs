//! Applying a retention plan to a store: the only place that deletes sets.

use crate::logging::message_id;
use crate::retention::{Plan, Policy, plan};
use crate::store::Store;
use anyhow::{Context, Result};

/// The `prune` command: under the store lock, [`prune`] by the configured policy.
pub fn run(settings: &crate::config::Settings, dry_run: bool) -> Result<Plan> {
    let store = Store::open(&settings.store.root)?;
    let _lock = store.lock(settings.store.lock_wait)?;
    prune(&store, &settings.retention, dry_run, settings.not_after())
}

/// Plans retention over the store's sets and, unless `dry_run`, deletes what the plan drops.
/// Sets whose files do not match their manifest, and unreadable entries, are neither counted
/// nor deleted: nothing the tool cannot vouch for is removed. Sets created after `not_after`
/// count for nothing (see [`crate::retention`]).
pub fn prune(
    store: &Store,
    policy: &Policy,
    dry_run: bool,
    not_after: chrono::DateTime<chrono::Utc>,
) -> Result<Plan> {
    prune_reserving(store, policy, dry_run, not_after, 0)
}

/// [`prune`] as if `reserve` more bytes were already written (a set about to be taken): the
/// free-space floor (`min_free_space`) is then met with the next set in place.
pub fn prune_reserving(
    store: &Store,
    policy: &Policy,
    dry_run: bool,
    not_after: chrono::DateTime<chrono::Utc>,
    reserve: u64,
) -> Result<Plan> {
    let listing = store.list()?;
    for (dir, reason) in &listing.unreadable {
        tracing::warn!(path = %dir.display(), "unreadable set left alone: {reason}");
    }
    let mut infos = Vec::new();
    for set in &listing.sets {
        match &set.problem {
            Some(problem) => {
                tracing::warn!(set_id = %set.id(), "damaged set left alone: {problem}")
            }
            None => infos.push(set.info()),
        }
    }
    let free = if policy.min_free_space.is_some() {
        store.free_bytes()?.saturating_sub(reserve)
    } else {
        0
    };
    let plan = plan(&infos, policy, free, not_after);
    if let Some(reason) = plan.pressure_unmet {
        tracing::warn!(store = %store.root().display(), "{reason} even after pruning every set that may go");
    }
    if dry_run {
        return Ok(plan);
    }
    let mut deleted = Vec::new();
    let mut freed: u64 = 0;
    for decision in plan.to_delete() {
        store
            .delete(&decision.set.id)
            .with_context(|| format!("cannot prune set '{}'", decision.set.id))?;
        tracing::debug!(set_id = %decision.set.id, reason = %decision.delete.expect("to delete"), "set pruned");
        deleted.push(decision.set.id.as_str());
        freed = freed.saturating_add(decision.set.size);
    }
    if !deleted.is_empty() {
        tracing::info!(
            message_id = message_id::SETS_PRUNED,
            count = deleted.len(),
            bytes = freed,
            set_ids = %deleted.join(","),
            store = %store.root().display(),
            "pruned {} set(s): {}",
            deleted.len(),
            deleted.join(", ")
        );
    }
    Ok(plan)
}
