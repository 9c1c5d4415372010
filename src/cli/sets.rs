//! The commands over sets: `list`, `verify`, `fetch` and `stage`.

use super::{EXIT_FAILED, EXIT_OK};
use crate::config::Settings;
use crate::store::Store;
use crate::units::human_size;
use anyhow::Result;

pub fn cmd_list(settings: &Settings, json: bool) -> Result<u8> {
    let store = Store::open_existing(&settings.store.root).map_err(|error| {
        let ids: Vec<String> = crate::targets::configured(settings)
            .iter()
            .map(|t| t.id())
            .collect();
        if ids.is_empty() {
            error
        } else {
            error.context(format!(
                "this node has no sets; to see what a target holds: etcd-backup list --from TARGET (configured: {})",
                ids.join(", ")
            ))
        }
    })?;
    let listing = store.list()?;
    for (dir, reason) in &listing.unreadable {
        eprintln!("warning: unreadable set '{}': {reason}", dir.display());
    }
    if json {
        let sets: Vec<serde_json::Value> = listing
            .sets
            .iter()
            .map(|set| {
                manifest_json(
                    &set.manifest,
                    serde_json::json!({
                        "verified": set.problem.is_none(),
                        "problem": set.problem,
                        "last_verification": set.last_verification,
                        "path": set.dir,
                    }),
                )
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&sets)?);
        return Ok(EXIT_OK);
    }
    // One table per etcd history (a restore starts a new cluster ID), the newest first.
    let live = crate::cluster::live_cluster_id(settings.node_root()).ok();
    let mut groups: Vec<(Option<&str>, Vec<&crate::store::StoredSet>)> = Vec::new();
    let mut sets: Vec<_> = listing.sets.iter().collect();
    sets.sort_by_key(|s| std::cmp::Reverse(s.manifest.created));
    for set in sets {
        let cluster = cluster_id(&set.manifest);
        match groups.iter_mut().find(|(c, _)| *c == cluster) {
            Some((_, members)) => members.push(set),
            None => groups.push((cluster, vec![set])),
        }
    }
    for (n, (cluster, sets)) in groups.iter().enumerate() {
        if n > 0 {
            println!();
        }
        println!("{}", history_heading(*cluster, live.as_deref()));
        println!("{}", table_header("DIRTY"));
        for set in sets {
            let m = &set.manifest;
            let verified = match &set.problem {
                None => "yes".to_string(),
                Some(problem) => format!("NO: {problem}"),
            };
            println!(
                "{}",
                table_row(m, if m.dirty { "yes" } else { "no" }, &verified)
            );
        }
    }
    Ok(EXIT_OK)
}

/// The columns of a table of sets; `flag` names the fifth (DIRTY, WHOLE).
fn table_header(flag: &str) -> String {
    format!(
        "{:<40} {:<20} {:<20} {:>9} {:<10} {:>10} {:<5} VERIFIED",
        "ID", "ORIGIN", "CREATED", "SIZE", "RELEASE", "REVISION", flag
    )
}

fn table_row(m: &crate::manifest::Manifest, flag: &str, verified: &str) -> String {
    format!(
        "{:<40} {:<20} {:<20} {:>9} {:<10} {:>10} {:<5} {verified}",
        m.id,
        m.origin,
        m.created.format("%Y-%m-%d %H:%M:%SZ"),
        human_size(m.total_size()),
        release(m),
        revision(m),
        flag,
    )
}

fn cluster_id(m: &crate::manifest::Manifest) -> Option<&str> {
    m.cluster.as_ref().and_then(|c| c.cluster_id.as_deref())
}

fn release(m: &crate::manifest::Manifest) -> &str {
    m.cluster
        .as_ref()
        .and_then(|c| c.release.as_deref())
        .unwrap_or("-")
}

fn revision(m: &crate::manifest::Manifest) -> String {
    m.checks
        .etcd
        .as_ref()
        .map_or("-".to_string(), |e| e.revision.to_string())
}

/// The line above one history's sets.
fn history_heading(cluster: Option<&str>, live: Option<&str>) -> String {
    match (cluster, live) {
        (Some(c), Some(l)) if c == l => format!("etcd cluster {c} (this node's etcd now):"),
        (Some(c), Some(_)) => {
            format!("etcd cluster {c} (an earlier history: not this node's etcd now):")
        }
        (Some(c), None) => format!("etcd cluster {c}:"),
        (None, _) => {
            "sets that name no etcd cluster (taken before etcd-backup recorded it):".to_string()
        }
    }
}

