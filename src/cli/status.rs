//! `status` and `metrics`: what the store says about this node's backups, printed for a person
//! or as JSON, or in the Prometheus text format.

use super::{EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, EXIT_STALE};
use crate::config::Settings;
use crate::status::Health;
use anyhow::Result;
use std::path::Path;

/// `status`'s exit code.
pub fn exit_code(health: Health) -> u8 {
    match health {
        Health::Failed => EXIT_FAILED,
        Health::Stale => EXIT_STALE,
        Health::Behind => EXIT_PARTIAL,
        Health::Ok => EXIT_OK,
    }
}

/// `metrics`: to a textfile-collector directory, over HTTP, or to stdout.
pub fn cmd_metrics(
    settings: &Settings,
    textfile: Option<&Path>,
    listen: Option<&str>,
) -> Result<u8> {
    match (textfile, listen) {
        (Some(dir), _) => {
            crate::metrics::write_textfile(dir, &crate::metrics::gather(settings)?)?;
        }
        (None, Some(addr)) => crate::metrics::http::serve(settings, addr)?,
        (None, None) => print!("{}", crate::metrics::gather(settings)?),
    }
    Ok(EXIT_OK)
}

pub fn cmd_status(settings: &Settings, json: bool) -> Result<u8> {
    let root = &settings.store.root;
    // No store yet is a status too (stale), not an error.
    let view = crate::status::StoreView::read(root)?;
    let (listing, targets) = (&view.listing, &view.targets);
    let summary = view.summary(settings.status.max_age, settings.max_clock_skew);
    let (newest, age, fresh, max_age) =
        (summary.newest, summary.age, summary.fresh, summary.max_age);
    let live = crate::cluster::live_cluster_id(settings.node_root()).ok();
    let history = crate::status::history_note(newest.map(|s| &s.manifest), live.as_deref());
    // The next set, as large as the newest, against the free space and the floor.
    let floor = settings.retention.min_free_space.unwrap_or(0);
    let next = newest.map(|s| s.manifest.total_size());
    let free = crate::store::Store::existing(root).and_then(|s| s.free_bytes().ok());
    let room = match (free, next) {
        (Some(free), Some(next)) => crate::status::room_note(free, next, floor),
        _ => None,
    };
    if json {
        let value = serde_json::json!({
            "store": root,
            "sets": listing.sets.len(),
            "newest": newest.map(|s| serde_json::json!({
                "id": s.manifest.id,
                "origin": s.manifest.origin,
                "created": s.manifest.created,
                "dirty": s.manifest.dirty,
            })),
            "age_seconds": age.map(|a| a.as_secs()),
            "max_age_seconds": max_age.as_secs(),
            "fresh": fresh,
            "failed": summary.failed.iter().map(|s| serde_json::json!({
                "id": s.manifest.id,
                "origin": s.manifest.origin,
                "problem": s.problem,
            })).collect::<Vec<_>>(),
            "future_dated": summary.future.iter().map(|s| &s.manifest.id).collect::<Vec<_>>(),
            "targets": targets,
            "damaged_copies": summary.damaged.iter().map(|(target, check)| serde_json::json!({
                "target": target,
                "id": check.set_id,
                "verified_at": check.at,
                "problem": check.problem,
            })).collect::<Vec<_>>(),
            "coverage": summary.coverage,
            "space": {
                "free_bytes": free,
                "next_set_bytes": next,
                "floor_bytes": floor,
                "next_set_fits": room.is_none(),
            },
            "etcd_cluster": {
                "live": live,
                "newest_set": newest.and_then(|s| s.manifest.cluster.as_ref()).and_then(|c| c.cluster_id.as_ref()),
                "differs": history.is_some(),
            },
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        match (newest, age) {
            (Some(set), Some(age)) => println!(
                "newest set {} from {} created {} ({} ago, bound {}): {}",
                set.manifest.id,
                set.manifest.origin,
                set.manifest.created.format("%Y-%m-%d %H:%M:%SZ"),
                crate::units::format_duration(age),
                crate::units::format_duration(max_age),
                if fresh { "fresh" } else { "STALE" }
            ),
            _ => println!("no backup set in '{}': STALE", root.display()),
        }
        if let Some(note) = &history {
            println!("{note}");
        }
        if let Some(note) = &room {
            println!("{note}");
        }
        for set in &summary.future {
            println!(
                "WARNING: set {} is dated {}, after this node's clock plus node.max_clock_skew ({}): not counted (a clock set wrong, or a forged set)",
                set.manifest.id,
                set.manifest.created.format("%Y-%m-%d %H:%M:%SZ"),
                crate::units::format_duration(settings.max_clock_skew)
            );
        }
        for set in &summary.failed {
            println!(
                "newest set {} from {} is BAD: {}",
                set.manifest.id,
                set.manifest.origin,
                set.problem.as_deref().unwrap_or_default()
            );
        }
        for (id, target) in targets {
            let name = if target.name.is_empty() {
                id
            } else {
                &target.name
            };
            match &target.last_error {
                None => println!(
                    "target {name}: current, holds {} of our sets (last success {})",
                    target.sets_held,
                    fmt_time(target.last_success)
                ),
                Some(error) => println!(
                    "target {name}: BEHIND since the last success {}: {error}",
                    fmt_time(target.last_success)
                ),
            }
        }
        for (target, check) in &summary.damaged {
            let name = targets
                .get(*target)
                .map(|t| t.name.as_str())
                .filter(|n| !n.is_empty())
                .unwrap_or(target);
            println!(
                "target {name}: copy of {} DAMAGED (verified {}): {} — the next spray sends it again",
                check.set_id,
                fmt_time(Some(check.at)),
                check.problem.as_deref().unwrap_or_default()
            );
        }
        if let Some(note) = summary.coverage.and_then(|c| c.note()) {
            println!("{note}");
        }
    }
    Ok(exit_code(summary.health()))
}

fn fmt_time(time: Option<chrono::DateTime<chrono::Utc>>) -> String {
    time.map_or_else(
        || "never".to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%SZ").to_string(),
    )
}