/// `list --from`: what each target `from` picks holds, with the last verification of each
/// copy this node knows of.
pub fn cmd_list_from(settings: &Settings, from: &str, json: bool) -> Result<u8> {
    let checks = Store::existing(&settings.store.root)
        .map(|s| s.copy_checks())
        .unwrap_or_default();
    let mut listed = Vec::new();
    for target in crate::targets::named(settings, Some(from))? {
        let sets = target.list_sets()?;
        listed.push((target.id(), target.describe(), sets));
    }
    if json {
        let sets: Vec<serde_json::Value> = listed
            .iter()
            .flat_map(|(id, name, sets)| {
                let known = checks.get(id);
                sets.iter().map(move |set| {
                    manifest_json(
                        &set.manifest,
                        serde_json::json!({
                            "target": id,
                            "target_name": name,
                            "whole": set.whole,
                            "problem": set.problem,
                            "sealed_to": set.sealed_to,
                            "last_verification": known.and_then(|k| k.get(&set.manifest_sha256)),
                        }),
                    )
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&sets)?);
        return Ok(EXIT_OK);
    }
    for (id, name, sets) in &listed {
        println!("{name}: {} set(s)", sets.len());
        println!("{}", table_header("WHOLE"));
        let known = checks.get(id);
        for set in sets {
            let m = &set.manifest;
            let check = known.and_then(|k| k.get(&set.manifest_sha256));
            let verified = match (&set.problem, check) {
                (Some(problem), _) => format!("NO: {problem}"),
                (None, Some(c)) => match &c.problem {
                    None => format!("yes ({})", c.at.format("%Y-%m-%d %H:%M:%SZ")),
                    Some(problem) => format!("NO: {problem}"),
                },
                (None, None) => "not yet".to_string(),
            };
            println!(
                "{}",
                table_row(m, if set.whole { "yes" } else { "NO" }, &verified)
            );
            for (file, recipients) in &set.sealed_to {
                println!("    sealed: {file} to {}", recipients.join(", "));
            }
        }
    }
    Ok(EXIT_OK)
}

/// One line per set as it is verified.
fn print_checked(outcome: &crate::verify::Checked) {
    match &outcome.problem {
        None => println!("ok   {}", outcome.id),
        Some(problem) => println!("BAD  {}: {problem}", outcome.id),
    }
}

/// `verify --target`: one line per copy, then one per target that could not be checked.
pub fn cmd_verify_target(
    settings: &Settings,
    target: &str,
    ids: &[String],
    deep: bool,
    identities: &[std::path::PathBuf],
) -> Result<u8> {
    let identities = crate::seal::keys::load_identities(identities)?;
    let depth = (deep, identities.as_slice());
    let verified = crate::targets::check::run(settings, Some(target), ids, depth, &mut print_copy)?;
    Ok(copies_outcome(&verified, &format!("'{target}'")))
}

/// One line per copy as it is verified.
fn print_copy(on: &str, outcome: &crate::verify::Checked) {
    match &outcome.problem {
        None => println!("ok   {}  on {on}", outcome.id),
        Some(problem) => println!("BAD  {}  on {on}: {problem}", outcome.id),
    }
}

/// The targets that could not be checked, the error line, and the exit code.
fn copies_outcome(verified: &crate::targets::check::Verified, on: &str) -> u8 {
    let (bad, failed) = (verified.bad, &verified.failed);
    for (target, error) in failed {
        println!("FAILED  {target}: {error}");
    }
    if bad == 0 && failed.is_empty() {
        return EXIT_OK;
    }
    eprintln!(
        "error: {bad} bad cop{} on {on}{}",
        if bad == 1 { "y" } else { "ies" },
        if failed.is_empty() {
            ""
        } else {
            ", and a target could not be checked"
        }
    );
    EXIT_FAILED
}

/// `verify`: this node's store, then (with `targets`) every target that is due.
pub fn cmd_verify(settings: &Settings, ids: &[String], deep: bool, targets: bool) -> Result<u8> {
    let bad = crate::verify::run(settings, ids, deep, &mut print_checked)?;
    let mut code = EXIT_OK;
    if bad > 0 {
        eprintln!(
            "error: {bad} bad set(s) in '{}'",
            settings.store.root.display()
        );
        code = EXIT_FAILED;
    }
    if targets {
        let verified = crate::targets::check::run_due(settings, &mut print_copy)?;
        for target in &verified.not_due {
            println!("not yet due: {target}");
        }
        if copies_outcome(&verified, "the targets") != EXIT_OK {
            code = EXIT_FAILED;
        }
    }
    Ok(code)
}

pub fn cmd_fetch(
    settings: &Settings,
    from: Option<&str>,
    identities: &[std::path::PathBuf],
    id: &str,
) -> Result<u8> {
    let (set, how, origins) = crate::fetch::run(settings, from, identities, id)?;
    let what = match how {
        crate::fetch::Fetched::Committed => "fetched",
        crate::fetch::Fetched::Repaired => "fetched, replacing a damaged copy,",
        crate::fetch::Fetched::AlreadyHeld => "already held, sound:",
    };
    println!("{what} set {id} into '{}'", set.dir.display());
    for origin in origins {
        println!("  {origin}");
    }
    Ok(EXIT_OK)
}

pub fn cmd_stage(
    settings: &Settings,
    id: &str,
    dir: &std::path::Path,
    allow_other_release: bool,
) -> Result<u8> {
    let set = crate::stage::run(settings, id, dir, allow_other_release)?;
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let dir = dir.as_path();
    let m = &set.manifest;
    let revision = m
        .checks
        .etcd
        .as_ref()
        .map_or(String::new(), |e| format!(", etcd revision {}", e.revision));
    println!(
        "staged set {} (from {}, created {}{revision}) in {}:",
        m.id,
        m.origin,
        m.created.format("%Y-%m-%d %H:%M:%SZ"),
        dir.display()
    );
    for file in &m.files {
        println!("  {}", dir.join(&file.name).display());
    }
    println!(
        "next, on the recovery master (OpenShift's restore procedure):\n  sudo -E {} {}",
        crate::paths::CLUSTER_RESTORE,
        dir.display()
    );
    Ok(EXIT_OK)
}

/// `restore-check`: one line per check, then the plan (or why there is none).
pub fn cmd_restore_check(
    settings: &Settings,
    id: &str,
    target: Option<&str>,
    allow_other_release: bool,
    json: bool,
) -> Result<u8> {
    let report = match target {
        Some(target) => crate::restore::run_on_target(settings, target, id, allow_other_release)?,
        None => crate::restore::run(settings, id, allow_other_release)?,
    };
    let code = if report.refused { EXIT_FAILED } else { EXIT_OK };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(code);
    }
    println!(
        "Checks of set {id} for a restore on {}:",
        settings.node_name
    );
    for check in &report.checks {
        println!(
            "  {:<8} {:<18} {}",
            check.outcome.label(),
            check.name,
            check.detail
        );
    }
    let named = |outcome| {
        let names: Vec<&str> = report
            .checks
            .iter()
            .filter(|c| c.outcome == outcome)
            .map(|c| c.name)
            .collect();
        (!names.is_empty()).then(|| names.join(", "))
    };
    if let Some(names) = named(crate::restore::check::Outcome::Unknown) {
        eprintln!(
            "warning: not known, so not checked: {names}: make sure of them by hand before you restore"
        );
    }
    if let Some(names) = named(crate::restore::check::Outcome::Warning) {
        eprintln!("warning: {names}: see WARNING above");
    }
    match &report.plan {
        Some(plan) => print!("\n{}", plan.to_text()),
        None => eprintln!("error: set {id} must not be restored here: see REFUSED above"),
    }
    Ok(code)
}

/// A set as `list --json` shows it: its manifest's facts, and the fields of `about` (where the
/// copy is and what is known of it).
fn manifest_json(m: &crate::manifest::Manifest, about: serde_json::Value) -> serde_json::Value {
    let mut set = serde_json::json!({
        "id": m.id,
        "origin": m.origin,
        "created": m.created,
        "size": m.total_size(),
        "dirty": m.dirty,
        "etcd": m.checks.etcd,
        "files": m.files,
        "cluster": m.cluster,
    });
    if let (Some(set), serde_json::Value::Object(about)) = (set.as_object_mut(), about) {
        set.extend(about);
    }
    set
}
